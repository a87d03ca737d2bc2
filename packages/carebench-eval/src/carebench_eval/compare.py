"""Paired model comparison: permutation test, paired bootstrap CI and DeLong test (eval.md §5).

Layers:

- array layer: :func:`delong_test` (DeLong 1988 with the midrank algorithm of Sun & Xu 2014);
- frame layer: :func:`compare` (two models, or two sets of runs, scored on the same samples) and
  :func:`compare_grid` (many models against a reference model or all pairs, with Holm/BH correction).

Runs come from :mod:`carebench_eval.runs` and are evaluated by the shared machinery of
:mod:`carebench_eval.weighted`. `robustness` imports this module, so the few places here that need its
curve helpers (and fairness's group helpers) import them inside the function.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from carebench_eval.errors import PredictionsError, join_notes, warn_undefined
from carebench_eval.io import load_predictions, same_samples_subset
from carebench_eval.metrics.core import MULTICLASS_SCALARS
from carebench_eval.metrics.threshold import Fixed, ThresholdPolicy
from carebench_eval.multiplicity import CORRECTIONS, adjust_pvalues
from carebench_eval.registry import defaults, metric_spec, primary_metric
from carebench_eval.resampling import cluster_universe
from carebench_eval.runs import TaskRun, predictions_at, run_thresholds, split_runs, validation_runs
from carebench_eval.schema import make_rows, sort_results
from carebench_eval.weighted import (
    AGGREGATE_TARGETS,
    THRESHOLD_METRICS,
    WHOLE_TASK_TARGET,
    CellGrid,
    PairedResult,
    Reducer,
    Request,
    Scored,
    label_rows,
    paired_statistics,
    reduce_estimate,
)

__all__ = ["DeLongResult", "compare", "compare_grid", "delong_test"]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# DeLong (array layer)


class DeLongResult(NamedTuple):
    """Result of :func:`delong_test`: ``delta`` = AUROC(a) − AUROC(b) with its standard error, z, p, CI."""

    delta: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based midranks of `values` ``[n]`` (tied values share the mean of their ranks)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def delong_components(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong structural components of several models' AUROC (Sun & Xu 2014 midrank algorithm).

    Args:
        y_true: ``[n]`` 0/1 labels with both classes present.
        scores: ``[r, n]`` scores of r models.

    Returns:
        ``(auroc [r], v10 [r, n1], v01 [r, n0])``: ``v10[k, i]`` is the share of negatives that
        positive ``i`` outranks (ties count half), ``v01[k, j]`` the share of positives that outrank
        negative ``j``; ``auroc = v10.mean(1) = v01.mean(1)``.
    """
    positive = np.asarray(y_true).astype(bool)
    n1 = int(positive.sum())
    n0 = positive.size - n1
    v10 = np.empty((scores.shape[0], n1))
    v01 = np.empty((scores.shape[0], n0))
    for k, score in enumerate(np.asarray(scores, dtype=np.float64)):
        x, y = score[positive], score[~positive]
        ranks_all = _midranks(np.concatenate([x, y]))
        v10[k] = (ranks_all[:n1] - _midranks(x)) / n0
        v01[k] = 1.0 - (ranks_all[n1:] - _midranks(y)) / n1
    return v10.mean(axis=1), v10, v01


def _z_score(delta: float, se: float) -> float:
    if se > 0.0:
        return delta / se
    # No variance (identical rankings): z is 0 for no difference and infinite otherwise.
    return math.copysign(math.inf, delta) if delta else 0.0


