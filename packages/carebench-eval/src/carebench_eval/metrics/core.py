"""Batched metric evaluation: every metric of a task for many weight rows at once (eval.md §2, §3.2).

An evaluator prepares one task's arrays once (sorted score columns, confusion codes, calibration bins)
and then turns any ``columns [b, k]`` of weights (see `carebench_eval._kernels`) into per-target metric
values ``[b, T]``. The public per-metric functions evaluate one row of weights (ones or
``sample_weight``); `bootstrap_ci`, `score`, comparisons and fairness pass replicate, permutation or group
weights through the same code, so point estimates and replicates can never disagree.

Targets ``T``: labels for binary/multilabel; for multiclass, the classes for one-vs-rest metrics and a
single column for whole-task metrics (`MULTICLASS_SCALARS`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from carebench_eval import _kernels

__all__ = [
    "BINARY_METRICS",
    "LABEL_METRICS",
    "MULTICLASS_METRICS",
    "MULTICLASS_SCALARS",
    "SCORE_METRICS",
    "BinaryEvaluator",
    "MulticlassEvaluator",
    "average_targets",
    "bin_codes",
    "calibration_fit_notes",
]

CALIBRATION_FIT_METRICS = ("calibration_slope", "calibration_intercept")
"""Optional binary metrics (logistic recalibration fit); computed only when requested."""
SCORE_METRICS = frozenset(
    {"auroc_score", "auprc_score", "brier_loss", "expected_calibration_error", *CALIBRATION_FIT_METRICS}
)
_CONFUSION_METRICS = frozenset(
    {
        "sensitivity_score",
        "specificity_score",
        "fpr_error",
        "ppv_score",
        "npv_score",
        "f1_score",
        "positive_rate",
    }
)
"""Binary metrics computed from the weighted confusion counts at the threshold."""
LABEL_METRICS = _CONFUSION_METRICS | {
    "base_rate",
    "accuracy_score",
    "kappa_score",
    "kappa_linear_score",
    "kappa_quadratic_score",
}
BINARY_METRICS: tuple[str, ...] = (
    "auroc_score",
    "auprc_score",
    "brier_loss",
    "expected_calibration_error",
    "sensitivity_score",
    "specificity_score",
    "fpr_error",
    "ppv_score",
    "npv_score",
    "f1_score",
    "base_rate",
    "positive_rate",
    *CALIBRATION_FIT_METRICS,
)
MULTICLASS_METRICS: tuple[str, ...] = (
    "accuracy_score",
    "f1_score",
    "kappa_score",
    "kappa_linear_score",
    "kappa_quadratic_score",
    "auroc_score",
    "auprc_score",
    "brier_loss",
    "expected_calibration_error",
    "sensitivity_score",
    "fpr_error",
    "base_rate",
    "positive_rate",
)
MULTICLASS_SCALARS = frozenset(
    {
        "accuracy_score",
        "kappa_score",
        "kappa_linear_score",
        "kappa_quadratic_score",
        "brier_loss",
        "expected_calibration_error",
    }
)
"""Multiclass metrics defined on the whole task (one target column), not per class."""


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` in float64, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def bin_codes(scores: np.ndarray, *, n_bins: int, strategy: str = "uniform") -> np.ndarray:
    """Calibration bin of each score (eval.md §2.4).

    ``uniform``: ``min(floor(M p), M − 1)`` in float64, so bin ``m < M−1`` is ``[m/M, (m+1)/M)`` and the last
    bin is closed. ``quantile``: edges at the empirical quantiles ``k/M`` of `scores`; a bin holds the scores
    ``≥`` its lower edge, so tied scores are never split.

    Args:
        scores: ``[n]`` scores in [0, 1].
        n_bins: number of bins ``M``.
        strategy: ``"uniform"`` or ``"quantile"``.

    Returns:
        ``[n]`` int64 bin indices in ``[0, M)``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    scores = np.asarray(scores, dtype=np.float64)
    if strategy == "uniform":
        return np.minimum(np.floor(scores * n_bins).astype(np.int64), n_bins - 1)
    if strategy == "quantile":
        inner = np.quantile(scores, np.arange(1, n_bins) / n_bins) if scores.size else np.zeros(n_bins - 1)
        return np.searchsorted(inner, scores, side="right").astype(np.int64)
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


