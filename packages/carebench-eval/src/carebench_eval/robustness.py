"""Robustness to a missing CXR: degradation curves, fusion gain and modality contribution (eval.md §7).

Array layer: :func:`curve_area`, :func:`break_even_rate` (and :func:`parse_setting`, the ``setting``
grammar of :mod:`carebench_eval.settings`). Frame layer: :func:`robustness` (curve points, ``area``, ``relative_area``,
``retention``, ``break_even_rate`` with CIs from shared bootstrap resamples), :func:`fusion_gain` (fused
model minus the best unimodal model, paired CI, permutation p, Holm/BH) and
:func:`modality_contribution` (metric drop when the CXR is withheld, ``cxr_utilization``, ``cxr_share``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from carebench_eval.compare import (
    DEFAULT_UNIMODAL,
    CompareOptions,
    PairedCell,
    align_pair,
    append_notes,
    best_model,
    compare,
    compare_cell,
    comparison_metrics,
    pair_reps,
    point_value,
)
from carebench_eval.errors import PredictionsError, join_notes
from carebench_eval.fairness import group_labels
from carebench_eval.io import load_predictions, same_samples_subset
from carebench_eval.metrics.threshold import Fixed
from carebench_eval.multiplicity import CORRECTIONS, adjust_pvalues
from carebench_eval.registry import metric_spec, task_kind
from carebench_eval.resampling import cluster_universe, percentile_interval
from carebench_eval.runs import (
    TaskRun,
    prepare_call,
    run_thresholds,
    split_runs,
    validation_runs,
)
from carebench_eval.schema import SORT_COLUMNS, make_rows, sort_results
from carebench_eval.settings import ParsedSetting, parse_setting, parsed_setting, same_setting
from carebench_eval.weighted import (
    THRESHOLD_METRICS,
    CellGrid,
    Scored,
    label_rows,
    single_statistics,
)

__all__ = [
    "ParsedSetting",
    "break_even_rate",
    "curve_area",
    "fusion_gain",
    "modality_contribution",
    "parse_setting",
    "robustness",
]

logger = logging.getLogger(__name__)

_MEET_TOLERANCE = 1e-12

ACROSS_MODELS = ("task", "metric", "statistic", "target", "setting", "group_attribute", "group")
"""Family of `fusion_gain` rows of an aggregate or a binary task: the fused models of one target."""
ACROSS_LABELS = ("task", "model", "baseline", "metric", "statistic", "setting", "group_attribute", "group")
"""Family of `fusion_gain` rows of single labels (classes): every label of one fused model vs its reference."""


def curve_area(rates: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Normalized trapezoid area under degradation curves (eval.md §7.2).

    ``A = Σ_k (r_k − r_{k−1}) (M_k + M_{k−1}) / 2 / (r_K − r_0)``: the mean metric over the missing-rate
    range, in metric units.

    Args:
        rates: ``[K+1]`` increasing missing rates.
        values: ``[b, K+1]`` metric values per rate (one curve per row).

    Returns:
        ``[b]`` areas (NaN where a point is NaN).

    Examples:
        >>> curve_area(np.array([0.0, 0.5, 1.0]), np.array([[0.8, 0.7, 0.6]])).tolist()
        [0.7]
    """
    widths = np.diff(rates)
    heights = (values[:, 1:] + values[:, :-1]) / 2.0
    return (heights * widths).sum(axis=1) / (rates[-1] - rates[0])


def break_even_rate(rates: np.ndarray, values: np.ndarray, reference: float) -> float:
    """Smallest missing rate at which the curve meets `reference` (linear interpolation; eval.md §7.2).

    Args:
        rates: ``[K+1]`` increasing missing rates.
        values: ``[K+1]`` point estimates of the metric (higher is better).
        reference: the score of the reference model (e.g. the best EHR-only model).

    Returns:
        The rate, ``rates[0]`` if the curve starts at or below the reference, NaN if it never meets it.

    Examples:
        >>> round(break_even_rate(np.array([0.0, 0.5, 1.0]), np.array([0.8, 0.7, 0.6]), 0.65), 6)
        0.75
    """
    if not np.all(np.isfinite(values)) or not math.isfinite(reference):
        return math.nan
    # The tolerance lets a curve that ends exactly on the reference (up to summation order) meet it.
    reached = values <= reference + _MEET_TOLERANCE
    if reached[0]:
        return float(rates[0])
    for k in range(1, values.size):
        if reached[k]:
            fraction = min(1.0, (values[k - 1] - reference) / (values[k - 1] - values[k]))
            return float(rates[k - 1] + fraction * (rates[k] - rates[k - 1]))
    return math.nan