def delong_test(
    y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, level: float = 0.95
) -> DeLongResult:
    """DeLong test of two correlated AUROCs (DeLong, DeLong & Clarke-Pearson 1988; eval.md §5.3).

    ``S = S10/n1 + S01/n0`` from the 2x2 sample covariances (ddof 1) of the structural components;
    ``Var(Δ) = S_aa + S_bb − 2 S_ab``; ``z = Δ/√Var``; ``p = erfc(|z|/√2)``; CI ``Δ ± z_{1−α/2} √Var``.
    Samples are assumed independent (the frame layer notes ``delong_ignores_clusters`` otherwise).
    Identical scores give ``Δ = 0``, ``Var = 0`` and ``p = 1``.

    Args:
        y_true: ``[n]`` 0/1 labels.
        score_a: ``[n]`` scores of model a.
        score_b: ``[n]`` scores of model b.
        level: confidence level of the interval.

    Returns:
        :class:`DeLongResult`; all NaN (with an ``UndefinedMetricWarning``) when a class has fewer than
        two samples.

    Examples:
        >>> r = delong_test([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], [0.1, 0.4, 0.35, 0.8])
        >>> (r.delta, r.p_value)
        (0.0, 1.0)
    """
    y = np.asarray(y_true)
    scores = np.vstack([np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)])
    if scores.shape[1] != y.shape[0] or y.ndim != 1:
        raise ValueError(
            f"delong_test: y_true [n] and scores [n] must match, got {y.shape} and {scores.shape}"
        )
    if not 0 < level < 1:
        raise ValueError(f"delong_test: level must lie in (0, 1), got {level}")
    n1 = int(y.astype(bool).sum())
    n0 = y.size - n1
    if n1 < 2 or n0 < 2:
        warn_undefined("auroc_score", "single_class", cells=1, n=int(y.size))
        return DeLongResult(*(math.nan,) * 6)
    auroc, v10, v01 = delong_components(y, scores)
    covariance = np.cov(v10, ddof=1) / n1 + np.cov(v01, ddof=1) / n0
    delta = float(auroc[0] - auroc[1])
    variance = max(float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1]), 0.0)
    se = math.sqrt(variance)
    z = _z_score(delta, se)
    p_value = math.erfc(abs(z) / math.sqrt(2.0))
    half_width = NormalDist().inv_cdf(0.5 + level / 2.0) * se
    return DeLongResult(delta, se, z, p_value, delta - half_width, delta + half_width)


# --------------------------------------------------------------------------------------------------
# Frame layer


STATISTICS = ("estimate", "gap", "ratio", "area", "relative_area", "retention")
"""Quantities `compare` can difference (eval.md §5.1: metrics, fairness gaps, curve statistics)."""

ALIGNS = ("exact", "inner")


def comparison_metrics(task: str, kind: str, metrics: Sequence[str] | None) -> tuple[str, ...]:
    """`metrics`, or the task's primary and secondary metrics (eval.md §5.5)."""
    if metrics is not None:
        return tuple(metrics)
    primary, _ = primary_metric(task)
    bundled = defaults()["tasks"].get(task)
    secondary = tuple(bundled.get("secondary", ())) if bundled is not None else ()
    if bundled is None:
        return ("auprc_score", "auroc_score") if kind != "multiclass" else ("accuracy_score", "auroc_score")
    return tuple(dict.fromkeys((primary, *secondary)))


def _side(source: Any, role: str, kinds: Mapping[str, str] | None) -> tuple[pl.DataFrame, str]:
    name: str | None = None
    if isinstance(source, tuple):
        source, name = source
    frame = load_predictions(source, kinds=kinds)
    if name is not None:
        if "model" in frame.columns:
            frame = frame.filter(pl.col("model") == name)
            if frame.height == 0:
                raise ValueError(f"compare: model {name!r} is not in the predictions of {role}")
        return frame, name
    models = frame["model"].unique().to_list() if "model" in frame.columns else []
    if len(models) > 1:
        raise ValueError(
            f"compare: {role} holds several models {sorted(map(str, models))}; pass ({role}_frame, model_name)"
        )
    return frame, str(models[0]) if models and models[0] is not None else role


def align_pair(
    run_a: TaskRun, run_b: TaskRun, *, align: str, names: tuple[str, str]
) -> tuple[TaskRun, TaskRun]:
    """Restrict two runs to their common samples (``align="inner"``) or insist they match (P018).

    Raises:
        PredictionsError: P018 (different samples with ``align="exact"``) or P015 (y_true differs).
        ValueError: the runs have different targets.
    """
    if run_a.targets != run_b.targets:
        raise ValueError(
            f"compare: task {run_a.task!r} has targets {list(run_a.targets)} for {names[0]!r} but "
            f"{list(run_b.targets)} for {names[1]!r}"
        )
    common, rows_a, rows_b = np.intersect1d(
        run_a.sample_id, run_b.sample_id, assume_unique=True, return_indices=True
    )
    only_one = run_a.n + run_b.n - 2 * common.size
    if only_one and align == "exact":
        raise PredictionsError(
            "P018",
            f"compare: {names[0]!r} and {names[1]!r} are not scored on the same samples ({only_one} sample_id(s) "
            'in only one); pass align="inner" to use the intersection',
        )
    if only_one:
        logger.info(
            "compare: %d sample(s) scored by only one of %r, %r left out (align='inner')", only_one, *names
        )
    run_a, run_b = run_a.take(rows_a), run_b.take(rows_b)
    differs = np.flatnonzero((run_a.y != run_b.y).any(axis=1))
    if differs.size:
        first = differs[0]
        target = run_a.targets[int(np.flatnonzero(run_a.y[first] != run_b.y[first])[0])]
        raise PredictionsError(
            "P015",
            f"predictions: y_true differs between runs for {differs.size} (sample_id, target) pair(s) of task "
            f"{run_a.task!r}; first: sample_id={run_a.sample_id[first]}, target={target!r}",
        )
    return run_a, run_b


