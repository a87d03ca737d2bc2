"""Group fairness: per-group metrics, across-group statistics with the right direction, parity (eval.md §6).

Array layer: :func:`demographic_parity_difference` (equals fairlearn's, ``between_groups``),
:func:`equalized_odds_difference` (equals fairlearn's when every group has positives and negatives; a group
without one of them is left out of that gap instead of scoring its rate 0), :func:`age_groups`. Frame layer: :func:`fairness`, which reports every
group (small ones flagged ``small_group``, never dropped), ``gap`` / ``ratio`` / ``worst_group`` /
``best_group`` over the eligible groups with cluster-bootstrap CIs, the parity metrics and, with
``test_gaps=True``, a permutation test of each gap.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from carebench_eval._kernels import weighted_sums
from carebench_eval.errors import PredictionsError, join_notes, undefined_metric_warning
from carebench_eval.io import CORE_COLUMNS
from carebench_eval.metrics.threshold import ThresholdPolicy
from carebench_eval.registry import defaults, metric_spec
from carebench_eval.resampling import (
    GAP_TEST_STREAM,
    bootstrap_counts,
    chunks,
    cluster_universe,
    percentile_interval,
    permutation_pvalue,
    replicate_generator,
)
from carebench_eval.runs import (
    TaskRun,
    predictions_at,
    prepare_call,
    run_thresholds,
    split_runs,
    threshold_rows,
    validation_runs,
)
from carebench_eval.schema import make_rows
from carebench_eval.weighted import (
    THRESHOLD_METRICS,
    CellGrid,
    Scored,
    label_rows,
    single_statistics,
)

__all__ = [
    "DEFAULT_AGE_EDGES",
    "DEFAULT_ATTRIBUTES",
    "UNDEFINED_RATES",
    "age_groups",
    "demographic_parity_difference",
    "equalized_odds_difference",
    "fairness",
]

logger = logging.getLogger(__name__)

DEFAULT_AGE_EDGES: tuple[float, ...] = (18, 40, 60, 80, math.inf)
"""Left-closed age bins of ``age_group`` (eval.md §6.1)."""

DEFAULT_ATTRIBUTES = ("sex", "age_group", "race", "insurance", "admission_type", "has_cxr")
"""Attributes used when present and ``attributes=None`` (eval.md §6.1)."""

MISSING_GROUP = "(missing)"
INTERSECTION_SEPARATOR = "|"

GROUP_METRICS = (
    "base_rate",
    "positive_rate",
    "auroc_score",
    "auprc_score",
    "sensitivity_score",
    "fpr_error",
    "expected_calibration_error",
    "brier_loss",
)
"""Per-group metrics of binary and multilabel tasks (eval.md §6.2)."""

MULTICLASS_GROUP_METRICS = ("accuracy_score", "f1_score", "sensitivity_score", "fpr_error")
"""Per-group metrics of multiclass tasks: accuracy, macro-F1 and one-vs-rest TPR/FPR (eval.md §6.2)."""

PARITY_METRICS = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equalized_odds_ratio",
    "equal_opportunity_difference",
)


# --------------------------------------------------------------------------------------------------
# Array layer


def _edge_text(edge: float) -> str:
    if math.isinf(edge):
        return "inf"
    return str(int(edge)) if float(edge).is_integer() else repr(float(edge))


def age_groups(age: npt.ArrayLike, *, edges: Sequence[float] = DEFAULT_AGE_EDGES) -> np.ndarray:
    """Left-closed age bins ``[a,b)`` named like ``[60,80)`` and ``[80,inf)`` (eval.md §6.1).

    Args:
        age: ``[n]`` ages in years (NaN for unknown).
        edges: increasing bin edges; ages below the first edge, at or above the last, or NaN are
            ``(missing)``.

    Returns:
        ``[n]`` group names (str).

    Examples:
        >>> age_groups([17, 18, 59.5, 80, 101]).tolist()
        ['(missing)', '[18,40)', '[40,60)', '[80,inf)', '[80,inf)']
    """
    edges_array = np.asarray(edges, dtype=np.float64)
    if edges_array.size < 2 or np.any(np.diff(edges_array) <= 0):
        raise ValueError(f"age_edges must be at least two increasing values, got {tuple(edges)}")
    values = np.asarray(age, dtype=np.float64)
    names = np.array(
        [f"[{_edge_text(low)},{_edge_text(high)})" for low, high in pairwise(edges_array.tolist())]
        + [MISSING_GROUP]
    )
    bins = np.searchsorted(edges_array, values, side="right") - 1
    outside = np.isnan(values) | (bins < 0) | (bins >= edges_array.size - 1)
    return names[np.where(outside, edges_array.size - 1, bins)]


def _group_rates(y_true: np.ndarray | None, y_pred: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    pred = np.asarray(y_pred).astype(np.float64)
    size = np.bincount(codes, minlength=names.size).astype(np.float64)
    rates = {"selection_rate": np.bincount(codes, weights=pred, minlength=names.size) / size}
    if y_true is not None:
        truth = np.asarray(y_true).astype(np.float64)
        positives = np.bincount(codes, weights=truth, minlength=names.size)
        negatives = size - positives
        true_positive = np.bincount(codes, weights=truth * pred, minlength=names.size)
        false_positive = np.bincount(codes, weights=(1 - truth) * pred, minlength=names.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            rates["tpr"] = np.where(positives > 0, true_positive / positives, np.nan)
            rates["fpr"] = np.where(negatives > 0, false_positive / negatives, np.nan)
    return rates


def _spread(values: np.ndarray) -> float:
    defined = values[np.isfinite(values)]
    return float(defined.max() - defined.min()) if defined.size >= 2 else math.nan


def demographic_parity_difference(y_pred: npt.ArrayLike, groups: npt.ArrayLike) -> float:
    """Largest difference in selection rate between groups: ``max_g SR_g − min_g SR_g`` (≥ 0).

    Matches fairlearn ``demographic_parity_difference(..., method="between_groups")``.

    Args:
        y_pred: ``[n]`` 0/1 predictions at the policy threshold.
        groups: ``[n]`` group of each sample.

    Returns:
        The difference; NaN with fewer than two groups.

    Examples:
        >>> demographic_parity_difference([1, 0, 1, 1], ["F", "F", "M", "M"])
        0.5
    """
    return _spread(_group_rates(None, np.asarray(y_pred), np.asarray(groups))["selection_rate"])


UNDEFINED_RATES = ("exclude", "zero")
"""How `equalized_odds_difference` treats a group without positives (no TPR) or negatives (no FPR)."""


def equalized_odds_difference(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    groups: npt.ArrayLike,
    *,
    undefined_rate: str = "exclude",
) -> float:
    """``max(TPR gap, FPR gap)``, each gap the largest minus the smallest group rate (``between_groups``).

    A group without positives has no TPR, and one without negatives no FPR. By default
    (``undefined_rate="exclude"``) such a group is left out of that gap only (it still counts in the
    other), with an `UndefinedMetricWarning` naming it. fairlearn's ``equalized_odds_difference`` scores
    the missing rate as 0 instead, which turns a group without positives into an apparent TPR gap of up
    to 1; ``undefined_rate="zero"`` reproduces fairlearn. With every group's rates defined both agree.

    Args:
        y_true: ``[n]`` 0/1 labels.
        y_pred: ``[n]`` 0/1 predictions at the policy threshold.
        groups: ``[n]`` group of each sample.
        undefined_rate: ``"exclude"`` (leave the group out of that gap) or ``"zero"`` (fairlearn: rate 0).

    Returns:
        The difference; NaN when neither gap has two groups.

    Examples:
        >>> equalized_odds_difference([1, 0, 1, 0], [1, 0, 0, 0], ["F", "F", "M", "M"])
        1.0
    """
    if undefined_rate not in UNDEFINED_RATES:
        raise ValueError(
            f"undefined_rate must be one of {', '.join(map(repr, UNDEFINED_RATES))}; got {undefined_rate!r}"
        )
    names = np.unique(np.asarray(groups).astype(str))
    rates = _group_rates(np.asarray(y_true), np.asarray(y_pred), np.asarray(groups))
    for rate, lacking in (("tpr", "positives"), ("fpr", "negatives")):
        missing = np.isnan(rates[rate])
        if not missing.any():
            continue
        if undefined_rate == "zero":
            rates[rate] = np.where(missing, 0.0, rates[rate])
        else:
            warnings.warn(
                f"equalized_odds_difference: group(s) {names[missing].tolist()} have no {lacking}, so no "
                f"{rate.upper()}; left out of the {rate.upper()} gap (undefined_rate='zero' scores it as 0, "
                "as fairlearn does)",
                undefined_metric_warning(),
                stacklevel=2,
            )
    return float(np.fmax(_spread(rates["tpr"]), _spread(rates["fpr"])))


@dataclass(frozen=True)
class AcrossGroups:
    """Across-group statistics of one metric for a batch of replicates (eval.md §6.3).

    Attributes:
        gap: ``[b]`` max − min over eligible groups.
        ratio: ``[b]`` min / max (NaN when max = 0).
        worst: ``[b]`` the worst eligible value (min if higher is better, max if lower is better).
        best: ``[b]`` the best eligible value.
    """

    gap: np.ndarray
    ratio: np.ndarray
    worst: np.ndarray
    best: np.ndarray


def across_groups(values: np.ndarray, eligible: np.ndarray, *, higher_is_better: bool | None) -> AcrossGroups:
    """Across-group statistics of ``values [b, G]`` over the `eligible` ``[G]`` groups.

    Fewer than two eligible groups give NaN. A replicate with an undefined eligible group is NaN
    (dropped from the CI, eval.md §4.3).
    """
    chosen = values[:, eligible]
    b = values.shape[0]
    if chosen.shape[1] < 2:
        nan = np.full(b, np.nan)
        return AcrossGroups(nan, nan.copy(), nan.copy(), nan.copy())
    high = chosen.max(axis=1)
    low = chosen.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(high != 0, low / np.where(high != 0, high, 1.0), np.nan)
    ratio[np.isnan(high)] = np.nan
    if higher_is_better is False:
        worst, best = high, low
    else:
        worst, best = low, high
    return AcrossGroups(high - low, ratio, worst, best)


def pick_group(
    values: np.ndarray,
    eligible: np.ndarray,
    sizes: np.ndarray,
    names: Sequence[str],
    *,
    worst: bool,
    higher_is_better: bool,
) -> int | None:
    """Index of the worst (or best) eligible group at the point estimate.

    Worst is the argmin for higher-is-better metrics and the argmax for lower-is-better metrics; ties go
    to the larger group, then to the lexicographically first name (eval.md §6.3).
    """
    candidates = [g for g in np.flatnonzero(eligible) if np.isfinite(values[g])]
    if len(candidates) < 2:
        return None
    want_low = worst == higher_is_better
    sign = 1.0 if want_low else -1.0
    return min(candidates, key=lambda g: (sign * values[g], -int(sizes[g]), names[g]))


# --------------------------------------------------------------------------------------------------
# Groups of a run


def check_attributes(names: Sequence[str], columns: Sequence[str]) -> None:
    """Raise P016 when an attribute (or a part of an intersection) is not in the predictions.

    ``age_group`` counts as present when ``age`` is (it is derived with ``age_edges``).
    """
    available = set(columns) | ({"age_group"} if "age" in columns else set())
    missing = [
        name for name in names if any(part not in available for part in name.split(INTERSECTION_SEPARATOR))
    ]
    if missing:
        raise PredictionsError(
            "P016", f"fairness: attribute(s) {missing} not in predictions; available: {sorted(columns)}"
        )


def _single_attribute(attributes: pl.DataFrame, name: str, age_edges: Sequence[float]) -> np.ndarray:
    if name in attributes.columns:
        # Booleans (has_cxr) cast to "true" / "false".
        return attributes[name].cast(pl.String).fill_null(MISSING_GROUP).to_numpy().astype(str)
    if name == "age_group" and "age" in attributes.columns:
        return age_groups(
            attributes["age"].cast(pl.Float64, strict=False).fill_null(math.nan).to_numpy(), edges=age_edges
        )
    raise PredictionsError(
        "P016", f"fairness: attribute(s) {[name]} not in predictions; available: {sorted(attributes.columns)}"
    )


def group_labels(
    run: TaskRun, attribute: str, *, age_edges: Sequence[float] = DEFAULT_AGE_EDGES
) -> np.ndarray:
    """Group name of every sample of `run` for `attribute` (``"a|b"`` joins an intersection).

    Nulls become ``(missing)``; ``has_cxr`` reads ``true`` / ``false``; ``age_group`` is derived from
    ``age`` when absent.

    Raises:
        PredictionsError: P016 (unknown attribute) or P017 (a value contains ``|`` in an intersection).
    """
    parts = attribute.split(INTERSECTION_SEPARATOR)
    columns = [_single_attribute(run.attributes, part, age_edges) for part in parts]
    if len(columns) == 1:
        return columns[0]
    for part, values in zip(parts, columns, strict=True):
        bad = [value for value in np.unique(values) if INTERSECTION_SEPARATOR in value]
        if bad:
            raise PredictionsError(
                "P017",
                f'fairness: attribute {part!r} value {bad[0]!r} contains "|", which joins intersection names',
            )
    return np.array([INTERSECTION_SEPARATOR.join(values) for values in zip(*columns, strict=True)], dtype=str)


def resolve_attributes(
    columns: Sequence[str],
    attributes: Sequence[str] | None,
    intersections: str | Sequence[Sequence[str]] | None,
) -> list[str]:
    """Attribute names to report: singles first, then intersections ``a|b`` (eval.md §6.1).

    ``attributes=None`` uses the defaults present in `columns`; ``intersections="pairs"`` all 2-way pairs
    of the chosen attributes except ``has_cxr``, with ``age_group|race`` first.
    """
    available = set(columns) | ({"age_group"} if "age" in columns else set())
    if attributes is None:
        default = defaults().get("fairness", {}).get("attributes", DEFAULT_ATTRIBUTES)
        chosen = [name for name in default if name in available]
    else:
        chosen = list(dict.fromkeys(attributes))
        check_attributes(chosen, columns)
    if intersections is None or intersections == ():
        pairs: list[tuple[str, ...]] = []
    elif intersections == "pairs":
        eligible = [name for name in chosen if name != "has_cxr"]
        pairs = list(combinations(eligible, 2))
        if "age_group" in eligible and "race" in eligible:
            pairs = [("age_group", "race")] + [pair for pair in pairs if set(pair) != {"age_group", "race"}]
    elif isinstance(intersections, str):
        raise ValueError(f"intersections must be 'pairs', None or a list of tuples, got {intersections!r}")
    else:
        pairs = [tuple(pair) for pair in intersections]
        check_attributes([INTERSECTION_SEPARATOR.join(pair) for pair in pairs], columns)
    return chosen + [INTERSECTION_SEPARATOR.join(pair) for pair in pairs]


# --------------------------------------------------------------------------------------------------
# Frame layer


def _group_requests(
    kind: str, targets: tuple[str, ...], metrics: Sequence[str], mode: str
) -> list[tuple[str, str]]:
    return [(metric, target) for metric in metrics for target in label_rows(kind, metric, targets, mode)]


def _parity(
    rates: Mapping[str, np.ndarray], eligible: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Parity metrics ``[b]`` from per-group rates ``[b, G]``, and which gap EOD came from (True = TPR).

    Each rate spans its own `eligible` ``[G]`` groups: a group without positives has no TPR and leaves the
    TPR gap only, one without negatives leaves the FPR gap only. EOD is the larger of the gaps that have
    two groups at the point estimate (a replicate in which one of them is undefined is NaN).
    """
    selection = across_groups(rates["positive_rate"], eligible["positive_rate"], higher_is_better=True)
    tpr = across_groups(rates["sensitivity_score"], eligible["sensitivity_score"], higher_is_better=True)
    fpr = across_groups(rates["fpr_error"], eligible["fpr_error"], higher_is_better=False)
    use_tpr = int(eligible["sensitivity_score"].sum()) >= 2
    use_fpr = int(eligible["fpr_error"].sum()) >= 2
    if use_tpr and use_fpr:
        eod, eor = np.maximum(tpr.gap, fpr.gap), np.minimum(tpr.ratio, fpr.ratio)
        from_tpr = tpr.gap >= fpr.gap
    else:
        eod, eor = (tpr.gap, tpr.ratio) if use_tpr else (fpr.gap, fpr.ratio)
        from_tpr = np.full(eod.shape, use_tpr)
    return (
        {
            "demographic_parity_difference": selection.gap,
            "demographic_parity_ratio": selection.ratio,
            "equalized_odds_difference": eod,
            "equalized_odds_ratio": eor,
            "equal_opportunity_difference": tpr.gap,
        },
        from_tpr,
    )


