"""Weighted confusion/calibration counts (`_kernels.weighted_bincount`): float64 BLAS product vs integer matmul.

The bootstrap and permutation statistics count, per replicate row of integer cluster weights, how
many samples fall in each (label, calibration bin) cell: ``weights [b, clusters] @ per_cluster
[clusters, codes]``. numpy has no BLAS path for integer matrices, so the kernel multiplies in float64
(exact below 2**53) and rounds back. Same run, same inputs: the kernel against the integer product it
replaced, at the shape of one report cell (200 bootstrap rows, 860 patients, 25 labels x 15 bins).

    pytest benchmarks/bench_eval_counts.py --benchmark-enable -s

Target: the kernel at least 5x faster than the integer product, with identical counts.
"""

from __future__ import annotations

import time

import numpy as np

from carebench_eval import _kernels

ROWS, CLUSTERS, SAMPLES, CODES = 200, 860, 21_500, 25 * 15


def _inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    weights = rng.poisson(1.0, size=(ROWS, CLUSTERS)).astype(np.int32)
    return weights, rng.integers(0, CODES, SAMPLES), rng.integers(0, CLUSTERS, SAMPLES)


def _integer_product(weights: np.ndarray, codes: np.ndarray, column_of: np.ndarray) -> np.ndarray:
    per_column = np.bincount(column_of * CODES + codes, minlength=CLUSTERS * CODES).reshape(CLUSTERS, CODES)
    return weights.astype(np.int64) @ per_column.astype(np.int64)


def _best_of(function, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def test_weighted_bincount_against_integer_product(benchmark) -> None:
    weights, codes, column_of = _inputs()
    expected = _integer_product(weights, codes, column_of)
    counts = benchmark(_kernels.weighted_bincount, codes, CODES, weights, column_of)
    assert np.array_equal(counts, expected)
    kernel = _best_of(lambda: _kernels.weighted_bincount(codes, CODES, weights, column_of))
    reference = _best_of(lambda: _integer_product(weights, codes, column_of))
    print(
        f"\nweighted_bincount {kernel * 1e3:.2f} ms, integer product {reference * 1e3:.2f} ms: {reference / kernel:.1f}x"
    )
    assert reference / kernel >= 5.0
