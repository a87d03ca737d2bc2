"""Calibration: Brier loss, expected calibration error, reliability table, logistic slope (eval.md §2.4).

ECE uses ``M`` equal-width bins ``b(p) = min(floor(M p), M − 1)``: bin ``m < M − 1`` covers
``[m/M, (m+1)/M)`` and the last bin is closed, so a score of exactly 1.0 is counted (upstream dropped it)
and bin counts always sum to ``n``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from carebench_eval.errors import warn_undefined
from carebench_eval.metrics.core import (
    BinaryEvaluator,
    MulticlassEvaluator,
    bin_codes,
    calibration_fit_notes,
    clipped_logit,
    logistic_calibration,
)
from carebench_eval.metrics.multilabel import finish, resolve_scores, weight_row

__all__ = [
    "brier_loss",
    "calibration_intercept",
    "calibration_slope",
    "calibration_table",
    "expected_calibration_error",
]


def _score_metric(
    name: str,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    *,
    labels: object,
    sample_weight: np.ndarray | None,
    n_bins: int = 10,
    strategy: str = "uniform",
) -> float:
    kind, y, s = resolve_scores(y_true, y_prob, labels=labels)
    columns = weight_row(sample_weight, y.shape[0])
    evaluator: BinaryEvaluator | MulticlassEvaluator
    if kind == "multiclass":
        evaluator = MulticlassEvaluator(y, s, metrics=(name,), n_bins=n_bins, strategy=strategy)
    else:
        evaluator = BinaryEvaluator(y, s, None, metrics=(name,), n_bins=n_bins, strategy=strategy)
    return float(finish(name, kind, evaluator, columns, average="macro"))


def brier_loss(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    *,
    labels: object = None,
    sample_weight: np.ndarray | None = None,
) -> float:
    """Mean squared error of probabilities.

    Binary ``1/n Σ (s_i − y_i)²``; multilabel: mean over labels; multiclass (``y_true [n]`` class values,
    ``y_prob [n, K]``): ``1/n Σ_i Σ_k (p_ik − 1[y_i = k])² ∈ [0, 2]``, scikit-learn's unhalved form.

    Args:
        y_true: ``[n]`` 0/1, ``[n, L]`` indicators, or ``[n]`` class values.
        y_prob: ``[n]``, ``[n, L]`` or ``[n, K]`` probabilities.
        labels: multiclass class values in column order (default ``0..K−1``).
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The Brier loss.

    Example:
        >>> round(brier_loss([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 6)
        0.158125
    """
    return _score_metric("brier_loss", y_true, y_prob, labels=labels, sample_weight=sample_weight)


def expected_calibration_error(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    *,
    n_bins: int = 10,
    strategy: str = "uniform",
    sample_weight: np.ndarray | None = None,
) -> float:
    """Expected calibration error ``Σ_{m: n_m>0} (n_m / n) |ȳ_m − s̄_m|``.

    Multilabel: per label, then the mean. Multiclass: top-label ECE (confidence ``max_k p_ik``,
    correctness ``1[argmax_k p_ik = y_i]``).

    Args:
        y_true: ``[n]`` 0/1, ``[n, L]`` indicators, or ``[n]`` class indices.
        y_prob: ``[n]``, ``[n, L]`` or ``[n, K]`` probabilities.
        n_bins: number of bins ``M``.
        strategy: ``"uniform"`` (equal width, last bin closed) or ``"quantile"`` (equal count, ties
            never split).
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        The ECE in [0, 1].

    Example:
        >>> round(expected_calibration_error([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], n_bins=2), 6)
        0.0875
    """
    return _score_metric(
        "expected_calibration_error",
        y_true,
        y_prob,
        labels=None,
        sample_weight=sample_weight,
        n_bins=n_bins,
        strategy=strategy,
    )


def calibration_table(
    y_true: np.ndarray, y_prob: np.ndarray, *, n_bins: int = 10, strategy: str = "uniform"
) -> pl.DataFrame:
    """Per-bin rows for a reliability diagram (binary scores).

    Args:
        y_true: ``[n]`` 0/1 labels.
        y_prob: ``[n]`` probabilities.
        n_bins: number of bins.
        strategy: ``"uniform"`` or ``"quantile"``.

    Returns:
        One row per bin, columns ``bin`` (Int64), ``low``, ``high`` (bin edges), ``n`` (Int64),
        ``mean_score``, ``mean_label`` (Float64; NaN for an empty bin).
    """
    _, y, s = resolve_scores(y_true, y_prob)
    if y.shape[1] != 1:
        raise ValueError("calibration_table takes one binary column; call it per label")
    labels, scores = y[:, 0].astype(np.float64), s[:, 0]
    bins = bin_codes(scores, n_bins=n_bins, strategy=strategy)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(bins, weights=scores, minlength=n_bins) / count
        mean_label = np.bincount(bins, weights=labels, minlength=n_bins) / count
    if strategy == "uniform":
        edges = np.arange(n_bins + 1) / n_bins
    else:
        edges = np.concatenate([[0.0], np.quantile(scores, np.arange(1, n_bins) / n_bins), [1.0]])
    return pl.DataFrame(
        {
            "bin": pl.Series(np.arange(n_bins), dtype=pl.Int64),
            "low": edges[:-1],
            "high": edges[1:],
            "n": pl.Series(count, dtype=pl.Int64),
            "mean_score": mean_score,
            "mean_label": mean_label,
        }
    )


def _calibration_fit(
    name: str, y_true: np.ndarray, y_prob: np.ndarray, sample_weight: np.ndarray | None, *, slope: bool
) -> float:
    kind, y, s = resolve_scores(y_true, y_prob)
    if kind != "binary":
        raise ValueError(f"{name} takes one binary column")
    labels = y[:, 0].astype(np.float64)
    weight = weight_row(sample_weight, labels.size).astype(np.float64)
    logit = clipped_logit(s[:, 0])
    value = float(logistic_calibration(labels, logit, weight, slope=slope)[0])
    if np.isnan(value):
        note = str(calibration_fit_notes(labels, logit, weight, slope=slope)[0]) or "no_convergence"
        warn_undefined(name, note, cells=1, n=labels.size)
    return value


def calibration_slope(
    y_true: np.ndarray, y_prob: np.ndarray, *, sample_weight: np.ndarray | None = None
) -> float:
    """Calibration slope ``β`` of ``logit Pr(y=1) = α + β logit(s)`` (ideal 1), unpenalized Newton fit.

    Args:
        y_true: ``[n]`` 0/1 labels.
        y_prob: ``[n]`` probabilities (clipped to ``[1e-15, 1 − 1e-15]`` before the logit).
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        ``β``; NaN with a warning when one class is present, or when the score separates the classes
        (no positive scores below a negative, or none above; constant scores included): the likelihood
        then has no finite maximum in ``β`` (it keeps growing, or is flat), where statsmodels warns of
        perfect separation.

    Example:
        >>> round(calibration_slope([0, 1, 0, 1], [0.2, 0.3, 0.6, 0.7]), 4)
        0.6174
    """
    return _calibration_fit("calibration_slope", y_true, y_prob, sample_weight, slope=True)


def calibration_intercept(
    y_true: np.ndarray, y_prob: np.ndarray, *, sample_weight: np.ndarray | None = None
) -> float:
    """Calibration-in-the-large ``α`` of ``logit Pr(y=1) = α + logit(s)`` (slope fixed at 1; ideal 0).

    Args:
        y_true: ``[n]`` 0/1 labels.
        y_prob: ``[n]`` probabilities (clipped before the logit).
        sample_weight: ``[n]`` non-negative weights.

    Returns:
        ``α``; NaN with a warning when one class is present.

    Example:
        >>> round(calibration_intercept([0, 1, 0, 1], [0.2, 0.3, 0.6, 0.7]), 4)
        0.2428
    """
    return _calibration_fit("calibration_intercept", y_true, y_prob, sample_weight, slope=False)
