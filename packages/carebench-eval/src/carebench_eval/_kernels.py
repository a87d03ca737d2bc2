"""Fast exact weighted kernels (eval.md §3).

Every kernel evaluates a metric for a whole batch of weight vectors at once: point estimates (one row of
ones), bootstrap replicates (cluster multiplicities), permutations and groups (0/1 masks). Weights come as
``columns [b, k]`` plus ``column_of [n]``, the column that holds sample ``i``'s weight (its cluster), so
that ``w[r, i] = columns[r, column_of[i]]``; with ``column_of=None`` the columns are the samples.

Rank metrics sort each score column once (`RankIndex`) and reuse that order for every row of weights:
one gather, segment sums and running sums read at the positives' tie groups (`cumulative_at`), ``O(bn)``,
no sort per replicate. With integer
weights the counts stay in int64 and AUROC is a single rounding of an exact ratio; both metrics equal
scikit-learn's on the data with row ``i`` repeated ``w_i`` times within 1e-12.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = [
    "RankIndex",
    "chunk_rows",
    "compact_weights",
    "gather_weights",
    "rank_index",
    "rank_metrics",
    "rank_metrics_complement",
    "weighted_bincount",
    "weighted_sums",
]

CHUNK_BYTES = 8 * 2**20
"""Upper bound on one ``[b, n]`` working array; chunking never changes a result."""


def chunk_rows(n: int) -> int:
    """Rows of weights per chunk so that a ``[rows, n]`` int64 array stays within 8 MiB."""
    return max(1, CHUNK_BYTES // (8 * max(n, 1)))


def compact_weights(columns: np.ndarray, n: int) -> np.ndarray:
    """Integer `columns` as int32 when every count, cumulative sum and product of `rank_metrics` fits, else int64.

    Halving the width of the gathered weights makes the rank kernel about a quarter faster; the cast
    happens only when ``2 max(w)² n < 2³¹``, so results are unchanged.
    """
    if not np.issubdtype(columns.dtype, np.integer) or columns.size == 0:
        return columns
    largest = int(columns.max())
    # Narrower integer weights (e.g. int8 swap masks) are widened: the cumulative counts need the room.
    return columns.astype(np.int32 if 2 * largest * largest * max(n, 1) < 2**31 else np.int64, copy=False)


def gather_weights(columns: np.ndarray, column_of: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """Weights of samples `rows` for every weight row.

    Args:
        columns: ``[b, k]`` weights per column (cluster or sample).
        column_of: ``[n]`` column of each sample, or None when columns are samples.
        rows: ``[r]`` sample indices.

    Returns:
        ``[b, r]`` weights.
    """
    index = rows if column_of is None else column_of[rows]
    return np.take(columns, index, axis=1)


@dataclass(frozen=True)
class RankIndex:
    """Sorted structure of one (labels, scores) column, computed once and reused by every weight row.

    Positives and negatives are listed in decreasing-score order (stable). For the positive at position
    ``j`` of `pos_rows`, its tie group ``g`` holds ``neg_before[j]`` negatives strictly above it,
    ``neg_through[j]`` negatives above or tied, and ``pos_through[j]`` positives above or tied.
    """

    pos_rows: np.ndarray
    neg_rows: np.ndarray
    neg_before: np.ndarray
    neg_through: np.ndarray
    pos_through: np.ndarray

    @cached_property
    def negative_segments(self) -> Segments:
        """Where the negatives' running count is read: `neg_through` and `neg_before`."""
        return segments(self.neg_rows.size, self.neg_through, self.neg_before)

    @cached_property
    def positive_segments(self) -> Segments:
        """Where the positives' running count is read: `pos_through`."""
        return segments(self.pos_rows.size, self.pos_through)


@dataclass(frozen=True)
class Segments:
    """Positions at which running sums of a ``[b, size]`` weight array are read, as segment boundaries.

    Attributes:
        starts: ``[S]`` strictly increasing segment starts, ``starts[0] = 0`` (empty when ``size = 0``).
        lookups: per requested position array ``p``, the column of `cumulative_at`'s padded sums that holds
            ``Σ_{i < p} w[:, i]``.
    """

    starts: np.ndarray
    lookups: tuple[np.ndarray, ...]


def segments(size: int, *positions: np.ndarray) -> Segments:
    """The `Segments` that read running sums of `size` columns at each array of `positions` (in ``[0, size]``)."""
    if size == 0:
        return Segments(
            np.zeros(0, dtype=np.int64), tuple(np.zeros(p.size, dtype=np.int64) for p in positions)
        )
    points = np.unique(np.concatenate(positions)) if positions else np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], points[(points > 0) & (points < size)]]).astype(np.int64)
    return Segments(starts, tuple(np.searchsorted(starts, p) for p in positions))


