"""Weighted evaluation of (metric, target) cells for batches of weight rows, and the resampling loops.

The machinery that `score`, `compare`, `fairness` and `robustness` share (eval.md §3.2, §4.1, §5.1-5.2):
one sample set's metrics evaluated for whole batches of weight rows (`Scored`), grids of such cells over runs
and units (`CellGrid`: groups or curve points), and the paired (`paired_statistics`) and single-side
(`single_statistics`) bootstrap and permutation loops over the streams of `carebench_eval.resampling`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from carebench_eval.metrics.core import (
    CALIBRATION_FIT_METRICS,
    LABEL_METRICS,
    MULTICLASS_SCALARS,
    BinaryEvaluator,
    MulticlassEvaluator,
    average_targets,
)
from carebench_eval.metrics.multilabel import UNDEFINED_NOTES
from carebench_eval.resampling import (
    bootstrap_counts,
    chunks,
    enumerated_flips,
    percentile_interval,
    permutation_flips,
    permutation_pvalue,
)
from carebench_eval.runs import TaskRun, predictions_at

__all__ = [
    "AGGREGATE_TARGETS",
    "THRESHOLD_METRICS",
    "WHOLE_TASK_TARGET",
    "CellGrid",
    "PairedResult",
    "Reducer",
    "Request",
    "Scored",
    "label_rows",
    "paired_statistics",
    "reduce_estimate",
    "reduce_reps",
    "single_statistics",
    "undefined_note",
]


AGGREGATE_TARGETS = ("(macro)", "(micro)", "(weighted)")
WHOLE_TASK_TARGET = "(micro)"
"""Target of multiclass metrics defined on the whole task (accuracy, κ, Brier, top-label ECE)."""

THRESHOLD_METRICS = LABEL_METRICS - {"base_rate"}
"""Metrics of thresholded predictions (each reported with the ``policy=...`` note of its threshold)."""


def undefined_note(metric: str) -> str:
    """Note token for an undefined value of `metric` (eval.md §1.4)."""
    return UNDEFINED_NOTES.get(metric, "single_class")


Request = tuple[str, str]
"""A (metric, target) pair; target is a label/class name or an aggregate such as ``(macro)``."""


class Scored:
    """One sample set's labels, scores and predictions, evaluated for batches of weight rows.

    A thin layer over the evaluators of :mod:`carebench_eval.metrics.core` (`score` reports through it too,
    so point estimates agree everywhere): it picks the requested (metric, target) cells and forms the macro
    and weighted averages over the targets defined on the whole sample set (the fixed estimand of §4.3).

    Args:
        kind: ``binary``, ``multilabel`` or ``multiclass``.
        targets: ``[L]`` label names, or class names in class order.
        y: ``[n, L]`` 0/1 labels (multiclass: one-hot).
        s: ``[n, L]`` scores.
        pred: ``[n, L]`` 0/1 predictions at the policy thresholds, or None without label metrics
            (multiclass: ignored, argmax is used).
        column_of: ``[n]`` weight column of each sample.
        requests: the (metric, target) cells to compute.
        n_bins: calibration bins.
        undefined: ``[L]`` targets whose threshold is undefined (NaN): their label metrics are NaN.
    """

    def __init__(
        self,
        kind: str,
        targets: tuple[str, ...],
        y: np.ndarray,
        s: np.ndarray,
        pred: np.ndarray | None,
        column_of: np.ndarray,
        requests: Sequence[Request],
        *,
        n_bins: int = 10,
        undefined: np.ndarray | None = None,
    ) -> None:
        self.kind = kind
        self.targets = targets
        self.requests = list(dict.fromkeys(requests))
        self.column_of = np.asarray(column_of, dtype=np.int64)
        metrics = tuple(dict.fromkeys(metric for metric, _ in self.requests))
        self._undefined = None
        if kind != "multiclass" and undefined is not None and undefined.any():
            self._undefined = np.asarray(undefined, dtype=bool)
        self._masked = [metric for metric in metrics if metric in THRESHOLD_METRICS]
        self._micro: BinaryEvaluator | None = None
        if kind == "multiclass":
            self._evaluator: BinaryEvaluator | MulticlassEvaluator = MulticlassEvaluator(
                y.argmax(axis=1),
                s,
                metrics=metrics,
                n_classes=len(targets),
                column_of=self.column_of,
                n_bins=n_bins,
            )
        else:
            self._evaluator = BinaryEvaluator(
                y, s, pred, metrics=metrics, column_of=self.column_of, n_bins=n_bins
            )
            if any(target == "(micro)" for _, target in self.requests):
                self._micro = self._evaluator.micro()
        for metric, target in self.requests:
            if target not in AGGREGATE_TARGETS and target not in targets:
                raise ValueError(f"unknown target {target!r} for {metric}; available: {list(targets)}")
        # Label-major flattening in the evaluator makes working arrays [b, n L] wide.
        self.width = max(
            self.column_of.size * len(targets), int(self.column_of.max()) + 1 if self.column_of.size else 1
        )
        ones = np.ones((1, int(self.column_of.max()) + 1 if self.column_of.size else 1), dtype=np.int64)
        point = self._masked_values(self._evaluator.values(ones))
        self.defined = {metric: np.isfinite(values[0]) for metric, values in point.items()}

    @classmethod
    def of_run(
        cls,
        run: TaskRun,
        thresholds: np.ndarray,
        column_of: np.ndarray,
        requests: Sequence[Request],
        *,
        n_bins: int = 10,
    ) -> Scored:
        """The cells of one run, predictions at `thresholds` ``[L]``, sample ``i`` in column ``column_of[i]``."""
        return cls(
            run.kind,
            run.targets,
            run.y,
            run.s,
            predictions_at(run, thresholds),
            column_of,
            requests,
            n_bins=n_bins,
            undefined=np.isnan(thresholds),
        )

    def _masked_values(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-target `values` with the label metrics of undefined-threshold targets set to NaN."""
        if self._undefined is not None:
            for metric in self._masked:
                values[metric][:, self._undefined] = np.nan
        return values

    def evaluate(self, columns: np.ndarray) -> dict[Request, np.ndarray]:
        """Values of every requested cell for each weight row.

        Args:
            columns: ``[b, k]`` weights (see :mod:`carebench_eval._kernels`).

        Returns:
            (metric, target) -> ``[b]`` float64, NaN where undefined.
        """
        values = self._masked_values(self._evaluator.values(columns))
        micro = self._micro.values(columns) if self._micro is not None else {}
        return self._cells(lambda: columns, values, micro)

    def evaluate_complement(
        self, columns: np.ndarray
    ) -> tuple[dict[Request, np.ndarray], dict[Request, np.ndarray]]:
        """`evaluate` of 0/1 weight rows ``W`` and of ``1 − W``, sharing the rank passes (same values).

        Args:
            columns: ``[b, k]`` integer weights, each 0 or 1.

        Returns:
            ``(cells of W, cells of 1 − W)``.
        """
        if not isinstance(self._evaluator, BinaryEvaluator):
            return self.evaluate(columns), self.evaluate(1 - columns)
        values, values_complement = map(self._masked_values, self._evaluator.complement_values(columns))
        micro: dict[str, np.ndarray] = {}
        micro_complement: dict[str, np.ndarray] = {}
        if self._micro is not None:
            micro, micro_complement = self._micro.complement_values(columns)
        return (
            self._cells(lambda: columns, values, micro),
            self._cells(lambda: 1 - columns, values_complement, micro_complement),
        )

    def _cells(
        self,
        columns: Callable[[], np.ndarray],
        values: Mapping[str, np.ndarray],
        micro: Mapping[str, np.ndarray],
    ) -> dict[Request, np.ndarray]:
        """The requested cells from per-target `values` and `micro` values of the weight rows `columns()`."""
        support: np.ndarray | None = None
        out: dict[Request, np.ndarray] = {}
        for metric, target in self.requests:
            per_target = values[metric]
            if target == "(micro)":
                out[metric, target] = micro[metric][:, 0] if self.kind != "multiclass" else per_target[:, 0]
            elif self.kind == "multiclass" and metric in MULTICLASS_SCALARS:
                out[metric, target] = per_target[:, 0]
            elif target in ("(macro)", "(weighted)"):
                if target == "(weighted)" and support is None:
                    support = self._evaluator.support(columns())
                out[metric, target] = average_targets(
                    per_target, average=target[1:-1], defined=self.defined[metric], support=support
                )
            else:
                out[metric, target] = per_target[:, self.targets.index(target)]
        return out

    def undefined_notes(self, metric: str, target: str, columns: np.ndarray | None = None) -> list[str]:
        """Note tokens saying why the cell ``(metric, target)`` is NaN at one weight row.

        Most metrics have one reason (`undefined_note`). A calibration fit is undefined for a single
        class, for a score that separates the classes, or (never seen in practice) a fit that does not
        converge; its tokens come from the data of the weight row, and are empty where the fit is defined.
        An average lists the reasons of its labels.

        Args:
            metric: registry name.
            target: label or class name, or an aggregate such as ``(macro)``.
            columns: ``[1, k]`` weights (default: every column once, the point estimate).

        Returns:
            Note tokens, deduplicated.
        """
        if metric not in CALIBRATION_FIT_METRICS:
            return [undefined_note(metric)]
        if columns is None:
            columns = np.ones(
                (1, int(self.column_of.max()) + 1 if self.column_of.size else 1), dtype=np.int64
            )
        evaluator = self._micro if target == "(micro)" and self._micro is not None else self._evaluator
        if not isinstance(evaluator, BinaryEvaluator):
            return [undefined_note(metric)]
        notes = evaluator.fit_notes(metric, columns)[0]
        chosen = [notes[self.targets.index(target)]] if target in self.targets else list(notes)
        return list(dict.fromkeys(note for note in chosen if note))

    def labels_used(self, metric: str, target: str) -> list[str]:
        """Note ``labels_used=j/L`` when a macro or weighted average uses only j of the L targets."""
        if target not in ("(macro)", "(weighted)") or (
            self.kind == "multiclass" and metric in MULTICLASS_SCALARS
        ):
            return []
        defined = self.defined[metric]
        used = int(defined.sum())
        return [f"labels_used={used}/{defined.size}"] if used < defined.size else []


