"""Paired comparison speed (eval.md §3.3): `compare` with its defaults on 10,000 samples, binary task.

carebench-eval's `compare()` (10,000 cluster permutations + 1,000 paired cluster-bootstrap replicates of
Δ AUROC and Δ AUPRC) against a straightforward scikit-learn loop in the same run: per permutation,
materialize both models' swapped score vectors and call `roc_auc_score` and `average_precision_score`
on each; per bootstrap replicate, materialize the resample for both models. The loop is timed on 100
permutations and 20 replicates and scaled linearly (x100, x50).

    pytest benchmarks/bench_eval_compare.py --benchmark-enable -s

Target: carebench under 10 s wall on 2 CPU cores.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score

import carebench_eval as ce
from carebench_eval.resampling import bootstrap_counts, cluster_universe, permutation_flips
from carebench_eval.weighted import Scored

N_SAMPLES = 10_000
N_PERM = 10_000
N_BOOT = 1_000
REFERENCE_PERMUTATIONS = 100
REFERENCE_REPLICATES = 20
METRICS = ("auroc_score", "auprc_score")


def make_pair(seed: int = 0) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """Two models' validated predictions of one binary task: 10,000 stays of ~7,000 patients, 12 % positive."""
    rng = np.random.default_rng(seed)
    subjects = np.sort(rng.integers(0, 7_000, N_SAMPLES))
    y = (rng.random(N_SAMPLES) < 0.12).astype(np.int8)
    risk = 1.1 * (2 * y - 1)
    a = np.round(1 / (1 + np.exp(-(risk + rng.normal(size=N_SAMPLES) - 1.5))), 4)
    b = np.round(1 / (1 + np.exp(-(0.9 * risk + rng.normal(size=N_SAMPLES) - 1.5))), 4)
    frames = [
        ce.from_arrays(
            y,
            scores,
            task="mortality",
            kind="binary",
            targets=["mortality"],
            sample_id=np.arange(N_SAMPLES),
            subject_id=subjects,
            model=name,
        )
        for name, scores in (("a", a), ("b", b))
    ]
    return pl.concat(frames), {"y": y, "a": a, "b": b, "subjects": subjects.astype(str)}


def carebench_compare(frame: pl.DataFrame) -> pl.DataFrame:
    return ce.compare((frame, "a"), (frame, "b"), metrics=list(METRICS), n_perm=N_PERM, n_boot=N_BOOT)


