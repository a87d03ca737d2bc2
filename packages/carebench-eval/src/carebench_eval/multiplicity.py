"""Multiple-comparison corrections: Holm (FWER) and Benjamini-Hochberg (FDR), eval.md §5.4.

Two layers, as everywhere in carebench_eval: :func:`holm` and :func:`benjamini_hochberg` adjust a
vector of p-values; :func:`adjust_pvalues` fills the ``p_adjusted`` column of a tidy result frame
(eval.md §8.1) family by family.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

__all__ = ["CORRECTIONS", "adjust_pvalues", "benjamini_hochberg", "holm"]

logger = logging.getLogger(__name__)

CORRECTIONS = ("holm", "bh", "none")
"""Accepted ``correction`` / ``method`` values."""

DEFAULT_FAMILY = ("task", "metric", "target", "setting")
"""Columns that define one family of tests by default (eval.md §5.4)."""


def _step_adjust(p_values: npt.ArrayLike, step: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Adjusted p-values in input order: `step` maps the m defined p-values, sorted, to their adjustment."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    defined = np.flatnonzero(~np.isnan(p))
    if np.any((p[defined] < 0) | (p[defined] > 1)):
        raise ValueError("p_values must lie in [0, 1] (NaN marks a test left out of the family)")
    adjusted = np.full_like(p, np.nan)
    if defined.size:
        order = defined[np.argsort(p[defined], kind="stable")]
        adjusted[order] = step(p[order])
    return adjusted


def _holm_step(p: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(np.minimum(1.0, (p.size - np.arange(p.size)) * p))


def _bh_step(p: np.ndarray) -> np.ndarray:
    scaled = np.minimum(1.0, p.size * p / np.arange(1, p.size + 1))
    return np.minimum.accumulate(scaled[::-1])[::-1]


def holm(p_values: npt.ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate; Holm 1979).

    With the m defined p-values sorted, ``p_(1) <= ... <= p_(m)``:
    ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. NaN entries are left out of ``m`` and stay
    NaN. Equals statsmodels ``multipletests(p, method="holm")``.

    Args:
        p_values: ``[m]`` raw p-values in [0, 1]; NaN for a test that is not part of the family.

    Returns:
        ``[m]`` float64 adjusted p-values, in the input order.

    Examples:
        >>> holm([0.01, 0.04, 0.03, 0.2]).round(4).tolist()
        [0.04, 0.09, 0.09, 0.2]
    """
    return _step_adjust(p_values, _holm_step)


def benjamini_hochberg(p_values: npt.ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (false discovery rate; BH 1995).

    With the m defined p-values sorted: ``p~_(i) = min_{j >= i} min(1, m p_(j) / j)``. NaN entries are
    left out of ``m`` and stay NaN. Equals statsmodels ``multipletests(p, method="fdr_bh")``.

    Args:
        p_values: ``[m]`` raw p-values in [0, 1]; NaN for a test that is not part of the family.

    Returns:
        ``[m]`` float64 adjusted p-values, in the input order.

    Examples:
        >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.2]).round(4).tolist()
        [0.04, 0.0533, 0.0533, 0.2]
    """
    return _step_adjust(p_values, _bh_step)


def adjust_vector(p_values: npt.ArrayLike, method: str) -> np.ndarray:
    """Adjust ``p_values`` with ``method`` (``"holm"``, ``"bh"`` or ``"none"``: a copy)."""
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    if method == "none":
        return _step_adjust(p_values, np.copy)
    raise ValueError(f"unknown correction {method!r}; allowed: {', '.join(map(repr, CORRECTIONS))}")


def _append_note(notes: str | None, token: str) -> str:
    if not notes:
        return token
    tokens = notes.split(";")
    return notes if token in tokens else ";".join([*tokens, token])


def adjust_pvalues(
    frame: pl.DataFrame,
    *,
    family: Sequence[str] = DEFAULT_FAMILY,
    method: str = "holm",
) -> pl.DataFrame:
    """Fill ``p_adjusted`` of a tidy result frame, adjusting within each family (eval.md §5.4).

    Rows whose ``p_value`` is null are not tests and keep ``p_adjusted`` null. Rows with a NaN
    ``p_value`` are left out of their family's ``m``, keep NaN and get the note
    ``excluded_from_family``. With ``method="none"`` ``p_adjusted`` stays null.

    Args:
        frame: a frame in the tidy schema of eval.md §8.1 (e.g. from :func:`carebench_eval.compare`).
        family: columns whose values define one family; default one task x metric x target x setting.
        method: ``"holm"`` (family-wise error rate), ``"bh"`` (false discovery rate) or ``"none"``.

    Returns:
        The same frame (same rows, order and schema) with ``p_adjusted`` and ``notes`` updated.

    Raises:
        ValueError: ``method`` is unknown or a ``family`` column is not in ``frame``.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; allowed: {', '.join(map(repr, CORRECTIONS))}")
    family = list(family)
    unknown = [column for column in family if column not in frame.columns]
    if unknown:
        raise ValueError(
            f"adjust_pvalues: family column(s) {unknown} not in the frame; columns: {frame.columns}"
        )
    if method == "none" or frame.height == 0:
        return frame

    p_value = frame["p_value"].to_numpy().astype(np.float64, copy=True)
    is_test = frame["p_value"].is_not_null().to_numpy()
    adjusted = np.full(frame.height, np.nan)
    notes = frame["notes"].to_list()
    row_index = np.arange(frame.height)
    family_ids = (
        frame.select(family).with_columns(pl.Series("_row", row_index)).filter(pl.Series(is_test))
        if family
        else pl.DataFrame({"_row": row_index[is_test]})
    )
    groups = family_ids.group_by(family, maintain_order=True) if family else [((), family_ids)]
    excluded = 0
    for _, members in groups:
        rows = members["_row"].to_numpy()
        adjusted[rows] = adjust_vector(p_value[rows], method)
        for row in rows[np.isnan(p_value[rows])]:
            notes[row] = _append_note(notes[row], "excluded_from_family")
            excluded += 1
    if excluded:
        logger.info("adjust_pvalues: %d NaN p-value(s) left out of their family", excluded)
    adjusted_series = pl.Series("p_adjusted", adjusted, dtype=pl.Float64)
    adjusted_series = pl.select(
        pl.when(pl.Series(is_test)).then(adjusted_series).otherwise(None).alias("p_adjusted")
    ).to_series()
    return frame.with_columns(adjusted_series, pl.Series("notes", notes, dtype=pl.String))