def pair_reps(
    runs_a: Sequence[TaskRun], runs_b: Sequence[TaskRun], *, names: tuple[str, str], what: str
) -> list[tuple[TaskRun, TaskRun]]:
    """Pair two sides' runs of one comparison cell by (seed, fold); one run each pairs directly."""

    def rep(run: TaskRun) -> tuple[Any, Any]:
        return run.keys["seed"], run.keys["fold"]

    by_a = {rep(run): run for run in runs_a}
    by_b = {rep(run): run for run in runs_b}
    if set(by_a) == set(by_b):
        return [
            (by_a[key], by_b[key]) for key in sorted(by_a, key=lambda key: [(v is not None, v) for v in key])
        ]
    if len(runs_a) == 1 and len(runs_b) == 1:
        return [(runs_a[0], runs_b[0])]
    raise ValueError(
        f"compare: {what}: runs (seed, fold) {sorted(map(str, by_a))} of {names[0]!r} do not match "
        f"{sorted(map(str, by_b))} of {names[1]!r}; compare one seed/fold at a time or give both the same runs"
    )


def pair_cell(
    run_a: TaskRun,
    run_b: TaskRun,
    cluster_index: np.ndarray,
    n_clusters: int,
    thresholds: tuple[np.ndarray, np.ndarray],
    requests: Sequence[Request],
    *,
    rows: np.ndarray | None = None,
    n_bins: int = 10,
) -> Scored:
    """A :class:`Scored` of A's then B's samples (optionally only `rows`), B's columns shifted by m."""
    take = np.arange(run_a.n) if rows is None else rows
    return Scored(
        run_a.kind,
        run_a.targets,
        np.concatenate([run_a.y[take], run_b.y[take]]),
        np.concatenate([run_a.s[take], run_b.s[take]]),
        np.concatenate(
            [predictions_at(run_a, thresholds[0])[take], predictions_at(run_b, thresholds[1])[take]]
        ),
        np.concatenate([cluster_index[take], cluster_index[take] + n_clusters]),
        requests,
        n_bins=n_bins,
        undefined=np.isnan(thresholds[0]) | np.isnan(thresholds[1]),
    )


@dataclass
class PairedCell:
    """One comparison: the paired runs of each rep and unit, and how to label the result rows."""

    task: str
    setting: str | None
    pairs: list[list[tuple[TaskRun, TaskRun]]]  # [rep][setting] (one setting unless a curve)
    rates: np.ndarray | None = None


def paired_cells(
    runs_a: Sequence[TaskRun],
    runs_b: Sequence[TaskRun],
    *,
    statistic: str,
    names: tuple[str, str],
    align: str,
    axis: str,
    mechanisms: Sequence[str],
    settings: Mapping[str, Any] | None,
) -> list[PairedCell]:
    cells: list[PairedCell] = []
    if statistic in ("area", "relative_area", "retention"):
        from carebench_eval.robustness import curve_families

        families_a = curve_families(runs_a, axis=axis, mechanisms=mechanisms, settings=settings)
        families_b = curve_families(runs_b, axis=axis, mechanisms=mechanisms, settings=settings)
        for key in sorted(set(families_a) & set(families_b)):
            task, family = key
            rates = sorted(set(families_a[key]) & set(families_b[key]))
            if len(rates) < 2:
                continue
            per_rate = [
                pair_reps(
                    families_a[key][rate],
                    families_b[key][rate],
                    names=names,
                    what=f"{task} {family} r={rate}",
                )
                for rate in rates
            ]
            reps = [
                [align_pair(*per_rate[k][r], align=align, names=names) for k in range(len(rates))]
                for r in range(len(per_rate[0]))
            ]
            cells.append(PairedCell(task, family, reps, np.asarray(rates, dtype=np.float64)))
        if not cells:
            raise ValueError(
                f"compare: no missing-rate curve with at least two rates is shared by {names[0]!r} and {names[1]!r}"
            )
        return cells

    def cell_key(run: TaskRun) -> tuple[str, str | None]:
        return run.task, run.keys["setting"]

    grouped_a: dict[tuple[str, str | None], list[TaskRun]] = {}
    grouped_b: dict[tuple[str, str | None], list[TaskRun]] = {}
    for run in runs_a:
        grouped_a.setdefault(cell_key(run), []).append(run)
    for run in runs_b:
        grouped_b.setdefault(cell_key(run), []).append(run)
    shared = sorted(
        set(grouped_a) & set(grouped_b), key=lambda key: (key[0], key[1] is not None, key[1] or "")
    )
    if not shared:
        if len(grouped_a) == 1 and len(grouped_b) == 1:
            shared_pairs = [(next(iter(grouped_a)), next(iter(grouped_b)))]
        else:
            raise ValueError(
                f"compare: {names[0]!r} and {names[1]!r} share no (task, setting); "
                f"{sorted(map(str, grouped_a))} vs {sorted(map(str, grouped_b))}"
            )
    else:
        shared_pairs = [(key, key) for key in shared]
        unmatched = (set(grouped_a) | set(grouped_b)) - set(shared)
        if unmatched:
            logger.info(
                "compare: (task, setting) cell(s) %s exist for one side only and are not compared",
                sorted(map(str, unmatched)),
            )
    for key_a, key_b in shared_pairs:
        reps = pair_reps(grouped_a[key_a], grouped_b[key_b], names=names, what=f"task {key_a[0]!r}")
        aligned = [[align_pair(run_a, run_b, align=align, names=names)] for run_a, run_b in reps]
        setting = key_a[1] if key_a[1] == key_b[1] else None
        cells.append(PairedCell(key_a[0], setting, aligned))
    return cells