LOGIT_CLIP = 1e-15
"""Scores are clipped to ``[LOGIT_CLIP, 1 − LOGIT_CLIP]`` before the logit of the calibration fits."""
_NEWTON_TOLERANCE = 1e-12
_NEWTON_ITERATIONS = 100
_STEP_HALVINGS = 60
_ROUNDING = 1e-14
"""Relative slack of the likelihood comparisons of the step halving (a few units of float64 rounding)."""


def clipped_logit(scores: np.ndarray) -> np.ndarray:
    """``logit(clip(s))`` elementwise (finite for scores of exactly 0 or 1)."""
    clipped = np.clip(scores, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(clipped) - np.log1p(-clipped)


def calibration_fit_notes(
    y: np.ndarray, logit: np.ndarray, weights: np.ndarray, *, slope: bool
) -> np.ndarray:
    """Why a calibration fit has no finite estimate, for each weight row (``""`` where it has one).

    ``single_class``: the rows with positive weight hold one class. ``separated`` (slope only): the
    score separates the classes, i.e. every positive has a logit at least as high as every negative, or
    every positive at most as low (constant scores included). Then no finite slope maximizes the
    likelihood: it grows without bound (or is not identified), and a Newton fit stops at an arbitrary
    large value. With both classes present and the logits overlapping, the maximum exists and is unique.
    The intercept fit (slope fixed at 1) has a finite estimate whenever both classes are present.

    Args:
        y: ``[n]`` 0/1 labels.
        logit: ``[n]`` logits of the scores (see `clipped_logit`).
        weights: ``[b, n]`` non-negative sample weights.
        slope: the two-parameter slope fit (else the one-parameter intercept fit).

    Returns:
        ``[b]`` note tokens: ``""``, ``"single_class"`` or ``"separated"``.
    """
    present = np.asarray(weights) > 0
    labels = np.asarray(y) == 1
    positive = present & labels[None, :]
    negative = present & ~labels[None, :]
    both = positive.any(axis=1) & negative.any(axis=1)
    notes = np.where(both, "", "single_class").astype(object)
    if slope:
        lowest_positive = np.where(positive, logit[None, :], np.inf).min(axis=1)
        highest_positive = np.where(positive, logit[None, :], -np.inf).max(axis=1)
        lowest_negative = np.where(negative, logit[None, :], np.inf).min(axis=1)
        highest_negative = np.where(negative, logit[None, :], -np.inf).max(axis=1)
        separated = both & ((lowest_positive >= highest_negative) | (highest_positive <= lowest_negative))
        notes[separated] = "separated"
    return notes


def _log_likelihood(
    y: np.ndarray, logit: np.ndarray, weights: np.ndarray, alpha: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """Weighted Bernoulli log-likelihood ``Σ w (y η − log(1 + e^η))``, ``η = α + β logit``, per row ``[b]``."""
    eta = alpha[:, None] + beta[:, None] * logit[None, :]
    return (weights * (y[None, :] * eta - np.logaddexp(0.0, eta))).sum(axis=1)


def _sigmoid(eta: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-eta))


def logistic_calibration(y: np.ndarray, logit: np.ndarray, weights: np.ndarray, *, slope: bool) -> np.ndarray:
    """Calibration slope or intercept for each weight row, by unpenalized maximum likelihood (eval.md §2.2).

    Fits ``logit Pr(y=1) = α + β·logit(s)`` and returns β (``slope=True``), or ``α + logit(s)`` with β fixed
    at 1 and returns α. Rows without a finite estimate (`calibration_fit_notes`: one class, or a score that
    separates the classes) are NaN without fitting; every other row has a unique maximum. Each row is fitted
    on its own (its value never depends on the other rows of its batch) and stops when its step is below
    1e-12; a row that has not converged in 100 iterations is NaN.

    The slope fit takes Newton steps from ``α = β = 0``, each halved until the likelihood does not drop. The
    intercept fit solves its score equation ``Σ w (y − σ(α + logit)) = 0``, which decreases in α, by Newton
    steps kept inside a bracket of the root (bisection when a step leaves it): with scores of exactly 0 or
    1 the offsets reach ±34.5 and plain Newton steps from a saturated start are useless.

    Args:
        y: ``[n]`` 0/1 labels.
        logit: ``[n]`` logits of the scores (see `clipped_logit`).
        weights: ``[b, n]`` non-negative sample weights.
        slope: fit the slope (two parameters) or the intercept (one parameter, offset ``logit``).

    Returns:
        ``[b]`` float64 β or α.
    """
    weights = np.asarray(weights, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    logit = np.asarray(logit, dtype=np.float64)
    undefined = calibration_fit_notes(y, logit, weights, slope=slope) != ""
    value = np.full(weights.shape[0], np.nan)
    rows = np.flatnonzero(~undefined)
    if rows.size:
        fit = _fit_slope if slope else _fit_intercept
        value[rows] = fit(y, logit, weights[rows])
    return value


def _fit_intercept(y: np.ndarray, logit: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """α of ``logit Pr(y=1) = α + logit`` per weight row ``[b, n]`` (both classes present): bracketed Newton.

    With ``ȳ`` the weighted share of positives, the root lies in ``[logit ȳ − max logit, logit ȳ − min logit]``
    (over the rows' weighted samples): at either end every fitted probability is at most (at least) ``ȳ``.
    """
    b = weights.shape[0]
    present = weights > 0
    share = (weights @ y) / weights.sum(axis=1)
    centre = np.log(share) - np.log1p(-share)
    low = centre - np.where(present, logit[None, :], -np.inf).max(axis=1)
    high = centre - np.where(present, logit[None, :], np.inf).min(axis=1)
    alpha = centre - (weights @ logit) / weights.sum(axis=1)
    active = np.ones(b, dtype=bool)
    for _ in range(_NEWTON_ITERATIONS):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        w = weights[rows]
        probability = _sigmoid(alpha[rows, None] + logit[None, :])
        gradient = (w * (y[None, :] - probability)).sum(axis=1)
        curvature = (w * probability * (1.0 - probability)).sum(axis=1)
        # The score decreases in α: a positive score puts the root above α.
        low[rows] = np.where(gradient > 0, alpha[rows], low[rows])
        high[rows] = np.where(gradient < 0, alpha[rows], high[rows])
        with np.errstate(divide="ignore", invalid="ignore"):
            candidate = alpha[rows] + gradient / curvature
        inside = np.isfinite(candidate) & (candidate > low[rows]) & (candidate < high[rows])
        candidate = np.where(inside, candidate, (low[rows] + high[rows]) / 2.0)
        done = (
            (gradient == 0)
            | (np.abs(candidate - alpha[rows]) < _NEWTON_TOLERANCE)
            | (high[rows] - low[rows] < _NEWTON_TOLERANCE)
        )
        alpha[rows] = np.where(gradient == 0, alpha[rows], candidate)
        active[rows[done]] = False
    return np.where(active, np.nan, alpha)


def _fit_slope(y: np.ndarray, logit: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """β of ``logit Pr(y=1) = α + β logit`` per weight row ``[b, n]`` (overlapping classes): damped Newton."""
    b = weights.shape[0]
    alpha = np.zeros(b)
    beta = np.zeros(b)
    active = np.ones(b, dtype=bool)
    failed = np.zeros(b, dtype=bool)
    for _ in range(_NEWTON_ITERATIONS):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        w = weights[rows]
        probability = _sigmoid(alpha[rows, None] + beta[rows, None] * logit[None, :])
        residual = w * (y[None, :] - probability)
        curvature = w * probability * (1.0 - probability)
        g0, g1 = residual.sum(axis=1), residual @ logit
        h00, h01, h11 = curvature.sum(axis=1), curvature @ logit, curvature @ (logit * logit)
        with np.errstate(divide="ignore", invalid="ignore"):
            determinant = h00 * h11 - h01 * h01
            step0 = (h11 * g0 - h01 * g1) / determinant
            step1 = (h00 * g1 - h01 * g0) / determinant
        finite = np.isfinite(step0) & np.isfinite(step1)
        failed[rows[~finite]] = True
        step0, step1 = np.where(finite, step0, 0.0), np.where(finite, step1, 0.0)
        small = ~finite | (np.maximum(np.abs(step0), np.abs(step1)) < _NEWTON_TOLERANCE)
        # Halve a step until the likelihood does not drop (beyond rounding): no step overshoots.
        current = _log_likelihood(y, logit, w, alpha[rows], beta[rows])
        slack = _ROUNDING * (1.0 + np.abs(current))
        scale = np.ones(rows.size)
        trial = np.full(rows.size, -np.inf)
        searching = ~small
        for _ in range(_STEP_HALVINGS):
            if not searching.any():
                break
            attempt = _log_likelihood(y, logit, w, alpha[rows] + scale * step0, beta[rows] + scale * step1)
            accepted = searching & (attempt >= current - slack)
            trial = np.where(accepted, attempt, trial)
            searching &= ~accepted
            scale = np.where(searching, scale / 2.0, scale)
        scale = np.where(searching | small, 0.0, scale)
        alpha[rows] += scale * step0
        beta[rows] += scale * step1
        # A full step that no longer raises the likelihood: the maximum is reached up to rounding. A step
        # that no halving makes acceptable means the fit is lost.
        failed[rows[searching]] = True
        done = small | searching | ((scale == 1.0) & (trial <= current))
        active[rows[done]] = False
    return np.where(failed | active, np.nan, beta)


def _ece_from_sums(count: np.ndarray, sum_label: np.ndarray, sum_score: np.ndarray) -> np.ndarray:
    """ECE from per-bin weighted sums ``[b, ..., M]``: ``Σ_m |Σy − Σs| / n`` (= Σ n_m/n |ȳ_m − s̄_m|)."""
    total = count.sum(axis=-1)
    return _ratio(np.abs(sum_label - sum_score).sum(axis=-1), total)


def _required(value: np.ndarray | None, what: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"this metric needs {what}")
    return value


def _checked_metrics(
    metrics: Iterable[str], allowed: Sequence[str], kinds: str, *, has_scores: bool
) -> tuple[str, ...]:
    """`metrics` as a tuple; raises ValueError for a metric of another kind or a score metric without scores."""
    names = tuple(metrics)
    unknown = set(names) - set(allowed)
    if unknown:
        raise ValueError(f"metric(s) {sorted(unknown)} do not apply to {kinds} tasks")
    if not has_scores and set(names) & SCORE_METRICS:
        raise ValueError(f"metric(s) {sorted(set(names) & SCORE_METRICS)} need scores (y_score)")
    return names


class BinaryEvaluator:
    """Binary and multilabel metrics of one task, for many weight rows.

    Args:
        y_true: ``[n, L]`` 0/1 labels.
        y_score: ``[n, L]`` scores in [0, 1], or None when only label metrics are wanted.
        y_pred: ``[n, L]`` 0/1 predictions at the policy threshold, or None when only score metrics
            (and `base_rate`) are wanted.
        metrics: the metric names to compute.
        column_of: ``[n]`` weight column of each sample (its cluster), or None.
        n_bins: calibration bins.
        strategy: calibration binning strategy.
    """

    def __init__(
        self,
        y_true: np.ndarray,
        y_score: np.ndarray | None,
        y_pred: np.ndarray | None,
        *,
        metrics: Iterable[str],
        column_of: np.ndarray | None = None,
        n_bins: int = 10,
        strategy: str = "uniform",
    ) -> None:
        self.metrics = _checked_metrics(
            metrics, BINARY_METRICS, "binary/multilabel", has_scores=y_score is not None
        )
        wanted = set(self.metrics)
        self.y_true = np.asarray(y_true, dtype=np.int8)
        self.n, self.n_targets = self.y_true.shape
        self.column_of = column_of
        self.n_bins = n_bins
        self.strategy = strategy
        sample_column = np.arange(self.n) if column_of is None else np.asarray(column_of, dtype=np.int64)
        self._flat_column_of = np.tile(sample_column, self.n_targets)
        # Flattened label-major arrays: entry j*n + i is (sample i, label j).
        self._label_codes = np.repeat(np.arange(self.n_targets, dtype=np.int64), self.n)
        self._y_flat = self.y_true.T.ravel().astype(np.int64)
        self._score_flat = None if y_score is None else np.asarray(y_score, dtype=np.float64).T.ravel()
        self._pred_flat = None if y_pred is None else np.asarray(y_pred, dtype=bool).T.ravel()
        self._ranks: list[_kernels.RankIndex] = []
        if y_score is not None and {"auroc_score", "auprc_score"} & wanted:
            self._ranks = [
                _kernels.rank_index(self.y_true[:, j], np.asarray(y_score[:, j], dtype=np.float64))
                for j in range(self.n_targets)
            ]
        self._confusion_codes: np.ndarray | None = None
        if self._pred_flat is not None:
            self._confusion_codes = self._label_codes * 4 + self._y_flat * 2 + self._pred_flat
        self._logits: np.ndarray | None = None
        if y_score is not None and wanted & set(CALIBRATION_FIT_METRICS):
            self._logits = clipped_logit(np.asarray(y_score, dtype=np.float64))
        self._bin_codes: np.ndarray | None = None
        if y_score is not None and "expected_calibration_error" in wanted:
            bins = [bin_codes(y_score[:, j], n_bins=n_bins, strategy=strategy) for j in range(self.n_targets)]
            self._bin_codes = self._label_codes * n_bins + np.concatenate(bins)

    def _per_label_sum(self, columns: np.ndarray, values: np.ndarray | None) -> np.ndarray:
        return _kernels.weighted_bincount(
            self._label_codes, self.n_targets, columns, self._flat_column_of, values=values
        )

    def values(self, columns: np.ndarray) -> dict[str, np.ndarray]:
        """Per-label values of every metric for each weight row.

        Args:
            columns: ``[b, k]`` weights (see `carebench_eval._kernels`).

        Returns:
            metric name -> ``[b, L]`` float64 (NaN where undefined).
        """
        out: dict[str, np.ndarray] = {}
        if self._ranks:
            b = columns.shape[0]
            auroc = np.empty((b, self.n_targets))
            auprc = np.empty((b, self.n_targets))
            rank_columns = _kernels.compact_weights(columns, self.n)
            for j, index in enumerate(self._ranks):
                auroc[:, j], auprc[:, j] = _kernels.rank_metrics(index, rank_columns, self.column_of)
            out.update(self._rank_outputs(auroc, auprc))
        return self._with_other_values(columns, out)

    def complement_values(self, columns: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """`values` of 0/1 weight rows ``W`` and of their complements ``1 − W`` (bit-identical to two calls).

        The rank metrics share one pass (`carebench_eval._kernels.rank_metrics_complement`); this is the
        inner loop of the paired permutation test, where the two models' pooled weights are complements.

        Args:
            columns: ``[b, k]`` integer weights, each 0 or 1.

        Returns:
            ``(values of W, values of 1 − W)``, each metric name -> ``[b, L]``.
        """
        direct: dict[str, np.ndarray] = {}
        complement: dict[str, np.ndarray] = {}
        if self._ranks:
            b = columns.shape[0]
            rank = np.empty((4, b, self.n_targets))
            for j, index in enumerate(self._ranks):
                (rank[0, :, j], rank[1, :, j]), (rank[2, :, j], rank[3, :, j]) = (
                    _kernels.rank_metrics_complement(index, columns, self.column_of)
                )
            direct.update(self._rank_outputs(rank[0], rank[1]))
            complement.update(self._rank_outputs(rank[2], rank[3]))
        if set(self.metrics) <= {"auroc_score", "auprc_score"}:
            return direct, complement
        return self._with_other_values(columns, direct), self._with_other_values(1 - columns, complement)

    def _rank_outputs(self, auroc: np.ndarray, auprc: np.ndarray) -> dict[str, np.ndarray]:
        wanted = set(self.metrics)
        return {
            name: values
            for name, values in (("auroc_score", auroc), ("auprc_score", auprc))
            if name in wanted
        }

    def _with_other_values(self, columns: np.ndarray, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`out` (the rank metrics) completed with every other requested metric, in `metrics` order."""
        wanted = set(self.metrics)
        b = columns.shape[0]
        if "brier_loss" in wanted:
            squared_error = (_required(self._score_flat, "y_score") - self._y_flat) ** 2
            out["brier_loss"] = _ratio(
                self._per_label_sum(columns, squared_error), self._per_label_sum(columns, None)
            )
        if "expected_calibration_error" in wanted:
            bins = _required(self._bin_codes, "y_score")
            shape = (b, self.n_targets, self.n_bins)
            n_codes = self.n_targets * self.n_bins
            count = _kernels.weighted_bincount(bins, n_codes, columns, self._flat_column_of)
            sum_label = _kernels.weighted_bincount(
                bins, n_codes, columns, self._flat_column_of, values=self._y_flat.astype(float)
            )
            sum_score = _kernels.weighted_bincount(
                bins, n_codes, columns, self._flat_column_of, values=_required(self._score_flat, "y_score")
            )
            out["expected_calibration_error"] = _ece_from_sums(
                count.reshape(shape), sum_label.reshape(shape), sum_score.reshape(shape)
            )
        if "base_rate" in wanted:
            positives = self._per_label_sum(columns, self._y_flat.astype(float))
            out["base_rate"] = _ratio(positives, self._per_label_sum(columns, None))
        fits = wanted & set(CALIBRATION_FIT_METRICS)
        if fits:
            logits = _required(self._logits, "y_score")
            sample_weights = _kernels.gather_weights(columns, self.column_of, np.arange(self.n))
            for name in fits:
                out[name] = np.column_stack(
                    [
                        logistic_calibration(
                            self.y_true[:, j], logits[:, j], sample_weights, slope=name == "calibration_slope"
                        )
                        for j in range(self.n_targets)
                    ]
                )
        threshold_metrics = wanted & _CONFUSION_METRICS
        if threshold_metrics:
            if self._confusion_codes is None:
                raise ValueError(f"metric(s) {sorted(threshold_metrics)} need predictions (y_pred)")
            counts = _kernels.weighted_bincount(
                self._confusion_codes, self.n_targets * 4, columns, self._flat_column_of
            ).reshape(b, self.n_targets, 4)
            tn, fp, fn, tp = (counts[..., code] for code in range(4))
            formulas = {
                "sensitivity_score": lambda: _ratio(tp, tp + fn),
                "specificity_score": lambda: _ratio(tn, tn + fp),
                "fpr_error": lambda: _ratio(fp, fp + tn),
                "ppv_score": lambda: _ratio(tp, tp + fp),
                "npv_score": lambda: _ratio(tn, tn + fn),
                "f1_score": lambda: _ratio(2 * tp, 2 * tp + fp + fn),
                "positive_rate": lambda: _ratio(tp + fp, tn + fp + fn + tp),
            }
            for name in threshold_metrics:
                out[name] = formulas[name]()
        return {name: out[name] for name in self.metrics}

    def support(self, columns: np.ndarray) -> np.ndarray:
        """Weighted positives per label ``[b, L]`` (the weights of the ``(weighted)`` average)."""
        return self._per_label_sum(columns, self._y_flat.astype(float))

    def fit_notes(self, metric: str, columns: np.ndarray) -> np.ndarray:
        """Why a calibration fit is undefined, per weight row and label.

        Args:
            metric: ``calibration_slope`` or ``calibration_intercept``.
            columns: ``[b, k]`` weights.

        Returns:
            ``[b, L]`` note tokens: ``""`` where the fit is defined, else ``single_class``, ``separated``
            (see `calibration_fit_notes`) or ``no_convergence``.
        """
        logits = _required(self._logits, "y_score")
        sample_weights = _kernels.gather_weights(columns, self.column_of, np.arange(self.n))
        slope = metric == "calibration_slope"
        notes = np.empty((columns.shape[0], self.n_targets), dtype=object)
        for j in range(self.n_targets):
            notes[:, j] = calibration_fit_notes(self.y_true[:, j], logits[:, j], sample_weights, slope=slope)
            value = logistic_calibration(self.y_true[:, j], logits[:, j], sample_weights, slope=slope)
            notes[(notes[:, j] == "") & np.isnan(value), j] = "no_convergence"
        return notes

    def micro(self) -> BinaryEvaluator:
        """An evaluator of the ``n L`` flattened (label, score) pairs: the ``(micro)`` aggregate."""
        return BinaryEvaluator(
            self._y_flat[:, None],
            None if self._score_flat is None else self._score_flat[:, None],
            None if self._pred_flat is None else self._pred_flat[:, None],
            metrics=self.metrics,
            column_of=self._flat_column_of,
            n_bins=self.n_bins,
            strategy=self.strategy,
        )


class MulticlassEvaluator:
    """Multiclass metrics of one task (eval.md §2.6), for many weight rows.

    Args:
        y_true: ``[n]`` class indices in ``[0, K)`` (ordinal order of the classes).
        y_score: ``[n, K]`` class probabilities, or None when only label metrics are wanted.
        y_pred: ``[n]`` predicted class indices; default argmax of `y_score` (ties → lowest index).
        metrics: the metric names to compute.
        n_classes: ``K`` (default ``y_score.shape[1]``).
        column_of: ``[n]`` weight column of each sample, or None.
        n_bins: calibration bins (top-label ECE).
        strategy: calibration binning strategy.
    """

    def __init__(
        self,
        y_true: np.ndarray,
        y_score: np.ndarray | None,
        y_pred: np.ndarray | None = None,
        *,
        metrics: Iterable[str],
        n_classes: int | None = None,
        column_of: np.ndarray | None = None,
        n_bins: int = 10,
        strategy: str = "uniform",
    ) -> None:
        self.metrics = _checked_metrics(
            metrics, MULTICLASS_METRICS, "multiclass", has_scores=y_score is not None
        )
        self.y_true = np.asarray(y_true, dtype=np.int64)
        scores = np.zeros((self.y_true.size, 0)) if y_score is None else np.asarray(y_score, dtype=np.float64)
        if n_classes is None and y_score is None:
            raise ValueError("n_classes is required without y_score")
        self.n_classes: int = scores.shape[1] if n_classes is None else int(n_classes)
        self.column_of = column_of
        self.n_bins = n_bins
        if y_pred is None:
            if y_score is None:
                raise ValueError("either y_score or y_pred is required")
            y_pred = np.argmax(scores, axis=1)
        self.y_pred = np.asarray(y_pred, dtype=np.int64)
        self._confusion_codes = self.y_true * self.n_classes + self.y_pred
        wanted = set(self.metrics)
        self._ranks: list[_kernels.RankIndex] = []
        if {"auroc_score", "auprc_score"} & wanted:
            self._ranks = [_kernels.rank_index(self.y_true == k, scores[:, k]) for k in range(self.n_classes)]
        if "brier_loss" in wanted:
            onehot = np.zeros_like(scores)
            onehot[np.arange(self.y_true.size), self.y_true] = 1.0
            self._squared_error = ((scores - onehot) ** 2).sum(axis=1)
        if "expected_calibration_error" in wanted:
            confidence = scores.max(axis=1)
            self._confidence = confidence
            self._correct = (self.y_pred == self.y_true).astype(np.float64)
            self._bin_codes = bin_codes(confidence, n_bins=n_bins, strategy=strategy)

    def confusion(self, columns: np.ndarray) -> np.ndarray:
        """Weighted confusion matrices ``[b, K, K]`` (rows true class, columns predicted class)."""
        k = self.n_classes
        return _kernels.weighted_bincount(self._confusion_codes, k * k, columns, self.column_of).reshape(
            columns.shape[0], k, k
        )

    def values(self, columns: np.ndarray) -> dict[str, np.ndarray]:
        """Values of every metric for each weight row.

        Args:
            columns: ``[b, k]`` weights.

        Returns:
            metric name -> ``[b, K]`` per class, or ``[b, 1]`` for `MULTICLASS_SCALARS`.
        """
        out: dict[str, np.ndarray] = {}
        wanted = set(self.metrics)
        b = columns.shape[0]
        if self._ranks:
            auroc = np.empty((b, self.n_classes))
            auprc = np.empty((b, self.n_classes))
            rank_columns = _kernels.compact_weights(columns, self.y_true.size)
            for k, index in enumerate(self._ranks):
                auroc[:, k], auprc[:, k] = _kernels.rank_metrics(index, rank_columns, self.column_of)
            out["auroc_score"], out["auprc_score"] = auroc, auprc
        matrix = self.confusion(columns).astype(np.float64)
        total = matrix.sum(axis=(1, 2))
        tp = np.diagonal(matrix, axis1=1, axis2=2)
        row = matrix.sum(axis=2)
        col = matrix.sum(axis=1)
        fn, fp = row - tp, col - tp
        tn = total[:, None] - tp - fn - fp
        if "accuracy_score" in wanted:
            out["accuracy_score"] = _ratio(tp.sum(axis=1), total)[:, None]
        for name, weights in (
            ("kappa_score", None),
            ("kappa_linear_score", "linear"),
            ("kappa_quadratic_score", "quadratic"),
        ):
            if name in wanted:
                out[name] = _kappa(matrix, weights)[:, None]
        if "f1_score" in wanted:
            out["f1_score"] = _ratio(2 * tp, 2 * tp + fp + fn)
        if "sensitivity_score" in wanted:
            out["sensitivity_score"] = _ratio(tp, tp + fn)
        if "fpr_error" in wanted:
            out["fpr_error"] = _ratio(fp, fp + tn)
        if "base_rate" in wanted:
            out["base_rate"] = _ratio(row, total[:, None])
        if "positive_rate" in wanted:
            out["positive_rate"] = _ratio(col, total[:, None])
        if "brier_loss" in wanted:
            sums = _kernels.weighted_sums(self._squared_error, columns, self.column_of)
            out["brier_loss"] = _ratio(sums, total)[:, None]
        if "expected_calibration_error" in wanted:
            m = self.n_bins
            count = _kernels.weighted_bincount(self._bin_codes, m, columns, self.column_of)
            sum_label = _kernels.weighted_bincount(
                self._bin_codes, m, columns, self.column_of, values=self._correct
            )
            sum_score = _kernels.weighted_bincount(
                self._bin_codes, m, columns, self.column_of, values=self._confidence
            )
            out["expected_calibration_error"] = _ece_from_sums(count, sum_label, sum_score)[:, None]
        return {name: out[name] for name in self.metrics}

    def support(self, columns: np.ndarray) -> np.ndarray:
        """Weighted samples per true class ``[b, K]`` (the weights of the ``(weighted)`` average)."""
        return self.confusion(columns).sum(axis=2).astype(np.float64)


def _kappa(matrix: np.ndarray, weights: str | None) -> np.ndarray:
    """Cohen's κ (optionally linear/quadratic weighted) of confusion matrices ``[b, K, K]`` -> ``[b]``.

    ``κ_w = 1 − Σ w O / Σ w E`` with ``E = O_i· O_·j / n`` (scikit-learn's `cohen_kappa_score` formula);
    NaN when ``Σ w E = 0`` (expected agreement 1).
    """
    k = matrix.shape[1]
    total = matrix.sum(axis=(1, 2))
    expected = _ratio(matrix.sum(axis=2)[:, :, None] * matrix.sum(axis=1)[:, None, :], total[:, None, None])
    index = np.arange(k)
    if weights is None:
        weight = 1.0 - np.eye(k)
    elif weights == "linear":
        weight = np.abs(index[:, None] - index[None, :]).astype(np.float64)
    else:
        weight = ((index[:, None] - index[None, :]) ** 2).astype(np.float64)
    observed_disagreement = (weight * matrix).sum(axis=(1, 2))
    expected_disagreement = (weight * expected).sum(axis=(1, 2))
    return 1.0 - _ratio(observed_disagreement, expected_disagreement)


def average_targets(
    values: np.ndarray,
    *,
    average: str,
    defined: np.ndarray | None = None,
    support: np.ndarray | None = None,
) -> np.ndarray:
    """Macro or weighted average of per-target values over the targets defined at the point estimate.

    A replicate in which one of those targets is undefined gets NaN (it is dropped from the CI, §4.3).

    Args:
        values: ``[b, T]`` per-target values.
        average: ``"macro"`` or ``"weighted"``.
        defined: ``[T]`` targets that enter the average (default: all).
        support: ``[b, T]`` weights of the ``weighted`` average (positives per target).

    Returns:
        ``[b]``; NaN when no target is defined.
    """
    if defined is None:
        defined = np.ones(values.shape[1], dtype=bool)
    chosen = values[:, defined]
    if chosen.shape[1] == 0:
        return np.full(values.shape[0], np.nan)
    if average == "macro":
        return chosen.mean(axis=1)
    if average == "weighted":
        if support is None:
            raise ValueError("the weighted average needs support")
        weight = support[:, defined]
        return _ratio((chosen * weight).sum(axis=1), weight.sum(axis=1))
    raise ValueError(f"average must be 'macro' or 'weighted', got {average!r}")
