"""EHR events: staging (S2), cleaning (S3) and hourly binning (S4) of spec/data.md §4.5-4.6.

S2 reads chartevents, labevents (and outputevents for the extended set) in ONE streaming pass of
bounded blocks and keeps only registry itemids of cohort stays inside the 48 h window, before any
reshaping (§11 P1). Each block's survivors are appended to a staged Parquet part in the work
directory. S3 parses, converts, range-checks and deduplicates the staged rows with counts per
feature; S4 keeps the last value of each hour and scatters it into a NaN-filled [N, 48, F] array.

Two rules come from real MIMIC-IV rather than from the schema:

- `intime` has seconds but `charttime` only minutes, so the window is compared at minute
  resolution: an event charted in the minute of intime belongs to hour 0 (the admission height
  and weight are charted there, seconds "before" intime), and an event charted in the minute of
  prediction_time is outside the window (it may have happened after it).
- a lab result beyond the assay's range has null `value` and `valuenum` and its censored value in
  `comments` (`<0.01.  ...`, `GREATER THAN 500.  VERIFIED.`); `comments` is kept only for such rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from carebench_data.cohort import WINDOW_HOURS
from carebench_data.errors import CarebenchDataError
from carebench_data.raw import ResolvedTable, count_parse_failures, iter_csv_blocks, parse_columns
from carebench_data.registry import CONVERSIONS, Registry

logger = logging.getLogger(__name__)

STAGED_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int32(),
    "hour": pl.Int8(),
    "stored_late": pl.Boolean(),
    "itemid": pl.Int32(),
    "charttime": pl.Datetime("us"),
    "storetime": pl.Datetime("us"),
    "value": pl.String(),
    "valuenum": pl.Float64(),
    "valueuom": pl.String(),
    "comments": pl.String(),
    "in_intime_minute": pl.Boolean(),
}
"""Columns of a staged event row: nothing wider is materialized (§11 P1).

`comments` is null unless the raw `value` and `valuenum` are both null (labevents only);
`in_intime_minute` marks events charted in the minute of intime but seconds before it.
"""

STAGING_REVISION = 2
"""Bumped whenever the staged rows of the same inputs change (columns, window rule): part of the cache key.