def _reducer(statistic: str, rates: np.ndarray | None) -> Reducer:
    from carebench_eval.fairness import across_groups
    from carebench_eval.robustness import curve_area

    if statistic == "estimate":
        return reduce_estimate
    if statistic == "gap":
        return lambda values, eligible: across_groups(values, eligible, higher_is_better=None).gap
    if statistic == "ratio":
        return lambda values, eligible: across_groups(values, eligible, higher_is_better=None).ratio
    assert rates is not None
    if statistic == "area":
        return lambda values, eligible: curve_area(rates, values)
    if statistic == "relative_area":
        return lambda values, eligible: curve_area(rates, values) / values[:, 0]
    return lambda values, eligible: values[:, -1] / values[:, 0]


@dataclass(frozen=True)
class CompareOptions:
    """Resolved options of one `compare` call (shared by every comparison cell)."""

    threshold: Any
    validation: list[TaskRun]
    targets: str
    n_perm: int
    n_boot: int
    level: float
    n_bins: int
    random_state: int
    row_bootstrap: bool
    metrics: tuple[str, ...] | None = None
    statistic: str = "estimate"
    attribute: str | None = None
    delong: bool = False
    min_group_n: int = 0
    include_small: bool = True
    age_edges: tuple[float, ...] = ()

    @classmethod
    def resolve(
        cls,
        threshold: Any,
        *,
        frame: pl.DataFrame,
        cluster: str | None,
        kinds: Mapping[str, str] | None,
        classes: Any,
        metrics: Sequence[str] | None,
        **fields: Any,
    ) -> CompareOptions:
        """Options with the validation runs of `threshold` loaded and the bootstrap unit of `frame` decided."""
        return cls(
            threshold=threshold,
            validation=validation_runs(threshold, kinds=kinds, classes=classes),
            row_bootstrap=cluster is None or cluster not in frame.columns,
            metrics=None if metrics is None else tuple(metrics),
            **fields,
        )


