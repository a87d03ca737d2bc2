"""Multiclass label metrics: accuracy and Cohen's κ, unweighted and ordinal (eval.md §2.6).

Predictions are class values (``argmax`` of the scores, ties → lowest index, in the frame layer).
Weighted κ needs the ordinal class order: pass ``labels`` (the LoS bins 2-3d … 14+d in bin order);
without it the sorted values present are used.
"""

from __future__ import annotations

import numpy as np

from carebench_eval.metrics.core import MulticlassEvaluator
from carebench_eval.metrics.multilabel import class_indices, finish, weight_row

__all__ = ["accuracy_score", "kappa_linear_score", "kappa_quadratic_score", "kappa_score"]


def _multiclass_label_metric(
    name: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    labels: object,
    sample_weight: np.ndarray | None,
) -> float:
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {y.size} and {p.size}")
    classes = np.unique(np.concatenate([y, p])) if labels is None else labels
    n_classes = len(np.asarray(classes))
    evaluator = MulticlassEvaluator(
        class_indices(y, classes=classes),
        None,
        class_indices(p, classes=classes),
        metrics=(name,),
        n_classes=n_classes,
    )
    value = finish(name, "multiclass", evaluator, weight_row(sample_weight, y.size), average=None)
    return float(value)


def accuracy_score(
    y_true: np.ndarray, y_pred: np.ndarray, *, labels: object = None, sample_weight: np.ndarray | None = None
) -> float:
    """Share of correct predictions ``1/n Σ 1[ŷ_i = y_i]``.

    Args:
        y_true: ``[n]`` class values.
        y_pred: ``[n]`` predicted class values.
        labels: class order (all values must be in it).
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The accuracy.

    Example:
        >>> accuracy_score([0, 1, 2, 2], [0, 1, 1, 2])
        0.75
    """
    return _multiclass_label_metric(
        "accuracy_score", y_true, y_pred, labels=labels, sample_weight=sample_weight
    )


def kappa_score(
    y_true: np.ndarray, y_pred: np.ndarray, *, labels: object = None, sample_weight: np.ndarray | None = None
) -> float:
    """Cohen's κ ``(p_o − p_e) / (1 − p_e)``; NaN (with a warning) when ``p_e = 1``.

    Args:
        y_true: ``[n]`` class values.
        y_pred: ``[n]`` predicted class values.
        labels: class order.
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The unweighted κ.

    Example:
        >>> round(kappa_score([0, 1, 2, 2], [0, 1, 1, 2]), 6)
        0.636364
    """
    return _multiclass_label_metric("kappa_score", y_true, y_pred, labels=labels, sample_weight=sample_weight)


def kappa_linear_score(
    y_true: np.ndarray, y_pred: np.ndarray, *, labels: object = None, sample_weight: np.ndarray | None = None
) -> float:
    """Linearly weighted κ ``1 − Σ w O / Σ w E`` with ``w_ij = |i − j|`` over the ordered `labels`.

    Args:
        y_true: ``[n]`` class values.
        y_pred: ``[n]`` predicted class values.
        labels: ordinal class order (default: sorted values present).
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The linear κ.

    Example:
        >>> round(kappa_linear_score([0, 1, 2, 2], [0, 1, 1, 2]), 6)
        0.714286
    """
    return _multiclass_label_metric(
        "kappa_linear_score", y_true, y_pred, labels=labels, sample_weight=sample_weight
    )


def kappa_quadratic_score(
    y_true: np.ndarray, y_pred: np.ndarray, *, labels: object = None, sample_weight: np.ndarray | None = None
) -> float:
    """Quadratically weighted κ ``1 − Σ w O / Σ w E`` with ``w_ij = (i − j)²`` over the ordered `labels`.

    Args:
        y_true: ``[n]`` class values.
        y_pred: ``[n]`` predicted class values.
        labels: ordinal class order (default: sorted values present).
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The quadratic κ.

    Example:
        >>> round(kappa_quadratic_score([0, 1, 2, 2], [0, 1, 1, 2]), 6)
        0.8
    """
    return _multiclass_label_metric(
        "kappa_quadratic_score", y_true, y_pred, labels=labels, sample_weight=sample_weight
    )