# --------------------------------------------------------------------------------------------------
# Curves


AXES = ("test", "train")
DEFAULT_CXR_ONLY = "resnet"
"""carebench-models registry name of the CXR-only baseline."""
DEFAULT_EHR_ONLY = ("lstm", "transformer")
"""Registry names of the EHR-only baselines (the reference line of degradation curves)."""


def curve_point(
    setting: str | None, *, axis: str, mechanisms: Sequence[str], settings: Mapping[str, Any] | None = None
) -> tuple[tuple[str, ...], str | None, float] | None:
    """Where a setting sits on the curves of `axis`: ``(context, mechanism, rate)``.

    ``mechanism`` is None for a setting without missingness on that axis (the rate-0 point of every
    mechanism with the same context). Returns None when the setting is on no curve of the axis (e.g. a
    test-time setting on the train axis, or a mechanism not in `mechanisms`).
    """
    parsed = parsed_setting(setting, settings)
    test = {name: rate for name, rate in parsed.rates.items() if name.startswith("test_cxr_")}
    train = {name: rate for name, rate in parsed.rates.items() if name == "train_cxr_drop"}
    if axis == "train":
        if test:
            return None
        rate = train.get("train_cxr_drop", 0.0)
        return parsed.context, ("train_cxr_drop" if rate > 0 else None), rate
    context = parsed.context + tuple(f"train_cxr_drop_{rate:g}" for rate in train.values())
    if not test:
        return context, None, 0.0
    if len(test) > 1:
        return None
    ((name, rate),) = test.items()
    wanted = any(
        name == f"test_cxr_{mechanism}" or name.startswith(f"test_cxr_{mechanism}_")
        for mechanism in mechanisms
    )
    return (context, name, rate) if wanted else None


def curve_families(
    runs: Sequence[TaskRun],
    *,
    axis: str = "test",
    mechanisms: Sequence[str] = ("mcar", "mnar"),
    settings: Mapping[str, Any] | None = None,
) -> dict[tuple[str, str], dict[float, list[TaskRun]]]:
    """Group runs of one model into missing-rate curves: ``(task, family) -> rate -> runs``.

    The family name is the curve's context tokens plus the mechanism, e.g. ``test_cxr_mcar`` or
    ``cohort_base+test_cxr_mnar``; a run without missingness is the rate-0 point of every family that
    shares its context.
    """
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r}; allowed: 'test', 'train'")
    zero: dict[tuple[str, tuple[str, ...]], list[TaskRun]] = {}
    points: dict[tuple[str, tuple[str, ...], str], dict[float, list[TaskRun]]] = {}
    for run in runs:
        where = curve_point(run.keys["setting"], axis=axis, mechanisms=mechanisms, settings=settings)
        if where is None:
            continue
        context, mechanism, rate = where
        if mechanism is None:
            zero.setdefault((run.task, context), []).append(run)
        else:
            points.setdefault((run.task, context, mechanism), {}).setdefault(rate, []).append(run)
    families: dict[tuple[str, str], dict[float, list[TaskRun]]] = {}
    for (task, context, mechanism), by_rate in points.items():
        curve = dict(by_rate)
        if (task, context) in zero:
            curve[0.0] = zero[task, context]
        family = "+".join([*context, mechanism])
        families[task, family] = dict(sorted(curve.items()))
    return families


def _curve_reps(by_rate: Mapping[float, Sequence[TaskRun]], *, what: str) -> list[list[TaskRun]]:
    """``[rep][rate]`` runs of one curve, paired by (seed, fold) and checked for identical samples (P018)."""
    rates = list(by_rate)
    keyed = [{(run.keys["seed"], run.keys["fold"]): run for run in by_rate[rate]} for rate in rates]
    reps = sorted(
        set.intersection(*(set(keys) for keys in keyed)), key=lambda key: [(v is not None, v) for v in key]
    )
    dropped = sum(len(keys) for keys in keyed) - len(reps) * len(rates)
    if dropped:
        logger.info("robustness: %s: %d run(s) without a run at every rate are left out", what, dropped)
    out = []
    for rep in reps:
        row = [keys[rep] for keys in keyed]
        for run in row[1:]:
            if run.n != row[0].n or not np.array_equal(run.sample_id, row[0].sample_id):
                only_one = np.setxor1d(run.sample_id, row[0].sample_id).size
                raise PredictionsError(
                    "P018",
                    f"compare: {row[0].keys['setting']!r} and {run.keys['setting']!r} are not scored on the same "
                    f'samples ({only_one} sample_id(s) in only one); pass align="inner" to use the intersection',
                )
        out.append(row)
    return out


