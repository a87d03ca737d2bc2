"""Validation metrics for early stopping, in numpy (models.md §5).

These only select the best epoch; reported metrics come from carebench_eval. Average precision
follows scikit-learn's step definition (no interpolation), reimplemented so that the model package
does not depend on scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np

from carebench_models.task import TaskSpec
from carebench_models.training.config import MonitorFn


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AP = Σ_n (R_n − R_{n−1}) P_n over distinct score thresholds, highest first.

    Args:
        y_true: 0/1 [n].
        y_score: scores [n]; ties share one threshold.

    Returns:
        AP in [0, 1], or NaN when there is no positive.

    Example:
        >>> average_precision(np.array([0, 1, 1, 0]), np.array([0.1, 0.9, 0.4, 0.4]))
        0.8333333333333333
    """
    truth = np.asarray(y_true, dtype=np.float64).ravel()
    score = np.asarray(y_score, dtype=np.float64).ravel()
    positives = truth.sum()
    if positives == 0:
        return math.nan
    order = np.argsort(-score, kind="mergesort")
    truth, score = truth[order], score[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(score)), truth.size - 1]
    true_positives = np.cumsum(truth)[last_of_threshold]
    precision = true_positives / (last_of_threshold + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def macro_auprc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean AP over the labels that have both classes present; NaN when none has.

    Args:
        y_true: 0/1 [n, K] (or [n] for one label).
        proba: [n, K].
    """
    truth = np.asarray(y_true).reshape(len(proba), -1)
    scores = np.asarray(proba).reshape(len(proba), -1)
    values = [
        average_precision(truth[:, label], scores[:, label])
        for label in range(truth.shape[1])
        if 0 < truth[:, label].sum() < truth.shape[0]
    ]
    return float(np.mean(values)) if values else math.nan


def accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Share of rows whose argmax class equals the int class index `y_true` [n]; NaN for no rows."""
    if len(proba) == 0:
        return math.nan
    return float(np.mean(np.argmax(proba, axis=1) == np.asarray(y_true).ravel()))


def default_monitor(task: TaskSpec) -> tuple[str, MonitorFn]:
    """(`val_accuracy`, accuracy) for multiclass tasks, else (`val_auprc`, macro AUPRC)."""
    if task.kind == "multiclass":
        return "val_accuracy", accuracy
    return "val_auprc", macro_auprc