def label_rows(kind: str, metric: str, targets: tuple[str, ...], mode: str) -> list[str]:
    """Targets evaluated for `metric`: `mode` is ``aggregate``, ``per_label`` or ``all``."""
    if kind == "binary":
        return [targets[0]]
    if kind == "multiclass" and metric in MULTICLASS_SCALARS:
        return [WHOLE_TASK_TARGET]
    if mode == "aggregate":
        return ["(macro)"]
    if mode == "per_label":
        return list(targets)
    if mode == "all":
        return ["(macro)", *targets]
    raise ValueError(f"unknown targets {mode!r}; allowed: 'aggregate', 'per_label', 'all'")


# --------------------------------------------------------------------------------------------------
# Replicated evaluation of cells (reps x units) for one side or for a pair


Reducer = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``reduce(values [b, U], eligible [U]) -> [b]``: a statistic over units (groups, curve points)."""


def reduce_estimate(values: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """The plain estimate: the single unit's value."""
    return values[:, 0]


class CellGrid:
    """Scored cells ``[R reps][U units]`` that share one weight-column space.

    A rep is a (seed, fold) run or run pair; a unit is a sample subset (a group) or a setting (a curve
    point). Each side's statistic is ``mean_r reduce(values[:, r, :], eligible)`` (eval.md §4.4: runs
    share the cluster weights).
    """

    def __init__(self, cells: list[list[Scored]]) -> None:
        self.cells = cells
        self.width = max(cell.width for row in cells for cell in row)

    def values(self, columns: np.ndarray) -> dict[Request, np.ndarray]:
        """``(metric, target) -> [b, R, U]`` for the weight rows `columns` ``[b, k]``."""
        return self._stack([[cell.evaluate(columns) for cell in row] for row in self.cells], columns.shape[0])

    def complement_values(
        self, columns: np.ndarray
    ) -> tuple[dict[Request, np.ndarray], dict[Request, np.ndarray]]:
        """`values` of 0/1 weight rows ``W`` and of ``1 − W`` (see `Scored.evaluate_complement`)."""
        pairs = [[cell.evaluate_complement(columns) for cell in row] for row in self.cells]
        b = columns.shape[0]
        return (
            self._stack([[pair[0] for pair in row] for row in pairs], b),
            self._stack([[pair[1] for pair in row] for row in pairs], b),
        )

    def _stack(self, evaluated: list[list[dict[Request, np.ndarray]]], b: int) -> dict[Request, np.ndarray]:
        out: dict[Request, np.ndarray] = {}
        n_reps, n_units = len(self.cells), len(self.cells[0])
        for r, row in enumerate(evaluated):
            for u, cells in enumerate(row):
                for request, value in cells.items():
                    if request not in out:
                        out[request] = np.full((b, n_reps, n_units), np.nan)
                    out[request][:, r, u] = value
        return out


