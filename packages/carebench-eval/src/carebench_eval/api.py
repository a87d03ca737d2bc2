"""`score`: every metric of every run and task, with clustered bootstrap CIs (eval.md §4, §8.3).

Each (run, task) becomes aligned arrays sorted by ``sample_id`` (`carebench_eval.runs.split_runs`, so row
order never matters); its cells are evaluated by `carebench_eval.weighted.Scored` (the same batched
evaluators `compare`, `fairness` and `robustness` use) for one row of ones (the point estimate) and for
chunks of bootstrap replicates, and the results come back in the tidy schema of §8.1.
Runs that differ only in the aggregated keys (default: seeds and folds) also get ``mean`` (with a joint
bootstrap CI over the union of their clusters), ``seed_sd`` and ``fold_sd`` rows; the SDs are model
variability and are never folded into a CI.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from carebench_eval.errors import join_notes, warn_undefined
from carebench_eval.io import RUN_KEYS, frame_info, read_predictions, validate
from carebench_eval.metrics.core import (
    BINARY_METRICS,
    LABEL_METRICS,
    MULTICLASS_METRICS,
    MULTICLASS_SCALARS,
)
from carebench_eval.metrics.threshold import Fixed, FromValidation, ThresholdPolicy, TopK
from carebench_eval.registry import default_metrics, metric_spec
from carebench_eval.resampling import (
    bca_interval,
    bootstrap_counts,
    check_interval,
    chunks,
    cluster_universe,
    percentile_interval,
)
from carebench_eval.runs import (
    TaskRun,
    predictions_at,
    run_thresholds,
    split_runs,
    threshold_rows,
    validation_runs,
)
from carebench_eval.schema import make_rows, remember
from carebench_eval.weighted import Scored

__all__ = ["RunScorer", "score"]

logger = logging.getLogger(__name__)

AVERAGES = ("macro", "weighted", "micro")
AGGREGATE_KEYS = ("seed", "fold")
Progress = Callable[[int, int], None]


class Cell(NamedTuple):
    """One output value of a run: a (metric, target) pair, target possibly an aggregate."""

    metric: str
    target: str


def run_cells(run: TaskRun, metrics: Sequence[str], averages: Sequence[str]) -> list[Cell]:
    """The cells `score` reports for a run: per target, plus the requested averages (eval.md §2.5-2.6)."""
    cells: list[Cell] = []
    per_target_averages = [average for average in averages if average in ("macro", "weighted")]
    for metric in metrics:
        if run.kind == "multiclass" and metric in MULTICLASS_SCALARS:
            cells.append(Cell(metric, "(micro)"))
            continue
        cells.extend(Cell(metric, target) for target in run.targets)
        # Averages of class prevalences are constants (1/K), so descriptive multiclass rates get none.
        if len(run.targets) > 1 and not (
            run.kind == "multiclass" and metric in ("base_rate", "positive_rate")
        ):
            cells.extend(Cell(metric, f"({average})") for average in per_target_averages)
            if run.kind == "multilabel" and "micro" in averages:
                cells.append(Cell(metric, "(micro)"))
    return cells


class RunScorer:
    """All cells `score` reports for one run, evaluated for batches of weight rows.

    Args:
        run: the run.
        metrics: metric names (already filtered to the run's kind).
        thresholds: ``[L]`` thresholds (binary/multilabel), or None without label metrics.
        column_of: ``[n]`` weight column (cluster index) of each sample.
        n_columns: number of weight columns.
        n_bins: calibration bins.
        averages: aggregate targets to add for multilabel/multiclass tasks.
    """

    def __init__(
        self,
        run: TaskRun,
        metrics: Sequence[str],
        thresholds: np.ndarray | None,
        column_of: np.ndarray,
        n_columns: int,
        *,
        n_bins: int,
        averages: Sequence[str],
    ) -> None:
        self.run = run
        self.n_columns = n_columns
        self.cells = run_cells(run, metrics, averages)
        self.scored = Scored(
            run.kind,
            run.targets,
            run.y,
            run.s,
            None if thresholds is None else predictions_at(run, thresholds),
            column_of,
            self.cells,
            n_bins=n_bins,
            undefined=None if thresholds is None else np.isnan(thresholds),
        )

    def values(self, columns: np.ndarray) -> np.ndarray:
        """``[b, len(cells)]`` values for weight rows `columns` ``[b, n_columns]``."""
        values = self.scored.evaluate(columns)
        return np.column_stack([values[cell] for cell in self.cells])

    def notes(self, cell: Cell, value: float) -> list[str]:
        """Note tokens of a point estimate (undefined reason, labels used by an average)."""
        notes = self.scored.undefined_notes(cell.metric, cell.target) if math.isnan(value) else []
        return notes + self.scored.labels_used(*cell)


def _replicates(
    scorers: Sequence[RunScorer], n_columns: int, *, n_boot: int, random_state: int, n_jobs: int
) -> list[np.ndarray]:
    """Bootstrap replicate values ``[B, cells]`` of each scorer, all on the same cluster resamples."""
    out = [np.empty((n_boot, len(scorer.cells))) for scorer in scorers]
    largest = max(scorer.run.n for scorer in scorers)
    spans = list(chunks(n_boot, max(largest, n_columns)))

    def work(span: tuple[int, int]) -> None:
        start, stop = span
        counts = bootstrap_counts(n_columns, start, stop, random_state)
        for scorer, values in zip(scorers, out, strict=True):
            values[start:stop] = scorer.values(counts)

    if n_jobs > 1 and len(spans) > 1:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            list(pool.map(work, spans))
    else:
        for span in spans:
            work(span)
    return out


def _interval(
    replicates: np.ndarray,
    value: float,
    *,
    ci: str,
    level: float,
    jackknife: np.ndarray | None,
) -> tuple[float, float, list[str]]:
    if ci == "bca" and jackknife is not None:
        return bca_interval(replicates, value, jackknife, level)
    return percentile_interval(replicates, level)


def _jackknife(scorer: RunScorer, n_columns: int) -> np.ndarray:
    """Leave-one-cluster-out values ``[m, cells]`` through 0/1 masks."""
    out = np.empty((n_columns, len(scorer.cells)))
    for start, stop in chunks(n_columns, max(scorer.run.n, n_columns)):
        masks = np.ones((stop - start, n_columns), dtype=np.int64)
        masks[np.arange(stop - start), np.arange(start, stop)] = 0
        out[start:stop] = scorer.values(masks)
    return out


def _resolve_metrics(metrics: Sequence[str] | None, kind: str) -> tuple[str, ...]:
    """The metrics `score` computes for a kind: the defaults, or the requested ones that apply to it."""
    if metrics is None:
        return default_metrics(kind)
    computable = set(BINARY_METRICS) | set(MULTICLASS_METRICS)
    for name in metrics:
        metric_spec(name)
        if name not in computable:
            raise ValueError(f"score cannot compute {name!r}; it computes: {', '.join(sorted(computable))}")
    valid = MULTICLASS_METRICS if kind == "multiclass" else BINARY_METRICS
    return tuple(dict.fromkeys(name for name in metrics if name in valid))


def _group_key(run: TaskRun, aggregate: Sequence[str]) -> tuple[Any, ...]:
    kept = tuple((key, None if key in aggregate else run.keys[key]) for key in RUN_KEYS)
    return (*kept, ("task", run.task))


def _seed_fold_sd(runs: Sequence[TaskRun], values: np.ndarray) -> tuple[float, float | None, list[str]]:
    """``seed_sd`` (RMS over folds of the within-fold seed SD) and ``fold_sd`` (SD of fold means)."""
    folds: dict[Any, list[float]] = {}
    for run, value in zip(runs, values, strict=True):
        folds.setdefault(run.keys["fold"], []).append(float(value))
    variances = [np.var(seeds, ddof=1) for seeds in folds.values() if len(seeds) > 1]
    notes = [] if variances else ["single_seed"]
    seed_sd = float(np.sqrt(np.mean(variances))) if variances else math.nan
    fold_means = [float(np.mean(seeds)) for seeds in folds.values()]
    fold_sd = float(np.std(fold_means, ddof=1)) if len(fold_means) > 1 else None
    return seed_sd, fold_sd, notes


def score(
    preds: Any,
    *,
    metrics: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
    classes: Mapping[str, Sequence[str]] | None = None,
    threshold: ThresholdPolicy | None = None,
    n_bins: int = 10,
    n_boot: int = 1000,
    ci: str = "percentile",
    level: float = 0.95,
    cluster: str | None = "subject_id",
    aggregate: Sequence[str] = AGGREGATE_KEYS,
    random_state: int = 0,
    n_jobs: int = 1,
    averages: Sequence[str] = AVERAGES,
    progress: Progress | None = None,
) -> pl.DataFrame:
    """Every metric of every run and task, with patient-clustered bootstrap CIs (eval.md §4, §8.3).

    Args:
        preds: predictions: a frame, a ``LazyFrame``, a path, a list or a glob (validated, §1.3).
        metrics: registry names; None = the kind's defaults (§2.2, §2.6). Names that do not apply to a
            task's kind are skipped for that task.
        kinds: task -> kind overrides.
        classes: task -> class order (multiclass).
        threshold: `Fixed` (default ``Fixed(0.5)``), `FromValidation` or `TopK` for label metrics.
        n_bins: calibration bins.
        n_boot: bootstrap replicates ``B`` (0 = no CI).
        ci: ``"percentile"`` or ``"bca"``.
        level: confidence level.
        cluster: cluster column (patients); None or absent → row bootstrap (note ``row_bootstrap``).
        aggregate: run keys to aggregate over (``mean``, ``seed_sd``, ``fold_sd`` rows); ``()`` for none.
        random_state: seed of the bootstrap stream.
        n_jobs: threads over replicate chunks (results never depend on it).
        averages: aggregate targets of multilabel/multiclass tasks: ``macro``, ``weighted``, ``micro``.
        progress: ``progress(done, total)`` callback over (model, setting, task) groups of runs.

    Returns:
        The tidy result frame of §8.1.

    Example:
        >>> from carebench_eval.testing import synthetic_predictions
        >>> preds = synthetic_predictions(n_samples=60, tasks=("mortality",), models=("a",), seed=1)
        >>> table = score(preds, metrics=["auroc_score"], n_boot=50)
        >>> table.select("model", "metric", "target").row(0)
        ('a', 'auroc_score', 'mortality')
    """
    policy = Fixed(0.5) if threshold is None else threshold
    if not isinstance(policy, Fixed | FromValidation | TopK):
        raise ValueError("threshold must be Fixed(...), FromValidation(...) or TopK(...)")
    check_interval(ci, level)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    unknown = [key for key in aggregate if key not in AGGREGATE_KEYS]
    if unknown:
        raise ValueError(f"aggregate must name 'seed' and/or 'fold'; got {unknown}")
    unknown = [average for average in averages if average not in AVERAGES]
    if unknown:
        raise ValueError(f"averages must be among {', '.join(AVERAGES)}; got {unknown}")
    if isinstance(preds, pl.DataFrame):
        info = frame_info(preds)
        frame = validate(preds, kinds=kinds, classes=classes)
    else:
        frame = read_predictions(preds, kinds=kinds, classes=classes)
        info = frame_info(frame)
    frame_notes = list(info.get("notes", []))
    wanted = set(metrics or ())
    ordinal = {"kappa_linear_score", "kappa_quadratic_score"}
    ordinal_tasks = list(frame["task"].unique()) if (metrics is None or wanted & ordinal) else []
    runs = split_runs(frame, kinds=kinds, classes=classes, cluster=cluster, ordinal_tasks=ordinal_tasks)
    validation = validation_runs(policy, kinds=kinds, classes=classes)
    clustered = cluster is not None and cluster in frame.columns
    base_notes = frame_notes + ([] if clustered else ["row_bootstrap"] if n_boot else [])

    groups: dict[tuple[Any, ...], list[TaskRun]] = {}
    for run in runs:
        groups.setdefault(_group_key(run, aggregate), []).append(run)
    total_steps = len(groups)
    rows: list[dict[str, Any]] = []
    undefined: dict[tuple[str, str], list[tuple[str, int]]] = {}

    for step, group in enumerate(groups.values(), start=1):
        group_metrics = _resolve_metrics(metrics, group[0].kind)
        if progress is not None:
            progress(step - 1, total_steps)
        if not group_metrics:
            continue
        needs_threshold = group[0].kind != "multiclass" and any(
            name in LABEL_METRICS and name != "base_rate" for name in group_metrics
        )
        run_scorers: list[RunScorer] = []
        thresholds_of: list[np.ndarray | None] = []
        for run in group:
            thresholds = run_thresholds(run, policy, validation) if needs_threshold else None
            thresholds_of.append(thresholds)
            universe, (column_of,) = cluster_universe(run.cluster)
            run_scorers.append(
                RunScorer(
                    run, group_metrics, thresholds, column_of, universe.size, n_bins=n_bins, averages=averages
                )
            )
        point_values = [
            scorer.values(np.ones((1, scorer.n_columns), dtype=np.int64))[0] for scorer in run_scorers
        ]
        replicate_values: list[np.ndarray | None] = [None] * len(group)
        jackknife_values: list[np.ndarray | None] = [None] * len(group)
        if n_boot:
            for position, scorer in enumerate(run_scorers):
                (replicate_values[position],) = _replicates(
                    [scorer], scorer.n_columns, n_boot=n_boot, random_state=random_state, n_jobs=n_jobs
                )
                if ci == "bca":
                    jackknife_values[position] = _jackknife(scorer, scorer.n_columns)

        for run, scorer, values, replicates, jackknife, thresholds in zip(
            group, run_scorers, point_values, replicate_values, jackknife_values, thresholds_of, strict=True
        ):
            keys = {
                "model": run.keys["model"],
                "seed": run.keys["seed"],
                "fold": run.keys["fold"],
                "setting": run.keys["setting"],
            }
            for position, cell in enumerate(scorer.cells):
                value = float(values[position])
                notes = [*base_notes, *scorer.notes(cell, value)]
                low = high = None
                if replicates is not None:
                    low, high, ci_notes = _interval(
                        replicates[:, position],
                        value,
                        ci=ci,
                        level=level,
                        jackknife=None if jackknife is None else jackknife[:, position],
                    )
                    notes.extend(ci_notes)
                if math.isnan(value):
                    undefined.setdefault((cell.metric, notes[len(base_notes)]), []).append(
                        (f", e.g. task {run.task!r}, target {cell.target!r}", run.n)
                    )
                rows.append(
                    {
                        **keys,
                        "task": run.task,
                        "metric": cell.metric,
                        "statistic": "estimate",
                        "target": cell.target,
                        "value": value,
                        "ci_low": low,
                        "ci_high": high,
                        "n": run.n,
                        "n_runs": 1,
                        "notes": join_notes(notes),
                    }
                )
            if thresholds is not None:
                rows.extend(threshold_rows(policy, run, thresholds, {**keys, "task": run.task}))

        if len(group) > 1:
            rows.extend(
                _aggregate_rows(
                    group,
                    run_scorers,
                    thresholds_of,
                    point_values,
                    replicate_values,
                    aggregate=aggregate,
                    n_bins=n_bins,
                    averages=averages,
                    group_metrics=group_metrics,
                    n_boot=n_boot,
                    ci=ci,
                    level=level,
                    random_state=random_state,
                    n_jobs=n_jobs,
                    base_notes=base_notes,
                )
            )

    if progress is not None:
        progress(total_steps, total_steps)
    for (metric, note), examples in undefined.items():
        example, n = examples[0]
        warn_undefined(metric, note, cells=len(examples), example=example, n=n, stacklevel=2)
    provenance = {
        "function": "score",
        "arguments": {
            "metrics": None if metrics is None else list(metrics),
            "kinds": dict(kinds or {}),
            "classes": {task: list(names) for task, names in (classes or {}).items()},
            "threshold": policy.note,
            "n_bins": n_bins,
            "n_boot": n_boot,
            "ci": ci,
            "level": level,
            "cluster": cluster if clustered else None,
            "aggregate": list(aggregate),
            "random_state": random_state,
            "averages": list(averages),
        },
        "inputs": info.get("inputs", []),
        "tasks": {run.task: {"kind": run.kind, "targets": list(run.targets)} for run in runs},
    }
    return remember(make_rows(rows), provenance)


def _aggregate_rows(
    group: Sequence[TaskRun],
    run_scorers: Sequence[RunScorer],
    thresholds_of: Sequence[np.ndarray | None],
    point_values: Sequence[np.ndarray],
    run_replicates: Sequence[np.ndarray | None],
    *,
    aggregate: Sequence[str],
    n_bins: int,
    averages: Sequence[str],
    group_metrics: Sequence[str],
    n_boot: int,
    ci: str,
    level: float,
    random_state: int,
    n_jobs: int,
    base_notes: Sequence[str],
) -> list[dict[str, Any]]:
    """``mean`` (joint bootstrap CI over the union of the runs' clusters), ``seed_sd``, ``fold_sd`` rows."""
    first = group[0]
    cells = run_scorers[0].cells
    if any(scorer.cells != cells for scorer in run_scorers):
        raise ValueError(
            f"task {first.task!r}: runs aggregated over {list(aggregate)} have different targets; "
            "score them separately (aggregate=())"
        )
    universe, column_ofs = cluster_universe(*(run.cluster for run in group))
    point = np.vstack(point_values)
    mean_point = point.mean(axis=0)
    replicates = None
    shared_universe = all(np.array_equal(np.unique(run.cluster), universe) for run in group)
    if n_boot and shared_universe and all(values is not None for values in run_replicates):
        # Every run resampled the same cluster universe, so the joint replicates are already computed.
        replicates = np.mean(np.stack([values for values in run_replicates if values is not None]), axis=0)
    elif n_boot:
        joint = [
            RunScorer(
                run, group_metrics, thresholds, column_of, universe.size, n_bins=n_bins, averages=averages
            )
            for run, thresholds, column_of in zip(group, thresholds_of, column_ofs, strict=True)
        ]
        per_run = _replicates(joint, universe.size, n_boot=n_boot, random_state=random_state, n_jobs=n_jobs)
        replicates = np.mean(np.stack(per_run), axis=0)
    keys = {
        "model": first.keys["model"],
        "seed": None if "seed" in aggregate else first.keys["seed"],
        "fold": None if "fold" in aggregate else first.keys["fold"],
        "setting": first.keys["setting"],
    }
    n_samples = int(np.unique(np.concatenate([run.sample_id for run in group])).size)
    rows: list[dict[str, Any]] = []
    for position, cell in enumerate(cells):
        value = float(mean_point[position])
        notes = [*base_notes]
        if math.isnan(value):
            notes.extend(
                note
                for scorer, run_value in zip(run_scorers, point[:, position], strict=True)
                if math.isnan(run_value)
                for note in scorer.scored.undefined_notes(cell.metric, cell.target)
            )
        low = high = None
        if replicates is not None:
            low, high, ci_notes = percentile_interval(replicates[:, position], level)
            notes.extend(ci_notes)
        common = {
            **keys,
            "task": first.task,
            "metric": cell.metric,
            "target": cell.target,
            "n": n_samples,
            "n_runs": len(group),
        }
        rows.append(
            {
                **common,
                "statistic": "mean",
                "value": value,
                "ci_low": low,
                "ci_high": high,
                "notes": join_notes(notes),
            }
        )
        seed_sd, fold_sd, sd_notes = _seed_fold_sd(group, point[:, position])
        if "seed" in aggregate:
            rows.append({**common, "statistic": "seed_sd", "value": seed_sd, "notes": join_notes(sd_notes)})
        if "fold" in aggregate and fold_sd is not None:
            rows.append({**common, "statistic": "fold_sd", "value": fold_sd})
    return rows
