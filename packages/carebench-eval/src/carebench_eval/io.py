"""Read, validate and convert predictions (eval.md §1).

Long format, one row per (sample, target): ``sample_id, task, target, y_true, y_score`` plus optional
``subject_id``, run keys ``model, seed, fold, setting`` and sensitive attributes. `validate` checks the
contract rules P001–P015 in order (P020, the column types, right after P002) and raises
`PredictionsError` with the exact message of §1.3;
`read_predictions` reads files (Parquet, CSV, CSV.gz, lists and globs) or frames, validates and
normalizes dtypes. `to_long` / `to_wide` / `from_arrays` convert other layouts.
"""

from __future__ import annotations

import glob as globbing
import hashlib
import logging
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from carebench_eval import meds
from carebench_eval.errors import PredictionsError, PredictionsFileError
from carebench_eval.registry import task_kind
from carebench_eval.schema import recall, remember

__all__ = [
    "ATTRIBUTE_DTYPES",
    "REQUIRED_COLUMNS",
    "RUN_KEYS",
    "class_order",
    "frame_info",
    "from_arrays",
    "load_predictions",
    "read_predictions",
    "same_samples_subset",
    "to_long",
    "to_wide",
    "validate",
]

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("sample_id", "task", "target", "y_true", "y_score")
RUN_KEYS = ("model", "seed", "fold", "setting")
CORE_COLUMNS = frozenset({*REQUIRED_COLUMNS, "subject_id", *RUN_KEYS})
ATTRIBUTE_DTYPES: dict[str, pl.DataType] = {"has_cxr": pl.Boolean()}
"""Attribute columns with a dtype other than String."""

_TRUE_STRINGS = {"true", "1", "1.0", "t", "yes"}
_FALSE_STRINGS = {"false", "0", "0.0", "f", "no"}
_LEADING_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")
_ROW = "__row"


def frame_info(frame: pl.DataFrame) -> dict[str, Any]:
    """Provenance recorded by `read_predictions` / `from_arrays` for `frame` (``inputs``, ``notes``)."""
    return recall(frame)