Revision 2: the `comments` and `in_intime_minute` columns and the minute-resolution window.
"""

_KEY = {"chartevents": "stay_id", "outputevents": "stay_id", "labevents": "subject_id"}
_PARQUET_SLICE_ROWS = 4_000_000


class BadRowsError(CarebenchDataError):
    """Too many unparseable rows in a raw table (beyond `build.max_bad_row_fraction`)."""


@dataclass
class TableCounts:
    """`counts.events.<table>`: rows after each staging filter, and unparseable values per column."""

    scanned: int = 0
    null_keys: int = 0
    itemid_kept: int = 0
    cohort_kept: int = 0
    window_kept: int = 0
    intime_minute_kept: int = 0
    """Window-kept rows charted in the minute of intime, seconds before it (hour 0)."""
    prediction_minute_dropped: int = 0
    """Rows charted in the minute of prediction_time, seconds before it (outside the window)."""
    bad_values: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "scanned": self.scanned,
            "null_keys": self.null_keys,
            "itemid_kept": self.itemid_kept,
            "cohort_kept": self.cohort_kept,
            "window_kept": self.window_kept,
            "intime_minute_kept": self.intime_minute_kept,
            "prediction_minute_dropped": self.prediction_minute_dropped,
            "bad_values": dict(sorted(self.bad_values.items())),
        }


def join_windows(events: pl.LazyFrame, *, windows: pl.LazyFrame, key: str) -> pl.LazyFrame:
    """Attach each event to the cohort stays of its `key` (stay_id, or subject_id for labs: G7).

    `windows` holds key, row (array row of the stay), intime and prediction_time. A lab of a subject
    with two cohort stays is attached to both; the window filter then keeps the right one.
    """
    return events.pipe(parse_columns, columns={key: pl.Int64()}).join(windows, on=key, how="inner")


def keep_in_window(events: pl.LazyFrame) -> pl.LazyFrame:
    """Keep events inside the 48 h window at minute resolution and add the hour bin h.

    charttime has whole minutes and intime seconds, so both ends are compared in minutes:
    intime truncated to the minute ≤ charttime < prediction_time truncated to the minute. The hour
    is h = ⌊(charttime − intime) / 1 h⌋, and an event charted in the minute of intime, seconds before
    it, goes to hour 0 (`in_intime_minute` marks it).

    >>> from datetime import datetime
    >>> t0 = datetime(2180, 1, 1, 0, 0, 40)
    >>> events = pl.LazyFrame({"intime": [t0] * 5, "prediction_time": [datetime(2180, 1, 3, 0, 0, 40)] * 5,
    ...     "charttime": [datetime(2179, 12, 31, 23, 59), datetime(2180, 1, 1), datetime(2180, 1, 1, 0, 59),
    ...                   datetime(2180, 1, 2, 23, 59), datetime(2180, 1, 3)]})
    >>> window = keep_in_window(events).collect()
    >>> window.get_column("hour").to_list(), window.get_column("in_intime_minute").to_list()
    ([0, 0, 47], [True, False, False])
    """
    elapsed = (pl.col("charttime") - pl.col("intime")).dt.total_microseconds()
    start = pl.col("intime").dt.truncate("1m")
    end = pl.col("prediction_time").dt.truncate("1m")
    return events.filter((pl.col("charttime") >= start) & (pl.col("charttime") < end)).with_columns(
        hour=(elapsed // 3_600_000_000).clip(lower_bound=0).cast(pl.Int8),
        in_intime_minute=pl.col("charttime") < pl.col("intime"),
    )


def in_prediction_minute() -> pl.Expr:
    """Boolean: charted in the minute of prediction_time, seconds before it (outside the window)."""
    return (pl.col("charttime") >= pl.col("prediction_time").dt.truncate("1m")) & (
        pl.col("charttime") < pl.col("prediction_time")
    )


def mark_stored_late(events: pl.LazyFrame) -> pl.LazyFrame:
    """Flag events stored at or after prediction_time (counted; removed with availability = storetime)."""
    return events.with_columns(
        stored_late=(pl.col("storetime") >= pl.col("prediction_time")).fill_null(False)
    )


def _stage_block(
    block: pl.DataFrame,
    *,
    table: str,
    itemids: list[int],
    windows: pl.DataFrame,
    counts: TableCounts,
) -> pl.DataFrame:
    """S2 on one block: itemid filter on the wide block, then cohort and window on the survivors."""
    key = _KEY[table]
    counts.scanned += block.height
    raw_itemids = block.get_column("itemid")
    counts.null_keys += raw_itemids.null_count()
    # Parse the itemid once: it drives the filter and the count of unparseable ids.
    parsed = raw_itemids.cast(pl.Int32, strict=False) if raw_itemids.dtype == pl.String else raw_itemids
    unparsed = int(parsed.null_count() - raw_itemids.null_count())
    if unparsed:
        counts.bad_values["itemid"] += unparsed
    selected = block.with_columns(itemid=parsed).filter(parsed.is_in(itemids))
    counts.itemid_kept += selected.height
    if not selected.height:
        return pl.DataFrame(schema=STAGED_SCHEMA)
    counts.null_keys += selected.get_column(key).null_count() + selected.get_column("charttime").null_count()
    if "comments" in selected.columns:
        # Only a result without value and valuenum can have its censored value in the comments.
        no_result = pl.col("value").is_null() & pl.col("valuenum").is_null()
        selected = selected.with_columns(comments=pl.when(no_result).then(pl.col("comments")))
    else:
        selected = selected.with_columns(comments=pl.lit(None, pl.String))
    typed = (
        selected.lazy()
        .pipe(
            parse_columns,
            columns={
                key: pl.Int64(),
                "charttime": pl.Datetime("us"),
                "storetime": pl.Datetime("us"),
                "valuenum" if table != "outputevents" else "value": pl.Float64(),
            },
        )
        .collect()
    )
    counts.bad_values.update(
        count_parse_failures(selected, typed, columns=[key, "charttime", "storetime", "valuenum", "value"])
    )
    if table == "outputevents":
        typed = typed.rename({"value": "valuenum"}).with_columns(value=pl.lit(None, pl.String))
    in_cohort = typed.lazy().pipe(join_windows, windows=windows.lazy(), key=key).collect()
    counts.cohort_kept += in_cohort.height
    counts.prediction_minute_dropped += int(in_cohort.select(in_prediction_minute().sum()).item())
    staged = (
        in_cohort.lazy()
        .pipe(keep_in_window)
        .pipe(mark_stored_late)
        .select([pl.col(name).cast(dtype) for name, dtype in STAGED_SCHEMA.items()])
        .collect()
    )
    counts.window_kept += staged.height
    counts.intime_minute_kept += int(staged.get_column("in_intime_minute").sum())
    return staged


def _table_blocks(
    resolved: ResolvedTable, *, columns: list[str], chunk_bytes: int, on_bytes: Callable[[int], None] | None
) -> Iterator[pl.DataFrame]:
    if resolved.format != "parquet":
        yield from iter_csv_blocks(resolved, columns=columns, chunk_bytes=chunk_bytes, on_bytes=on_bytes)
        return
    lazy = pl.scan_parquet(resolved.path).select(columns)
    total = int(lazy.select(pl.len()).collect().item())
    for offset in range(0, total, _PARQUET_SLICE_ROWS):
        frame = lazy.slice(offset, _PARQUET_SLICE_ROWS).collect()
        if on_bytes is not None:
            on_bytes(int(resolved.bytes * (offset + frame.height) / max(total, 1)))
        yield frame


def stage_table(
    resolved: ResolvedTable,
    *,
    registry: Registry,
    windows: pl.DataFrame,
    staging_dir: Path,
    chunk_bytes: int,
    max_bad_row_fraction: float,
    on_bytes: Callable[[int], None] | None = None,
) -> TableCounts:
    """S2 for one event table: a single streaming pass writing staged Parquet parts.

    Args:
        resolved: the raw table (parquet, csv or csv.gz).
        registry: the feature registry (its itemids for this table are kept).
        windows: one row per cohort stay: stay_id, subject_id, row Int32, intime, prediction_time.
        staging_dir: receives `<table>/part-<n>.parquet`, one part per block with survivors.
        chunk_bytes: decompressed block size.
        max_bad_row_fraction: unparseable values above this fraction of scanned rows fail the build.
        on_bytes: progress callback with the bytes of the file read so far.

    Returns:
        The table's staging counts.
    """
    table = resolved.table
    key = _KEY[table]
    itemids = registry.item_map(table).get_column("itemid").to_list()
    columns = [key, "itemid", "charttime", "storetime", "value"]
    if table != "outputevents":
        columns += ["valuenum"]
    columns += ["valueuom"]
    if table == "labevents":
        columns += ["comments"]
    table_windows = windows.select(key, "row", "intime", "prediction_time")
    out_dir = staging_dir / table
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = TableCounts()
    part = 0
    for block in _table_blocks(resolved, columns=columns, chunk_bytes=chunk_bytes, on_bytes=on_bytes):
        staged = _stage_block(block, table=table, itemids=itemids, windows=table_windows, counts=counts)
        if staged.height:
            staged.write_parquet(out_dir / f"part-{part:05d}.parquet", compression="lz4", statistics=False)
            part += 1
    bad = sum(counts.bad_values.values())
    if counts.scanned and bad / counts.scanned > max_bad_row_fraction:
        raise BadRowsError(
            f"{resolved.path}: {bad} unparseable values in {counts.scanned} rows "
            f"({dict(counts.bad_values)}), above build.max_bad_row_fraction = {max_bad_row_fraction}"
        )
    logger.info(
        "staged %s: %d scanned, %d itemid-kept, %d cohort-kept, %d in window",
        table,
        counts.scanned,
        counts.itemid_kept,
        counts.cohort_kept,
        counts.window_kept,
    )
    return counts


def read_staged(staging_dir: Path, *, tables: list[str]) -> pl.LazyFrame:
    """All staged parts of `tables`, with a `table` column (empty frame when nothing was staged)."""
    frames = []
    for table in tables:
        parts = sorted((staging_dir / table).glob("part-*.parquet"))
        if parts:
            frames.append(pl.scan_parquet(parts).with_columns(table=pl.lit(table)))
    if not frames:
        return pl.LazyFrame(schema={**STAGED_SCHEMA, "table": pl.String()})
    return pl.concat(frames, how="vertical")


# --- S3 cleaning -----------------------------------------------------------------------------------


def source_table(registry: Registry) -> pl.DataFrame:
    """One row per (table, itemid): feature, priority, sign, convert and encoding flags of its source."""
    frames = []
    flat = registry.sources_flat()
    for table in registry.tables():
        frames.append(registry.item_map(table).with_columns(table=pl.lit(table)))
    items = pl.concat(frames)
    extra = pl.DataFrame(
        {
            "source": list(range(len(flat))),
            "convert": [source.convert for _, _, source in flat],
            "encoded": [source.encode is not None for _, _, source in flat],
        },
        schema={"source": pl.Int16, "convert": pl.String, "encoded": pl.Boolean},
    )
    return items.join(extra, on="source", how="left")


def range_table(registry: Registry) -> pl.DataFrame:
    """One row per feature index: low, high and whether each end is closed."""
    return pl.DataFrame(
        {
            "feature": list(range(len(registry.features))),
            "low": [f.valid.low for f in registry.features],
            "high": [f.valid.high for f in registry.features],
            "low_closed": [f.valid.closed in {"both", "left"} for f in registry.features],
            "high_closed": [f.valid.closed in {"both", "right"} for f in registry.features],
            "agg_sum": [f.agg == "sum" for f in registry.features],
        },
        schema={
            "feature": pl.Int16,
            "low": pl.Float64,
            "high": pl.Float64,
            "low_closed": pl.Boolean,
            "high_closed": pl.Boolean,
            "agg_sum": pl.Boolean,
        },
    )


def attach_sources(events: pl.LazyFrame, *, sources: pl.DataFrame) -> pl.LazyFrame:
    """Join each staged event to its registry source on (table, itemid)."""
    return events.join(sources.lazy(), on=["table", "itemid"], how="inner")


_COMPARATOR = r"^\s*(<=|>=|<|>)\s*(-?[0-9]*\.?[0-9]+)\s*$"
_PLAIN_NUMBER = r"^\s*(-?[0-9]*\.?[0-9]+)\s*$"
_COMMENT_COMPARATOR = r"(?i)^\s*(<=|>=|<|>|less\s+than|greater\s+than)\s*(-?[0-9]*\.?[0-9]+)"
"""A leading comparator, symbolic or spelled, then a number; the rest of the comment is ignored."""


def parse_values(
    events: pl.LazyFrame, *, encodings: pl.DataFrame, prefixes: list[tuple[int, str, float]]
) -> pl.LazyFrame:
    """Turn text and numbers into one Float64 `x` with a `parse_status` (spec/data.md §4.5 step 2, §4.3).

    Numeric sources use valuenum, then `[<|>|<=|>=] number` in value (`censored`), then a plain
    number in value; a row without value and valuenum (labevents keeps `comments` only for those)
    is `censored` when its comment starts with a comparator and a number (`<0.01.  ...`,
    `GREATER THAN 500.  VERIFIED.`); anything else is `unparseable`. Text sources map lower-cased,
    trimmed text through the exact `encodings` (source, text, score) or the `prefixes` (source,
    prefix, score); unknown text falls back to valuenum (status `encoded_fallback`, range-checked
    later) or becomes `unmatched_text`.
    """
    text = pl.col("value").str.strip_chars().str.to_lowercase()
    prefix_score: pl.Expr = pl.lit(None, pl.Float64)
    for source, prefix, score in reversed(prefixes):
        prefix_score = (
            pl.when((pl.col("source") == source) & text.str.starts_with(prefix))
            .then(score)
            .otherwise(prefix_score)
        )
    censored = pl.col("value").str.extract(_COMPARATOR, 2).cast(pl.Float64, strict=False)
    plain = pl.col("value").str.extract(_PLAIN_NUMBER, 1).cast(pl.Float64, strict=False)
    commented = pl.col("comments").str.extract(_COMMENT_COMPARATOR, 2).cast(pl.Float64, strict=False)
    numeric_x = pl.coalesce(pl.col("valuenum"), censored, plain, commented)
    numeric_status = (
        pl.when(pl.col("valuenum").is_not_null())
        .then(pl.lit("numeric"))
        .when(censored.is_not_null())
        .then(pl.lit("censored"))
        .when(plain.is_not_null())
        .then(pl.lit("numeric"))
        .when(commented.is_not_null())
        .then(pl.lit("censored"))
        .otherwise(pl.lit("unparseable"))
    )
    encoded_x = pl.coalesce(pl.col("score"), prefix_score)
    encoded_status = (
        pl.when(encoded_x.is_not_null())
        .then(pl.lit("encoded"))
        .when(pl.col("valuenum").is_not_null())
        .then(pl.lit("encoded_fallback"))
        .otherwise(pl.lit("unmatched_text"))
    )
    # Most rows are numeric with a valuenum: they skip the text work entirely.
    fast = events.filter(~pl.col("encoded") & pl.col("valuenum").is_not_null()).with_columns(
        text=pl.lit(None, pl.String), x=pl.col("valuenum"), parse_status=pl.lit("numeric")
    )
    slow = (
        events.filter(pl.col("encoded") | pl.col("valuenum").is_null())
        .with_columns(text=text)
        .join(encodings.lazy(), on=["source", "text"], how="left")
        .with_columns(
            x=pl.when(pl.col("encoded"))
            .then(pl.coalesce(encoded_x, pl.col("valuenum")))
            .otherwise(numeric_x),
            parse_status=pl.when(pl.col("encoded")).then(encoded_status).otherwise(numeric_status),
        )
        .drop("score")
    )
    return pl.concat([fast, slow], how="vertical")


def convert_units(events: pl.LazyFrame) -> pl.LazyFrame:
    """Apply each source's conversion to `x`; `convert_status` is `converted`, `unit_fixed` or null.

    Row order is not kept (rows without a conversion skip the expression chain).

    >>> events = pl.LazyFrame({"x": [98.6, 37.0, 150.0, 0.95, 50.0],
    ...     "convert": ["fahrenheit_to_celsius_unless_valid"] * 2 + ["pound_to_kg", "fraction_to_percent_at_most_1", None]})
    >>> [round(v, 2) for v in convert_units(events.with_row_index()).sort("index").collect().get_column("x")]
    [37.0, 37.0, 68.04, 95.0, 50.0]
    """
    value: pl.Expr = pl.col("x")
    status: pl.Expr = pl.lit(None, pl.String)
    for name, conversion in CONVERSIONS.items():
        applies = (pl.col("convert") == name) & conversion.when(pl.col("x"))
        value = pl.when(applies).then(conversion.transform(pl.col("x"))).otherwise(value)
        status = pl.when(applies).then(pl.lit(conversion.counter)).otherwise(status)
        if conversion.kept_counter is not None:
            kept = (pl.col("convert") == name) & ~conversion.when(pl.col("x")) & pl.col("x").is_not_null()
            status = pl.when(kept).then(pl.lit(conversion.kept_counter)).otherwise(status)
    plain = events.filter(pl.col("convert").is_null()).with_columns(convert_status=pl.lit(None, pl.String))
    converted = events.filter(pl.col("convert").is_not_null()).with_columns(x=value, convert_status=status)
    return pl.concat([plain, converted], how="vertical")


def in_valid_range(x: pl.Expr) -> pl.Expr:
    """Boolean: x lies in [low, high] with the ends open or closed per the joined range columns."""
    above = pl.when(pl.col("low_closed")).then(x >= pl.col("low")).otherwise(x > pl.col("low"))
    below = pl.when(pl.col("high_closed")).then(x <= pl.col("high")).otherwise(x < pl.col("high"))
    return above & below


def flag_range(events: pl.LazyFrame, *, ranges: pl.DataFrame) -> pl.LazyFrame:
    """Attach each feature's valid range and flag per-row values outside it (`sum` features: per hour)."""
    return events.join(ranges.lazy(), on="feature", how="left").with_columns(
        in_range=pl.when(pl.col("agg_sum"))
        .then(pl.col("x").is_not_null())
        .otherwise(in_valid_range(pl.col("x")))
        .fill_null(False)
    )


