"""Array inputs of the per-metric functions and averaging over labels or classes (eval.md §2.5).

The per-metric functions accept scikit-learn's shapes: binary ``[n]``, multilabel indicator ``[n, L]``,
multiclass ``y_true [n]`` with ``y_score [n, K]``. Averages: ``macro`` = unweighted mean over the targets
whose value is defined (scikit-learn instead returns NaN or counts an undefined label as 0/1),
``weighted`` = support-weighted mean over the same targets, ``micro`` = the metric on the ``n L`` flattened
(label, score) pairs, ``None`` = per-target values.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from carebench_eval.errors import warn_undefined
from carebench_eval.metrics.core import BinaryEvaluator, MulticlassEvaluator, average_targets

__all__ = [
    "UNDEFINED_NOTES",
    "Kind",
    "class_indices",
    "finish",
    "resolve_labels",
    "resolve_scores",
    "weight_row",
]

Kind = Literal["binary", "multilabel", "multiclass"]
AVERAGES = ("macro", "weighted", "micro", None)

UNDEFINED_NOTES: dict[str, str] = {
    "ppv_score": "no_predicted_positive",
    "npv_score": "no_predicted_negative",
    "kappa_score": "degenerate_agreement",
    "kappa_linear_score": "degenerate_agreement",
    "kappa_quadratic_score": "degenerate_agreement",
}
"""Note token of an undefined value by metric; every other metric is undefined for `single_class`."""


def weight_row(sample_weight: np.ndarray | None, n: int) -> np.ndarray:
    """One row of weights ``[1, n]``: ones (int64) or `sample_weight` (int64 if integral, else float64)."""
    if sample_weight is None:
        return np.ones((1, n), dtype=np.int64)
    weight = np.asarray(sample_weight)
    if weight.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {weight.shape}")
    if not np.all(np.isfinite(weight)) or np.any(weight < 0):
        raise ValueError("sample_weight must be finite and non-negative")
    if np.issubdtype(weight.dtype, np.integer):
        return weight.astype(np.int64)[None, :]
    return weight.astype(np.float64)[None, :]


def _binary_labels(y_true: np.ndarray, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.dtype == bool:
        return y.astype(np.int8)
    values = y.astype(np.float64)
    if not np.all((values == 0) | (values == 1)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return values.astype(np.int8)


def _probabilities(y_score: np.ndarray) -> np.ndarray:
    score = np.asarray(y_score, dtype=np.float64)
    if not np.all(np.isfinite(score)):
        raise ValueError("y_score must be finite")
    return score


def resolve_scores(
    y_true: np.ndarray, y_score: np.ndarray, *, multi_class: str | None = None, labels: object = None
) -> tuple[Kind, np.ndarray, np.ndarray]:
    """Kind and normalized arrays of a score metric's inputs.

    Returns:
        ``("binary", y [n, 1], s [n, 1])``, ``("multilabel", y [n, L], s [n, L])`` or
        ``("multiclass", y [n] class indices, s [n, K])``.
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    if multi_class not in (None, "ovr"):
        raise ValueError(f"multi_class must be None or 'ovr', got {multi_class!r}")
    if y.ndim == 1 and s.ndim == 2 and s.shape[1] > 1:
        if s.shape[0] != y.shape[0]:
            raise ValueError(f"y_true has {y.shape[0]} samples but y_score has {s.shape[0]}")
        classes = np.arange(s.shape[1]) if labels is None else labels
        return "multiclass", class_indices(y, classes=classes), _probabilities(s)
    if s.ndim == 2 and s.shape[1] == 1 and y.ndim == 1:
        s = s[:, 0]
    if y.ndim == 2 and y.shape[1] == 1 and s.ndim == 1:
        y = y[:, 0]
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score must have the same shape, got {y.shape} and {s.shape}")
    if y.ndim == 1:
        return "binary", _binary_labels(y)[:, None], _probabilities(s)[:, None]
    if y.ndim == 2:
        return "multilabel", _binary_labels(y), _probabilities(s)
    raise ValueError(f"y_true must be 1-D or 2-D, got {y.ndim} dimensions")


def class_indices(values: np.ndarray, *, classes: object) -> np.ndarray:
    """Map class values to their index in `classes` (``[n]`` int64); unknown values raise."""
    order = list(np.asarray(classes).tolist())
    lookup = {value: index for index, value in enumerate(order)}
    unique, inverse = np.unique(np.asarray(values), return_inverse=True)
    missing = [value for value in unique.tolist() if value not in lookup]
    if missing:
        raise ValueError(f"class value(s) {missing} not in labels {order}")
    return np.asarray([lookup[value] for value in unique.tolist()], dtype=np.int64)[inverse.reshape(-1)]


def resolve_labels(
    y_true: np.ndarray, y_pred: np.ndarray, *, labels: object = None
) -> tuple[Kind, np.ndarray, np.ndarray, int]:
    """Kind and normalized arrays of a label metric's inputs.

    1-D 0/1 arrays are binary, 2-D arrays multilabel; 1-D arrays with other values, or any call with
    `labels`, are multiclass (classes = `labels` in that order, else the sorted values present).

    Returns:
        ``(kind, y, y_pred, n_classes)``: binary/multilabel ``[n, L]`` 0/1 arrays (``n_classes = 2``);
        multiclass ``[n]`` class indices.
    """
    y = np.asarray(y_true)
    p = np.asarray(y_pred)
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {y.shape} and {p.shape}")
    if y.ndim == 2:
        return "multilabel", _binary_labels(y), _binary_labels(p, "y_pred"), 2
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D or 2-D, got {y.ndim} dimensions")
    present = np.unique(np.concatenate([y, p])) if y.size else np.asarray([])
    binary_values = bool(np.all(np.isin(present, [0, 1]))) if present.dtype != object else False
    if labels is None and binary_values:
        return "binary", _binary_labels(y)[:, None], _binary_labels(p, "y_pred")[:, None], 2
    classes = present if labels is None else labels
    n_classes = len(np.asarray(classes))
    return "multiclass", class_indices(y, classes=classes), class_indices(p, classes=classes), n_classes


def finish(
    name: str,
    kind: Kind,
    evaluator: BinaryEvaluator | MulticlassEvaluator,
    columns: np.ndarray,
    *,
    average: str | None,
) -> float | np.ndarray:
    """Evaluate `name` for one weight row, warn about undefined targets, and average.

    Returns:
        A float, or ``[T]`` per-target values when ``average=None`` (multilabel / per-class metrics).
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of 'macro', 'weighted', 'micro', None; got {average!r}")
    per_target = evaluator.values(columns)[name]
    undefined = np.isnan(per_target[0])
    if undefined.any():
        first = int(np.flatnonzero(undefined)[0])
        example = "" if per_target.shape[1] == 1 else f", e.g. target index {first}"
        warn_undefined(
            name,
            UNDEFINED_NOTES.get(name, "single_class"),
            cells=int(undefined.sum()),
            example=example,
            n=int(columns.sum()) if np.issubdtype(columns.dtype, np.integer) else None,
            stacklevel=4,
        )
    if per_target.shape[1] == 1:
        return float(per_target[0, 0])
    if average is None:
        return per_target[0]
    if average == "micro":
        if not isinstance(evaluator, BinaryEvaluator):
            raise ValueError("average='micro' applies to binary/multilabel inputs only")
        return float(evaluator.micro().values(columns)[name][0, 0])
    support = evaluator.support(columns) if average == "weighted" else None
    return float(average_targets(per_target, average=average, defined=~undefined, support=support)[0])
