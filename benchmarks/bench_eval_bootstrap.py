"""Bootstrap speed (eval.md §3.3): 1,000-replicate clustered CIs of macro AUROC + AUPRC, 10,000 × 25 labels.

carebench-eval's `score()` on a validated in-memory frame against a straightforward scikit-learn loop
(per replicate: materialize the resample, call `roc_auc_score` and `average_precision_score` per label),
in the same run. The loop is timed on 20 replicates and scaled linearly to 1,000 (×50).

    pytest benchmarks/bench_eval_bootstrap.py --benchmark-enable -s

Targets: ≥ 20× faster than the loop and under 10 s wall on 2 CPU cores.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score

import carebench_eval as ce
from carebench_eval.resampling import bootstrap_counts, cluster_universe

N_SAMPLES = 10_000
N_LABELS = 25
N_BOOT = 1_000
REFERENCE_REPLICATES = 20


def make_predictions(seed: int = 0) -> pl.DataFrame:
    """A validated multilabel task: 10,000 stays of ~8,000 patients, 25 labels, prevalence 2-40 %."""
    rng = np.random.default_rng(seed)
    subjects = np.sort(rng.integers(0, 8_000, N_SAMPLES))
    prevalence = np.linspace(0.02, 0.4, N_LABELS)
    y = (rng.random((N_SAMPLES, N_LABELS)) < prevalence).astype(np.int8)
    s = np.round(1 / (1 + np.exp(-(1.2 * y + rng.normal(size=y.shape) - 1.0))), 4)
    labels = [f"label_{j:02d}" for j in range(N_LABELS)]
    frame = pl.DataFrame(
        {
            "sample_id": np.repeat(np.arange(N_SAMPLES), N_LABELS),
            "subject_id": np.repeat(subjects, N_LABELS),
            "task": "phenotype",
            "target": np.tile(labels, N_SAMPLES),
            "y_true": y.reshape(-1),
            "y_score": s.reshape(-1),
        }
    )
    return ce.validate(frame)


def carebench_cis(frame: pl.DataFrame) -> pl.DataFrame:
    return ce.score(
        frame,
        metrics=["auroc_score", "auprc_score"],
        n_boot=N_BOOT,
        averages=("macro",),
        aggregate=(),
        random_state=0,
    )


def reference_replicates(frame: pl.DataFrame, n_replicates: int) -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn loop on the same cluster resamples: ``[n_replicates]`` macro AUROC and AUPRC."""
    ordered = frame.sort("sample_id", "target")
    y = ordered["y_true"].to_numpy().reshape(N_SAMPLES, N_LABELS)
    s = ordered["y_score"].to_numpy().reshape(N_SAMPLES, N_LABELS)
    subjects = ordered["subject_id"].to_numpy()[::N_LABELS]
    universe, (column_of,) = cluster_universe(subjects.astype(str))
    counts = bootstrap_counts(universe.size, 0, n_replicates, random_state=0)
    auroc = np.empty(n_replicates)
    auprc = np.empty(n_replicates)
    for replicate in range(n_replicates):
        rows = np.repeat(np.arange(N_SAMPLES), counts[replicate, column_of])
        auroc[replicate] = np.mean([roc_auc_score(y[rows, j], s[rows, j]) for j in range(N_LABELS)])
        auprc[replicate] = np.mean([average_precision_score(y[rows, j], s[rows, j]) for j in range(N_LABELS)])
    return auroc, auprc


def macro_row(table: pl.DataFrame, metric: str) -> dict[str, float]:
    return table.filter((pl.col("metric") == metric) & (pl.col("target") == "(macro)")).row(0, named=True)


def test_bootstrap_speed_against_sklearn_loop(benchmark) -> None:  # type: ignore[no-untyped-def]
    frame = make_predictions()
    started, cpu_started = time.perf_counter(), time.process_time()
    table = benchmark.pedantic(carebench_cis, args=(frame,), rounds=1, iterations=1)
    carebench_seconds = time.perf_counter() - started
    carebench_cpu = time.process_time() - cpu_started

    started, cpu_started = time.perf_counter(), time.process_time()
    auroc, auprc = reference_replicates(frame, REFERENCE_REPLICATES)
    reference_seconds = (time.perf_counter() - started) * (N_BOOT / REFERENCE_REPLICATES)
    reference_cpu = (time.process_time() - cpu_started) * (N_BOOT / REFERENCE_REPLICATES)

    # Identical point estimates: carebench's estimate rows against scikit-learn on the full data.
    ordered = frame.sort("sample_id", "target")
    y = ordered["y_true"].to_numpy().reshape(N_SAMPLES, N_LABELS)
    s = ordered["y_score"].to_numpy().reshape(N_SAMPLES, N_LABELS)
    assert abs(macro_row(table, "auroc_score")["value"] - roc_auc_score(y, s, average="macro")) <= 1e-12
    assert (
        abs(macro_row(table, "auprc_score")["value"] - average_precision_score(y, s, average="macro"))
        <= 1e-12
    )
    # The loop's replicates are carebench's first replicates: same resamples, same values.
    from carebench_eval.api import RunScorer
    from carebench_eval.runs import split_runs

    (run,) = split_runs(frame)
    universe, (column_of,) = cluster_universe(run.cluster)
    scorer = RunScorer(
        run, ("auroc_score", "auprc_score"), None, column_of, universe.size, n_bins=10, averages=("macro",)
    )
    counts = bootstrap_counts(universe.size, 0, REFERENCE_REPLICATES, random_state=0)
    values = scorer.values(counts)
    macro = {cell.metric: index for index, cell in enumerate(scorer.cells) if cell.target == "(macro)"}
    np.testing.assert_allclose(values[:, macro["auroc_score"]], auroc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(values[:, macro["auprc_score"]], auprc, rtol=0, atol=1e-12)

    ratio = reference_seconds / carebench_seconds
    print(
        f"\nbootstrap CIs, {N_BOOT} replicates, {N_SAMPLES} samples x {N_LABELS} labels, macro AUROC + AUPRC:\n"
        f"  carebench-eval score(): {carebench_seconds:.2f} s wall, {carebench_cpu:.2f} s CPU\n"
        f"  scikit-learn loop: {reference_seconds:.1f} s wall, {reference_cpu:.1f} s CPU (measured on "
        f"{REFERENCE_REPLICATES} replicates, scaled x{N_BOOT // REFERENCE_REPLICATES})\n"
        f"  speed-up: {ratio:.1f}x wall, {reference_cpu / carebench_cpu:.1f}x CPU (target >= 20x, carebench < 10 s)"
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
