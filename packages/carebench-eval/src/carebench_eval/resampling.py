"""Patient-clustered bootstrap, jackknife and paired permutation test (eval.md §4, §5.1).

Random streams: replicate ``b`` of stream ``s`` uses ``SeedSequence(random_state, spawn_key=(s, b))``
with PCG64, so a replicate never depends on chunking or on how many replicates are drawn, and the
bootstrap (stream 0), permutation (stream 1) and gap-test (stream 2) streams are independent: changing
``n_perm`` never changes a CI.

Clusters are ``subject_id`` when given (a patient's stays enter a resample together), else samples. The
cluster universe is the sorted unique ids, so resamples do not depend on row order.

`bootstrap_ci` and `paired_permutation_test` take any ``statistic(y_true, y_score)`` callable: the
registered metric functions run on the fast weighted kernels (§3), other callables on a loop over
materialized resamples (correct, slower).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from carebench_eval import _kernels
from carebench_eval.errors import undefined_metric_warning
from carebench_eval.metrics import binary, calibration, multiclass
from carebench_eval.metrics.core import BinaryEvaluator, MulticlassEvaluator, average_targets
from carebench_eval.metrics.multilabel import resolve_labels, resolve_scores

__all__ = [
    "BOOTSTRAP_STREAM",
    "GAP_TEST_STREAM",
    "MAX_DROPPED",
    "PERMUTATION_EPSILON",
    "PERMUTATION_STREAM",
    "BootstrapResult",
    "PermutationResult",
    "bca_interval",
    "bootstrap_ci",
    "bootstrap_counts",
    "chunks",
    "cluster_universe",
    "enumerated_flips",
    "paired_permutation_test",
    "percentile_interval",
    "permutation_flips",
    "permutation_pvalue",
    "replicate_generator",
]

BOOTSTRAP_STREAM = 0
PERMUTATION_STREAM = 1
GAP_TEST_STREAM = 2

MAX_DROPPED = 0.05
"""Share of undefined replicates above which a CI is NaN with note ``ci_unstable`` (§4.3)."""

PERMUTATION_EPSILON = 1e-12
"""Tolerance of the permutation p-value (§5.1): absorbs summation-order differences."""

CI_METHODS = ("percentile", "bca")


def check_interval(ci: str, level: float) -> None:
    """Raise ValueError unless `ci` is an interval method of `CI_METHODS` and `level` lies in (0, 1)."""
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be one of {', '.join(CI_METHODS)}; got {ci!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def replicate_generator(random_state: int, stream: int, replicate: int) -> np.random.Generator:
    """The PCG64 generator of replicate `replicate` of `stream`."""
    sequence = np.random.SeedSequence(random_state, spawn_key=(stream, replicate))
    return np.random.Generator(np.random.PCG64(sequence))


def bootstrap_counts(n_clusters: int, start: int, stop: int, random_state: int) -> np.ndarray:
    """Cluster multiplicities of bootstrap replicates ``start..stop-1``.

    Replicate ``b`` draws ``m`` cluster indices uniformly with replacement.

    Returns:
        int64 ``[stop - start, n_clusters]``; each row sums to ``n_clusters``.
    """
    counts = np.empty((stop - start, n_clusters), dtype=np.int64)
    for row, replicate in enumerate(range(start, stop)):
        draws = replicate_generator(random_state, BOOTSTRAP_STREAM, replicate).integers(
            0, n_clusters, n_clusters
        )
        counts[row] = np.bincount(draws, minlength=n_clusters)
    return counts


def permutation_flips(n_clusters: int, start: int, stop: int, random_state: int) -> np.ndarray:
    """Per-cluster fair coins of permutations ``start..stop-1``: int64 0/1 ``[stop - start, n_clusters]``."""
    flips = np.empty((stop - start, n_clusters), dtype=np.int64)
    for row, replicate in enumerate(range(start, stop)):
        flips[row] = replicate_generator(random_state, PERMUTATION_STREAM, replicate).integers(
            0, 2, n_clusters
        )
    return flips


def enumerated_flips(n_clusters: int, start: int, stop: int) -> np.ndarray:
    """Flip patterns ``start..stop-1`` of all ``2^m`` patterns (bit ``k`` of the index = cluster ``k``)."""
    patterns = np.arange(start, stop, dtype=np.int64)[:, None]
    return (patterns >> np.arange(n_clusters, dtype=np.int64)[None, :]) & 1


def cluster_universe(*cluster_arrays: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted unique cluster ids of all arrays and each array's index into them."""
    universe = np.unique(np.concatenate(cluster_arrays)) if cluster_arrays else np.array([], dtype=str)
    return universe, [np.searchsorted(universe, clusters).astype(np.int64) for clusters in cluster_arrays]