DEDUP_KEYS = ["row", "itemid", "charttime", "x"]
_CLEAN_COLUMNS = ["hour", "feature", "priority", "sign", "agg_sum", "table", "storetime", "valueuom"]


def deduplicate(events: pl.LazyFrame) -> pl.LazyFrame:
    """Collapse rows identical in (stay row, itemid, charttime, value); `copies` counts them.

    Hash aggregation, no sort: every other kept column is a function of the keys except storetime
    and valueuom, which take their maximum, so the survivor is deterministic.

    >>> from datetime import datetime
    >>> t = datetime(2180, 1, 1, 10)
    >>> events = pl.LazyFrame({"row": [0, 0, 0, 1, 1], "itemid": [1] * 5, "charttime": [t] * 5,
    ...     "x": [80.0, 80.0, 81.0, 80.0, 80.0], "hour": [0] * 5, "feature": [0] * 5, "priority": [0] * 5,
    ...     "sign": [1.0] * 5, "agg_sum": [False] * 5, "table": ["chartevents"] * 5,
    ...     "storetime": [t] * 5, "valueuom": ["bpm"] * 5})
    >>> deduplicate(events).collect().sort("row", "x").get_column("copies").to_list()
    [2, 1, 2]
    """
    return events.group_by(DEDUP_KEYS).agg(
        pl.len().alias("copies"), *[pl.col(c).max() for c in _CLEAN_COLUMNS]
    )


