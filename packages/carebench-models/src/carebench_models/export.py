"""Predictions in the long format of DESIGN.md §5, as numpy columns (the CLI makes the frame)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from carebench_models.errors import CarebenchModelError
from carebench_models.task import TaskSpec
from carebench_models.training.trainer import PredictionArrays


def long_predictions(
    pred: PredictionArrays,
    task: TaskSpec,
    *,
    extra: Mapping[str, np.ndarray] | None = None,
    **keys: object,
) -> dict[str, np.ndarray]:
    """One row per (sample, target): binary 1 row per sample, multilabel and multiclass K rows.

    Rows are sample-major (all targets of the first sample, then the next). For multiclass tasks
    `target` is the class name, `y_true` is 1 for the true class and `y_score` the class's
    probability.

    Args:
        pred: predictions with labels (`pred.y` must not be None).
        task: the task the model was trained on.
        extra: per-sample columns [n] (e.g. `subject_id`, `sex`, `has_cxr`), repeated per target.
        **keys: constant columns (`model`, `seed`, `fold`, `setting`, ...).

    Returns:
        Columns `sample_id` int64, `task` str, `target` str, `y_true` int8, `y_score` float64, then the
        keys and the extra columns, all of length n × (1 or K).

    Raises:
        CarebenchModelError: no labels, shapes that do not fit the task, or extra columns of another length.

    Example:
        >>> import numpy as np
        >>> pred = PredictionArrays(np.array([7, 8]), np.array([[0.2], [0.9]]), np.array([[0.0], [1.0]]), np.array([True, False]))
        >>> out = long_predictions(pred, TaskSpec("mortality", "binary", 1, ("mortality",)), model="lstm")
        >>> out["y_true"].tolist(), out["model"].tolist()
        ([0, 1], ['lstm', 'lstm'])
    """
    if pred.y is None:
        raise CarebenchModelError("predictions without labels cannot be exported: y_true is required")
    proba = np.asarray(pred.proba, dtype=np.float64)
    rows = len(pred.stay_id)
    width = task.num_outputs
    if proba.shape != (rows, width):
        raise CarebenchModelError(
            f"proba has shape {proba.shape}, expected ({rows}, {width}) for task {task.name!r}"
        )
    y = np.asarray(pred.y)
    if task.kind == "multiclass":
        classes = y.reshape(rows).astype(np.int64)
        if rows and (classes.min() < 0 or classes.max() >= width):
            raise CarebenchModelError(f"class indices must lie in [0, {width}) for task {task.name!r}")
        y_true = (classes[:, None] == np.arange(width)[None, :]).astype(np.int8)
    else:
        y_true = y.reshape(rows, width).astype(np.int8)
    columns: dict[str, np.ndarray] = {
        "sample_id": np.repeat(np.asarray(pred.stay_id, dtype=np.int64), width),
        "task": np.full(rows * width, task.name),
        "target": np.tile(np.asarray(task.label_names), rows),
        "y_true": y_true.reshape(-1),
        "y_score": proba.reshape(-1),
    }
    for name, value in keys.items():
        columns[name] = np.full(rows * width, value)
    for name, values in (extra or {}).items():
        array = np.asarray(values)
        if array.shape[:1] != (rows,):
            raise CarebenchModelError(f"extra column {name!r} has {array.shape[:1]} rows, expected {rows}")
        columns[name] = np.repeat(array, width)
    return columns