# Reading


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expand(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    paths: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if any(char in text for char in "*?["):
            matches = sorted(globbing.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"predictions: no file matches {text!r}")
            paths.extend(Path(match) for match in matches)
        else:
            path = Path(text)
            if not path.is_file():
                raise FileNotFoundError(f"predictions: file not found: {text}")
            paths.append(path)
    if not paths:
        raise FileNotFoundError("predictions: no input files given")
    return paths


def _read_file(path: Path) -> pl.DataFrame:
    """One predictions file; any reading failure becomes a one-line `PredictionsFileError`."""
    name = path.name.lower()
    if not name.endswith((".parquet", ".pq", ".csv", ".csv.gz")):
        raise PredictionsFileError(
            f"predictions: unknown file type {path.name!r}; use .parquet, .pq, .csv or .csv.gz"
        )
    try:
        if name.endswith((".parquet", ".pq")):
            return pl.read_parquet(path)
        return pl.read_csv(path, null_values=["", "NaN"], infer_schema_length=None, encoding="utf8")
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (pl.exceptions.PolarsError, OSError, EOFError, UnicodeDecodeError, zlib.error) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        kind = (
            "Parquet" if name.endswith((".parquet", ".pq")) else "CSV (UTF-8, comma-separated, with a header)"
        )
        raise PredictionsFileError(f"predictions: cannot read {path} as {kind}: {detail}") from None


def _from_meds(frame: pl.DataFrame, path: Path | None = None) -> pl.DataFrame:
    """MEDS prediction tables (recognized by their columns) as long predictions; others unchanged."""
    if not meds.is_meds_predictions(frame.columns):
        return frame
    if path is None:
        return meds.from_meds_predictions(frame)
    return meds.from_meds_predictions(frame, task=meds.task_name_of(path.name), where=path.name)


def read_predictions(
    source: Any,
    *,
    kinds: Mapping[str, str] | None = None,
    classes: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """Read and validate long predictions.

    Args:
        source: a path (``.parquet``, ``.pq``, ``.csv``, ``.csv.gz``), a glob pattern, a list of paths
            (concatenated, e.g. one file per run), a polars ``DataFrame`` or ``LazyFrame``. MEDS
            prediction tables (meds-evaluation's columns) are recognized and converted (`carebench_eval.meds`).
        kinds: task -> ``"binary" | "multilabel" | "multiclass"`` overrides (eval.md §1.2).
        classes: task -> class names in order (multiclass; checked against the data).

    Returns:
        The validated frame with normalized dtypes (§1.1); `frame_info` gives each file's SHA-256.

    Raises:
        PredictionsError: the first violated rule P001–P015 or P020.
        PredictionsFileError: a file cannot be read (empty, not UTF-8, corrupt Parquet, truncated gzip).
        FileNotFoundError: a path or pattern matches no file.
    """
    checked_with = _validation_key(kinds, classes)
    if isinstance(source, pl.LazyFrame):
        frame, info = _from_meds(source.collect()), {"inputs": []}
    elif isinstance(source, pl.DataFrame):
        info = frame_info(source) or {"inputs": []}
        if info.get("validated") == checked_with:
            return source  # this very frame came out of `read_predictions` with the same overrides
        frame = _from_meds(source)
    else:
        paths = _expand(source)
        frames = [_from_meds(_read_file(path), path) for path in paths]
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        info = {"inputs": [{"path": str(path), "sha256": _sha256(path)} for path in paths]}
        logger.info("read %d prediction row(s) from %d file(s)", frame.height, len(paths))
    return remember(validate(frame, kinds=kinds, classes=classes), {**info, "validated": checked_with})


def same_samples_subset(subset: pl.DataFrame, source: pl.DataFrame) -> pl.DataFrame:
    """Mark `subset` as validated when `source` was, so statistics on it skip a second full check.

    Only for subsets that keep or drop whole (task, model, sample) groups of `source` (filters on
    task, model, setting or a per-sample attribute): every rule of `validate` then holds for the
    subset as it does for the source.
    """
    validated = frame_info(source).get("validated")
    if validated is not None:
        remember(subset, {**frame_info(source), "validated": validated})
    return subset


def _validation_key(
    kinds: Mapping[str, str] | None, classes: Mapping[str, Sequence[str]] | None
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, tuple[str, ...]], ...]]:
    """The overrides a frame was validated with, in a comparable form."""
    return (
        tuple(sorted((kinds or {}).items())),
        tuple(sorted((task, tuple(names)) for task, names in (classes or {}).items())),
    )


def load_predictions(
    source: Any,
    *,
    kinds: Mapping[str, str] | None = None,
    classes: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """`read_predictions` for anything the frame functions accept (a frame, path, list or glob)."""
    return read_predictions(source, kinds=kinds, classes=classes)


# Validation


def _fail(code: str, message: str) -> PredictionsError:
    return PredictionsError(code, f"predictions: {message}")


def _run_text(keys: Mapping[str, Any]) -> str:
    if not keys:
        return "(no run keys)"
    return ", ".join(f"{key}={value!r}" for key, value in keys.items())


def _first(frame: pl.DataFrame, mask: pl.Expr) -> tuple[int, dict[str, Any]]:
    """Count of rows matching `mask` and the first of them (by input order)."""
    matching = frame.filter(mask)
    return matching.height, (matching.row(0, named=True) if matching.height else {})


def _as_flag(column: pl.Series) -> pl.Series:
    """A 0/1/bool/"true" column as Float64 (unparsable → null); used by y_true and has_cxr checks."""
    if column.dtype == pl.Boolean:
        return column.cast(pl.Float64)
    if column.dtype == pl.String:
        lowered = column.str.strip_chars().str.to_lowercase()
        mapped = lowered.replace_strict(
            {**dict.fromkeys(_TRUE_STRINGS, 1.0), **dict.fromkeys(_FALSE_STRINGS, 0.0)},
            default=None,
            return_dtype=pl.Float64,
        )
        return mapped
    if column.dtype.is_numeric():
        return column.cast(pl.Float64)
    return pl.Series(column.name, [None] * column.len(), dtype=pl.Float64)


def _check_required(frame: pl.DataFrame) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in frame.columns]
    if missing:
        raise _fail(
            "P001",
            f"missing required column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}",
        )
    if frame.height == 0:
        raise _fail("P002", "no rows")