def keep_last_per_hour(events: pl.LazyFrame) -> pl.LazyFrame:
    """`agg = last`: the value with the latest charttime in each (row, hour, feature).

    Ties go to the source listed first (lower priority number), then the latest storetime, then the
    larger value, so the order is total and builds are deterministic.
    """
    ordered = events.sort(
        ["row", "hour", "feature", "charttime", "priority", "storetime", "x"],
        descending=[False, False, False, True, False, True, True],
        nulls_last=True,
    )
    return ordered.unique(subset=["row", "hour", "feature"], keep="first", maintain_order=True).select(
        "row", "hour", "feature", "x"
    )


def sum_per_hour(events: pl.LazyFrame) -> pl.LazyFrame:
    """`agg = sum`: signed hourly sum (urine output minus irrigant in)."""
    # A fixed row order inside each group makes the floating-point sum byte-identical across builds.
    return (
        events.sort(["row", "hour", "feature", "x", "sign"])
        .group_by(["row", "hour", "feature"], maintain_order=True)
        .agg((pl.col("x") * pl.col("sign")).sum().alias("x"))
    )


@dataclass
class CleanResult:
    """S3/S4 output: hourly values (row, hour, feature, x) and per-feature cleaning counts."""

    hourly: pl.DataFrame
    feature_counts: dict[str, dict[str, Any]]
    warnings: list[str]


