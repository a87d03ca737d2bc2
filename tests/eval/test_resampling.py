"""Clustered bootstrap and paired permutation test (eval.md §4, §5.1)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

import carebench_eval as ce
from carebench_eval.resampling import bootstrap_counts, percentile_interval

ATOL = 1e-12


def data(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    a = np.clip(0.25 * y + rng.random(n) * 0.75, 0, 1)
    b = np.clip(0.15 * y + rng.random(n) * 0.85, 0, 1)
    clusters = rng.integers(0, n // 2, n)
    return y, a, b, clusters


def slow_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """A plain callable: forces the materialized-resample fallback."""
    return float(skm.roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")


def test_fast_path_equals_materialized_fallback() -> None:
    y, a, _, clusters = data()
    fast = ce.bootstrap_ci(ce.auroc_score, y, a, clusters=clusters, n_boot=60, random_state=4)
    slow = ce.bootstrap_ci(slow_auroc, y, a, clusters=clusters, n_boot=60, random_state=4)
    np.testing.assert_allclose(fast.replicates, slow.replicates, rtol=0, atol=ATOL)
    assert fast.ci_low == pytest.approx(slow.ci_low, abs=ATOL)
    assert fast.value == pytest.approx(skm.roc_auc_score(y, a), abs=ATOL)


def test_cluster_and_row_bootstrap_coincide_with_one_stay_per_patient() -> None:
    y, a, _, _ = data()
    patients = np.arange(y.size)[::-1].astype(str)  # one stay each, ids in another order
    clustered = ce.bootstrap_ci(ce.auprc_score, y, a, clusters=np.sort(patients), n_boot=100)
    rows = ce.bootstrap_ci(ce.auprc_score, y, a, n_boot=100)
    np.testing.assert_array_equal(clustered.replicates, rows.replicates)
    assert "row_bootstrap" in rows.notes and "row_bootstrap" not in clustered.notes


def test_bootstrap_is_deterministic_and_row_order_free() -> None:
    y, a, _, clusters = data(1)
    first = ce.bootstrap_ci(ce.auroc_score, y, a, clusters=clusters, n_boot=80, random_state=7)
    again = ce.bootstrap_ci(ce.auroc_score, y, a, clusters=clusters, n_boot=80, random_state=7)
    np.testing.assert_array_equal(first.replicates, again.replicates)
    order = np.random.default_rng(0).permutation(y.size)
    shuffled = ce.bootstrap_ci(
        ce.auroc_score, y[order], a[order], clusters=clusters[order], n_boot=80, random_state=7
    )
    np.testing.assert_allclose(shuffled.replicates, first.replicates, rtol=0, atol=ATOL)


def test_replicates_do_not_depend_on_chunking() -> None:
    whole = bootstrap_counts(50, 0, 30, random_state=2)
    parts = np.vstack(
        [bootstrap_counts(50, 0, 7, random_state=2), bootstrap_counts(50, 7, 30, random_state=2)]
    )
    np.testing.assert_array_equal(whole, parts)
    assert (whole.sum(axis=1) == 50).all()


def test_clustered_bootstrap_resamples_patients_together() -> None:
    """A patient's stays share a weight, so a CI widens when stays are perfectly correlated."""
    rng = np.random.default_rng(5)
    n_patients = 150
    y_patient = (rng.random(n_patients) < 0.4).astype(int)
    s_patient = np.clip(0.3 * y_patient + 0.7 * rng.random(n_patients), 0, 1)
    y, s, patients = np.repeat(y_patient, 4), np.repeat(s_patient, 4), np.repeat(np.arange(n_patients), 4)
    clustered = ce.bootstrap_ci(ce.auroc_score, y, s, clusters=patients, n_boot=300)
    rows = ce.bootstrap_ci(ce.auroc_score, y, s, n_boot=300)
    assert clustered.ci_high - clustered.ci_low > 1.5 * (rows.ci_high - rows.ci_low)


def test_undefined_replicates_are_dropped_and_counted() -> None:
    y = np.zeros(40, dtype=int)
    y[0] = 1
    s = np.linspace(0, 1, 40)
    result = ce.bootstrap_ci(ce.auroc_score, y, s, n_boot=200)
    dropped = int(np.isnan(result.replicates).sum())
    assert dropped > 0
    assert f"ci_dropped={dropped}" in result.notes
    assert "ci_unstable" in result.notes and np.isnan(result.ci_low)


