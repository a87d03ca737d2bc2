"""Validated long predictions as per-run arrays, and the thresholds each run is evaluated at.

Every frame-level function (`score`, `compare`, `fairness`, `robustness`) starts here: `split_runs` turns
a validated frame into one `TaskRun` per (run, task), samples sorted by id so row order never matters
(eval.md §0.5); `run_thresholds` applies a threshold policy (eval.md §2.3) and `predictions_at` turns
scores into the 0/1 predictions of the label metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from carebench_eval.errors import PredictionsError
from carebench_eval.io import CORE_COLUMNS, RUN_KEYS, class_order, load_predictions
from carebench_eval.metrics.threshold import (
    Fixed,
    FromValidation,
    ThresholdPolicy,
    TopK,
    choose_threshold,
    top_k_threshold,
)
from carebench_eval.registry import metric_spec, task_kind
from carebench_eval.settings import parse_setting, same_setting, training_setting

__all__ = [
    "TaskRun",
    "predictions_at",
    "prepare_call",
    "run_keys_text",
    "run_thresholds",
    "split_runs",
    "threshold_rows",
    "validation_run_of",
    "validation_runs",
]

logger = logging.getLogger(__name__)

ClassOrders = Mapping[str, Sequence[str]] | Sequence[str] | None
"""Class order of multiclass tasks: a mapping task -> names, or one list for every task."""


@dataclass(frozen=True)
class TaskRun:
    """One run (model, seed, fold, setting) of one task as aligned arrays, samples sorted by id.

    Attributes:
        keys: run key values (``model``, ``seed``, ``fold``, ``setting``; None when absent).
        task: task name.
        kind: ``binary``, ``multilabel`` or ``multiclass``.
        targets: ``[L]`` label names, or class names in class order (multiclass).
        sample_id: ``[n]`` sample ids (str), sorted.
        cluster: ``[n]`` cluster ids (str): ``subject_id`` or, without it, the sample id.
        y: ``[n, L]`` int8 0/1 labels (multiclass: one-hot ``[n, K]``).
        s: ``[n, L]`` float64 scores.
        attributes: one row per sample (same order) with the attribute columns (eval.md §6.1).
    """

    keys: dict[str, Any]
    task: str
    kind: str
    targets: tuple[str, ...]
    sample_id: np.ndarray
    cluster: np.ndarray
    y: np.ndarray
    s: np.ndarray
    attributes: pl.DataFrame

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.sample_id.size)

    def label_of(self) -> np.ndarray:
        """Multiclass true class index ``[n]``."""
        return np.argmax(self.y, axis=1)

    def take(self, rows: np.ndarray) -> TaskRun:
        """The run restricted to sample `rows` (sorted order kept)."""
        return TaskRun(
            keys=self.keys,
            task=self.task,
            kind=self.kind,
            targets=self.targets,
            sample_id=self.sample_id[rows],
            cluster=self.cluster[rows],
            y=self.y[rows],
            s=self.s[rows],
            # A frame without columns has no rows to gather.
            attributes=self.attributes[rows] if self.attributes.width else self.attributes,
        )


def split_runs(
    frame: pl.DataFrame,
    *,
    kinds: Mapping[str, str] | None = None,
    classes: ClassOrders = None,
    cluster: str | None = "subject_id",
    ordinal_tasks: Sequence[str] = (),
) -> list[TaskRun]:
    """One `TaskRun` per (run, task) of validated long predictions.

    Args:
        frame: validated predictions (eval.md §1.1).
        kinds: task -> kind overrides.
        classes: class order per multiclass task (a mapping task -> names, or one list for all).
        cluster: cluster column; None or absent: each sample is its own cluster.
        ordinal_tasks: multiclass tasks that need an ordinal class order (weighted κ; P014 otherwise).

    Returns:
        Runs sorted by (model, seed, fold, setting, task), nulls first.
    """
    keys = [key for key in RUN_KEYS if key in frame.columns]
    attribute_columns = [column for column in frame.columns if column not in CORE_COLUMNS]
    cluster_column = cluster if cluster is not None and cluster in frame.columns else "sample_id"
    runs: list[TaskRun] = []
    for key_values, part in sorted(
        frame.group_by([*keys, "task"], maintain_order=True),
        key=lambda item: tuple((value is not None, value) for value in item[0]),
    ):
        values = dict(zip([*keys, "task"], key_values, strict=True))
        task = str(values.pop("task"))
        names = tuple(sorted(part["target"].unique().to_list()))
        kind = task_kind(task, n_targets=len(names), kinds=kinds)
        if kind == "multiclass":
            task_classes = classes.get(task) if isinstance(classes, Mapping) else classes
            names = class_order(task, names, task_classes, required=task in ordinal_tasks)
        target_index = {name: index for index, name in enumerate(names)}
        part = part.with_columns(
            pl.col("target").replace_strict(target_index, return_dtype=pl.Int64).alias("_target_index")
        ).sort("sample_id", "_target_index")
        n_targets = len(names)
        n = part.height // n_targets
        per_sample = part.gather_every(n_targets)
        runs.append(
            TaskRun(
                keys={key: values.get(key) for key in RUN_KEYS},
                task=task,
                kind=kind,
                targets=names,
                sample_id=per_sample["sample_id"].cast(pl.String).to_numpy().astype(str),
                cluster=per_sample[cluster_column].cast(pl.String).to_numpy().astype(str),
                y=part["y_true"].to_numpy().astype(np.int8).reshape(n, n_targets),
                s=part["y_score"].to_numpy().astype(np.float64).reshape(n, n_targets),
                attributes=per_sample.select(attribute_columns),
            )
        )
    return runs


def prepare_call(
    preds: Any,
    *,
    threshold: ThresholdPolicy | None,
    metrics: Sequence[str] | None,
    kinds: Mapping[str, str] | None,
) -> tuple[pl.DataFrame, ThresholdPolicy]:
    """The validated predictions and threshold policy of a frame-level call, its metric names checked.

    Args:
        preds: predictions (frame, lazy frame, path, list or glob).
        threshold: threshold policy; None = ``Fixed(0.5)``.
        metrics: requested registry names, or None.
        kinds: task kind overrides.

    Raises:
        ValueError: an unknown metric name or threshold policy.
    """
    for name in metrics or ():
        metric_spec(name)
    policy = Fixed(0.5) if threshold is None else threshold
    if not isinstance(policy, Fixed | FromValidation | TopK):
        raise ValueError(f"threshold must be Fixed(...), FromValidation(...) or TopK(...), got {policy!r}")
    return load_predictions(preds, kinds=kinds), policy


def run_keys_text(keys: Mapping[str, Any]) -> str:
    """``model='drfuse', seed=42, fold=1`` (the ``{run}`` of eval.md §1.3 messages); None keys are left out."""
    shown = [f"{key}={value!r}" for key, value in keys.items() if value is not None]
    return ", ".join(shown) if shown else "(single run)"


def validation_runs(
    policy: ThresholdPolicy, *, kinds: Mapping[str, str] | None = None, classes: ClassOrders = None
) -> list[TaskRun]:
    """The validation runs of a `FromValidation` policy (empty for the other policies)."""
    if not isinstance(policy, FromValidation):
        return []
    return split_runs(load_predictions(policy.predictions, kinds=kinds), kinds=kinds, classes=classes)


def run_thresholds(run: TaskRun, policy: ThresholdPolicy, validation: Sequence[TaskRun] = ()) -> np.ndarray:
    """Per-target thresholds ``[L]`` of `run` under `policy` (eval.md §2.3).

    `FromValidation` uses the validation run of the same trained model: the same task, model, seed and
    fold, and the same setting, or (for a test-time setting such as ``cohort_base+test_cxr_mcar_0.5``)
    the setting's training part, its cohort and train-time drop (``cohort_base``). A validation run of
    another cohort or drop rate never stands in. Multiclass runs use the argmax and have no threshold
    (all NaN); a target the validation run lacks gets NaN, so its label metrics are NaN.

    Args:
        run: the evaluated run.
        policy: `Fixed`, `TopK` or `FromValidation`.
        validation: validation runs (see `validation_runs`).

    Returns:
        ``[L]`` float64 thresholds.

    Raises:
        PredictionsError: P019 when `FromValidation` has no validation run of the same trained model.
        ValueError: `policy` is not a threshold policy.
    """
    n_targets = len(run.targets)
    if run.kind == "multiclass":
        return np.full(n_targets, np.nan)
    if isinstance(policy, Fixed):
        return np.full(n_targets, policy.threshold)
    if isinstance(policy, TopK):
        return np.array([top_k_threshold(run.s[:, j], policy.fraction) for j in range(n_targets)])
    if not isinstance(policy, FromValidation):
        raise ValueError(f"threshold must be Fixed(...), FromValidation(...) or TopK(...), got {policy!r}")
    chosen = validation_run_of(run, validation)
    if chosen is None:
        wanted = {key: run.keys[key] for key in ("model", "seed", "fold", "setting")}
        raise PredictionsError(
            "P019", f"threshold: no validation predictions for run {run_keys_text(wanted)}, task {run.task!r}"
        )
    thresholds = np.full(n_targets, np.nan)
    missing = []
    for j, target in enumerate(run.targets):
        if target not in chosen.targets:
            missing.append(target)
            continue
        column = chosen.targets.index(target)
        thresholds[j] = choose_threshold(
            chosen.y[:, column], chosen.s[:, column], rule=policy.rule, target=policy.target
        )
    if missing:
        logger.warning(
            "threshold: validation predictions of run %s, task %r lack target(s) %s; their label metrics are NaN",
            run_keys_text(run.keys),
            run.task,
            missing,
        )
    return thresholds


def validation_run_of(run: TaskRun, validation: Sequence[TaskRun]) -> TaskRun | None:
    """The validation run of the model behind `run`, or None.

    Same task, model, seed and fold, and either the same setting or the setting's training part (see
    `carebench_eval.settings.training_setting`); an exact setting wins.
    """
    same_model = [
        other
        for other in validation
        if other.task == run.task
        and all(other.keys[key] == run.keys[key] for key in ("model", "seed", "fold"))
    ]
    setting = run.keys["setting"]
    exact = [other for other in same_model if same_setting(other.keys["setting"], setting)]
    if exact:
        return exact[0]
    trained = training_setting(setting)
    for other in same_model:
        try:
            if trained is not None and parse_setting(other.keys["setting"]) == trained:
                return other
        except ValueError:
            continue
    return None


def predictions_at(run: TaskRun, thresholds: np.ndarray) -> np.ndarray:
    """0/1 predictions ``[n, L]``: ``s >= t`` per label, never positive at a NaN threshold.

    Multiclass: the one-hot argmax (ties to the lowest class index); `thresholds` is ignored.
    """
    if run.kind == "multiclass":
        pred = np.zeros_like(run.y)
        pred[np.arange(run.n), run.s.argmax(axis=1)] = 1
        return pred
    return (run.s >= np.where(np.isnan(thresholds), np.inf, thresholds)[None, :]).astype(np.int8)


def threshold_rows(
    policy: ThresholdPolicy, run: TaskRun, thresholds: np.ndarray, base: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The ``threshold`` rows (note ``policy=...``) that go with threshold-dependent values."""
    if run.kind == "multiclass":
        return []
    return [
        {
            **base,
            "metric": "threshold",
            "statistic": "estimate",
            "target": target,
            "value": float(thresholds[label]),
            "n": run.n,
            "n_runs": 1,
            "notes": policy.note,
        }
        for label, target in enumerate(run.targets)
    ]