class ReferenceLine:
    """The horizontal reference of degradation curves: the best EHR-only model, a named model, or a number.

    Its score does not depend on the CXR, so one value per (task, metric, target) serves every rate.
    """

    def __init__(
        self,
        runs: Sequence[TaskRun],
        reference: Any,
        *,
        ehr_only: Sequence[str],
        threshold: Any,
        validation: Sequence[TaskRun],
    ) -> None:
        self.runs = runs
        self.reference = reference
        self.ehr_only = tuple(ehr_only)
        self.threshold = threshold
        self.validation = validation
        self._cache: dict[tuple[str, str, str], tuple[float, str | None]] = {}

    def score(self, task: str, metric: str, target: str) -> tuple[float, str | None]:
        """``(score, model)`` of the reference for one task, metric and target (NaN when absent)."""
        key = (task, metric, target)
        if key not in self._cache:
            self._cache[key] = self._compute(task, metric, target)
        return self._cache[key]

    def _compute(self, task: str, metric: str, target: str) -> tuple[float, str | None]:
        if self.reference is None:
            return math.nan, None
        if isinstance(self.reference, int | float):
            return float(self.reference), None
        task_runs = [run for run in self.runs if run.task == task]
        if self.reference == "best_ehr_only":
            model = best_model(task_runs, self.ehr_only, threshold=self.threshold, validation=self.validation)
        else:
            model = str(self.reference)
        chosen = [run for run in task_runs if run.keys["model"] == model]
        if not chosen:
            return math.nan, model
        values = np.array(
            [point_value(run, metric, target, self.threshold, self.validation) for run in chosen]
        )
        return (float(np.nanmean(values)) if np.isfinite(values).any() else math.nan), model


# --------------------------------------------------------------------------------------------------
# Frame layer: degradation curves


def _requests(run: TaskRun, metrics: Sequence[str], targets: str) -> list[tuple[str, str]]:
    return [
        (metric, target)
        for metric in metrics
        for target in label_rows(run.kind, metric, run.targets, targets)
    ]