@dataclass(frozen=True)
class _FairnessOptions:
    metrics: tuple[str, ...] | None
    threshold: Any
    validation: list[TaskRun]
    min_group_n: int
    include_small: bool
    age_edges: tuple[float, ...]
    n_boot: int
    test_gaps: bool
    n_perm: int
    targets: str
    level: float
    n_bins: int
    random_state: int
    row_bootstrap: bool


def _gap_pvalues(
    run: TaskRun,
    labels: np.ndarray,
    names: list[str],
    pred: np.ndarray,
    requests: Sequence[tuple[str, str]],
    eligible: Mapping[tuple[str, str], np.ndarray],
    observed: Mapping[tuple[str, str], float],
    options: _FairnessOptions,
) -> dict[tuple[str, str], float]:
    """Permutation p of each gap: attribute values shuffled among patients (eval.md §6.4)."""
    whole = Scored(
        run.kind, run.targets, run.y, run.s, pred, np.arange(run.n), list(requests), n_bins=options.n_bins
    )
    clusters, cluster_of = np.unique(run.cluster, return_inverse=True)
    per_cluster = np.full(clusters.size, -1)
    codes = np.searchsorted(np.asarray(names), labels)
    per_cluster[cluster_of] = codes
    constant = bool(np.all(per_cluster[cluster_of] == codes))
    permuted: dict[tuple[str, str], list[np.ndarray]] = {request: [] for request in requests}
    for start, stop in chunks(options.n_perm, run.n * len(run.targets)):
        shuffled = np.empty((stop - start, run.n), dtype=np.int64)
        for row, replicate in enumerate(range(start, stop)):
            generator = replicate_generator(options.random_state, GAP_TEST_STREAM, replicate)
            shuffled[row] = (
                generator.permutation(per_cluster)[cluster_of] if constant else generator.permutation(codes)
            )
        per_group = [whole.evaluate((shuffled == g).astype(np.int64)) for g in range(len(names))]
        for request in requests:
            values = np.stack([values_of_group[request] for values_of_group in per_group], axis=1)
            permuted[request].append(across_groups(values, eligible[request], higher_is_better=None).gap)
    return {
        request: permutation_pvalue(observed[request], np.concatenate(permuted[request]), exact=False)
        if np.isfinite(observed[request])
        else math.nan
        for request in requests
    }