def compare_cell(
    cell: PairedCell, names: tuple[str, str], options: CompareOptions
) -> tuple[list[dict[str, Any]], dict[Request, PairedResult], np.ndarray]:
    """Rows, per-request results and the cluster universe of one comparison cell."""
    from carebench_eval.fairness import group_labels

    first = cell.pairs[0][0][0]
    kind, targets = first.kind, first.targets
    metrics = comparison_metrics(cell.task, kind, options.metrics)
    requests = [
        (metric, target)
        for metric in metrics
        for target in label_rows(kind, metric, targets, options.targets)
    ]
    universe, _ = cluster_universe(*[run_a.cluster for rep in cell.pairs for run_a, _ in rep])
    m = universe.size
    thresholds = [
        [
            (
                run_thresholds(run_a, options.threshold, options.validation),
                run_thresholds(run_b, options.threshold, options.validation),
            )
            for run_a, run_b in rep
        ]
        for rep in cell.pairs
    ]
    rows_of_units: list[list[np.ndarray | None]] = []
    group_names: list[str] = []
    group_sizes = np.zeros(0, dtype=np.int64)
    if options.statistic in ("gap", "ratio"):
        if options.attribute is None:
            raise ValueError(f'compare: statistic="{options.statistic}" needs attribute=...')
        labels = [
            group_labels(rep[0][0], options.attribute, age_edges=options.age_edges) for rep in cell.pairs
        ]
        group_names = sorted(set.intersection(*(set(label.tolist()) for label in labels)))
        group_sizes = np.array([min(int(np.sum(label == g)) for label in labels) for g in group_names])
        rows_of_units = [[np.flatnonzero(label == g) for g in group_names] for label in labels]
    grid_cells: list[list[Scored]] = []
    for r, rep in enumerate(cell.pairs):
        if rows_of_units:
            run_a, run_b = rep[0]
            cluster_index = np.searchsorted(universe, run_a.cluster)
            grid_cells.append(
                [
                    pair_cell(
                        run_a,
                        run_b,
                        cluster_index,
                        m,
                        thresholds[r][0],
                        requests,
                        rows=rows,
                        n_bins=options.n_bins,
                    )
                    for rows in rows_of_units[r]
                ]
            )
        else:
            grid_cells.append(
                [
                    pair_cell(
                        run_a,
                        run_b,
                        np.searchsorted(universe, run_a.cluster),
                        m,
                        thresholds[r][k],
                        requests,
                        n_bins=options.n_bins,
                    )
                    for k, (run_a, run_b) in enumerate(rep)
                ]
            )
    grid = CellGrid(grid_cells)
    n_units = len(grid_cells[0])
    eligible: dict[Request, np.ndarray] = {}
    small_excluded = False
    if rows_of_units:
        ones, zeros = np.ones((1, m), dtype=np.int64), np.zeros((1, m), dtype=np.int64)
        point_a = grid.values(np.hstack([ones, zeros]))
        point_b = grid.values(np.hstack([zeros, ones]))
        large = group_sizes >= options.min_group_n
        small_excluded = not options.include_small and not bool(large.all())
        for request in requests:
            defined = np.isfinite(point_a[request][0]).all(axis=0) & np.isfinite(point_b[request][0]).all(
                axis=0
            )
            eligible[request] = defined & (large | options.include_small)
    results = paired_statistics(
        grid,
        m,
        requests,
        reducer=_reducer(options.statistic, cell.rates),
        eligible=eligible or {request: np.ones(n_units, dtype=bool) for request in requests},
        n_boot=options.n_boot,
        n_perm=options.n_perm,
        level=options.level,
        random_state=options.random_state,
    )
    single = (
        len(cell.pairs) == 1
        and cell.pairs[0][0][0].keys["seed"] == cell.pairs[0][0][1].keys["seed"]
        and (cell.pairs[0][0][0].keys["fold"] == cell.pairs[0][0][1].keys["fold"])
    )
    base = {
        "model": names[0],
        "baseline": names[1],
        "seed": first.keys["seed"] if single else None,
        "fold": first.keys["fold"] if single else None,
        "setting": cell.setting,
        "task": cell.task,
        "group_attribute": options.attribute if rows_of_units else None,
        "n": int(np.unique(np.concatenate([run_a.sample_id for rep in cell.pairs for run_a, _ in rep])).size),
        "n_runs": len(cell.pairs),
    }
    out: list[dict[str, Any]] = []
    ones_m, zeros_m = np.ones((1, m), dtype=np.int64), np.zeros((1, m), dtype=np.int64)
    for request in requests:
        metric, target = request
        result = results[request]
        notes = list(result.notes)
        if options.row_bootstrap:
            notes.append("row_bootstrap")
        if metric in THRESHOLD_METRICS and kind != "multiclass":
            notes.append(options.threshold.note)
        if rows_of_units:
            if int(eligible[request].sum()) < 2:
                notes.append("too_few_groups")
            if small_excluded:
                notes.append("small_group")
        if not math.isfinite(result.delta) and not rows_of_units:
            sides = (np.hstack([ones_m, zeros_m]), np.hstack([zeros_m, ones_m]))
            notes.extend(
                note
                for row in grid_cells
                for scored in row
                for columns in sides
                for note in scored.undefined_notes(metric, target, columns)
            )
        notes.extend(grid_cells[0][0].labels_used(metric, target))
        out.append(
            {
                **base,
                "metric": metric,
                "statistic": options.statistic,
                "target": target,
                "value": result.delta,
                "ci_low": result.ci_low if options.n_boot > 0 else None,
                "ci_high": result.ci_high if options.n_boot > 0 else None,
                "p_value": result.p_value if options.n_perm > 0 else None,
                "notes": join_notes(notes),
            }
        )
        if (
            options.delong
            and metric == "auroc_score"
            and options.statistic == "estimate"
            and target not in AGGREGATE_TARGETS
        ):
            out.extend(
                _delong_rows(
                    cell, base, target, options, notes=[note for note in notes if note != "row_bootstrap"]
                )
            )
    return out, results, universe