def cumulative_at(
    weights: np.ndarray, where: Segments, dtype: type
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Row totals and running sums of integer `weights` ``[b, size]`` read at `where`'s positions.

    Sums each segment between consecutive read positions (`numpy.add.reduceat`) and cumulates the ``[b, S]``
    segment sums instead of the whole ``[b, size]`` array: the same integers with far less memory traffic.

    Returns:
        ``(total [b], (Σ_{i < p} w[:, i] [b, len(p)] for each position array p))`` in `dtype`.
    """
    padded = np.zeros((weights.shape[0], where.starts.size + 1), dtype=dtype)
    if where.starts.size:
        np.cumsum(np.add.reduceat(weights, where.starts, axis=1, dtype=dtype), axis=1, out=padded[:, 1:])
    return padded[:, -1], tuple(padded[:, lookup] for lookup in where.lookups)


def rank_index(y_true: np.ndarray, y_score: np.ndarray) -> RankIndex:
    """Sort one column once.

    Args:
        y_true: ``[n]`` 0/1 labels.
        y_score: ``[n]`` scores (float64).

    Returns:
        The `RankIndex` of the column.
    """
    order = np.argsort(-np.asarray(y_score, dtype=np.float64), kind="stable")
    sorted_scores = y_score[order]
    positive = np.asarray(y_true, dtype=bool)[order]
    new_group = np.empty(order.size, dtype=bool)
    new_group[:1] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_group[1:])
    group = np.cumsum(new_group) - 1
    n_groups = int(group[-1]) + 1 if order.size else 0
    neg_per_group = np.bincount(group, weights=~positive, minlength=n_groups).astype(np.int64)
    pos_per_group = np.bincount(group, weights=positive, minlength=n_groups).astype(np.int64)
    neg_cum = np.cumsum(neg_per_group)
    pos_cum = np.cumsum(pos_per_group)
    pos_group = group[positive]
    return RankIndex(
        pos_rows=order[positive],
        neg_rows=order[~positive],
        neg_before=neg_cum[pos_group] - neg_per_group[pos_group],
        neg_through=neg_cum[pos_group],
        pos_through=pos_cum[pos_group],
    )


def _leading_zero_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros((values.shape[0], values.shape[1] + 1), dtype=values.dtype)
    np.cumsum(values, axis=1, out=out[:, 1:])
    return out


def rank_metrics(
    index: RankIndex, columns: np.ndarray, column_of: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and average precision for every row of weights (eval.md §3.1).

    ``AUROC = Σ_g P_g (N − FP_g + N_g/2) / (P N)`` and ``AP = Σ_g P_g TP_g / (TP_g + FP_g) / P`` over tie
    groups in decreasing score order. NaN where ``P = 0`` or ``N = 0``.

    Args:
        index: the column's `RankIndex`.
        columns: ``[b, k]`` weights (int64 for exact counts, or float64).
        column_of: ``[n]`` column of each sample, or None.

    Returns:
        ``(auroc [b], average_precision [b])``, float64.
    """
    w_pos = gather_weights(columns, column_of, index.pos_rows)
    w_neg = gather_weights(columns, column_of, index.neg_rows)
    if not np.issubdtype(columns.dtype, np.integer):
        cum_neg = _leading_zero_cumsum(w_neg)
        cum_pos = _leading_zero_cumsum(w_pos)
        return _rank_values(
            w_pos,
            cum_pos[:, -1],
            cum_neg[:, -1],
            cum_neg[:, index.neg_through],
            cum_neg[:, index.neg_before],
            cum_pos[:, index.pos_through],
            np.float64,
        )
    negatives, (fp_through, fp_before) = cumulative_at(w_neg, index.negative_segments, columns.dtype)
    positives, (tp_through,) = cumulative_at(w_pos, index.positive_segments, columns.dtype)
    return _rank_values(w_pos, positives, negatives, fp_through, fp_before, tp_through, np.int64)


def rank_metrics_complement(
    index: RankIndex, columns: np.ndarray, column_of: np.ndarray | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`rank_metrics` for 0/1 weight rows ``W`` and for their complements ``1 − W``, in one pass.

    The paired permutation test (eval.md §3.2) weights the pooled samples of two models by ``W`` for one
    model and ``1 − W`` for the other. The complement's cumulative counts at any position ``g`` are
    ``g − cum(W)[g]``, so only the positives' entries are recomputed; the integer counts, and hence the
    values, are bit-identical to ``rank_metrics(index, 1 − W)``.

    Args:
        index: the column's `RankIndex`.
        columns: ``[b, k]`` integer weights, each 0 or 1 (not checked).
        column_of: ``[n]`` column of each sample, or None.

    Returns:
        ``((auroc, average_precision), (auroc_complement, average_precision_complement))``, each ``[b]``.
    """
    # 0/1 weights fit int8; counts and per-positive credits fit int32 (n < 2^29); sums accumulate in int64.
    narrow = columns.astype(np.int8, copy=False)
    w_pos = gather_weights(narrow, column_of, index.pos_rows)
    w_neg = gather_weights(narrow, column_of, index.neg_rows)
    negatives, (fp_through, fp_before) = cumulative_at(w_neg, index.negative_segments, np.int32)
    positives, (tp_through,) = cumulative_at(w_pos, index.positive_segments, np.int32)
    parts = (positives, negatives, fp_through, fp_before, tp_through)
    sizes = (
        index.pos_rows.size,
        index.neg_rows.size,
        *(part.astype(np.int32) for part in (index.neg_through, index.neg_before, index.pos_through)),
    )
    direct = _rank_values(w_pos, *parts, np.int64)
    complement = _rank_values(
        1 - w_pos, *(size - part for size, part in zip(sizes, parts, strict=True)), np.int64
    )
    return direct, complement


def _rank_values(
    w_pos: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    fp_through: np.ndarray,
    fp_before: np.ndarray,
    tp_through: np.ndarray,
    total_type: type,
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AP from the positives' weights ``[b, P]`` and the cumulative counts at their tie groups."""
    # Twice the Mann-Whitney numerator, so integer weights give an exact integer (summed in int64).
    credit = 2 * negatives[:, None] - fp_through
    credit -= fp_before
    credit *= w_pos
    doubled = credit.sum(axis=1, dtype=total_type)
    predicted = tp_through + fp_through
    if np.issubdtype(predicted.dtype, np.integer):
        # Integer counts: predicted is 0 only where tp_through is 0, so 0 / 1 gives the same 0 as a mask.
        np.maximum(predicted, 1, out=predicted)
        precision = tp_through / predicted
    else:
        precision = np.divide(tp_through, predicted, out=np.zeros(predicted.shape), where=predicted > 0)
    precision *= w_pos
    undefined = (positives == 0) | (negatives == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = doubled / (2.0 * positives * negatives)
        average_precision = precision.sum(axis=1) / positives
    auroc[undefined] = np.nan
    average_precision[undefined] = np.nan
    return auroc, average_precision


def weighted_bincount(
    codes: np.ndarray,
    n_codes: int,
    columns: np.ndarray,
    column_of: np.ndarray | None = None,
    values: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted counts (or sums of `values`) per code for every row of weights.

    ``out[r, c] = Σ_{i: codes[i]=c} w[r, i] · values[i]`` (values = 1 when None). Used for confusion
    counts, calibration bins and multiclass confusion matrices.

    Args:
        codes: ``[n]`` integer codes in ``[0, n_codes)``.
        n_codes: number of codes.
        columns: ``[b, k]`` weights.
        column_of: ``[n]`` column of each sample, or None.
        values: ``[n]`` values to sum, or None to count.

    Returns:
        ``[b, n_codes]``; int64 when counting with integer weights, else float64.
    """
    n_columns = columns.shape[1]
    sample_column = np.arange(codes.size) if column_of is None else column_of
    flat = sample_column.astype(np.int64) * n_codes + codes
    per_column = np.bincount(flat, weights=values, minlength=n_columns * n_codes).reshape(n_columns, n_codes)
    counting = values is None and np.issubdtype(columns.dtype, np.integer)
    if counting and columns.size and float(columns.max()) * float(codes.size) >= 2.0**53:
        return columns.astype(np.int64) @ per_column.astype(np.int64)
    # Integer matmul has no BLAS path in numpy (about 25x slower); float64 counts are exact below 2**53.
    product = columns.astype(np.float64, copy=False) @ per_column.astype(np.float64, copy=False)
    return np.rint(product).astype(np.int64) if counting else product


def weighted_sums(values: np.ndarray, columns: np.ndarray, column_of: np.ndarray | None = None) -> np.ndarray:
    """``out[r] = Σ_i w[r, i] · values[i]`` for every row of weights.

    Args:
        values: ``[n]`` float values.
        columns: ``[b, k]`` weights.
        column_of: ``[n]`` column of each sample, or None.

    Returns:
        ``[b]`` float64 sums.
    """
    codes = np.zeros(values.shape[0], dtype=np.int64)
    return weighted_bincount(codes, 1, columns, column_of, values=values)[:, 0]