def _fairness_rows(run: TaskRun, attribute: str, options: _FairnessOptions) -> list[dict[str, Any]]:
    labels = group_labels(run, attribute, age_edges=options.age_edges)
    names = sorted(set(labels.tolist()))
    sizes = np.array([int(np.sum(labels == name)) for name in names])
    default_metrics = MULTICLASS_GROUP_METRICS if run.kind == "multiclass" else GROUP_METRICS
    metrics = options.metrics or default_metrics
    requests = _group_requests(run.kind, run.targets, metrics, options.targets)
    parity_targets: list[str] = []
    if run.kind != "multiclass":
        parity_targets = list(run.targets)
        for metric in ("positive_rate", "sensitivity_score", "fpr_error"):
            requests += [(metric, target) for target in parity_targets if (metric, target) not in requests]
    thresholds = run_thresholds(run, options.threshold, options.validation)
    pred = predictions_at(run, thresholds)
    universe, (cluster_index,) = cluster_universe(run.cluster)
    cells = [
        Scored(
            run.kind,
            run.targets,
            run.y[rows],
            run.s[rows],
            pred[rows],
            cluster_index[rows],
            requests,
            n_bins=options.n_bins,
        )
        for rows in (np.flatnonzero(labels == name) for name in names)
    ]
    point, replicates = single_statistics(
        CellGrid([cells]), universe.size, requests, n_boot=options.n_boot, random_state=options.random_state
    )
    large = sizes >= options.min_group_n
    base = {**run.keys, "task": run.task, "group_attribute": attribute, "n_runs": 1}
    shared_notes = ["row_bootstrap"] if options.row_bootstrap else []
    rows: list[dict[str, Any]] = []
    reported = set(_group_requests(run.kind, run.targets, metrics, options.targets))

    def interval(values: np.ndarray) -> tuple[float | None, float | None, list[str]]:
        if options.n_boot == 0:
            return None, None, []
        return percentile_interval(values, options.level)

    eligible: dict[tuple[str, str], np.ndarray] = {}
    for request in requests:
        metric, target = request
        values = point[request][0]
        eligible[request] = np.isfinite(values) & (large | options.include_small)
        if request not in reported:
            continue
        policy = [options.threshold.note] if metric in THRESHOLD_METRICS and run.kind != "multiclass" else []
        for g, name in enumerate(names):
            low, high, ci_notes = interval(replicates[request][:, 0, g])
            notes = [*shared_notes, *policy, *ci_notes]
            if not large[g]:
                notes.append("small_group")
            if not np.isfinite(values[g]):
                notes.extend(cells[g].undefined_notes(metric, target))
            notes.extend(cells[g].labels_used(metric, target))
            rows.append(
                {
                    **base,
                    "metric": metric,
                    "statistic": "estimate",
                    "target": target,
                    "group": name,
                    "value": float(values[g]),
                    "ci_low": low,
                    "ci_high": high,
                    "n": int(sizes[g]),
                    "notes": join_notes(notes),
                }
            )
    gap_p: dict[tuple[str, str], float] = {}
    observed_gap = {
        request: float(across_groups(point[request], eligible[request], higher_is_better=None).gap[0])
        for request in reported
    }
    if options.test_gaps:
        gap_p = _gap_pvalues(run, labels, names, pred, sorted(reported), eligible, observed_gap, options)
    n_eligible_samples = {request: int(sizes[eligible[request]].sum()) for request in requests}
    for request in sorted(reported):
        metric, target = request
        higher = metric_spec(metric).higher_is_better
        point_stats = across_groups(point[request], eligible[request], higher_is_better=higher)
        boot_stats = across_groups(replicates[request][:, 0, :], eligible[request], higher_is_better=higher)
        notes = [*shared_notes]
        if metric in THRESHOLD_METRICS and run.kind != "multiclass":
            notes.append(options.threshold.note)
        if int(eligible[request].sum()) < 2:
            notes.append("too_few_groups")
        if not options.include_small and not bool(large.all()):
            notes.append("small_group")
        statistics: list[tuple[str, str | None, float, np.ndarray]] = [
            ("gap", None, float(point_stats.gap[0]), boot_stats.gap),
            ("ratio", None, float(point_stats.ratio[0]), boot_stats.ratio),
        ]
        if higher is not None:
            for statistic, worst in (("worst_group", True), ("best_group", False)):
                picked = pick_group(
                    point[request][0], eligible[request], sizes, names, worst=worst, higher_is_better=higher
                )
                value = math.nan if picked is None else float(point[request][0][picked])
                statistics.append(
                    (
                        statistic,
                        None if picked is None else names[picked],
                        value,
                        boot_stats.worst if worst else boot_stats.best,
                    )
                )
        for statistic, group, value, boot in statistics:
            low, high, ci_notes = interval(boot)
            rows.append(
                {
                    **base,
                    "metric": metric,
                    "statistic": statistic,
                    "target": target,
                    "group": group,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "n": n_eligible_samples[request],
                    "p_value": gap_p.get(request) if statistic == "gap" and options.test_gaps else None,
                    "notes": join_notes([*notes, *ci_notes]),
                }
            )
    rows.extend(
        _association_rows(run, attribute, labels, names, point, replicates, eligible, reported, base, options)
    )
    rate_metrics = ("positive_rate", "sensitivity_score", "fpr_error")
    for target in parity_targets:
        rate_eligible = {metric: eligible[metric, target] for metric in rate_metrics}
        rates_point = {metric: point[metric, target] for metric in rate_metrics}
        rates_boot = {metric: replicates[metric, target][:, 0, :] for metric in rate_metrics}
        parity_point, from_tpr = _parity(rates_point, rate_eligible)
        parity_boot, _ = _parity(rates_boot, rate_eligible)
        # Groups that would enter the parity metrics but have no TPR (FPR): left out of that gap only.
        entering = rate_eligible["positive_rate"]
        without = {
            rate: int(np.sum(entering & ~np.isfinite(rates_point[rate][0])))
            for rate in ("sensitivity_score", "fpr_error")
        }
        spans = {
            "demographic_parity_difference": (("positive_rate",), []),
            "demographic_parity_ratio": (("positive_rate",), []),
            "equalized_odds_difference": (("sensitivity_score", "fpr_error"), ["tpr", "fpr"]),
            "equalized_odds_ratio": (("sensitivity_score", "fpr_error"), ["tpr", "fpr"]),
            "equal_opportunity_difference": (("sensitivity_score",), ["tpr"]),
        }
        shared = [*shared_notes, options.threshold.note]
        if not options.include_small and not bool(large.all()):
            shared.append("small_group")
        for metric in PARITY_METRICS:
            rates_used, gaps = spans[metric]
            used = np.logical_or.reduce([rate_eligible[rate] for rate in rates_used])
            value = float(parity_point[metric][0])
            low, high, ci_notes = interval(parity_boot[metric])
            notes = [*shared]
            if all(int(rate_eligible[rate].sum()) < 2 for rate in rates_used):
                notes.append("too_few_groups")
            if "tpr" in gaps and without["sensitivity_score"]:
                notes.append(f"groups_without_positives={without['sensitivity_score']}")
            if "fpr" in gaps and without["fpr_error"]:
                notes.append(f"groups_without_negatives={without['fpr_error']}")
            if metric == "equalized_odds_difference" and math.isfinite(value):
                notes.append(f"eod_from={'tpr' if from_tpr[0] else 'fpr'}")
            rows.append(
                {
                    **base,
                    "metric": metric,
                    "statistic": "estimate",
                    "target": target,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "n": int(sizes[used].sum()),
                    "notes": join_notes([*notes, *ci_notes]),
                }
            )
    return rows


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of ``x [b, G]`` and ``y [b, G]``; NaN where either has zero variance."""
    x_centred = x - x.mean(axis=1, keepdims=True)
    y_centred = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((x_centred**2).sum(axis=1) * (y_centred**2).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, (x_centred * y_centred).sum(axis=1) / denominator, np.nan)


def _association_rows(
    run: TaskRun,
    attribute: str,
    labels: np.ndarray,
    names: list[str],
    point: Mapping[tuple[str, str], np.ndarray],
    replicates: Mapping[tuple[str, str], np.ndarray],
    eligible: Mapping[tuple[str, str], np.ndarray],
    reported: set[tuple[str, str]],
    base: Mapping[str, Any],
    options: _FairnessOptions,
) -> list[dict[str, Any]]:
    """Pearson r across groups between a metric and the group's missing-CXR share (eval.md §6.5)."""
    if "has_cxr" not in run.attributes.columns or "has_cxr" in attribute.split(INTERSECTION_SEPARATOR):
        return []
    missing_cxr = (~run.attributes["has_cxr"].cast(pl.Boolean).fill_null(False)).to_numpy().astype(np.float64)
    universe, (cluster_index,) = cluster_universe(run.cluster)
    group_rows = [np.flatnonzero(labels == name) for name in names]

    def shares(columns: np.ndarray) -> np.ndarray:
        per_group = []
        for rows in group_rows:
            size = weighted_sums(np.ones(rows.size), columns, cluster_index[rows])
            missing = weighted_sums(missing_cxr[rows], columns, cluster_index[rows])
            with np.errstate(divide="ignore", invalid="ignore"):
                per_group.append(np.where(size > 0, missing / np.where(size > 0, size, 1.0), np.nan))
        return np.stack(per_group, axis=1)

    share_point = shares(np.ones((1, universe.size), dtype=np.int64))
    share_boot = np.concatenate(
        [
            shares(bootstrap_counts(universe.size, start, stop, options.random_state))
            for start, stop in chunks(options.n_boot, run.n)
        ]
        or [np.empty((0, len(names)))]
    )
    no_missing = not bool(missing_cxr.any())
    rows = []
    for request in sorted(reported):
        metric, target = request
        chosen = eligible[request]
        notes = ["row_bootstrap"] if options.row_bootstrap else []
        if no_missing:
            notes.append("no_missing_modality")
        if int(chosen.sum()) < 3:
            notes.append("too_few_groups")
            value, boot = math.nan, np.full(share_boot.shape[0], np.nan)
        else:
            value = float(_pearson(point[request][:, chosen], share_point[:, chosen])[0])
            boot = _pearson(replicates[request][:, 0, chosen], share_boot[:, chosen])
        low, high, ci_notes = (
            (None, None, []) if options.n_boot == 0 else percentile_interval(boot, options.level)
        )
        rows.append(
            {
                **base,
                "metric": metric,
                "statistic": "association",
                "target": target,
                "value": value,
                "ci_low": low,
                "ci_high": high,
                "n": int(labels.size),
                "notes": join_notes([*notes, *(ci_notes if math.isfinite(value) else [])]),
            }
        )
    return rows