def chunks(total: int, n_samples: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` chunks of weight rows keeping each ``[rows, n_samples]`` array within 8 MiB."""
    step = _kernels.chunk_rows(n_samples)
    for start in range(0, total, step):
        yield start, min(total, start + step)


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float, list[str]]:
    """Percentile CI of `replicates` ``[B]`` with the undefined-replicate rule of §4.3.

    Returns:
        ``(ci_low, ci_high, notes)``: notes hold ``ci_dropped=k`` and, above 5 % dropped, ``ci_unstable``
        with a NaN interval. Quantiles interpolate linearly.
    """
    defined = replicates[np.isfinite(replicates)]
    dropped = replicates.size - defined.size
    notes = [f"ci_dropped={dropped}"] if dropped else []
    if defined.size == 0 or dropped > MAX_DROPPED * replicates.size:
        if replicates.size:
            notes.append("ci_unstable")
        return math.nan, math.nan, notes
    alpha = 1.0 - level
    low, high = np.quantile(defined, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high), notes


def bca_interval(
    replicates: np.ndarray, estimate: float, jackknife: np.ndarray, level: float
) -> tuple[float, float, list[str]]:
    """Bias-corrected and accelerated interval (Efron 1987), eval.md §4.2.

    Args:
        replicates: ``[B]`` bootstrap values (NaN = undefined, dropped).
        estimate: the full-data value.
        jackknife: ``[m]`` leave-one-cluster-out values.
        level: confidence level.

    Returns:
        ``(ci_low, ci_high, notes)``; falls back to the percentile interval with note ``bca_fallback``
        when ``z0`` is infinite or the acceleration is undefined.
    """
    low, high, notes = percentile_interval(replicates, level)
    if "ci_unstable" in notes or not math.isfinite(estimate):
        return low, high, notes
    defined = replicates[np.isfinite(replicates)]
    share = (
        np.count_nonzero(defined < estimate) + 0.5 * np.count_nonzero(defined == estimate)
    ) / defined.size
    deviations = np.mean(jackknife) - jackknife
    spread = float(np.sum(deviations**2))
    if not 0.0 < share < 1.0 or not np.all(np.isfinite(jackknife)) or spread == 0.0:
        return low, high, [*notes, "bca_fallback"]
    normal = NormalDist()
    z0 = normal.inv_cdf(share)
    acceleration = float(np.sum(deviations**3)) / (6.0 * spread**1.5)
    alpha = 1.0 - level
    quantiles = []
    for q in (alpha / 2.0, 1.0 - alpha / 2.0):
        z_q = normal.inv_cdf(q)
        quantiles.append(normal.cdf(z0 + (z0 + z_q) / (1.0 - acceleration * (z0 + z_q))))
    bca_low, bca_high = np.quantile(defined, quantiles)
    return float(bca_low), float(bca_high), notes


def permutation_pvalue(observed: float, permuted: np.ndarray, *, exact: bool) -> float:
    """Two-sided p of §5.1: ``(1 + #{|Δ*| ≥ |Δ| − ε}) / (B + 1)``, or the exact share when enumerated."""
    if not math.isfinite(observed):
        return math.nan
    permuted = permuted[np.isfinite(permuted)]
    extreme = int(np.count_nonzero(np.abs(permuted) >= abs(observed) - PERMUTATION_EPSILON))
    if exact:
        return extreme / permuted.size if permuted.size else math.nan
    return (1 + extreme) / (permuted.size + 1)


# Fast paths: registered metric functions evaluated through the batched evaluators.

_SCORE_FUNCTIONS: dict[Callable[..., Any], str] = {
    binary.auroc_score: "auroc_score",
    binary.auprc_score: "auprc_score",
    calibration.brier_loss: "brier_loss",
    calibration.expected_calibration_error: "expected_calibration_error",
}
_LABEL_FUNCTIONS: dict[Callable[..., Any], str] = {
    binary.sensitivity_score: "sensitivity_score",
    binary.specificity_score: "specificity_score",
    binary.fpr_error: "fpr_error",
    binary.ppv_score: "ppv_score",
    binary.npv_score: "npv_score",
    binary.f1_score: "f1_score",
    binary.positive_rate: "positive_rate",
    multiclass.accuracy_score: "accuracy_score",
    multiclass.kappa_score: "kappa_score",
    multiclass.kappa_linear_score: "kappa_linear_score",
    multiclass.kappa_quadratic_score: "kappa_quadratic_score",
}
_WHOLE_TASK_LABEL_METRICS = frozenset(
    {"accuracy_score", "kappa_score", "kappa_linear_score", "kappa_quadratic_score"}
)


@dataclass(frozen=True)
class _Batched:
    """A statistic as ``columns [b, k] -> [b]`` over weight columns of the given samples."""

    name: str
    evaluator: BinaryEvaluator | MulticlassEvaluator
    defined: np.ndarray | None

    def __call__(self, columns: np.ndarray) -> np.ndarray:
        return self._reduce(self.evaluator.values(columns)[self.name])

    def complement(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The statistic at 0/1 weight rows ``W`` and at ``1 − W`` (one shared rank pass when binary)."""
        if isinstance(self.evaluator, BinaryEvaluator):
            direct, complement = self.evaluator.complement_values(columns)
            return self._reduce(direct[self.name]), self._reduce(complement[self.name])
        return self(columns), self(1 - columns)

    def _reduce(self, values: np.ndarray) -> np.ndarray:
        if values.shape[1] == 1:
            return values[:, 0]
        return average_targets(values, average="macro", defined=self.defined)


def _evaluator(
    statistic: Callable[..., Any], y_true: np.ndarray, y_input: np.ndarray, column_of: np.ndarray | None
) -> tuple[str, BinaryEvaluator | MulticlassEvaluator] | None:
    if statistic in _SCORE_FUNCTIONS:
        name = _SCORE_FUNCTIONS[statistic]
        kind, y, s = resolve_scores(y_true, y_input)
        if kind == "multiclass":
            return name, MulticlassEvaluator(y, s, metrics=(name,), column_of=column_of)
        return name, BinaryEvaluator(y, s, None, metrics=(name,), column_of=column_of)
    if statistic in _LABEL_FUNCTIONS:
        name = _LABEL_FUNCTIONS[statistic]
        kind, y, p, n_classes = resolve_labels(y_true, y_input)
        if name in _WHOLE_TASK_LABEL_METRICS and kind == "binary":
            kind, y, p = "multiclass", y[:, 0].astype(np.int64), p[:, 0].astype(np.int64)
        if kind == "multiclass":
            evaluator = MulticlassEvaluator(
                y, None, p, metrics=(name,), n_classes=n_classes, column_of=column_of
            )
            return name, evaluator
        return name, BinaryEvaluator(y, None, p, metrics=(name,), column_of=column_of)
    return None


def _batched(
    statistic: Callable[..., Any], arrays: tuple[np.ndarray, ...], column_of: np.ndarray | None
) -> _Batched | None:
    """The fast path of `statistic` on `arrays`, or None when it has none."""
    if len(arrays) != 2:
        return None
    found = _evaluator(statistic, arrays[0], arrays[1], column_of)
    if found is None:
        return None
    name, evaluator = found
    n = arrays[0].shape[0]
    k = n if column_of is None else int(column_of.max()) + 1 if n else 0
    point = evaluator.values(np.ones((1, k), dtype=np.int64))[name]
    defined = None if point.shape[1] == 1 else ~np.isnan(point[0])
    return _Batched(name, evaluator, defined)


def _quietly(statistic: Callable[..., Any], *arrays: np.ndarray) -> float:
    """`statistic` on a replicate, with undefined-metric warnings silenced (they become dropped replicates)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", undefined_metric_warning())
        return float(statistic(*arrays))


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap CI.

    Attributes:
        value: the full-data estimate (never the bootstrap mean).
        ci_low: lower bound (NaN if undefined or unstable).
        ci_high: upper bound.
        replicates: ``[B]`` replicate values (NaN = undefined replicate, dropped).
        notes: note tokens (``row_bootstrap``, ``ci_dropped=k``, ``ci_unstable``, ``bca_fallback``).
    """

    value: float
    ci_low: float
    ci_high: float
    replicates: np.ndarray
    notes: tuple[str, ...]


def _clusters(clusters: np.ndarray | None, n: int) -> tuple[np.ndarray, int, list[str]]:
    if clusters is None:
        return np.arange(n, dtype=np.int64), n, ["row_bootstrap"]
    values = np.asarray(clusters)
    if values.shape != (n,):
        raise ValueError(f"clusters must have shape ({n},), got {values.shape}")
    universe, (column_of,) = cluster_universe(values)
    return column_of, universe.size, []


def bootstrap_ci(
    statistic: Callable[..., Any],
    *arrays: np.ndarray,
    clusters: np.ndarray | None = None,
    n_boot: int = 1000,
    ci: str = "percentile",
    level: float = 0.95,
    random_state: int = 0,
) -> BootstrapResult:
    """Patient-clustered bootstrap CI of `statistic` (eval.md §4.1–4.3).

    Replicate ``b`` draws ``m`` clusters with replacement; sample ``i`` gets weight ``c_b[k(i)]`` (the
    times its cluster was drawn), so all of a patient's stays enter together.

    Args:
        statistic: ``statistic(*arrays) -> float``; registered metric functions (e.g. `auroc_score`)
            use the fast exact kernels, others are called on materialized resamples.
        *arrays: ``[n, ...]`` arrays (``y_true``, ``y_score`` for the metric functions).
        clusters: ``[n]`` cluster ids (``subject_id``); None → one cluster per sample (``row_bootstrap``).
        n_boot: replicates ``B``.
        ci: ``"percentile"`` or ``"bca"``.
        level: confidence level.
        random_state: seed of the bootstrap stream.

    Returns:
        The `BootstrapResult`.

    Example:
        >>> from carebench_eval import auroc_score
        >>> y = np.array([0, 1] * 20)
        >>> s = np.linspace(0, 1, 40)
        >>> result = bootstrap_ci(auroc_score, y, s, n_boot=200)
        >>> round(result.value, 4), result.ci_low < result.value < result.ci_high
        (0.525, True)
    """
    check_interval(ci, level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    arrays = tuple(np.asarray(array) for array in arrays)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    n = arrays[0].shape[0]
    if any(array.shape[0] != n for array in arrays):
        raise ValueError("all arrays must have the same number of rows")
    column_of, n_clusters, notes = _clusters(clusters, n)
    value = float(statistic(*arrays))
    fast = _batched(statistic, arrays, column_of)
    replicates = np.empty(n_boot)
    for start, stop in chunks(n_boot, n):
        counts = bootstrap_counts(n_clusters, start, stop, random_state)
        if fast is not None:
            replicates[start:stop] = fast(counts)
            continue
        for row in range(stop - start):
            rows = np.repeat(np.arange(n), counts[row, column_of])
            replicates[start + row] = _quietly(statistic, *(array[rows] for array in arrays))
    if ci == "bca":
        jackknife = _jackknife(statistic, arrays, column_of, n_clusters, fast)
        low, high, ci_notes = bca_interval(replicates, value, jackknife, level)
    else:
        low, high, ci_notes = percentile_interval(replicates, level)
    return BootstrapResult(value, low, high, replicates, tuple(notes + ci_notes))


def _jackknife(
    statistic: Callable[..., Any],
    arrays: tuple[np.ndarray, ...],
    column_of: np.ndarray,
    n_clusters: int,
    fast: _Batched | None,
) -> np.ndarray:
    """Leave-one-cluster-out values ``[m]`` (0/1 masks through the same kernels)."""
    values = np.empty(n_clusters)
    n = arrays[0].shape[0]
    for start, stop in chunks(n_clusters, max(n, n_clusters)):
        masks = np.ones((stop - start, n_clusters), dtype=np.int64)
        masks[np.arange(stop - start), np.arange(start, stop)] = 0
        if fast is not None:
            values[start:stop] = fast(masks)
            continue
        for row in range(stop - start):
            rows = np.flatnonzero(masks[row, column_of])
            values[start + row] = _quietly(statistic, *(array[rows] for array in arrays))
    return values


@dataclass(frozen=True)
class PermutationResult:
    """A paired permutation test.

    Attributes:
        delta: ``θ(A) − θ(B)`` on the data.
        p_value: two-sided p (+1 correction, or exact when all patterns were enumerated).
        permuted: ``[B_π]`` permuted differences.
        exact: True when all ``2^m`` flip patterns were enumerated.
    """

    delta: float
    p_value: float
    permuted: np.ndarray
    exact: bool


def paired_permutation_test(
    statistic: Callable[..., Any],
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    clusters: np.ndarray | None = None,
    n_perm: int = 10_000,
    random_state: int = 0,
) -> PermutationResult:
    """Paired permutation test of ``Δ = θ(y, A) − θ(y, B)`` (eval.md §5.1).

    Each permutation flips a fair coin per cluster and swaps the two models' scores (or predictions)
    for all of that cluster's samples. With ``2^m ≤ n_perm`` every pattern is enumerated and p is exact.
    Registered metrics run on the kernels: ``(s_A; s_B)`` is concatenated and sorted once, and a flip
    pattern ``f`` becomes weights ``(1 − f; f)`` for swapped A and ``(f; 1 − f)`` for swapped B.

    Args:
        statistic: ``statistic(y_true, scores) -> float`` (e.g. `auroc_score`).
        y_true: ``[n]`` or ``[n, L]`` labels.
        score_a: model A's scores or predictions, same shape as the statistic expects.
        score_b: model B's, same shape as `score_a`.
        clusters: ``[n]`` cluster ids (``subject_id``); None → samples.
        n_perm: permutations ``B_π``.
        random_state: seed of the permutation stream.

    Returns:
        The `PermutationResult`.

    Example:
        >>> from carebench_eval import auroc_score
        >>> y = np.array([0, 1] * 10)
        >>> s = np.linspace(0, 1, 20)
        >>> paired_permutation_test(auroc_score, y, s, s, n_perm=100).p_value
        1.0
    """
    if n_perm < 1:
        raise ValueError(f"n_perm must be at least 1, got {n_perm}")
    y = np.asarray(y_true)
    a = np.asarray(score_a)
    b = np.asarray(score_b)
    if a.shape != b.shape or a.shape[0] != y.shape[0]:
        raise ValueError(f"score_a {a.shape} and score_b {b.shape} must match and have {y.shape[0]} rows")
    n = y.shape[0]
    column_of, n_clusters, _ = _clusters(clusters, n)
    delta = float(statistic(y, a)) - float(statistic(y, b))
    exact = n_clusters < 63 and 2**n_clusters <= n_perm
    total = 2**n_clusters if exact else n_perm
    stacked_column = np.concatenate([column_of, column_of + n_clusters])
    fast = _batched(statistic, (np.concatenate([y, y]), np.concatenate([a, b])), stacked_column)
    permuted = np.empty(total)
    for start, stop in chunks(total, 2 * n):
        if exact:
            flips = enumerated_flips(n_clusters, start, stop)
        else:
            flips = permutation_flips(n_clusters, start, stop, random_state)
        if fast is not None:
            # Swapped B is weighted [F, 1 − F], the complement of swapped A's [1 − F, F].
            swapped_a, swapped_b = fast.complement(np.concatenate([1 - flips, flips], axis=1))
            permuted[start:stop] = swapped_a - swapped_b
            continue
        for row in range(stop - start):
            flip = flips[row, column_of].astype(bool)
            mask = flip.reshape((n,) + (1,) * (a.ndim - 1))
            swapped_a = np.where(mask, b, a)
            swapped_b = np.where(mask, a, b)
            permuted[start + row] = _quietly(statistic, y, swapped_a) - _quietly(statistic, y, swapped_b)
    return PermutationResult(delta, permutation_pvalue(delta, permuted, exact=exact), permuted, exact)