def test_percentile_interval_rule() -> None:
    values = np.arange(100, dtype=float)
    low, high, notes = percentile_interval(values, 0.9)
    assert (low, high, notes) == (pytest.approx(4.95), pytest.approx(94.05), [])
    values[:3] = np.nan
    assert percentile_interval(values, 0.9)[2] == ["ci_dropped=3"]


def test_bca_interval_runs_and_differs_from_percentile() -> None:
    y, a, _, clusters = data(2, n=120)
    percentile = ce.bootstrap_ci(ce.auprc_score, y, a, clusters=clusters, n_boot=200)
    bca = ce.bootstrap_ci(ce.auprc_score, y, a, clusters=clusters, n_boot=200, ci="bca")
    assert bca.value == percentile.value
    np.testing.assert_array_equal(bca.replicates, percentile.replicates)
    assert np.isfinite([bca.ci_low, bca.ci_high]).all()
    assert (bca.ci_low, bca.ci_high) != (percentile.ci_low, percentile.ci_high)


def test_permutation_identical_models_give_p_one() -> None:
    y, a, _, clusters = data(3)
    result = ce.paired_permutation_test(ce.auroc_score, y, a, a.copy(), clusters=clusters, n_perm=500)
    assert result.delta == 0.0 and result.p_value == 1.0


def test_permutation_is_antisymmetric() -> None:
    y, a, b, clusters = data(4)
    ab = ce.paired_permutation_test(ce.auprc_score, y, a, b, clusters=clusters, n_perm=400)
    ba = ce.paired_permutation_test(ce.auprc_score, y, b, a, clusters=clusters, n_perm=400)
    assert ab.delta == pytest.approx(-ba.delta, abs=ATOL)
    assert ab.p_value == ba.p_value
    assert ab.delta == pytest.approx(
        skm.average_precision_score(y, a) - skm.average_precision_score(y, b), abs=ATOL
    )


def test_permutation_kernel_equals_materialized_swaps() -> None:
    y, a, b, clusters = data(5, n=120)
    fast = ce.paired_permutation_test(ce.auroc_score, y, a, b, clusters=clusters, n_perm=50, random_state=3)
    slow = ce.paired_permutation_test(slow_auroc, y, a, b, clusters=clusters, n_perm=50, random_state=3)
    np.testing.assert_allclose(fast.permuted, slow.permuted, rtol=0, atol=ATOL)
    assert fast.p_value == slow.p_value


def test_permutation_enumerates_small_cluster_sets_exactly() -> None:
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    a = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.6, 0.4])
    b = np.array([0.5, 0.4, 0.6, 0.3, 0.5, 0.5, 0.4, 0.6])
    patients = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    result = ce.paired_permutation_test(ce.auroc_score, y, a, b, clusters=patients, n_perm=1000)
    assert result.exact and result.permuted.size == 16
    assert result.p_value == pytest.approx(np.mean(np.abs(result.permuted) >= abs(result.delta) - 1e-12))


def test_permutation_threshold_metric_fast_path() -> None:
    y, a, b, clusters = data(6)
    pred_a, pred_b = (a >= 0.5).astype(int), (b >= 0.5).astype(int)
    fast = ce.paired_permutation_test(ce.sensitivity_score, y, pred_a, pred_b, clusters=clusters, n_perm=40)

    def slow_tpr(y_true: np.ndarray, pred: np.ndarray) -> float:
        return float(skm.recall_score(y_true, pred))

    slow = ce.paired_permutation_test(slow_tpr, y, pred_a, pred_b, clusters=clusters, n_perm=40)
    np.testing.assert_allclose(fast.permuted, slow.permuted, rtol=0, atol=ATOL)


@pytest.mark.slow
def test_permutation_p_is_uniform_under_planted_null() -> None:
    from scipy import stats

    p_values = []
    for seed in range(120):
        rng = np.random.default_rng(1000 + seed)
        y = (rng.random(80) < 0.4).astype(int)
        a = np.clip(0.2 * y + 0.8 * rng.random(80), 0, 1)
        b = np.clip(0.2 * y + 0.8 * rng.random(80), 0, 1)
        p_values.append(
            ce.paired_permutation_test(ce.auroc_score, y, a, b, n_perm=199, random_state=seed).p_value
        )
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
