"""Small helpers that pick rows out of carebench_eval's tidy result tables (eval.md §8.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

AGGREGATE_TARGETS: tuple[str, ...] = ("(macro)", "(micro)", "(weighted)")


def where(frame: pl.DataFrame, **equal: Any) -> pl.DataFrame:
    """Rows whose columns equal the given values; a None value selects nulls."""
    expression = pl.lit(True)
    for column, value in equal.items():
        if column not in frame.columns:
            raise KeyError(f"no column {column!r} in result table; columns: {frame.columns}")
        expression = expression & (pl.col(column).is_null() if value is None else pl.col(column) == value)
    return frame.filter(expression)


def headline(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows that summarize each (model, setting, task, metric, target, group).

    That is the seed/fold `mean` where several runs were aggregated, else the single run's `estimate`.
    """
    means = frame.filter(pl.col("statistic") == "mean")
    estimates = frame.filter(pl.col("statistic") == "estimate")
    if means.height == 0:
        return estimates
    keys = ["model", "setting", "task", "metric", "target", "group_attribute", "group"]
    covered = means.select(keys).unique()
    single = estimates.join(covered, on=keys, how="anti", nulls_equal=True)
    return pl.concat([means, single], how="vertical")


def summary_target(frame: pl.DataFrame, *, task: str, metric: str) -> str | None:
    """The target that summarizes a task for a metric: `(macro)` when present, else the only target."""
    targets = where(frame, task=task, metric=metric)["target"].unique().to_list()
    for aggregate in AGGREGATE_TARGETS:
        if aggregate in targets:
            return aggregate
    return targets[0] if len(targets) == 1 else None


def value_of(frame: pl.DataFrame, column: str = "value") -> float | None:
    """The value of a one-row selection (None when no row)."""
    if frame.height == 0:
        return None
    if frame.height > 1:
        raise ValueError(f"expected one result row, got {frame.height}: {frame.head(3)}")
    value = frame[column][0]
    return None if value is None else float(value)


def ordered(names: Sequence[str], *, by: dict[str, float | None], descending: bool = True) -> list[str]:
    """Names sorted by a score (missing scores last), then by name."""

    def key(name: str) -> tuple[int, float, str]:
        score = by.get(name)
        if score is None or score != score:
            return (1, 0.0, name)
        return (0, -score if descending else score, name)

    return sorted(names, key=key)


SUPPRESSED = "suppressed"
"""What a table shows in place of a number computed on a group smaller than `min_group_n`."""


def small_group(min_group_n: int) -> pl.Expr:
    """Rows computed on a group (`group` set) of fewer than `min_group_n` stays."""
    return pl.col("group").is_not_null() & (pl.col("n") < min_group_n)


def suppress_small_groups(frame: pl.DataFrame, min_group_n: int) -> pl.DataFrame:
    """The result table without rows of groups smaller than `min_group_n` (what a results file may hold)."""
    if "group" not in frame.columns or "n" not in frame.columns:
        return frame
    return frame.filter(~small_group(min_group_n))


def group_size_text(n: int | None, min_group_n: int) -> str:
    """A group's size as shown: the count, or `< min_group_n` for a suppressed group."""
    if n is None:
        return "-"
    return str(n) if n >= min_group_n else f"< {min_group_n}"
