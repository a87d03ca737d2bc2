"""End to end: build the hand-written raw tree and check cohort, labels, EHR, images, stats, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from carebench_data.build import build_dataset
from carebench_data.config import BuildConfig, CxrConfig, FeaturesConfig
from carebench_data.manifest import sha256_file
from carebench_data.splits import fold_parts, split_of
from carebench_data.testing.raw import RawTreeTruth, write_raw_tree
from carebench_data.verify import VerificationError, verify_dataset


def _config(truth: RawTreeTruth, out: Path, **changes) -> BuildConfig:
    cxr = CxrConfig(workers=1, max_failure_fraction=0.5)
    return BuildConfig(mimic_iv=truth.mimic_iv, mimic_cxr=truth.mimic_cxr, out=out, cxr=cxr, **changes)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[RawTreeTruth, Path]:
    root = tmp_path_factory.mktemp("e2e")
    truth = write_raw_tree(root / "raw")
    calls: list[tuple[int, int]] = []
    out = build_dataset(
        _config(truth, root / "dataset"), progress=lambda done, total: calls.append((done, total))
    )
    assert calls[-1] == (1000, 1000)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    return truth, out


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_cohort_and_every_exclusion_step(built: tuple[RawTreeTruth, Path]) -> None:
    truth, out = built
    stays = pl.read_parquet(out / "stays.parquet")
    assert stays.get_column("stay_id").to_list() == truth.cohort_stay_ids
    steps = {entry["step"]: entry for entry in _manifest(out)["counts"]["cohort"]}
    assert steps["icustays"]["stays"] == truth.counts["icustays"]
    for key, removed in truth.excluded.items():
        assert steps[key]["removed"] == len(removed), key
    assert steps["single_careunit"] == {
        "step": "single_careunit",
        "enabled": False,
        "stays": steps["min_los"]["stays"],
        "subjects": steps["min_los"]["subjects"],
        "removed": 0,
    }
    assert steps["cohort"]["stays"] == len(truth.cohort_stay_ids)
    assert _manifest(out)["counts"]["cohort_checks"]["race_unmapped"] == 0  # PORTUGUESE is listed (→ OTHER)
    race = dict(zip(stays["stay_id"], stays["race"], strict=True))
    assert race[30_000_009] == "OTHER"
    assert stays.filter(pl.col("stay_id") == 30_000_001)["age"].item() == 65


def test_labels_match_the_expected_values(built: tuple[RawTreeTruth, Path]) -> None:
    truth, out = built
    labels = pl.read_parquet(out / "labels.parquet")
    assert labels.columns[:4] == ["stay_id", "mortality", "los_days", "los_class"]
    assert len(labels.columns) == 4 + 25
    by_stay = {row["stay_id"]: row for row in labels.iter_rows(named=True)}
    phenotype_columns = labels.columns[4:]
    for stay_id, mortality in truth.mortality.items():
        assert by_stay[stay_id]["mortality"] == mortality, stay_id
        assert by_stay[stay_id]["los_class"] == truth.los_class[stay_id], stay_id
        positives = {c for c in phenotype_columns if by_stay[stay_id][c] == 1}
        assert positives == truth.phenotypes[stay_id], stay_id
    assert by_stay[30_000_005]["los_days"] == pytest.approx(3.0)
    manifest = _manifest(out)
    assert manifest["labels"]["tasks"]["phenotype"]["columns"] == phenotype_columns
    assert manifest["labels"]["los"]["edges_days"] == [2, 3, 4, 5, 6, 7, 14]
    counts = manifest["counts"]["labels"]
    assert counts["deaths_from_dod_only"] == 1
    # The audit mode reproduces the compat defects: J9601 and I2510 are lost there (spec §5.5).
    compat = counts["phenotype"]["positives"]["carebench_compat"]
    assert compat["respiratory_failure"] == 0 and compat["coronary_atherosclerosis"] == 0
    assert counts["phenotype"]["positives"]["gem_ccs"]["respiratory_failure"] == 1


def test_ehr_values_windows_conversions_and_counts(built: tuple[RawTreeTruth, Path]) -> None:
    _, out = built
    ehr = np.load(out / "ehr.npy")
    names = _manifest(out)["features"]
    assert ehr.dtype == np.float32 and ehr.shape[1:] == (48, 17)
    f = {name: names.index(name) for name in names}
    stay = ehr[0]  # stay 30000001 is the first row
    assert (
        stay[0, f["heart_rate"]] == 90
    )  # charted exactly at intime; the value 1 min before is not carried in
    assert stay[1, f["heart_rate"]] == 97  # the last value of the hour
    assert np.isnan(stay[2, f["heart_rate"]])  # 0 is out of range (0, 300)
    assert stay[3, f["temperature"]] == pytest.approx(37.0)  # 98.6 °F
    assert stay[4, f["temperature"]] == pytest.approx(37.5)  # already °C on the °F item
    assert (
        stay[2, f["gcs_eye"]],
        stay[2, f["gcs_motor"]],
        stay[2, f["gcs_verbal"]],
        stay[2, f["gcs_total"]],
    ) == (4, 6, 5, 15)
    assert stay[5, f["gcs_eye"]] == 2 and np.isnan(stay[5, f["gcs_total"]])
    assert stay[6, f["capillary_refill"]] == 1
    assert stay[7, f["fio2"]] == pytest.approx(0.5)
    assert stay[8, f["weight"]] == pytest.approx(90.718, abs=1e-3)
    assert stay[8, f["spo2"]] == pytest.approx(95.0)
    assert stay[10, f["sbp"]] == 130  # same minute: the higher-priority arterial item wins
    assert stay[47, f["heart_rate"]] == 111  # charted 47:50, stored after prediction_time (counted only)
    assert stay[3, f["glucose"]] == 250  # lab with a null hadm_id joined on subject + window
    assert stay[13, f["ph"]] == pytest.approx(7.0)  # censored "<7.0"
    counts = _manifest(out)["counts"]["features"]
    assert counts["heart_rate"]["out_of_range"] == 1
    assert counts["heart_rate"]["unparseable"] == 1
    assert counts["heart_rate"]["duplicates"] == 1
    assert counts["temperature"]["converted"] == 1 and counts["temperature"]["unit_fixed"] == 1
    assert counts["ph"]["censored"] == 1
    assert counts["heart_rate"]["stored_after_prediction"] == 1
    assert counts["heart_rate"]["observed_cells"] == int((~np.isnan(ehr[:, :, f["heart_rate"]])).sum())
    events = _manifest(out)["counts"]["events"]
    assert events["labevents"]["itemid_kept"] == 2  # the urine glucose item is not in the registry
    # P1: staged rows equal the window-kept counts of the single pass (chartevents + labevents).
    assert sum(table["window_kept"] for table in events.values()) == sum(
        c["rows_in_window"] for c in counts.values()
    )


def test_cxr_selection_fallback_and_leakage_guard(built: tuple[RawTreeTruth, Path]) -> None:
    truth, out = built
    stays = pl.read_parquet(out / "stays.parquet")
    cxr = np.load(out / "cxr.npy")
    selected = dict(zip(stays["stay_id"], stays["cxr_dicom_id"], strict=True))
    for stay_id, dicom in truth.cxr_dicom.items():
        assert selected[stay_id] == dicom, stay_id
    with_cxr = stays.filter(pl.col("has_cxr"))
    assert with_cxr["cxr_index"].to_list() == list(range(cxr.shape[0]))
    assert cxr.shape == (3, 256, 256) and cxr.dtype == np.uint8
    assert (stays.filter(~pl.col("has_cxr"))["cxr_index"] == -1).all()
    hours = dict(zip(with_cxr["stay_id"], with_cxr["cxr_hours"], strict=True))
    for stay_id, expected in truth.cxr_hours.items():
        assert hours[stay_id] == pytest.approx(expected, abs=1e-4)
    assert max(hours.values()) <= 48.0  # a study exactly at prediction_time is kept, 1 s later is not
    counts = _manifest(out)["counts"]["cxr"]
    for key in ("file_missing", "decode_failed", "fallback_used"):
        assert counts[key] == truth.counts[key], key
    assert counts["views"] == {"AP": 2, "PA": 1}
    assert {f["reason"] for f in counts["failures"]} == {"file_missing", "decode_failed"}


def test_stats_use_training_stays_only(built: tuple[RawTreeTruth, Path]) -> None:
    _, out = built
    stays = pl.read_parquet(out / "stays.parquet")
    ehr = np.load(out / "ehr.npy").astype(np.float64)
    subjects = stays["subject_id"].to_numpy()
    parts = fold_parts(subjects)
    assert np.array_equal(parts, stays["fold_part"].to_numpy())
    hr = _manifest(out)["features"].index("heart_rate")
    for fold in range(5):
        stats = json.loads((out / "stats" / f"fold{fold}.json").read_text())
        train = split_of(subjects, parts, fold=fold) == "train"
        assert stats["n_train_stays"] == int(train.sum()) < len(subjects)
        values = ehr[train, :, hr]
        values = values[~np.isnan(values)]
        entry = stats["features"][hr]
        assert entry["n_obs"] == values.size
        assert entry["median"] == pytest.approx(float(np.median(values)))
        assert entry["mean"] == pytest.approx(float(values.mean()))


def test_verify_passes_and_detects_tampering(built: tuple[RawTreeTruth, Path], tmp_path: Path) -> None:
    _, out = built
    report = verify_dataset(out)
    assert "fold parts" in report.checked and not report.problems
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    labels = copy / "labels.parquet"
    pl.read_parquet(labels).with_columns(pl.col("mortality") * 0).write_parquet(labels)
    with pytest.raises(VerificationError, match=r"labels\.parquet: SHA-256"):
        verify_dataset(copy)


def test_same_inputs_give_byte_identical_files(built: tuple[RawTreeTruth, Path], tmp_path: Path) -> None:
    truth, out = built
    again = build_dataset(_config(truth, tmp_path / "again"))
    first, second = _manifest(out), _manifest(again)
    assert first["files"] == second["files"]
    assert first["content_hash"] == second["content_hash"]
    for relpath in first["files"]:
        assert sha256_file(out / relpath) == sha256_file(again / relpath)
    assert not list(tmp_path.glob(".again*"))  # no lock, no partial directory left


def test_ehr_only_build_and_extended_registry(built: tuple[RawTreeTruth, Path], tmp_path: Path) -> None:
    truth, _ = built
    config = BuildConfig.from_dict(
        {
            "mimic_iv": str(truth.mimic_iv),
            "out": str(tmp_path / "ehr_only"),
            "cxr": {"enabled": False},
            "features": {"registry": "extended"},
        }
    )
    out = build_dataset(config)
    stays = pl.read_parquet(out / "stays.parquet")
    assert not stays["has_cxr"].any() and np.load(out / "cxr.npy").shape == (0, 256, 256)
    ehr = np.load(out / "ehr.npy")
    names = _manifest(out)["features"]
    assert ehr.shape[2] == 47 and names[:17] == _manifest(built[1])["features"]
    urine = names.index("urine_output")
    assert ehr[0, 2, urine] == 120  # outputevents are read only for the extended set


def test_storetime_availability_drops_late_stored_events(
    built: tuple[RawTreeTruth, Path], tmp_path: Path
) -> None:
    truth, out = built
    late = build_dataset(_config(truth, tmp_path / "late", features=FeaturesConfig(availability="storetime")))
    names = _manifest(late)["features"]
    hr = names.index("heart_rate")
    ehr, reference = np.load(late / "ehr.npy"), np.load(out / "ehr.npy")
    assert (
        ehr[0, 47, hr] == 80 + 35 % 7 and reference[0, 47, hr] == 111
    )  # the 47:30 value of the hourly series
    changed = np.argwhere(~((ehr == reference) | (np.isnan(ehr) & np.isnan(reference))))
    assert changed.tolist() == [[0, 47, hr]]