def _deltas(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return (
        roc_auc_score(y, a) - roc_auc_score(y, b),
        average_precision_score(y, a) - average_precision_score(y, b),
    )


def reference_permutations(arrays: dict[str, np.ndarray], n_perm: int) -> np.ndarray:
    """The scikit-learn loop on the first `n_perm` swap patterns: ``[n_perm, 2]`` Δ AUROC, Δ AUPRC."""
    universe, (column_of,) = cluster_universe(arrays["subjects"])
    flips = permutation_flips(universe.size, 0, n_perm, random_state=0)
    out = np.empty((n_perm, 2))
    for row in range(n_perm):
        swap = flips[row, column_of].astype(bool)
        out[row] = _deltas(
            arrays["y"], np.where(swap, arrays["b"], arrays["a"]), np.where(swap, arrays["a"], arrays["b"])
        )
    return out


def reference_bootstrap(arrays: dict[str, np.ndarray], n_boot: int) -> np.ndarray:
    """The scikit-learn loop on the first `n_boot` cluster resamples: ``[n_boot, 2]`` Δ AUROC, Δ AUPRC."""
    universe, (column_of,) = cluster_universe(arrays["subjects"])
    counts = bootstrap_counts(universe.size, 0, n_boot, random_state=0)
    out = np.empty((n_boot, 2))
    for replicate in range(n_boot):
        rows = np.repeat(np.arange(N_SAMPLES), counts[replicate, column_of])
        out[replicate] = _deltas(arrays["y"][rows], arrays["a"][rows], arrays["b"][rows])
    return out


def carebench_permutations(arrays: dict[str, np.ndarray], n_perm: int) -> np.ndarray:
    """carebench's permutation kernel (pooled scores sorted once, complement pass) on the same swaps."""
    universe, (column_of,) = cluster_universe(arrays["subjects"])
    m = universe.size
    y = arrays["y"][:, None]
    cell = Scored(
        "binary",
        ("mortality",),
        np.concatenate([y, y]),
        np.concatenate([arrays["a"], arrays["b"]])[:, None],
        np.zeros((2 * N_SAMPLES, 1), dtype=np.int8),
        np.concatenate([column_of, column_of + m]),
        [(metric, "mortality") for metric in METRICS],
    )
    flips = permutation_flips(m, 0, n_perm, random_state=0)
    swapped_a, swapped_b = cell.evaluate_complement(
        np.concatenate([1 - flips, flips], axis=1).astype(np.int8)
    )
    return np.column_stack(
        [swapped_a[metric, "mortality"] - swapped_b[metric, "mortality"] for metric in METRICS]
    )


def test_compare_speed_against_sklearn_loop(benchmark) -> None:  # type: ignore[no-untyped-def]
    frame, arrays = make_pair()
    started, cpu_started = time.perf_counter(), time.process_time()
    table = benchmark.pedantic(carebench_compare, args=(frame,), rounds=1, iterations=1)
    carebench_seconds = time.perf_counter() - started
    carebench_cpu = time.process_time() - cpu_started

    started, cpu_started = time.perf_counter(), time.process_time()
    permuted = reference_permutations(arrays, REFERENCE_PERMUTATIONS)
    permutation_scale = N_PERM / REFERENCE_PERMUTATIONS
    permutation_seconds = (time.perf_counter() - started) * permutation_scale
    permutation_cpu = (time.process_time() - cpu_started) * permutation_scale
    started, cpu_started = time.perf_counter(), time.process_time()
    boot = reference_bootstrap(arrays, REFERENCE_REPLICATES)
    boot_scale = N_BOOT / REFERENCE_REPLICATES
    boot_seconds = (time.perf_counter() - started) * boot_scale
    boot_cpu = (time.process_time() - cpu_started) * boot_scale
    reference_seconds = permutation_seconds + boot_seconds
    reference_cpu = permutation_cpu + boot_cpu

    # Same estimates, same swaps: carebench's Δ and its permutation kernel equal the loop's values.
    observed = _deltas(arrays["y"], arrays["a"], arrays["b"])
    values = dict(zip(table["metric"], table["value"], strict=True))
    assert abs(values["auroc_score"] - observed[0]) <= 1e-12
    assert abs(values["auprc_score"] - observed[1]) <= 1e-12
    np.testing.assert_allclose(
        carebench_permutations(arrays, REFERENCE_PERMUTATIONS), permuted, rtol=0, atol=1e-12
    )
    assert boot.shape == (REFERENCE_REPLICATES, 2)

    ratio = reference_seconds / carebench_seconds
    print(
        f"\ncompare(), {N_PERM} permutations + {N_BOOT} bootstrap replicates, {N_SAMPLES} samples, "
        "Δ AUROC + Δ AUPRC:\n"
        f"  carebench-eval compare(): {carebench_seconds:.2f} s wall, {carebench_cpu:.2f} s CPU\n"
        f"  scikit-learn loop: {reference_seconds:.0f} s wall, {reference_cpu:.0f} s CPU (permutations measured on "
        f"{REFERENCE_PERMUTATIONS}, scaled x{permutation_scale:.0f}; bootstrap on {REFERENCE_REPLICATES}, "
        f"scaled x{boot_scale:.0f})\n"
        f"  speed-up: {ratio:.0f}x wall, {reference_cpu / carebench_cpu:.0f}x CPU (target: carebench < 10 s)"
    )
    benchmark.extra_info.update(
        {
            "carebench_seconds": carebench_seconds,
            "carebench_cpu_seconds": carebench_cpu,
            "sklearn_loop_seconds_extrapolated": reference_seconds,
            "sklearn_loop_cpu_seconds_extrapolated": reference_cpu,
            "ratio": ratio,
        }
    )