def reduce_reps(values: np.ndarray, reducer: Reducer, eligible: np.ndarray) -> np.ndarray:
    """``mean_r reducer(values[:, r, :], eligible)`` for ``values [b, R, U]`` -> ``[b]``."""
    return np.mean(
        np.stack([reducer(values[:, r, :], eligible) for r in range(values.shape[1])], axis=1), axis=1
    )


@dataclass(frozen=True)
class PairedResult:
    """One comparison cell: Δ, its paired bootstrap CI, the permutation p, notes and Δ replicates ``[B]``."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    notes: list[str]
    replicates: np.ndarray


def paired_statistics(
    grid: CellGrid,
    n_clusters: int,
    requests: Sequence[Request],
    *,
    reducer: Reducer = reduce_estimate,
    eligible: Mapping[Request, np.ndarray] | None = None,
    n_boot: int,
    n_perm: int,
    level: float,
    random_state: int,
) -> dict[Request, PairedResult]:
    """Δ = statistic(A) − statistic(B) with paired bootstrap CI and permutation p (eval.md §5.1-5.2).

    `grid` cells hold A's samples then B's samples, A's weight column ``k`` and B's ``k + m``
    (m = `n_clusters`). Bootstrap replicate counts ``C`` weight A by ``[C, 0]`` and B by ``[0, C]``;
    permutation coins ``F`` swap the models per cluster: A by ``[1−F, F]``, B by ``[F, 1−F]``. When
    ``2^m <= n_perm`` all flip patterns are enumerated and p is exact.

    Args:
        grid: paired cells.
        n_clusters: m, clusters in the shared universe.
        requests: (metric, target) cells.
        reducer: statistic over units (default: the plain estimate).
        eligible: per request, the units that enter the reducer (default: all).
        n_boot: bootstrap replicates (0: no CI).
        n_perm: permutations (0: no test).
        level: CI level.
        random_state: seed of the bootstrap and permutation streams.

    Returns:
        Request -> :class:`PairedResult`.
    """
    m = n_clusters
    zeros = np.zeros((1, m), dtype=np.int64)
    ones = np.ones((1, m), dtype=np.int64)
    n_units = len(grid.cells[0])
    masks = {
        request: (np.ones(n_units, dtype=bool) if eligible is None else eligible[request])
        for request in requests
    }

    def deltas(columns_a: np.ndarray, columns_b: np.ndarray | None) -> dict[Request, np.ndarray]:
        """Δ per request; ``columns_b=None`` means B's weights are ``1 − columns_a`` (0/1 swaps)."""
        if columns_b is None:
            values_a, values_b = grid.complement_values(columns_a)
        else:
            values_a, values_b = grid.values(columns_a), grid.values(columns_b)
        return {
            request: reduce_reps(values_a[request], reducer, masks[request])
            - reduce_reps(values_b[request], reducer, masks[request])
            for request in requests
        }

    observed = {
        request: float(value[0])
        for request, value in deltas(np.hstack([ones, zeros]), np.hstack([zeros, ones])).items()
    }
    boot: dict[Request, list[np.ndarray]] = {request: [] for request in requests}
    for start, stop in chunks(n_boot, max(grid.width, 2 * m)):
        counts = bootstrap_counts(m, start, stop, random_state)
        empty = np.zeros_like(counts)
        for request, value in deltas(np.hstack([counts, empty]), np.hstack([empty, counts])).items():
            boot[request].append(value)
    exact = m < 63 and 2**m <= n_perm
    total_perm = 2**m if exact else n_perm
    perm: dict[Request, list[np.ndarray]] = {request: [] for request in requests}
    for start, stop in chunks(total_perm if n_perm > 0 else 0, max(grid.width, 2 * m)):
        flips = enumerated_flips(m, start, stop) if exact else permutation_flips(m, start, stop, random_state)
        # B's swapped weights [F, 1 − F] are the complement of A's [1 − F, F]: one shared rank pass.
        swapped = np.empty((flips.shape[0], 2 * m), dtype=np.int8)
        swapped[:, m:] = flips
        np.subtract(1, swapped[:, m:], out=swapped[:, :m])
        for request, value in deltas(swapped, None).items():
            perm[request].append(value)
    results: dict[Request, PairedResult] = {}
    for request in requests:
        notes: list[str] = []
        ci_low = ci_high = math.nan
        if n_boot > 0:
            ci_low, ci_high, notes = percentile_interval(np.concatenate(boot[request]), level)
        p_value = math.nan
        if n_perm > 0:
            p_value = permutation_pvalue(observed[request], np.concatenate(perm[request]), exact=exact)
        replicates = np.concatenate(boot[request]) if boot[request] else np.empty(0)
        results[request] = PairedResult(observed[request], ci_low, ci_high, p_value, notes, replicates)
    return results


def single_statistics(
    grid: CellGrid,
    n_clusters: int,
    requests: Sequence[Request],
    *,
    n_boot: int,
    random_state: int,
) -> tuple[dict[Request, np.ndarray], dict[Request, np.ndarray]]:
    """Point values and bootstrap replicates of one side's cells.

    Returns:
        ``(point, replicates)``: request -> ``[R, U]`` point values and ``[B, R, U]`` replicate values
        (B = `n_boot`, the shared resamples of eval.md §4.1).
    """
    ones = np.ones((1, n_clusters), dtype=np.int64)
    point = {request: value[0] for request, value in grid.values(ones).items()}
    parts: dict[Request, list[np.ndarray]] = {request: [] for request in requests}
    for start, stop in chunks(n_boot, max(grid.width, n_clusters)):
        for request, value in grid.values(bootstrap_counts(n_clusters, start, stop, random_state)).items():
            parts[request].append(value)
    n_reps, n_units = len(grid.cells), len(grid.cells[0])
    replicates = {
        request: np.concatenate(parts[request]) if parts[request] else np.empty((0, n_reps, n_units))
        for request in requests
    }
    return point, replicates