def _curve_rows(
    model: str | None,
    task: str,
    family: str,
    rates: np.ndarray,
    reps: list[list[TaskRun]],
    *,
    metrics: Sequence[str] | None,
    targets: str,
    threshold: Any,
    validation: Sequence[TaskRun],
    reference: ReferenceLine,
    n_boot: int,
    level: float,
    n_bins: int,
    random_state: int,
    row_bootstrap: bool,
) -> list[dict[str, Any]]:
    first = reps[0][0]
    requests = _requests(first, comparison_metrics(task, first.kind, metrics), targets)
    universe, _ = cluster_universe(*[run.cluster for rep in reps for run in rep])
    cells = [
        [
            Scored.of_run(
                run,
                run_thresholds(run, threshold, validation),
                np.searchsorted(universe, run.cluster),
                requests,
                n_bins=n_bins,
            )
            for run in rep
        ]
        for rep in reps
    ]
    point, replicates = single_statistics(
        CellGrid(cells), universe.size, requests, n_boot=n_boot, random_state=random_state
    )
    n_reps = len(reps)
    single = n_reps == 1
    base = {
        "model": model,
        "seed": first.keys["seed"] if single else None,
        "fold": first.keys["fold"] if single else None,
        "task": task,
        "n": first.n,
        "n_runs": n_reps,
    }
    shared = ["row_bootstrap"] if row_bootstrap else []
    rows: list[dict[str, Any]] = []

    def interval(values: np.ndarray) -> tuple[float | None, float | None, list[str]]:
        if n_boot == 0:
            return None, None, []
        return percentile_interval(values, level)

    for request in requests:
        metric, target = request
        notes = [
            *shared,
            *([threshold.note] if metric in THRESHOLD_METRICS and first.kind != "multiclass" else []),
        ]
        curve = point[request].mean(axis=0)  # [K]: mean over reps
        boot_curve = replicates[request].mean(axis=1)  # [B, K]
        for k in range(rates.size):
            low, high, ci_notes = interval(boot_curve[:, k])
            undefined = [
                note
                for r in range(n_reps)
                if not np.isfinite(point[request][r, k])
                for note in cells[r][k].undefined_notes(metric, target)
            ]
            undefined.extend(cells[0][k].labels_used(metric, target))
            rows.append(
                {
                    **base,
                    "setting": reps[0][k].keys["setting"],
                    "metric": metric,
                    "statistic": "estimate" if single else "mean",
                    "target": target,
                    "value": float(curve[k]),
                    "ci_low": low,
                    "ci_high": high,
                    "notes": join_notes([*notes, *undefined, *ci_notes]),
                }
            )
        area_point = float(np.mean(curve_area(rates, point[request])))
        area_boot = curve_area(rates, boot_curve) if n_boot else np.empty(0)
        start, end = curve[0], curve[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            statistics = {
                "area": (area_point, area_boot),
                "relative_area": (
                    area_point / start if start else math.nan,
                    area_boot / boot_curve[:, 0] if n_boot else area_boot,
                ),
                "retention": (
                    end / start if start else math.nan,
                    boot_curve[:, -1] / boot_curve[:, 0] if n_boot else area_boot,
                ),
            }
        for statistic, (value, boot) in statistics.items():
            low, high, ci_notes = interval(boot)
            rows.append(
                {
                    **base,
                    "setting": family,
                    "metric": metric,
                    "statistic": statistic,
                    "target": target,
                    "value": float(value),
                    "ci_low": low,
                    "ci_high": high,
                    "notes": join_notes([*notes, *ci_notes]),
                }
            )
        if metric_spec(metric).higher_is_better:
            reference_score, _ = reference.score(task, metric, target)
            rows.append(
                {
                    **base,
                    "setting": family,
                    "metric": metric,
                    "statistic": "break_even_rate",
                    "target": target,
                    "value": break_even_rate(rates, curve, reference_score),
                    "notes": join_notes(notes),
                }
            )
    rows.extend(_missing_rate_rows(base, rates, reps, family))
    return rows


def _missing_rate_rows(
    base: Mapping[str, Any], rates: np.ndarray, reps: list[list[TaskRun]], family: str
) -> list[dict[str, Any]]:
    """``cxr_missing_rate`` per curve point when ``has_cxr`` is present (note ``rate_mismatch``, §7.1)."""
    first = reps[0]
    if "has_cxr" not in first[0].attributes.columns:
        return []
    rows = []
    nominal_known = (
        "cohort_base" not in family and not family.startswith("train_cxr_drop") and "+train" not in family
    )
    for k, rate in enumerate(rates):
        shares = [
            float((~rep[k].attributes["has_cxr"].cast(pl.Boolean).fill_null(False)).mean()) for rep in reps
        ]
        observed = float(np.mean(shares))
        mismatch = nominal_known and abs(observed - rate) > 0.01
        rows.append(
            {
                **base,
                "setting": first[k].keys["setting"],
                "metric": "cxr_missing_rate",
                "statistic": "estimate" if len(reps) == 1 else "mean",
                "target": first[k].targets[0] if first[k].kind == "binary" else "(macro)",
                "value": observed,
                "notes": "rate_mismatch" if mismatch else None,
            }
        )
    return rows


def robustness(
    preds: Any,
    *,
    axis: str = "test",
    mechanisms: Sequence[str] = ("mcar", "mnar"),
    metrics: Sequence[str] | None = None,
    reference: Any = "best_ehr_only",
    ehr_only: Sequence[str] = DEFAULT_EHR_ONLY,
    settings: Mapping[str, Any] | None = None,
    targets: str = "aggregate",
    threshold: Any = None,
    n_boot: int = 1000,
    cluster: str | None = "subject_id",
    kinds: Mapping[str, str] | None = None,
    classes: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    level: float = 0.95,
    n_bins: int = 10,
    random_state: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Degradation curves over simulated CXR missing rates and their summaries (eval.md §7.2).

    Settings are parsed from the ``setting`` column (grammar of §7.1); the runs of one model, task and
    mechanism form a curve whose rate-0 point is the setting without missingness. Every point is an
    ``estimate`` row (``mean`` over seeds/folds) with its own setting; ``area``, ``relative_area``,
    ``retention`` and ``break_even_rate`` rows put the curve family (e.g. ``test_cxr_mcar``) in
    ``setting``. All points share the same cluster-bootstrap resamples, so the CIs of the summaries are
    joint. With ``has_cxr`` present, the observed ``cxr_missing_rate`` of each point is reported (note
    ``rate_mismatch`` when it differs from the nominal rate by more than 0.01).

    Args:
        preds: predictions (frame, lazy frame or path) of every model and setting.
        axis: ``"test"`` (test-time MCAR/MNAR) or ``"train"`` (train-time drop, upstream's protocol).
        mechanisms: test-time mechanisms: ``mcar``, ``mnar``, ``subgroup``.
        metrics: metrics (default: the task's primary and secondary metrics).
        reference: ``"best_ehr_only"`` (the best of `ehr_only` on the primary metric), a model name, a
            number, or None; the curve's ``break_even_rate`` is where it meets this score.
        ehr_only: candidate EHR-only models (default: the registry's ``lstm`` and ``transformer``).
        settings: mapping setting -> tokens overriding the parsing.
        targets: ``"aggregate"``, ``"per_label"`` or ``"all"``.
        threshold: threshold policy (default ``Fixed(0.5)``).
        n_boot: bootstrap replicates (0: no CIs).
        cluster: cluster column (patients).
        kinds: task kind overrides.
        classes: class order of multiclass tasks.
        level: CI level.
        n_bins: calibration bins.
        random_state: seed of the bootstrap stream.
        progress: called with (done, total) after each curve.

    Returns:
        The tidy frame of eval.md §8.1.
    """
    frame, threshold = prepare_call(preds, threshold=threshold, metrics=metrics, kinds=kinds)
    runs = split_runs(frame, kinds=kinds, classes=classes, cluster=cluster)
    validation = validation_runs(threshold, kinds=kinds, classes=classes)
    line = ReferenceLine(runs, reference, ehr_only=ehr_only, threshold=threshold, validation=validation)
    models = sorted({run.keys["model"] for run in runs}, key=lambda model: (model is not None, model or ""))
    curves = []
    for model in models:
        model_runs = [run for run in runs if run.keys["model"] == model]
        for (task, family), by_rate in sorted(
            curve_families(model_runs, axis=axis, mechanisms=mechanisms, settings=settings).items()
        ):
            if len(by_rate) >= 2:
                curves.append((model, task, family, by_rate))
    if not curves:
        raise ValueError(
            f"robustness: no {axis}-time missing-rate curve with at least two rates in the settings "
            f"{sorted(map(str, {run.keys['setting'] for run in runs}))}"
        )
    rows: list[dict[str, Any]] = []
    for done, (model, task, family, by_rate) in enumerate(curves, start=1):
        reps = _curve_reps(by_rate, what=f"model {model!r}, task {task!r}, {family}")
        if reps:
            rows.extend(
                _curve_rows(
                    model,
                    task,
                    family,
                    np.asarray(list(by_rate), dtype=np.float64),
                    reps,
                    metrics=metrics,
                    targets=targets,
                    threshold=threshold,
                    validation=validation,
                    reference=line,
                    n_boot=n_boot,
                    level=level,
                    n_bins=n_bins,
                    random_state=random_state,
                    row_bootstrap=cluster is None or cluster not in frame.columns,
                )
            )
        if progress is not None:
            progress(done, len(curves))
    # The rate-0 point belongs to every mechanism's curve; report it once.
    return make_rows(rows).unique(subset=list(SORT_COLUMNS), keep="first", maintain_order=True)


# --------------------------------------------------------------------------------------------------
# Frame layer: fusion gain and modality contribution


def fusion_gain(
    preds: Any,
    *,
    fused: Sequence[str] | None = None,
    unimodal: Sequence[str] = DEFAULT_UNIMODAL,
    metrics: Sequence[str] | None = None,
    targets: str = "aggregate",
    by: str | None = None,
    select_on: Any = None,
    correction: str = "holm",
    n_perm: int = 10_000,
    n_boot: int = 1000,
    random_state: int = 0,
    kinds: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **compare_kwargs: Any,
) -> pl.DataFrame:
    """Gain of each fused model over the best unimodal model (eval.md §7.3).

    ``G = M(fused) − M(best unimodal)`` per task (and per label with ``targets="per_label"``) and setting,
    with a paired cluster-bootstrap CI, a paired permutation p, and Holm or BH adjustment within a family:
    for an aggregate target (``(macro)``) or a binary task, the fused models of one task x metric x target
    x setting (x group); for single labels (classes) of a multilabel (multiclass) task, all the labels of
    one fused model x reference x metric x setting (x group), the screen over e.g. the 25 phenotypes. The
    best unimodal model is picked per task on the primary metric of `select_on` (validation predictions),
    else on the test predictions (note ``selected_on_test``). Rows have ``baseline`` = that model and the
    note ``best_unimodal``.

    Args:
        preds: predictions of the fused and unimodal models.
        fused: fused models (default: every model not in `unimodal`).
        unimodal: candidate unimodal models (default: the registry's ``lstm``, ``transformer``, ``resnet``).
        metrics: metrics (default: the task's primary and secondary metrics).
        targets: ``"aggregate"`` or ``"per_label"`` (also ``"all"``).
        by: an attribute that splits the samples (e.g. ``"has_cxr"`` on the base cohort); rows carry it
            in ``group_attribute`` / ``group``.
        select_on: validation predictions for choosing the best unimodal model.
        correction: ``"holm"``, ``"bh"`` or ``"none"``.
        n_perm: permutations.
        n_boot: bootstrap replicates.
        random_state: seed of the resampling streams.
        kinds: task kind overrides.
        progress: called with (tasks done, tasks) after each task.
        **compare_kwargs: passed to :func:`carebench_eval.compare` (``threshold``, ``cluster``, ...).

    Returns:
        The tidy frame of eval.md §8.1.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; allowed: {', '.join(map(repr, CORRECTIONS))}")
    frame = load_predictions(preds, kinds=kinds)
    if "model" not in frame.columns:
        raise ValueError("fusion_gain: predictions need a 'model' column")
    present = sorted(frame["model"].drop_nulls().unique().to_list())
    fused_models = [model for model in present if model not in unimodal] if fused is None else list(fused)
    unknown = sorted(set(fused_models) - set(present))
    if unknown:
        raise ValueError(f"fusion_gain: fused model(s) {unknown} not in predictions; available: {present}")
    threshold = compare_kwargs.get("threshold") or Fixed(0.5)
    classes = compare_kwargs.get("classes")
    validation = validation_runs(threshold, kinds=kinds, classes=classes)
    selection_frame = frame if select_on is None else load_predictions(select_on, kinds=kinds)
    selection_runs = split_runs(selection_frame, kinds=kinds, classes=classes)
    notes = ["best_unimodal"] + (["selected_on_test"] if select_on is None else [])
    parts: list[pl.DataFrame] = []
    tasks = sorted(frame["task"].unique().to_list())
    for done, task in enumerate(tasks, start=1):
        reference = best_model(
            [run for run in selection_runs if run.task == task],
            unimodal,
            threshold=threshold,
            validation=validation,
        )
        if reference is None:
            raise ValueError(
                f"fusion_gain: none of the unimodal models {list(unimodal)} has predictions for task {task!r}"
            )
        task_frame = same_samples_subset(frame.filter(pl.col("task") == task), frame)
        if by is None:
            subsets: list[tuple[str | None, pl.DataFrame]] = [(None, task_frame)]
        else:
            per_sample = split_runs(
                task_frame.filter(pl.col("model") == reference), kinds=kinds, classes=classes
            )
            labels = {
                sample: label
                for run in per_sample
                for sample, label in zip(run.sample_id, group_labels(run, by), strict=True)
            }
            keyed = task_frame.with_columns(
                pl.col("sample_id")
                .cast(pl.String)
                .replace_strict(labels, default=None, return_dtype=pl.String)
                .alias("_group")
            )
            subsets = [
                (group, same_samples_subset(keyed.filter(pl.col("_group") == group).drop("_group"), frame))
                for group in sorted(set(labels.values()))
            ]
        for group, subset in subsets:
            for model in fused_models:
                if model not in subset["model"].unique().to_list():
                    continue
                result = compare(
                    (subset, model),
                    (subset, reference),
                    metrics=metrics,
                    targets=targets,
                    n_perm=n_perm,
                    n_boot=n_boot,
                    random_state=random_state,
                    kinds=kinds,
                    **compare_kwargs,
                )
                if by is not None:
                    result = result.with_columns(
                        pl.lit(by, dtype=pl.String).alias("group_attribute"),
                        pl.lit(group, dtype=pl.String).alias("group"),
                    )
                parts.append(append_notes(result, notes))
        if progress is not None:
            progress(done, len(tasks))
    if not parts:
        raise ValueError(f"fusion_gain: none of the fused models {fused_models} has predictions to compare")
    gains = pl.concat(parts)
    # Rows of single labels (classes) of a multilabel (multiclass) task form a screen across labels; the
    # others (aggregates, binary tasks) a family across the fused models.
    targets_per_task = frame.group_by("task").agg(pl.col("target").n_unique()).iter_rows()
    several_labels = [
        task
        for task, n_targets in targets_per_task
        if task_kind(task, n_targets=n_targets, kinds=kinds) != "binary"
    ]
    per_label = pl.col("task").is_in(several_labels) & ~pl.col("target").str.starts_with("(")
    across_models = adjust_pvalues(gains.filter(~per_label), family=ACROSS_MODELS, method=correction)
    across_labels = adjust_pvalues(gains.filter(per_label), family=ACROSS_LABELS, method=correction)
    return sort_results(pl.concat([across_models, across_labels]))


def _runs_of(
    runs: Sequence[TaskRun],
    model: str | None,
    task: str,
    setting: str | None,
    settings: Mapping[str, Any] | None,
) -> list[TaskRun]:
    """The runs of `model` on `task` in `setting` (the default setting matches its aliases)."""
    return [
        run
        for run in runs
        if run.keys["model"] == model
        and run.task == task
        and same_setting(run.keys["setting"], setting, settings)
    ]


def modality_contribution(
    preds: Any,
    *,
    full: str | None = "",
    withheld: Mapping[str, str] | None = None,
    unimodal_cxr: str | None = DEFAULT_CXR_ONLY,
    models: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    targets: str = "aggregate",
    threshold: Any = None,
    n_perm: int = 10_000,
    n_boot: int = 1000,
    cluster: str | None = "subject_id",
    kinds: Mapping[str, str] | None = None,
    classes: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    level: float = 0.95,
    n_bins: int = 10,
    random_state: int = 0,
) -> pl.DataFrame:
    """Leave-one-modality-out contribution and modality imbalance (eval.md §7.4).

    ``modality_drop`` = ``M_F(full) − M_F(modality withheld for every test stay)`` per model, task and
    metric, with a paired bootstrap CI and a permutation p that swaps the two settings' scores per
    cluster (same model, same samples); ``setting`` holds the withheld setting. ``cxr_utilization`` =
    ``D_CXR / (M_CXR-only − M_chance)`` (chance: 0.5 for AUROC, the base rate for AUPRC) when
    `unimodal_cxr` is given, and ``cxr_share`` = ``D_CXR / (D_CXR + D_EHR)`` when both drops exist; both
    descriptive, with CIs from the same resamples.

    Args:
        preds: predictions with the full and the withheld settings.
        full: the full-modality setting (``""``, None, ``"natural"`` and ``"cohort_matched"`` are the default).
        withheld: modality -> setting in which it is withheld (default ``{"cxr": "test_cxr_mcar_1.0"}``).
        unimodal_cxr: the CXR-only model for ``cxr_utilization`` (default ``"resnet"``, the registry's CXR
            baseline; no utilization rows when it has no predictions); None skips utilization.
        models: models to report (default: every model except `unimodal_cxr`).
        metrics: metrics (default: the task's primary and secondary metrics).
        targets: ``"aggregate"``, ``"per_label"`` or ``"all"``.
        threshold: threshold policy (default ``Fixed(0.5)``).
        n_perm: permutations (0: no test).
        n_boot: bootstrap replicates (0: no CIs).
        cluster: cluster column (patients).
        kinds: task kind overrides.
        classes: class order of multiclass tasks.
        settings: mapping setting -> tokens overriding the parsing.
        level: CI level.
        n_bins: calibration bins.
        random_state: seed of the resampling streams.

    Returns:
        The tidy frame of eval.md §8.1.
    """
    withheld = dict(withheld or {"cxr": "test_cxr_mcar_1.0"})
    unknown = sorted(set(withheld) - {"cxr", "ehr"})
    if unknown:
        raise ValueError(f"modality_contribution: unknown modality {unknown}; allowed: 'cxr', 'ehr'")
    frame, threshold = prepare_call(preds, threshold=threshold, metrics=metrics, kinds=kinds)
    runs = split_runs(frame, kinds=kinds, classes=classes, cluster=cluster)
    present = sorted({run.keys["model"] for run in runs}, key=lambda model: (model is not None, model or ""))
    chosen = [model for model in present if model != unimodal_cxr] if models is None else list(models)
    options = CompareOptions.resolve(
        threshold,
        frame=frame,
        cluster=cluster,
        kinds=kinds,
        classes=classes,
        metrics=metrics,
        targets=targets,
        n_perm=n_perm,
        n_boot=n_boot,
        level=level,
        n_bins=n_bins,
        random_state=random_state,
    )
    rows: list[dict[str, Any]] = []
    for model in chosen:
        for task in sorted({run.task for run in runs if run.keys["model"] == model}):
            full_runs = _runs_of(runs, model, task, full, settings)
            if not full_runs:
                continue
            drops: dict[str, tuple[dict[tuple[str, str], Any], np.ndarray]] = {}
            for modality, setting in sorted(withheld.items()):
                withheld_runs = _runs_of(runs, model, task, setting, settings)
                if not withheld_runs:
                    continue
                names = (f"{model} ({full or 'full'})", f"{model} ({setting})")
                reps = pair_reps(full_runs, withheld_runs, names=names, what=f"task {task!r}")
                cell = PairedCell(
                    task, setting, [[align_pair(a, b, align="exact", names=names)] for a, b in reps]
                )
                cell_rows, results, universe = compare_cell(cell, (model, model), options)
                for row in cell_rows:
                    rows.append({**row, "baseline": None, "statistic": "modality_drop"})
                drops[modality] = (results, universe)
            if "cxr" in drops and unimodal_cxr is not None:
                rows.extend(
                    _utilization_rows(
                        model,
                        task,
                        drops["cxr"],
                        runs,
                        unimodal_cxr,
                        full,
                        withheld["cxr"],
                        options,
                        settings,
                    )
                )
            if "cxr" in drops and "ehr" in drops:
                rows.extend(_share_rows(model, task, drops, withheld["cxr"], options))
    if not rows:
        raise ValueError(
            f"modality_contribution: no model has predictions in both the full setting {full!r} and a withheld "
            f"setting {sorted(withheld.values())}"
        )
    return make_rows(rows)


def _chance_requests(requests: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("base_rate", target) for metric, target in requests if metric == "auprc_score"]


def _imbalance_row(value: float, boot: np.ndarray, options: CompareOptions) -> dict[str, Any]:
    """``value``, its percentile CI from the replicates `boot` ``[B]`` and the notes of an imbalance summary."""
    low, high, ci_notes = percentile_interval(boot, options.level) if options.n_boot else (None, None, [])
    notes = [*(["row_bootstrap"] if options.row_bootstrap else []), *ci_notes]
    return {"value": value, "ci_low": low, "ci_high": high, "notes": join_notes(notes)}


def _utilization_rows(
    model: str,
    task: str,
    cxr_drop: tuple[dict[tuple[str, str], Any], np.ndarray],
    runs: Sequence[TaskRun],
    unimodal_cxr: str,
    full: str | None,
    setting: str,
    options: CompareOptions,
    settings: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    results, universe = cxr_drop
    requests = [request for request in results if request[0] in ("auroc_score", "auprc_score")]
    cxr_runs = _runs_of(runs, unimodal_cxr, task, full, settings)
    if not requests or not cxr_runs:
        return []
    if not all(np.isin(run.cluster, universe).all() for run in cxr_runs):
        logger.info(
            "modality_contribution: %r is not scored on the samples of %r; no cxr_utilization",
            unimodal_cxr,
            model,
        )
        return []
    wanted = [*requests, *_chance_requests(requests)]
    cells = [
        [
            Scored.of_run(
                run,
                run_thresholds(run, options.threshold, options.validation),
                np.searchsorted(universe, run.cluster),
                wanted,
                n_bins=options.n_bins,
            )
        ]
        for run in cxr_runs
    ]
    point, replicates = single_statistics(
        CellGrid(cells), universe.size, wanted, n_boot=options.n_boot, random_state=options.random_state
    )
    rows = []
    for request in requests:
        metric, target = request
        if metric == "auroc_score":
            chance_point, chance_boot = 0.5, np.full(options.n_boot, 0.5)
        else:
            chance_point = float(point["base_rate", target].mean())
            chance_boot = replicates["base_rate", target].mean(axis=(1, 2))
        informative_point = float(point[request].mean()) - chance_point
        informative_boot = replicates[request].mean(axis=(1, 2)) - chance_boot
        with np.errstate(divide="ignore", invalid="ignore"):
            value = results[request].delta / informative_point if informative_point else math.nan
            boot = results[request].replicates / informative_boot
        rows.append(
            {
                **_imbalance_row(float(value), boot, options),
                "model": model,
                "setting": setting,
                "task": task,
                "metric": metric,
                "statistic": "cxr_utilization",
                "target": target,
                "n": int(universe.size if options.row_bootstrap else cxr_runs[0].n),
                "n_runs": len(cxr_runs),
            }
        )
    return rows


def _share_rows(
    model: str,
    task: str,
    drops: Mapping[str, tuple[dict[tuple[str, str], Any], np.ndarray]],
    setting: str,
    options: CompareOptions,
) -> list[dict[str, Any]]:
    cxr_results, cxr_universe = drops["cxr"]
    ehr_results, ehr_universe = drops["ehr"]
    if not np.array_equal(cxr_universe, ehr_universe):
        logger.info(
            "modality_contribution: the CXR and EHR drops of %r use different samples; no cxr_share", model
        )
        return []
    rows = []
    for request in sorted(set(cxr_results) & set(ehr_results)):
        metric, target = request
        d_cxr, d_ehr = cxr_results[request], ehr_results[request]
        total = d_cxr.delta + d_ehr.delta
        value = d_cxr.delta / total if total else math.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = d_cxr.replicates / (d_cxr.replicates + d_ehr.replicates)
        rows.append(
            {
                **_imbalance_row(float(value), boot, options),
                "model": model,
                "setting": setting,
                "task": task,
                "metric": metric,
                "statistic": "cxr_share",
                "target": target,
                "n": int(cxr_universe.size),
            }
        )
    return rows
