import json

import numpy as np
import pytest

from carebench_data.normalization import (
    NormalizationError,
    compute_fold_stats,
    forward_fill,
    normalize,
    read_fold_stats,
    scaling_parameters,
    stay_ids_sha256,
    write_fold_stats,
)


@pytest.fixture
def raw_ehr():
    rng = np.random.default_rng(3)
    ehr = rng.normal(loc=[80.0, 7.4, 0.0], scale=[15.0, 0.05, 1.0], size=(40, 48, 3)).astype(np.float32)
    ehr[rng.random(ehr.shape) < 0.6] = np.nan
    ehr[:, :, 2] = np.where(np.isnan(ehr[:, :, 2]), np.nan, 5.0)  # constant: iqr = std = 0
    return ehr


NAMES = ["heart_rate", "ph", "constant"]


def test_stats_use_only_train_rows_and_match_numpy(raw_ehr):
    train_rows = np.arange(0, 40, 3)
    train_ids = 30000000 + train_rows
    stats = compute_fold_stats(raw_ehr, train_rows, feature_names=NAMES, train_stay_ids=train_ids)
    assert stats["n_train_stays"] == train_rows.size
    assert stats["train_stay_ids_sha256"] == stay_ids_sha256(train_ids[::-1])
    for index, entry in enumerate(stats["features"]):
        values = raw_ehr[train_rows, :, index].astype(np.float64).ravel()
        values = values[~np.isnan(values)]
        assert entry["name"] == NAMES[index]
        assert entry["n_obs"] == values.size
        assert entry["median"] == np.median(values)
        assert entry["q25"] == np.percentile(values, 25)
        assert entry["q75"] == np.percentile(values, 75)
        assert entry["iqr"] == entry["q75"] - entry["q25"]
        assert entry["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert entry["std"] == pytest.approx(values.std(ddof=0), rel=1e-12, abs=1e-12)
        assert (entry["min"], entry["max"]) == (values.min(), values.max())
    # changing a non-train stay changes nothing; changing a train stay does
    poisoned = raw_ehr.copy()
    poisoned[1] = 1e6
    assert compute_fold_stats(poisoned, train_rows, feature_names=NAMES, train_stay_ids=train_ids) == stats
    poisoned[0] = 1e6
    assert compute_fold_stats(poisoned, train_rows, feature_names=NAMES, train_stay_ids=train_ids) != stats


def test_stay_ids_sha256_is_order_free_and_pinned():
    import hashlib

    ids = np.array([30000002, 30000001])
    assert stay_ids_sha256(ids) == hashlib.sha256(b"30000001\n30000002").hexdigest()


def reference_normalize(raw, stats):
    """Loop-based reference of data.md §7.2 (robust scaling)."""
    n, t, f = raw.shape
    out = np.empty((n, t, f))
    for j, entry in enumerate(stats["features"]):
        median = entry["median"]
        divisor = entry["iqr"] if entry["iqr"] > 0 else (entry["std"] if entry["std"] > 0 else 1.0)
        for i in range(n):
            last = np.nan
            for h in range(t):
                value = raw[i, h, j]
                if not np.isnan(value):
                    last = float(value)
                filled = median if np.isnan(last) else last
                out[i, h, j] = (filled - median) / divisor
    return out.astype(np.float32)


def test_normalize_matches_reference_and_leaves_no_nan(raw_ehr):
    train_rows = np.arange(20)
    stats = compute_fold_stats(raw_ehr, train_rows, feature_names=NAMES, train_stay_ids=train_rows)
    values, mask = normalize(raw_ehr, stats)
    assert values.dtype == np.float32 and mask.dtype == np.bool_
    assert values.shape == mask.shape == raw_ehr.shape
    np.testing.assert_array_equal(mask, ~np.isnan(raw_ehr))
    np.testing.assert_allclose(values, reference_normalize(raw_ehr, stats), rtol=1e-6, atol=1e-6)
    assert np.isfinite(values).all()
    # the constant feature has iqr = std = 0: divisor 1, so every value is exactly 0
    assert np.all(values[:, :, 2] == 0)


def test_mask_is_taken_before_filling():
    raw = np.full((1, 48, 1), np.nan, dtype=np.float32)
    raw[0, 5, 0] = 3.0
    stats = compute_fold_stats(raw, np.array([0]), feature_names=["x"], train_stay_ids=np.array([1]))
    values, mask = normalize(raw, stats)
    assert mask[0, :, 0].tolist() == [h == 5 for h in range(48)]
    # hours after 5 carry the value forward, hours before get the median; both are 3 here -> 0
    assert np.all(values == 0)


def test_forward_fill_stays_inside_window():
    raw = np.array([[[np.nan], [1.0], [np.nan], [4.0], [np.nan]]])
    filled = forward_fill(raw)
    assert np.isnan(filled[0, 0, 0])
    assert filled[0, 1:, 0].tolist() == [1.0, 1.0, 4.0, 4.0]


def test_scaling_fallbacks_and_methods():
    stats = {
        "features": [
            {"name": "a", "median": 2.0, "iqr": 4.0, "std": 3.0, "mean": 1.0},
            {"name": "b", "median": 2.0, "iqr": 0.0, "std": 3.0, "mean": 1.0},
            {"name": "c", "median": 2.0, "iqr": 0.0, "std": 0.0, "mean": 2.0},
            {"name": "d", "n_obs": 0, "median": None, "iqr": None, "std": None, "mean": None},
        ]
    }
    fill, center, divisor = scaling_parameters(stats)
    assert fill.tolist() == [2.0, 2.0, 2.0, 0.0]
    assert center.tolist() == [2.0, 2.0, 2.0, 0.0]
    assert divisor.tolist() == [4.0, 3.0, 1.0, 1.0]
    _, center, divisor = scaling_parameters(stats, method="standard")
    assert center.tolist() == [1.0, 1.0, 2.0, 0.0]
    assert divisor.tolist() == [3.0, 3.0, 1.0, 1.0]
    _, center, divisor = scaling_parameters(stats, feature_scale={"a": "none", "b": "standard"})
    assert center.tolist() == [0.0, 1.0, 2.0, 0.0]
    assert divisor.tolist() == [1.0, 3.0, 1.0, 1.0]
    with pytest.raises(NormalizationError, match="unknown scale"):
        scaling_parameters(stats, feature_scale={"a": "log"})
    with pytest.raises(NormalizationError, match="absent"):
        scaling_parameters(stats, feature_scale={"zzz": "none"})
    with pytest.raises(NormalizationError, match="method"):
        scaling_parameters(stats, method="minmax")


def test_never_observed_feature_is_zero_filled(caplog):
    raw = np.full((4, 48, 2), np.nan, dtype=np.float32)
    raw[:, 0, 0] = [1.0, 2.0, 3.0, 4.0]
    stats = compute_fold_stats(raw, np.arange(4), feature_names=["x", "never"], train_stay_ids=np.arange(4))
    assert "never observed" in caplog.text
    assert stats["features"][1]["n_obs"] == 0 and stats["features"][1]["median"] is None
    values, mask = normalize(raw, stats)
    assert np.all(values[:, :, 1] == 0) and not mask[:, :, 1].any()


def test_infinite_raw_value_is_rejected():
    raw = np.ones((2, 48, 1), dtype=np.float32)
    stats = compute_fold_stats(raw, np.arange(2), feature_names=["x"], train_stay_ids=np.arange(2))
    raw[0, 3, 0] = np.inf
    with pytest.raises(NormalizationError, match="infinit"):
        normalize(raw, stats)


def test_bad_shapes_raise(raw_ehr):
    with pytest.raises(NormalizationError, match="feature names"):
        compute_fold_stats(raw_ehr, np.arange(3), feature_names=["a"], train_stay_ids=np.arange(3))
    with pytest.raises(NormalizationError, match="empty train"):
        compute_fold_stats(raw_ehr, np.array([], dtype=int), feature_names=NAMES, train_stay_ids=np.array([]))
    with pytest.raises(NormalizationError, match="train_stay_ids"):
        compute_fold_stats(raw_ehr, np.arange(3), feature_names=NAMES, train_stay_ids=np.arange(2))
    stats = compute_fold_stats(raw_ehr, np.arange(3), feature_names=NAMES, train_stay_ids=np.arange(3))
    with pytest.raises(NormalizationError, match="F = 2"):
        normalize(raw_ehr[:, :, :2], stats)


def test_write_and_read_round_trip(tmp_path, raw_ehr):
    stats = compute_fold_stats(raw_ehr, np.arange(10), feature_names=NAMES, train_stay_ids=np.arange(10))
    path = write_fold_stats(stats, tmp_path / "fold0.json")
    text = path.read_text()
    assert text.endswith("\n") and json.loads(text) == stats
    assert read_fold_stats(path) == stats
    assert [p.name for p in tmp_path.iterdir()] == ["fold0.json"]
    with pytest.raises(NormalizationError, match="not found"):
        read_fold_stats(tmp_path / "fold9.json")


def test_chunked_normalization_equals_single_pass(monkeypatch, raw_ehr):
    import carebench_data.normalization as module

    stats = compute_fold_stats(raw_ehr, np.arange(40), feature_names=NAMES, train_stay_ids=np.arange(40))
    whole = normalize(raw_ehr, stats)
    monkeypatch.setattr(module, "_CHUNK_STAYS", 7)
    chunked = normalize(raw_ehr, stats)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])