_COUNTERS = (
    "rows_in_window",
    "intime_minute",
    "stored_after_prediction",
    "censored",
    "unparseable",
    "unmatched_text",
    "converted",
    "unit_fixed",
    "out_of_range",
    "duplicates",
)


def clean_events(staged: pl.LazyFrame, *, registry: Registry, availability: str) -> CleanResult:
    """S3 and the aggregation of S4: parse, convert, range-check, deduplicate, bin (counted per feature)."""
    sources = source_table(registry)
    flat = registry.sources_flat()
    exact_rows: list[tuple[int, str, float]] = []
    prefixes: list[tuple[int, str, float]] = []
    for index, (_, _, source) in enumerate(flat):
        for text, score in source.encode or ():
            (prefixes if source.encode_match == "prefix" else exact_rows).append((index, text, score))
    encodings = pl.DataFrame(
        {
            "source": [r[0] for r in exact_rows],
            "text": [r[1] for r in exact_rows],
            "score": [r[2] for r in exact_rows],
        },
        schema={"source": pl.Int16, "text": pl.String, "score": pl.Float64},
    )
    events = (
        staged.pipe(attach_sources, sources=sources)
        .pipe(parse_values, encodings=encodings, prefixes=prefixes)
        .pipe(convert_units)
        .pipe(flag_range, ranges=range_table(registry))
        .collect()
    )
    names = registry.names
    counts: dict[str, dict[str, Any]] = {name: dict.fromkeys(_COUNTERS, 0) for name in names}
    per_feature = events.group_by("feature").agg(
        rows_in_window=pl.len(),
        intime_minute=pl.col("in_intime_minute").sum(),
        stored_after_prediction=pl.col("stored_late").sum(),
        censored=(pl.col("parse_status") == "censored").sum(),
        unparseable=(pl.col("parse_status") == "unparseable").sum(),
        converted=(pl.col("convert_status") == "converted").sum(),
        unit_fixed=(pl.col("convert_status") == "unit_fixed").sum(),
    )
    for row in per_feature.iter_rows(named=True):
        counts[names[row.pop("feature")]].update({k: int(v) for k, v in row.items()})
    warnings: list[str] = []
    if availability == "storetime":
        events = events.filter(~pl.col("stored_late"))
    # Text that no encoding matched, and whose valuenum (if any) is out of range, is unmatched.
    unmatched = (pl.col("parse_status") == "unmatched_text") | (
        (pl.col("parse_status") == "encoded_fallback") & ~pl.col("in_range")
    )
    for row in (
        events.filter(unmatched)
        .group_by("feature", "text")
        .len()
        .sort(["feature", "len", "text"], descending=[False, True, False], nulls_last=True)
        .group_by("feature", maintain_order=True)
        .agg(pl.col("len").sum().alias("n"), pl.struct("text", "len").head(10).alias("top"))
        .iter_rows(named=True)
    ):
        entry = counts[names[row["feature"]]]
        entry["unmatched_text"] = int(row["n"])
        entry["unmatched_top"] = [[item["text"], int(item["len"])] for item in row["top"]]
    parsed = events.filter(~unmatched & (pl.col("parse_status") != "unparseable"))
    out_of_range = parsed.filter(~pl.col("in_range")).group_by("feature").len()
    for feature, n in out_of_range.iter_rows():
        counts[names[feature]]["out_of_range"] = int(n)
    valid = parsed.lazy().filter(pl.col("in_range")).pipe(deduplicate).collect()
    duplicates = valid.group_by("feature").agg((pl.col("copies") - 1).sum())
    for feature, n in duplicates.iter_rows():
        counts[names[feature]]["duplicates"] = int(n)
    warnings += _unit_warnings(valid, registry=registry)
    last = valid.filter(~pl.col("agg_sum")).lazy().pipe(keep_last_per_hour).collect()
    summed = (
        valid.filter(pl.col("agg_sum"))
        .lazy()
        .pipe(sum_per_hour)
        .join(range_table(registry).lazy(), on="feature", how="left")
        .collect()
    )
    if summed.height:
        bad_sum = summed.filter(~in_valid_range(pl.col("x")))
        for feature, n in bad_sum.group_by("feature").len().iter_rows():
            counts[names[feature]]["out_of_range"] += int(n)
        summed = summed.filter(in_valid_range(pl.col("x"))).select("row", "hour", "feature", "x")
    hourly = pl.concat([last, summed.select(last.columns) if summed.height else last.clear()]).sort(
        ["row", "hour", "feature"]
    )
    return CleanResult(hourly=hourly, feature_counts=counts, warnings=warnings)


