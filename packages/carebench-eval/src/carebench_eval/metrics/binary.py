"""Binary metrics, also applied per label (multilabel) and per class (multiclass one-vs-rest) (eval.md §2.2).

Score metrics take probabilities, label metrics take 0/1 predictions made at a threshold policy
(`carebench_eval.metrics.threshold`). Every function returns NaN with an `UndefinedMetricWarning` when the
value is undefined (e.g. one class in ``y_true``) and never raises for it.
"""

from __future__ import annotations

import numpy as np

from carebench_eval.metrics.core import BinaryEvaluator, MulticlassEvaluator
from carebench_eval.metrics.multilabel import finish, resolve_labels, resolve_scores, weight_row

__all__ = [
    "auprc_score",
    "auroc_score",
    "base_rate",
    "f1_score",
    "fpr_error",
    "npv_score",
    "positive_rate",
    "ppv_score",
    "sensitivity_score",
    "specificity_score",
]


def _rank_metric(
    name: str,
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    average: str | None,
    multi_class: str | None,
    sample_weight: np.ndarray | None,
) -> float | np.ndarray:
    kind, y, s = resolve_scores(y_true, y_score, multi_class=multi_class)
    columns = weight_row(sample_weight, y.shape[0])
    evaluator: BinaryEvaluator | MulticlassEvaluator
    if kind == "multiclass":
        evaluator = MulticlassEvaluator(y, s, metrics=(name,))
    else:
        evaluator = BinaryEvaluator(y, s, None, metrics=(name,))
    return finish(name, kind, evaluator, columns, average=average)