def _delong_rows(
    cell: PairedCell, base: Mapping[str, Any], target: str, options: CompareOptions, *, notes: list[str]
) -> list[dict[str, Any]]:
    if len(cell.pairs) != 1:
        logger.info(
            "compare: DeLong is per run; task %r has %d runs per side, no DeLong row",
            cell.task,
            len(cell.pairs),
        )
        return []
    run_a, run_b = cell.pairs[0][0]
    label = run_a.targets.index(target)
    result = delong_test(run_a.y[:, label], run_a.s[:, label], run_b.s[:, label], level=options.level)
    delong_notes = [note for note in notes if not note.startswith("ci_")]
    if np.unique(run_a.cluster).size < run_a.n:
        delong_notes.append("delong_ignores_clusters")
    if not math.isfinite(result.delta):
        delong_notes.append("single_class")
    return [
        {
            **base,
            "metric": "auroc_score",
            "statistic": "delong",
            "target": target,
            "value": result.delta,
            "ci_low": result.ci_low,
            "ci_high": result.ci_high,
            "p_value": result.p_value,
            "notes": join_notes(delong_notes),
        }
    ]


def compare(
    a: Any,
    b: Any,
    *,
    metrics: Sequence[str] | None = None,
    metric: str | None = None,
    statistic: str = "estimate",
    attribute: str | None = None,
    targets: str = "aggregate",
    align: str = "exact",
    n_perm: int = 10_000,
    n_boot: int = 1000,
    delong: bool = False,
    threshold: ThresholdPolicy | None = None,
    cluster: str | None = "subject_id",
    kinds: Mapping[str, str] | None = None,
    classes: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    level: float = 0.95,
    min_group_n: int = 30,
    include_small: bool = False,
    age_edges: Sequence[float] = (18, 40, 60, 80, math.inf),
    axis: str = "test",
    mechanisms: Sequence[str] = ("mcar", "mnar"),
    settings: Mapping[str, Any] | None = None,
    n_bins: int = 10,
    random_state: int = 0,
) -> pl.DataFrame:
    """Compare model a with model b on the same samples (eval.md §5.1-5.3).

    Δ = quantity(a) − quantity(b) with a paired cluster-bootstrap percentile CI (the same resamples
    for both models) and a two-sided paired permutation p (per-cluster swaps of the two models'
    scores, each model keeping its own threshold). Comparisons are made per task and setting; runs
    with several seeds/folds are averaged (shared resamples and swaps), pairing the runs by (seed, fold).

    Args:
        a: predictions of model a: a frame, a lazy frame, a path, or ``(frame, model_name)``.
        b: predictions of model b, same forms.
        metrics: metrics to compare; default the task's primary and secondary metrics (§5.5).
        metric: shorthand for ``metrics=(metric,)``.
        statistic: ``estimate`` (the metric), ``gap`` / ``ratio`` (across the groups of `attribute`),
            or ``area`` / ``relative_area`` / ``retention`` (of missing-rate curves, eval.md §7.2).
        attribute: sensitive attribute for ``gap`` / ``ratio`` (``age_group``, ``sex``, ``a|b``, ...).
        targets: ``aggregate`` (``(macro)`` for multilabel/multiclass), ``per_label`` or ``all``.
        align: ``exact`` (different samples raise P018) or ``inner`` (use the common samples).
        n_perm: permutations (exact enumeration when ``2^m <= n_perm``); 0 skips the test.
        n_boot: bootstrap replicates; 0 skips the CI.
        delong: add a DeLong row (statistic ``delong``) per label for AUROC.
        threshold: threshold policy (default ``Fixed(0.5)``).
        cluster: cluster column (patients); absent: samples (note ``row_bootstrap``).
        kinds: task kind overrides.
        classes: class order of multiclass tasks.
        level: CI level.
        min_group_n: groups smaller than this are left out of gaps (``include_small=False``).
        include_small: keep small groups in gaps.
        age_edges: bins of ``age_group`` when it is derived from ``age``.
        axis: ``test`` or ``train`` missingness curves for the curve statistics.
        mechanisms: test-time mechanisms of the curves (``mcar``, ``mnar``, ``subgroup``).
        settings: mapping setting -> tokens overriding the parsing of ``setting``.
        n_bins: calibration bins.
        random_state: seed of the bootstrap and permutation streams.

    Returns:
        The tidy frame of eval.md §8.1: one row per (task, setting, metric, target), ``model`` = a,
        ``baseline`` = b, ``value`` = Δ, ``p_value`` the permutation p (``p_adjusted`` null).

    Raises:
        PredictionsError: P018 when the models are not scored on the same samples.
        ValueError: an unknown option value.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; allowed: {', '.join(STATISTICS)}")
    if align not in ALIGNS:
        raise ValueError(f"unknown align {align!r}; allowed: 'exact', 'inner'")
    if metric is not None:
        if metrics is not None:
            raise ValueError("compare: pass metric= or metrics=, not both")
        metrics = (metric,)
    for name in metrics or ():
        metric_spec(name)
    threshold = Fixed(0.5) if threshold is None else threshold
    frame_a, name_a = _side(a, "a", kinds)
    frame_b, name_b = _side(b, "b", kinds)
    names = (name_a, name_b)
    runs_a = split_runs(frame_a, kinds=kinds, classes=classes, cluster=cluster)
    runs_b = split_runs(frame_b, kinds=kinds, classes=classes, cluster=cluster)
    options = CompareOptions.resolve(
        threshold,
        frame=frame_a,
        cluster=cluster,
        kinds=kinds,
        classes=classes,
        metrics=metrics,
        statistic=statistic,
        attribute=attribute,
        targets=targets,
        n_perm=n_perm,
        n_boot=n_boot,
        delong=delong,
        level=level,
        min_group_n=min_group_n,
        include_small=include_small,
        age_edges=tuple(age_edges),
        n_bins=n_bins,
        random_state=random_state,
    )
    cells = paired_cells(
        runs_a,
        runs_b,
        statistic=statistic,
        names=names,
        align=align,
        axis=axis,
        mechanisms=mechanisms,
        settings=settings,
    )
    rows = [row for cell in cells for row in compare_cell(cell, names, options)[0]]
    return make_rows(rows)


# --------------------------------------------------------------------------------------------------
# Grids of comparisons


PAIRS = ("vs_reference", "all")
DEFAULT_UNIMODAL = ("lstm", "transformer", "resnet")
"""carebench-models registry names of the three unimodal baselines (EHR LSTM, EHR Transformer, CXR ResNet)."""


def append_notes(frame: pl.DataFrame, extra: Sequence[str]) -> pl.DataFrame:
    """`frame` with note tokens `extra` appended to every row's ``notes``."""
    if not extra:
        return frame
    merged = [
        join_notes([*(notes.split(";") if notes else []), *extra]) for notes in frame["notes"].to_list()
    ]
    return frame.with_columns(pl.Series("notes", merged, dtype=pl.String))


