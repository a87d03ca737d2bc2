"""Kernel values on weight rows equal scikit-learn on materialized resamples (eval.md §3.3)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from carebench_eval import _kernels
from carebench_eval.metrics.core import BinaryEvaluator, MulticlassEvaluator
from carebench_eval.resampling import bootstrap_counts, cluster_universe

ATOL = 1e-12


def test_rank_kernel_on_cluster_bootstrap_replicates() -> None:
    rng = np.random.default_rng(0)
    n = 400
    clusters = rng.integers(0, 250, n).astype(str)
    y = (rng.random(n) < 0.2).astype(int)
    s = np.round(rng.random(n), 2)
    universe, (column_of,) = cluster_universe(clusters)
    counts = bootstrap_counts(universe.size, 0, 25, random_state=3)
    auroc, auprc = _kernels.rank_metrics(_kernels.rank_index(y, s), counts, column_of)
    for row in range(counts.shape[0]):
        rows = np.repeat(np.arange(n), counts[row, column_of])
        assert abs(auroc[row] - skm.roc_auc_score(y[rows], s[rows])) <= ATOL
        assert abs(auprc[row] - skm.average_precision_score(y[rows], s[rows])) <= ATOL


def test_rank_kernel_on_paired_permutation_swaps() -> None:
    """Concatenated (A; B) sorted once; flip weights reproduce the swapped score vectors."""
    rng = np.random.default_rng(1)
    n = 300
    y = (rng.random(n) < 0.3).astype(int)
    a = np.round(rng.random(n), 2)
    b = np.round(np.clip(a + rng.normal(scale=0.2, size=n), 0, 1), 2)
    index = _kernels.rank_index(np.concatenate([y, y]), np.concatenate([a, b]))
    flips = rng.integers(0, 2, (20, n))
    weights = np.concatenate([1 - flips, flips], axis=1)
    auroc, auprc = _kernels.rank_metrics(index, weights)
    for row in range(flips.shape[0]):
        swapped = np.where(flips[row] == 1, b, a)
        assert abs(auroc[row] - skm.roc_auc_score(y, swapped)) <= ATOL
        assert abs(auprc[row] - skm.average_precision_score(y, swapped)) <= ATOL


def test_binary_evaluator_replicates_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    n, labels = 250, 3
    y = (rng.random((n, labels)) < [0.1, 0.3, 0.5]).astype(np.int8)
    s = np.round(rng.random((n, labels)), 3)
    pred = s >= 0.5
    metrics = ("auroc_score", "auprc_score", "brier_loss", "sensitivity_score", "ppv_score", "f1_score")
    evaluator = BinaryEvaluator(y, s, pred, metrics=metrics)
    counts = bootstrap_counts(n, 0, 10, random_state=0)
    values = evaluator.values(counts)
    references = {
        "auroc_score": skm.roc_auc_score,
        "auprc_score": skm.average_precision_score,
        "brier_loss": skm.brier_score_loss,
    }
    for row in range(counts.shape[0]):
        rows = np.repeat(np.arange(n), counts[row])
        for label in range(labels):
            yy, ss, pp = y[rows, label], s[rows, label], pred[rows, label].astype(int)
            for name, reference in references.items():
                assert abs(values[name][row, label] - reference(yy, ss)) <= ATOL
            assert abs(values["sensitivity_score"][row, label] - skm.recall_score(yy, pp)) <= ATOL
            assert (
                abs(values["ppv_score"][row, label] - skm.precision_score(yy, pp, zero_division=np.nan))
                <= ATOL
            )
            assert abs(values["f1_score"][row, label] - skm.f1_score(yy, pp)) <= ATOL


def test_multiclass_evaluator_replicates_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    n, k = 300, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metrics = ("accuracy_score", "kappa_linear_score", "brier_loss", "auroc_score")
    evaluator = MulticlassEvaluator(y, p, metrics=metrics)
    counts = bootstrap_counts(n, 0, 8, random_state=1)
    values = evaluator.values(counts)
    for row in range(counts.shape[0]):
        rows = np.repeat(np.arange(n), counts[row])
        yy, pp = y[rows], p[rows]
        pred = pp.argmax(axis=1)
        assert abs(values["accuracy_score"][row, 0] - skm.accuracy_score(yy, pred)) <= ATOL
        reference = skm.cohen_kappa_score(yy, pred, labels=list(range(k)), weights="linear")
        assert abs(values["kappa_linear_score"][row, 0] - reference) <= ATOL
        assert abs(values["brier_loss"][row, 0] - skm.brier_score_loss(yy, pp, labels=list(range(k)))) <= ATOL
        for label in range(k):
            assert (
                abs(values["auroc_score"][row, label] - skm.roc_auc_score(yy == label, pp[:, label])) <= ATOL
            )


@pytest.mark.parametrize("n", [1, 3, 1000])
def test_chunk_rows_keeps_arrays_small(n: int) -> None:
    rows = _kernels.chunk_rows(n)
    assert rows >= 1
    assert rows * n * 8 <= _kernels.CHUNK_BYTES or rows == 1


def test_compact_weights_never_changes_results() -> None:
    rng = np.random.default_rng(4)
    n = 500
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(rng.random(n), 2)
    index = _kernels.rank_index(y, s)
    small = rng.integers(0, 5, (6, n))
    assert _kernels.compact_weights(small, n).dtype == np.int32
    wide = _kernels.rank_metrics(index, small)
    narrow = _kernels.rank_metrics(index, _kernels.compact_weights(small, n))
    np.testing.assert_array_equal(wide[0], narrow[0])
    np.testing.assert_array_equal(wide[1], narrow[1])
    huge = small * 100_000
    assert _kernels.compact_weights(huge, n).dtype == np.int64
    assert _kernels.compact_weights(small.astype(float), n).dtype == np.float64


def test_complement_kernel_is_bit_identical_to_two_direct_passes() -> None:
    """The permutation fast path: values of 0/1 weights W and of 1 − W from one shared pass."""
    rng = np.random.default_rng(7)
    n = 500
    clusters = rng.integers(0, 300, n).astype(str)
    y = (rng.random(n) < 0.25).astype(int)
    a = np.round(rng.random(n), 2)
    b = np.round(np.clip(a + rng.normal(scale=0.3, size=n), 0, 1), 2)
    universe, (column_of,) = cluster_universe(clusters)
    m = universe.size
    pooled_columns = np.concatenate([column_of, column_of + m])
    index = _kernels.rank_index(np.concatenate([y, y]), np.concatenate([a, b]))
    flips = rng.integers(0, 2, (30, m))
    weights = np.concatenate([1 - flips, flips], axis=1).astype(np.int8)
    direct, complement = _kernels.rank_metrics_complement(index, weights, pooled_columns)
    for got, expected_weights in ((direct, weights), (complement, 1 - weights)):
        expected = _kernels.rank_metrics(index, expected_weights.astype(np.int64), pooled_columns)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    # Swapped score vectors, materialized, give the same values as the complement (model B's side).
    for row in range(5):
        swap = flips[row, column_of].astype(bool)
        swapped_b = np.where(swap, a, b)
        assert abs(complement[0][row] - skm.roc_auc_score(y, swapped_b)) <= ATOL
        assert abs(complement[1][row] - skm.average_precision_score(y, swapped_b)) <= ATOL

    labels = (rng.random((2 * n, 3)) < 0.3).astype(int)
    scores = np.round(rng.random((2 * n, 3)), 2)
    evaluator = BinaryEvaluator(
        labels,
        scores,
        scores >= 0.5,
        metrics=("auroc_score", "auprc_score", "sensitivity_score", "expected_calibration_error"),
        column_of=pooled_columns,
    )
    for evaluated in (evaluator, evaluator.micro()):
        values, values_complement = evaluated.complement_values(weights)
        for name, expected in evaluated.values(weights.astype(np.int64)).items():
            np.testing.assert_array_equal(values[name], expected)
        for name, expected in evaluated.values(1 - weights.astype(np.int64)).items():
            np.testing.assert_array_equal(values_complement[name], expected)


def test_weighted_bincount_counts_exactly_through_the_float_product() -> None:
    rng = np.random.default_rng(5)
    n, n_columns, n_codes = 3000, 700, 40
    codes = rng.integers(0, n_codes, n)
    column_of = rng.integers(0, n_columns, n)
    weights = rng.poisson(2.0, size=(60, n_columns)).astype(np.int32)
    counts = _kernels.weighted_bincount(codes, n_codes, weights, column_of)
    per_column = np.zeros((n_columns, n_codes), dtype=np.int64)
    np.add.at(per_column, (column_of, codes), 1)
    assert counts.dtype == np.int64
    assert np.array_equal(counts, weights.astype(np.int64) @ per_column)
    values = rng.random(n)
    sums = _kernels.weighted_bincount(codes, n_codes, weights, column_of, values=values)
    per_value = np.zeros((n_columns, n_codes))
    np.add.at(per_value, (column_of, codes), values)
    assert np.allclose(sums, weights @ per_value, rtol=0, atol=1e-9)