def _shown(value: Any) -> str:
    """A cell value for a message, on one line (a list cell shows as a list)."""
    if isinstance(value, pl.Series):
        value = value.to_list()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_scalar(dtype: pl.DataType) -> bool:
    return (
        dtype.is_numeric()
        or dtype.is_temporal()
        or dtype in (pl.String, pl.Boolean, pl.Null)
        or isinstance(dtype, pl.Categorical | pl.Enum)
    )


def _wrong_type(frame: pl.DataFrame, column: str, bad: pl.Series, expected: str) -> PredictionsError:
    index = int(bad.arg_max())  # type: ignore[arg-type]
    return _fail(
        "P020",
        f"column {column!r} must hold {expected}; {int(bad.sum())} row(s) violate this "
        f"(first: row {frame[_ROW][index]}, value {_shown(frame[column][index])})",
    )


def _check_types(frame: pl.DataFrame) -> None:
    """P020: ids, keys and attributes are scalars, `seed`/`fold` integers, `has_cxr` a boolean."""
    for column in frame.columns:
        if column in (_ROW, "y_true", "y_score"):
            continue  # P004 and P005 say what these must hold
        values = frame[column]
        if not _is_scalar(values.dtype):
            raise _wrong_type(frame, column, values.is_not_null(), f"scalar values, not {values.dtype}")
    for name in ("seed", "fold"):
        if name not in frame.columns:
            continue
        column = frame[name]
        converted = column.cast(pl.Int64, strict=False)
        bad = converted.is_null() & column.is_not_null()
        if column.dtype.is_float():
            bad = bad | (column.is_not_null() & (column != column.floor()))
        if bad.any():
            raise _wrong_type(frame, name, bad, "integers")
    for name in ATTRIBUTE_DTYPES:
        if name in frame.columns:
            flag = _as_flag(frame[name])
            bad = frame[name].is_not_null() & (flag.is_null() | ~flag.is_in([0.0, 1.0]))
            if bad.any():
                raise _wrong_type(frame, name, bad, 'true or false (a boolean, 0/1 or "true"/"false")')


def _check_values(frame: pl.DataFrame) -> None:
    for column in ("sample_id", "task", "target"):
        k, first = _first(frame, pl.col(column).is_null())
        if k:
            raise _fail("P003", f"column {column!r} has {k} null value(s) (first: row {first[_ROW]})")
    flag = _as_flag(frame["y_true"])
    bad_true = flag.is_null() | ~flag.is_in([0.0, 1.0])
    if bad_true.any():
        index = int(bad_true.arg_max())  # type: ignore[arg-type]
        raise _fail(
            "P004",
            f"y_true must be 0 or 1; {int(bad_true.sum())} row(s) violate this "
            f"(first: row {frame[_ROW][index]}, value {_shown(frame['y_true'][index])})",
        )
    score_raw = frame["y_score"]
    score = (
        score_raw.cast(pl.Float64, strict=False)
        if score_raw.dtype.is_numeric() or score_raw.dtype == pl.String
        else pl.Series([None] * frame.height, dtype=pl.Float64)
    )
    missing = score.is_null() | score.is_nan()
    outside = ~missing & ((score < 0.0) | (score > 1.0) | score.is_infinite())
    bad = missing | outside
    if bad.any():
        index = int(bad.arg_max())  # type: ignore[arg-type]
        value = score_raw[index]
        raise _fail(
            "P005",
            f"y_score must be a probability in [0, 1]; {int(bad.sum())} row(s) violate this "
            f"({int(missing.sum())} NaN or null, {int(outside.sum())} outside [0, 1]; "
            f"first: row {frame[_ROW][index]}, value {_shown(value)})",
        )
    reserved = frame.filter(pl.col("target").cast(pl.String).str.starts_with("("))
    if reserved.height:
        target = reserved["target"][0]
        raise _fail("P006", f'target name {target!r} is reserved (names starting with "(" label aggregates)')