def auroc_score(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    average: str | None = "macro",
    multi_class: str | None = None,
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """Area under the ROC curve (Mann-Whitney form, ties count one half).

    ``AUROC = 1/(PN) Σ_{i:y_i=1} Σ_{j:y_j=0} (1[s_i > s_j] + ½ 1[s_i = s_j])``; equals scikit-learn's
    `roc_auc_score` within 1e-12.

    Args:
        y_true: ``[n]`` 0/1, ``[n, L]`` multilabel indicators, or ``[n]`` class indices (multiclass).
        y_score: ``[n]``, ``[n, L]`` or ``[n, K]`` probabilities (multiclass: one-vs-rest per class).
        average: ``"macro"`` (mean over defined targets), ``"weighted"`` (by positives), ``"micro"``
            (flattened pairs, multilabel only) or None (per-target array).
        multi_class: None or ``"ovr"`` (the only multiclass strategy).
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The AUROC (NaN with a warning when only one class is present), or ``[T]`` values.

    Example:
        >>> auroc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    return _rank_metric(
        "auroc_score",
        y_true,
        y_score,
        average=average,
        multi_class=multi_class,
        sample_weight=sample_weight,
    )


def auprc_score(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    average: str | None = "macro",
    multi_class: str | None = None,
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """Area under the precision-recall curve as step-wise average precision.

    ``AP = Σ_k (R_k − R_{k−1}) Prec_k`` over distinct thresholds in decreasing order, ``R_0 = 0``; equals
    scikit-learn's `average_precision_score` when both classes are present. Unlike scikit-learn, the value
    is NaN (with a warning) when there are no positives **or** no negatives.

    Args:
        y_true: ``[n]`` 0/1, ``[n, L]`` multilabel indicators, or ``[n]`` class indices (multiclass).
        y_score: ``[n]``, ``[n, L]`` or ``[n, K]`` probabilities.
        average: ``"macro"``, ``"weighted"``, ``"micro"`` or None (see `auroc_score`).
        multi_class: None or ``"ovr"``.
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The average precision, or ``[T]`` values.

    Example:
        >>> round(auprc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 6)
        0.833333
    """
    return _rank_metric(
        "auprc_score",
        y_true,
        y_score,
        average=average,
        multi_class=multi_class,
        sample_weight=sample_weight,
    )


def _label_metric(
    name: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    average: str | None,
    labels: object,
    sample_weight: np.ndarray | None,
) -> float | np.ndarray:
    kind, y, p, n_classes = resolve_labels(y_true, y_pred, labels=labels)
    columns = weight_row(sample_weight, y.shape[0])
    evaluator: BinaryEvaluator | MulticlassEvaluator
    if kind == "multiclass":
        evaluator = MulticlassEvaluator(y, None, p, metrics=(name,), n_classes=n_classes)
    else:
        evaluator = BinaryEvaluator(y, None, p, metrics=(name,))
    return finish(name, kind, evaluator, columns, average=average)


def sensitivity_score(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    average: str | None = "macro",
    labels: object = None,
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """Sensitivity (true positive rate, recall) ``TP / (TP + FN)``; NaN without positives.

    Args:
        y_true: ``[n]`` 0/1, ``[n, L]`` indicators, or ``[n]`` class values (multiclass, one-vs-rest).
        y_pred: predictions of the same shape.
        average: how to combine labels/classes: ``"macro"``, ``"weighted"``, ``"micro"`` or None.
        labels: multiclass class order (makes 1-D inputs multiclass).
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The TPR, or ``[T]`` values.

    Example:
        >>> sensitivity_score([0, 1, 1, 1], [0, 1, 0, 1])
        0.6666666666666666
    """
    return _label_metric(
        "sensitivity_score", y_true, y_pred, average=average, labels=labels, sample_weight=sample_weight
    )


def specificity_score(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    average: str | None = "macro",
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """Specificity (true negative rate) ``TN / (TN + FP)``; NaN without negatives.

    Args:
        y_true: ``[n]`` 0/1 or ``[n, L]`` indicators.
        y_pred: 0/1 predictions of the same shape.
        average: ``"macro"``, ``"weighted"``, ``"micro"`` or None.
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The TNR, or ``[L]`` values.

    Example:
        >>> specificity_score([0, 0, 1, 1], [0, 1, 1, 1])
        0.5
    """
    return _label_metric(
        "specificity_score", y_true, y_pred, average=average, labels=None, sample_weight=sample_weight
    )


def fpr_error(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    average: str | None = "macro",
    labels: object = None,
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """False positive rate ``FP / (FP + TN)`` = 1 − specificity; NaN without negatives.

    Args:
        y_true: ``[n]`` 0/1, ``[n, L]`` indicators, or ``[n]`` class values (multiclass, one-vs-rest).
        y_pred: predictions of the same shape.
        average: ``"macro"``, ``"weighted"``, ``"micro"`` or None.
        labels: multiclass class order.
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The FPR, or ``[T]`` values.

    Example:
        >>> fpr_error([0, 0, 1, 1], [0, 1, 1, 1])
        0.5
    """
    return _label_metric(
        "fpr_error", y_true, y_pred, average=average, labels=labels, sample_weight=sample_weight
    )


def ppv_score(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    average: str | None = "macro",
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """Positive predictive value (precision) ``TP / (TP + FP)``; NaN without predicted positives.

    Args:
        y_true: ``[n]`` 0/1 or ``[n, L]`` indicators.
        y_pred: 0/1 predictions of the same shape.
        average: ``"macro"``, ``"weighted"``, ``"micro"`` or None.
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The PPV, or ``[L]`` values.

    Example:
        >>> ppv_score([0, 0, 1, 1], [0, 1, 1, 1])
        0.6666666666666666
    """
    return _label_metric(
        "ppv_score", y_true, y_pred, average=average, labels=None, sample_weight=sample_weight
    )


def npv_score(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    average: str | None = "macro",
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """Negative predictive value ``TN / (TN + FN)``; NaN without predicted negatives.

    Args:
        y_true: ``[n]`` 0/1 or ``[n, L]`` indicators.
        y_pred: 0/1 predictions of the same shape.
        average: ``"macro"``, ``"weighted"``, ``"micro"`` or None.
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The NPV, or ``[L]`` values.

    Example:
        >>> npv_score([0, 0, 1, 1], [0, 1, 0, 1])
        0.5
    """
    return _label_metric(
        "npv_score", y_true, y_pred, average=average, labels=None, sample_weight=sample_weight
    )


def f1_score(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    average: str | None = "macro",
    labels: object = None,
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """F1 ``2TP / (2TP + FP + FN)``; NaN when ``TP + FP + FN = 0``.

    Multiclass (``labels`` given or 1-D non-0/1 values): per class one-vs-rest; ``macro`` averages the
    classes present in ``y_true ∪ y_pred``, as scikit-learn's ``f1_score(average="macro")``.

    Args:
        y_true: ``[n]`` 0/1, ``[n, L]`` indicators, or ``[n]`` class values.
        y_pred: predictions of the same shape.
        average: ``"macro"``, ``"weighted"``, ``"micro"`` or None.
        labels: multiclass class order.
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The F1, or ``[T]`` values.

    Example:
        >>> f1_score([0, 0, 1, 1], [0, 1, 1, 1])
        0.8
    """
    return _label_metric(
        "f1_score", y_true, y_pred, average=average, labels=labels, sample_weight=sample_weight
    )


def base_rate(
    y_true: np.ndarray,
    y_pred: np.ndarray | None = None,
    *,
    average: str | None = "macro",
    labels: object = None,
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """Label prevalence ``P / n`` (descriptive; `y_pred` is accepted for a uniform signature and ignored).

    Args:
        y_true: ``[n]`` 0/1, ``[n, L]`` indicators, or ``[n]`` class values.
        y_pred: ignored.
        average: ``"macro"``, ``"weighted"``, ``"micro"`` or None.
        labels: multiclass class order.
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The base rate, or ``[T]`` values.

    Example:
        >>> base_rate([0, 0, 0, 1])
        0.25
    """
    return _label_metric(
        "base_rate",
        y_true,
        np.asarray(y_true) if y_pred is None else y_pred,
        average=average,
        labels=labels,
        sample_weight=sample_weight,
    )


def positive_rate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    average: str | None = "macro",
    labels: object = None,
    sample_weight: np.ndarray | None = None,
) -> float | np.ndarray:
    """Share predicted positive ``(TP + FP) / n`` (descriptive; the selection rate of fairness metrics).

    Args:
        y_true: ``[n]`` 0/1, ``[n, L]`` indicators, or ``[n]`` class values.
        y_pred: predictions of the same shape.
        average: ``"macro"``, ``"weighted"``, ``"micro"`` or None.
        labels: multiclass class order.
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The positive rate, or ``[T]`` values.

    Example:
        >>> positive_rate([0, 0, 0, 1], [0, 1, 1, 1])
        0.75
    """
    return _label_metric(
        "positive_rate", y_true, y_pred, average=average, labels=labels, sample_weight=sample_weight
    )