def point_value(
    run: TaskRun, metric: str, target: str, threshold: Any, validation: Sequence[TaskRun]
) -> float:
    """The full-data value of `metric` at `target` for one run."""
    cell = Scored.of_run(
        run, run_thresholds(run, threshold, validation), np.arange(run.n), [(metric, target)]
    )
    return float(cell.evaluate(np.ones((1, run.n), dtype=np.int64))[metric, target][0])


def primary_request(task: str, kind: str) -> Request:
    """The task's primary metric and its target (eval.md §5.5; unknown tasks: AUROC)."""
    metric, target = primary_metric(task)
    if target is None:
        target = "(macro)" if kind == "multilabel" else WHOLE_TASK_TARGET if kind == "multiclass" else ""
    if kind == "multiclass" and metric not in MULTICLASS_SCALARS and target == WHOLE_TASK_TARGET:
        target = "(macro)"
    return metric, target


def best_model(
    runs: Sequence[TaskRun], candidates: Sequence[str], *, threshold: Any, validation: Sequence[TaskRun]
) -> str | None:
    """The candidate with the best primary metric (mean over its runs); None when none is present.

    Ties go to the first name in sorted order.
    """
    scores: dict[str, list[float]] = {}
    for run in runs:
        model = run.keys["model"]
        if model not in candidates:
            continue
        metric, target = primary_request(run.task, run.kind)
        target = target or run.targets[0]
        scores.setdefault(model, []).append(point_value(run, metric, target, threshold, validation))
    if not scores:
        return None
    metric = primary_request(runs[0].task, runs[0].kind)[0]
    sign = -1.0 if metric_spec(metric).higher_is_better is False else 1.0
    means = {
        model: float(np.nanmean(values)) for model, values in scores.items() if np.isfinite(values).any()
    }
    if not means:
        return None
    return max(sorted(means), key=lambda model: sign * means[model])