def _unit_warnings(events: pl.DataFrame, *, registry: Registry) -> list[str]:
    """Extended-set labs: the modal valueuom of each itemid should equal the registry unit (§4.4).

    An empty modal unit is allowed (INR); default-set features name their canonical unit instead.
    """
    labs = events.filter((pl.col("table") == "labevents") & pl.col("valueuom").is_not_null())
    if not labs.height:
        return []
    modal = (
        labs.group_by("itemid", "feature", "valueuom")
        .len()
        .sort(["itemid", "len", "valueuom"], descending=[False, True, False])
    )
    warnings = []
    for itemid, feature, unit, _ in modal.unique(
        subset=["itemid"], keep="first", maintain_order=True
    ).iter_rows():
        expected = registry.features[feature].unit
        if "default" in registry.features[feature].sets:
            continue
        if unit.strip() and unit.strip().lower() != expected.lower():
            warnings.append(
                f"labevents itemid {itemid} ({registry.features[feature].name}): modal unit {unit!r}, registry unit {expected!r}"
            )
    return warnings


def scatter_hourly(hourly: pl.DataFrame, *, n_stays: int, registry: Registry) -> np.ndarray:
    """Scatter (row, hour, feature, x) into a NaN-filled float32 [N, 48, F] array; derive sum features.

    A derived feature (gcs_total) is the sum of its parts in an hour where all of them are observed.
    """
    n_features = len(registry.features)
    ehr = np.full((n_stays, WINDOW_HOURS, n_features), np.nan, dtype=np.float32)
    if hourly.height:
        rows = hourly.get_column("row").to_numpy().astype(np.int64)
        hours = hourly.get_column("hour").to_numpy().astype(np.int64)
        features = hourly.get_column("feature").to_numpy().astype(np.int64)
        flat = (rows * WINDOW_HOURS + hours) * n_features + features
        ehr.reshape(-1)[flat] = hourly.get_column("x").to_numpy().astype(np.float32)
    names = registry.names
    for index, feature in enumerate(registry.features):
        if feature.derived:
            parts = [names.index(part) for part in feature.derived]
            total = np.sum(ehr[:, :, parts], axis=2, dtype=np.float32)
            inside = ~np.isnan(total) & (total >= feature.valid.low) & (total <= feature.valid.high)
            ehr[:, :, index] = np.where(inside, total, np.nan)
    return ehr


def observation_counts(ehr: np.ndarray, *, registry: Registry) -> dict[str, dict[str, Any]]:
    """Per feature: observed_cells, stays_observed and observed_fraction over the final cohort."""
    observed = ~np.isnan(ehr)
    n_cells = max(ehr.shape[0] * ehr.shape[1], 1)
    cells = observed.sum(axis=(0, 1))
    stays = observed.any(axis=1).sum(axis=0)
    return {
        name: {
            "observed_cells": int(cells[index]),
            "stays_observed": int(stays[index]),
            "observed_fraction": float(cells[index]) / n_cells,
        }
        for index, name in enumerate(registry.names)
    }