def _normalize_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """IDs and names as strings, y_true Int8, y_score Float64, seed/fold Int64, attributes String/Boolean."""
    columns = []
    for name in frame.columns:
        if name == _ROW:
            columns.append(pl.col(name))
        elif name in ("sample_id", "subject_id", "task", "target", "model", "setting"):
            columns.append(pl.col(name).cast(pl.String))
        elif name in ("seed", "fold"):
            columns.append(pl.col(name).cast(pl.Int64, strict=False))
        elif name == "y_true":
            columns.append(_as_flag(frame["y_true"]).cast(pl.Int8).alias("y_true"))
        elif name == "y_score":
            columns.append(pl.col(name).cast(pl.Float64, strict=False))
        elif name in ATTRIBUTE_DTYPES:
            columns.append(_as_flag(frame[name]).cast(pl.Boolean).alias(name))
        else:
            columns.append(pl.col(name).cast(pl.String))
    return frame.select(columns)


def _key_text(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    return ", ".join(f"{column}={row[column]!r}" for column in columns)


def _resolved_kinds(frame: pl.DataFrame, kinds: Mapping[str, str] | None) -> dict[str, str]:
    counts = frame.group_by("task", maintain_order=True).agg(pl.col("target").n_unique().alias("n"))
    return {task: task_kind(task, n_targets=int(n), kinds=kinds) for task, n in counts.iter_rows()}


def validate(
    frame: pl.DataFrame | pl.LazyFrame,
    *,
    kinds: Mapping[str, str] | None = None,
    sum_atol: float = 1e-3,
    classes: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """Check predictions against the contract (eval.md §1.3, rules P001–P015 in order) and normalize dtypes.

    Args:
        frame: long predictions.
        kinds: task -> kind overrides.
        sum_atol: tolerance of multiclass score sums (P013); 1e-3 accepts CSVs rounded to 4 decimals.
        classes: task -> class names (multiclass); names missing from it raise `ValueError`.

    Returns:
        The frame with normalized dtypes (§1.1), rows in input order.

    Raises:
        PredictionsError: the first violation, with ``.code`` and the exact message.
    """
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    _check_required(frame)
    raw = frame.with_row_index(_ROW)
    _check_types(raw)
    _check_values(raw)
    data = _normalize_ids(raw)
    run_keys = [key for key in RUN_KEYS if key in data.columns]

    key_columns = [*run_keys, "task", "sample_id", "target"]
    duplicated = data.filter(
        pl.struct(key_columns).is_duplicated() & ~pl.struct(key_columns).is_first_distinct()
    )
    if duplicated.height:
        raise _fail(
            "P007",
            f"{duplicated.height} duplicate row(s) for key ({', '.join(key_columns)}); "
            f"first: {_key_text(duplicated.row(0, named=True), key_columns)}",
        )

    _check_grid(data, run_keys)

    if "subject_id" in data.columns:
        k, first = _first(data, pl.col("subject_id").is_null())
        if k:
            raise _fail(
                "P009",
                f"subject_id has {k} null value(s) (first: row {first[_ROW]}); fill it or drop the column",
            )
    per_sample = [name for name in data.columns if name not in CORE_COLUMNS and name != _ROW]
    if "subject_id" in data.columns:
        per_sample.insert(0, "subject_id")
    for column in per_sample:
        varying = (
            data.group_by([*run_keys, "task", "sample_id"], maintain_order=True)
            .agg(pl.col(column).n_unique().alias("values"), pl.col(_ROW).min())
            .filter(pl.col("values") > 1)
            .sort(_ROW)
        )
        if varying.height:
            raise _fail(
                "P010",
                f"column {column!r} must have one value per sample; {varying.height} sample(s) have several "
                f"(first: sample_id={varying['sample_id'][0]})",
            )

    resolved = _resolved_kinds(data, kinds)
    for task, kind in resolved.items():
        if kind == "binary":
            n_targets = data.filter(pl.col("task") == task)["target"].n_unique()
            if n_targets > 1:
                raise _fail(
                    "P011",
                    f'task {task!r} is binary but has {n_targets} targets; pass kinds={{{task!r}: "multilabel"}}',
                )
    for task, kind in resolved.items():
        if kind == "multiclass":
            _check_multiclass(data.filter(pl.col("task") == task), task, run_keys, sum_atol)
            if classes and task in classes:
                class_order(
                    task, data.filter(pl.col("task") == task)["target"].unique().to_list(), classes[task]
                )

    _check_runs_agree(data, run_keys)
    return data.drop(_ROW)


def _check_grid(data: pl.DataFrame, run_keys: list[str]) -> None:
    group_columns = [*run_keys, "task"]
    sizes = data.group_by(group_columns, maintain_order=True).agg(
        pl.col("sample_id").n_unique().alias("samples"),
        pl.col("target").n_unique().alias("targets"),
        pl.len().alias("rows"),
    )
    incomplete = sizes.filter(pl.col("samples") * pl.col("targets") != pl.col("rows"))
    if not incomplete.height:
        return
    group = incomplete.row(0, named=True)
    selector = pl.lit(True)
    for column in group_columns:
        value = group[column]
        selector = selector & (pl.col(column).is_null() if value is None else pl.col(column) == value)
    part = data.filter(selector)
    samples = part.select("sample_id").unique(maintain_order=True).with_row_index("_sample_order")
    targets = part.select("target").unique(maintain_order=True).with_row_index("_target_order")
    missing = (
        samples.join(targets, how="cross")
        .join(part.select("sample_id", "target"), on=["sample_id", "target"], how="anti")
        .sort("_sample_order", "_target_order")
    )
    first = missing.row(0, named=True)
    run = _run_text({key: group[key] for key in run_keys})
    raise _fail(
        "P008",
        f"task {group['task']!r}, run {run}: {missing.height} (sample_id, target) row(s) missing; "
        f"every sample needs one row per target ({group['targets']} targets); "
        f"first: sample_id={first['sample_id']}, target={first['target']!r}",
    )


def _check_multiclass(part: pl.DataFrame, task: str, run_keys: list[str], sum_atol: float) -> None:
    per_sample = (
        part.group_by([*run_keys, "sample_id"], maintain_order=True)
        .agg(
            pl.col("y_true").cast(pl.Int64).sum().alias("positives"),
            pl.col("y_score").sum().alias("total"),
            pl.col(_ROW).min(),
        )
        .sort(_ROW)
    )
    wrong = per_sample.filter(pl.col("positives") != 1)
    if wrong.height:
        raise _fail(
            "P012",
            f"task {task!r} is multiclass but {wrong.height} sample(s) do not have exactly one row with "
            f"y_true = 1; first: sample_id={wrong['sample_id'][0]}",
        )
    off = per_sample.filter((pl.col("total") - 1.0).abs() > sum_atol)
    if off.height:
        raise _fail(
            "P013",
            f"task {task!r} is multiclass but the scores of {off.height} sample(s) do not sum to 1 within "
            f"{sum_atol}; first: sample_id={off['sample_id'][0]}, sum={off['total'][0]:.6g}",
        )


def _check_runs_agree(data: pl.DataFrame, run_keys: list[str]) -> None:
    if not run_keys:
        return
    disagree = (
        data.group_by(["task", "sample_id", "target"], maintain_order=True)
        .agg(pl.col("y_true").n_unique().alias("values"), pl.col(_ROW).min())
        .filter(pl.col("values") > 1)
        .sort(_ROW)
    )
    if not disagree.height:
        return
    first = disagree.row(0, named=True)
    tasks = disagree.filter(pl.col("task") == first["task"])
    raise _fail(
        "P015",
        f"y_true differs between runs for {tasks.height} (sample_id, target) pair(s) of task {first['task']!r}; "
        f"first: sample_id={first['sample_id']}, target={first['target']!r}",
    )


def class_order(
    task: str,
    names: Sequence[str],
    classes: Sequence[str] | None = None,
    *,
    required: bool = False,
) -> tuple[str, ...]:
    """Class order of a multiclass task (eval.md §1.2).

    ``classes`` > numeric order of each name's leading number (``2-3d`` … ``14+d``) > error P014 when an
    order is `required` (weighted κ); otherwise names in sorted order.

    Args:
        task: task name (for messages).
        names: the class names present.
        classes: explicit order.
        required: whether an ordinal order is needed.

    Returns:
        The class names in order.
    """
    present = sorted(set(names))
    if classes is not None:
        missing = [name for name in present if name not in set(classes)]
        if missing:
            raise ValueError(f"classes={list(classes)} of task {task!r} lacks class name(s) {missing}")
        return tuple(name for name in classes if name in set(present))
    numbers = [_LEADING_NUMBER.match(name) for name in present]
    if all(numbers):
        keyed = {name: float(match.group(1)) for name, match in zip(present, numbers, strict=True) if match}
        return tuple(sorted(present, key=lambda name: (keyed[name], name)))
    if required:
        raise PredictionsError(
            "P014",
            f"predictions: task {task!r}: cannot order classes {present} for weighted kappa; pass classes=[...]",
        )
    return tuple(present)


# Converters


def to_long(
    wide: pl.DataFrame,
    *,
    task: str,
    kind: str,
    targets: Sequence[str] | None = None,
    true_prefix: str = "y_true_",
    score_prefix: str = "y_score_",
    classes: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Wide (one row per sample) to long predictions.

    Binary/multilabel: column pairs ``y_true_<target>`` / ``y_score_<target>``. Multiclass: one ``y_true``
    column (class name, or 0-based index into `classes`) and ``y_score_<class>`` columns (class order =
    score-column order unless `classes` is given). All other columns are carried; the result is validated.

    Args:
        wide: one row per sample with a ``sample_id`` column.
        task: task name.
        kind: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        targets: target (or class) names; default: every ``y_score_<name>`` column.
        true_prefix: prefix of label columns.
        score_prefix: prefix of score columns.
        classes: multiclass class order.

    Returns:
        Validated long predictions, ordered by sample then target.
    """
    if kind not in ("binary", "multilabel", "multiclass"):
        raise ValueError(f"kind must be binary, multilabel or multiclass; got {kind!r}")
    names = (
        list(targets)
        if targets is not None
        else [c[len(score_prefix) :] for c in wide.columns if c.startswith(score_prefix)]
    )
    if kind == "multiclass" and classes is not None and targets is None:
        names = list(classes)
    if not names:
        raise ValueError(f"to_long: no {score_prefix}<target> columns in {wide.columns}")
    score_columns = [f"{score_prefix}{name}" for name in names]
    missing = [column for column in score_columns if column not in wide.columns]
    if kind == "multiclass":
        if "y_true" not in wide.columns:
            missing.insert(0, "y_true")
        true_columns: list[str] = ["y_true"]
    else:
        true_columns = [f"{true_prefix}{name}" for name in names]
        missing = [column for column in true_columns if column not in wide.columns] + missing
    if missing:
        raise ValueError(f"to_long: column(s) {missing} not in the wide frame")
    carried = [column for column in wide.columns if column not in {*score_columns, *true_columns}]
    frame = wide.with_row_index("_sample_order")
    parts = []
    for position, name in enumerate(names):
        if kind == "multiclass":
            truth = pl.col("y_true")
            label = (
                truth.cast(pl.Int64, strict=False) == position
                if wide["y_true"].dtype.is_integer()
                else truth.cast(pl.String) == name
            )
            y_true = label.cast(pl.Int8)
        else:
            y_true = pl.col(f"{true_prefix}{name}")
        parts.append(
            frame.select(
                "_sample_order",
                *carried,
                pl.lit(task).alias("task"),
                pl.lit(name).alias("target"),
                y_true.alias("y_true"),
                pl.col(f"{score_prefix}{name}").alias("y_score"),
                pl.lit(position).alias("_target_order"),
            )
        )
    long = pl.concat(parts, how="vertical_relaxed").sort("_sample_order", "_target_order")
    long = long.drop("_sample_order", "_target_order")
    return validate(long, kinds={task: kind}, classes={task: list(classes)} if classes is not None else None)


def to_wide(long: pl.DataFrame, *, task: str, kind: str | None = None) -> pl.DataFrame:
    """Long predictions of one task to wide (the inverse of `to_long`).

    Args:
        long: long predictions (validated).
        task: the task to convert.
        kind: task kind; default from bundled defaults or inference (multiclass is never inferred).

    Returns:
        One row per sample (and run): the carried columns, then binary/multilabel ``y_true_<t>``,
        ``y_score_<t>`` pairs, or multiclass ``y_true`` (class name) and ``y_score_<class>`` columns.
    """
    part = long.filter(pl.col("task") == task)
    if part.height == 0:
        raise ValueError(f"to_wide: no rows for task {task!r}")
    names = part["target"].unique(maintain_order=True).to_list()
    kind = kind or task_kind(task, n_targets=len(names), kinds=None)
    carried = [column for column in part.columns if column not in ("task", "target", "y_true", "y_score")]
    index = part.select(carried).unique(maintain_order=True)
    scores = part.pivot(on="target", index=carried, values="y_score", maintain_order=True)
    scores = scores.rename({name: f"y_score_{name}" for name in names})
    if kind == "multiclass":
        truth = part.filter(pl.col("y_true") == 1).select(*carried, pl.col("target").alias("y_true"))
        wide = index.join(truth, on=carried, how="left", nulls_equal=True)
    else:
        labels = part.pivot(on="target", index=carried, values="y_true", maintain_order=True)
        wide = index.join(
            labels.rename({name: f"y_true_{name}" for name in names}),
            on=carried,
            how="left",
            nulls_equal=True,
        )
        wide = wide.select(*carried, *[f"y_true_{name}" for name in names])
    wide = wide.join(scores, on=carried, how="left", nulls_equal=True)
    return wide


def from_arrays(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    task: str,
    kind: str,
    targets: Sequence[str],
    sample_id: Sequence[Any] | np.ndarray | None = None,
    subject_id: Sequence[Any] | np.ndarray | None = None,
    attributes: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    model: str | None = None,
    seed: int | None = None,
    fold: int | None = None,
    setting: str | None = None,
) -> pl.DataFrame:
    """Long predictions from arrays.

    Args:
        y_true: binary ``[n]`` or ``[n, 1]``, multilabel ``[n, L]`` 0/1, multiclass ``[n]`` class indices.
        y_score: ``[n]``/``[n, 1]``, ``[n, L]`` or ``[n, K]`` probabilities.
        task: task name.
        kind: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        targets: label names (``L``) or class names (``K``, in index order).
        sample_id: ``[n]`` ids; default ``0..n-1`` (recorded as note ``synthetic_sample_id``).
        subject_id: ``[n]`` patient ids (enables the clustered bootstrap).
        attributes: name -> ``[n]`` sensitive attribute values.
        model: run key.
        seed: run key.
        fold: run key.
        setting: run key.

    Returns:
        Validated long predictions, one row per (sample, target).
    """
    scores = np.asarray(y_score, dtype=np.float64)
    labels = np.asarray(y_true)
    if scores.ndim == 1:
        scores = scores[:, None]
    n, n_targets = scores.shape
    if len(targets) != n_targets:
        raise ValueError(f"from_arrays: {len(targets)} target name(s) for {n_targets} score column(s)")
    if kind == "multiclass":
        indices = labels.reshape(-1).astype(np.int64)
        if indices.shape[0] != n or np.any((indices < 0) | (indices >= n_targets)):
            raise ValueError(f"from_arrays: multiclass y_true must be {n} class indices in [0, {n_targets})")
        onehot = np.zeros((n, n_targets), dtype=np.int8)
        onehot[np.arange(n), indices] = 1
        labels = onehot
    elif labels.ndim == 1:
        labels = labels[:, None]
    if labels.shape != (n, n_targets):
        raise ValueError(f"from_arrays: y_true has shape {labels.shape}, expected {(n, n_targets)}")
    notes: list[str] = []
    if sample_id is None:
        ids = np.arange(n)
        notes.append("synthetic_sample_id")
    else:
        ids = np.asarray(sample_id)
    columns: dict[str, Any] = {
        "sample_id": pl.Series(np.repeat(ids, n_targets)).cast(pl.String),
        "task": [task] * (n * n_targets),
        "target": np.tile(np.asarray(targets, dtype=object), n).tolist(),
        "y_true": pl.Series(labels.reshape(-1).astype(np.int8)),
        "y_score": pl.Series(scores.reshape(-1)),
    }
    if subject_id is not None:
        columns["subject_id"] = pl.Series(np.repeat(np.asarray(subject_id), n_targets)).cast(pl.String)
    for key, value in (("model", model), ("seed", seed), ("fold", fold), ("setting", setting)):
        if value is not None:
            columns[key] = [value] * (n * n_targets)
    for name, values in (attributes or {}).items():
        columns[name] = pl.Series(np.repeat(np.asarray(values), n_targets))
    frame = validate(pl.DataFrame(columns), kinds={task: kind})
    return remember(frame, {"inputs": [], "notes": notes})