def compare_grid(
    preds: Any,
    *,
    reference: str = "best_unimodal",
    unimodal: Sequence[str] = DEFAULT_UNIMODAL,
    models: Sequence[str] | None = None,
    pairs: str = "vs_reference",
    metrics: Sequence[str] | None = None,
    select_on: Any = None,
    correction: str = "holm",
    kinds: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **compare_kwargs: Any,
) -> pl.DataFrame:
    """Many paired comparisons with multiplicity correction (eval.md §5.4-5.5).

    ``pairs="vs_reference"``: every model against `reference`, either a model name or
    ``"best_unimodal"`` (per task, the `unimodal` model with the best primary metric, mean over its
    runs, on the `select_on` validation predictions; without them on the test predictions, note
    ``selected_on_test``; rows carry the note ``best_unimodal`` and unimodal models are not compared).
    ``pairs="all"``: every unordered pair (a before b in name order). p-values are adjusted within
    each task x metric x statistic x target x setting family.

    Args:
        preds: predictions of all models (frame, lazy frame or path).
        reference: ``"best_unimodal"`` or a model name.
        unimodal: candidate unimodal models for ``best_unimodal`` (default: the registry's ``lstm``,
            ``transformer`` and ``resnet``).
        models: models to compare (default: all models in `preds`).
        pairs: ``"vs_reference"`` or ``"all"``.
        metrics: metrics (default: the task's primary and secondary metrics).
        select_on: validation predictions used to pick the best unimodal model.
        correction: ``"holm"``, ``"bh"`` or ``"none"``.
        kinds: task kind overrides.
        progress: called with (tasks done, tasks) after each task.
        **compare_kwargs: passed to :func:`compare` (``n_perm``, ``n_boot``, ``threshold``, ...).

    Returns:
        The tidy frame of eval.md §8.1 with ``p_adjusted`` filled.
    """
    if pairs not in PAIRS:
        raise ValueError(f"unknown pairs {pairs!r}; allowed: 'vs_reference', 'all'")
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; allowed: {', '.join(map(repr, CORRECTIONS))}")
    frame = load_predictions(preds, kinds=kinds)
    if "model" not in frame.columns:
        raise ValueError("compare_grid: predictions need a 'model' column")
    present = sorted(frame["model"].drop_nulls().unique().to_list())
    chosen = present if models is None else list(models)
    unknown = sorted(set(chosen) - set(present))
    if unknown:
        raise ValueError(f"compare_grid: model(s) {unknown} not in predictions; available: {present}")
    threshold = compare_kwargs.get("threshold") or Fixed(0.5)
    classes = compare_kwargs.get("classes")
    parts: list[pl.DataFrame] = []
    tasks = sorted(frame["task"].unique().to_list())
    for done, task in enumerate(tasks, start=1):
        task_frame = same_samples_subset(frame.filter(pl.col("task") == task), frame)
        task_models = sorted(set(chosen) & set(task_frame["model"].drop_nulls().unique().to_list()))
        notes: list[str] = []
        if pairs == "all":
            pairings = [(a, b) for i, a in enumerate(task_models) for b in task_models[i + 1 :]]
        else:
            if reference == "best_unimodal":
                source = (
                    task_frame
                    if select_on is None
                    else load_predictions(select_on, kinds=kinds).filter(pl.col("task") == task)
                )
                runs = split_runs(source, kinds=kinds, classes=classes)
                validation = validation_runs(threshold, kinds=kinds, classes=classes)
                ref = best_model(runs, unimodal, threshold=threshold, validation=validation)
                if ref is None:
                    raise ValueError(
                        f"compare_grid: none of the unimodal models {list(unimodal)} has predictions for task {task!r}"
                    )
                notes = ["best_unimodal"] + (["selected_on_test"] if select_on is None else [])
                pairings = [(model, ref) for model in task_models if model not in unimodal]
            else:
                if reference not in present:
                    raise ValueError(
                        f"compare_grid: reference model {reference!r} not in predictions; available: {present}"
                    )
                pairings = [(model, reference) for model in task_models if model != reference]
        for model_a, model_b in pairings:
            result = compare(
                (task_frame, model_a), (task_frame, model_b), metrics=metrics, kinds=kinds, **compare_kwargs
            )
            parts.append(append_notes(result, notes))
        if progress is not None:
            progress(done, len(tasks))
    if not parts:
        raise ValueError("compare_grid: no pair of models to compare")
    return adjust_pvalues(
        sort_results(pl.concat(parts)),
        family=("task", "metric", "statistic", "target", "setting"),
        method=correction,
    )