def fairness(
    preds: Any,
    *,
    attributes: Sequence[str] | None = None,
    intersections: str | Sequence[Sequence[str]] | None = "pairs",
    metrics: Sequence[str] | None = None,
    threshold: ThresholdPolicy | None = None,
    min_group_n: int = 30,
    include_small: bool = False,
    age_edges: Sequence[float] = DEFAULT_AGE_EDGES,
    n_boot: int = 1000,
    test_gaps: bool = False,
    n_perm: int = 1000,
    targets: str = "all",
    cluster: str | None = "subject_id",
    kinds: Mapping[str, str] | None = None,
    classes: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    level: float = 0.95,
    n_bins: int = 10,
    random_state: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Per-group metrics and across-group disparities for every run (eval.md §6).

    For each run, task and attribute: one ``estimate`` row per group and metric (small groups keep
    their value and CI with the note ``small_group``); ``gap``, ``ratio``, ``worst_group`` and
    ``best_group`` over the eligible groups (``n >= min_group_n`` unless `include_small`, metric
    defined), worst = argmin for higher-is-better metrics and argmax for lower-is-better ones; the
    parity metrics (``demographic_parity_difference``, ``equalized_odds_difference`` with note
    ``eod_from=tpr|fpr``, ratios, ``equal_opportunity_difference``) per label, each rate over the eligible
    groups where it is defined: a group without positives (negatives) has no TPR (FPR) and is left out of
    that gap only, noted ``groups_without_positives=k`` (``groups_without_negatives=k``). CIs come from the
    same cluster-bootstrap resamples for every group; thresholds are set on the whole population.

    Args:
        preds: predictions (frame, lazy frame, or path).
        attributes: attributes to report (default: those of eval.md §6.1 that are present; a named
            attribute that is missing raises P016).
        intersections: ``"pairs"`` (all 2-way pairs except ``has_cxr``, ``age_group|race`` first), a list
            of tuples, or None.
        metrics: per-group metrics (default: base rate, positive rate, AUROC, AUPRC, TPR, FPR, ECE, Brier;
            multiclass: accuracy, macro-F1, one-vs-rest TPR and FPR).
        threshold: threshold policy (default ``Fixed(0.5)``).
        min_group_n: groups smaller than this are flagged ``small_group`` and left out of gaps.
        include_small: keep small groups in across-group statistics.
        age_edges: bins of ``age_group`` when it is derived from ``age``.
        n_boot: bootstrap replicates (0: no CIs).
        test_gaps: add a permutation p to every ``gap`` row (attribute shuffled among patients).
        n_perm: permutations of the gap test.
        targets: ``"all"`` (labels and ``(macro)``), ``"aggregate"`` or ``"per_label"``.
        cluster: cluster column (patients).
        kinds: task kind overrides.
        classes: class order of multiclass tasks.
        level: CI level.
        n_bins: calibration bins.
        random_state: seed of the bootstrap and gap-test streams.
        progress: called with (done, total) after each run.

    Returns:
        The tidy frame of eval.md §8.1.
    """
    frame, threshold = prepare_call(preds, threshold=threshold, metrics=metrics, kinds=kinds)
    attribute_columns = [column for column in frame.columns if column not in CORE_COLUMNS]
    names = resolve_attributes(attribute_columns, attributes, intersections)
    if not names:
        raise PredictionsError(
            "P016",
            f"fairness: attribute(s) {list(DEFAULT_ATTRIBUTES)} not in predictions; available: {sorted(frame.columns)}",
        )
    options = _FairnessOptions(
        metrics=tuple(metrics) if metrics is not None else None,
        threshold=threshold,
        validation=validation_runs(threshold, kinds=kinds, classes=classes),
        min_group_n=min_group_n,
        include_small=include_small,
        age_edges=tuple(age_edges),
        n_boot=n_boot,
        test_gaps=test_gaps,
        n_perm=n_perm,
        targets=targets,
        level=level,
        n_bins=n_bins,
        random_state=random_state,
        row_bootstrap=cluster is None or cluster not in frame.columns,
    )
    runs = split_runs(frame, kinds=kinds, classes=classes, cluster=cluster)
    rows: list[dict[str, Any]] = []
    for done, run in enumerate(runs, start=1):
        if run.kind != "multiclass" and set(options.metrics or GROUP_METRICS) & THRESHOLD_METRICS:
            thresholds = run_thresholds(run, threshold, options.validation)
            rows.extend(threshold_rows(threshold, run, thresholds, {**run.keys, "task": run.task}))
        for attribute in names:
            rows.extend(_fairness_rows(run, attribute, options))
        if progress is not None:
            progress(done, len(runs))
    return make_rows(rows)
