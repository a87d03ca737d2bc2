"""The fixed tidy result schema, its notes vocabulary, and serialization (eval.md §8.1, §8.2).

Every frame-level function returns exactly `RESULT_SCHEMA`, sorted by `SORT_COLUMNS` with nulls first,
so output is byte-stable whatever the grouping. Build result frames with `make_rows`.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import weakref
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "NOTE_TOKENS",
    "RESULT_SCHEMA",
    "SCHEMA_VERSION",
    "SORT_COLUMNS",
    "check_notes",
    "check_results_path",
    "empty_results",
    "make_rows",
    "read_results",
    "recall",
    "remember",
    "write_results",
]

SCHEMA_VERSION = 1

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String(),
    "baseline": pl.String(),
    "seed": pl.Int64(),
    "fold": pl.Int64(),
    "setting": pl.String(),
    "task": pl.String(),
    "metric": pl.String(),
    "statistic": pl.String(),
    "target": pl.String(),
    "group_attribute": pl.String(),
    "group": pl.String(),
    "value": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "n": pl.Int64(),
    "n_runs": pl.Int64(),
    "p_value": pl.Float64(),
    "p_adjusted": pl.Float64(),
    "notes": pl.String(),
}
"""Column -> dtype of every result table, in order."""

SORT_COLUMNS = (
    "model",
    "baseline",
    "seed",
    "fold",
    "setting",
    "task",
    "metric",
    "statistic",
    "target",
    "group_attribute",
    "group",
)

STATISTICS = (
    "estimate",
    "mean",
    "seed_sd",
    "fold_sd",
    "delong",
    "gap",
    "ratio",
    "worst_group",
    "best_group",
    "association",
    "area",
    "relative_area",
    "retention",
    "break_even_rate",
    "modality_drop",
    "cxr_utilization",
    "cxr_share",
)

NOTE_TOKENS: tuple[str, ...] = (
    "single_class",
    "no_predicted_positive",
    "no_predicted_negative",
    "degenerate_agreement",
    "separated",
    "no_convergence",
    "small_group",
    "too_few_groups",
    "labels_used=<j>/<L>",
    "ci_dropped=<k>",
    "ci_unstable",
    "bca_fallback",
    "row_bootstrap",
    "synthetic_sample_id",
    "single_seed",
    "delong_ignores_clusters",
    "best_unimodal",
    "selected_on_test",
    "excluded_from_family",
    "policy=<fixed:t|validation:rule|top_k:k>",
    "eod_from=<tpr|fpr>",
    "groups_without_positives=<k>",
    "groups_without_negatives=<k>",
    "rate_mismatch",
    "no_missing_modality",
)
"""The notes vocabulary (eval.md §8.1); ``<...>`` marks a parameter."""

_NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"
_NOTE_PATTERN = re.compile(
    "^(?:"
    + "|".join(
        [
            *(re.escape(token) for token in NOTE_TOKENS if "<" not in token),
            r"labels_used=\d+/\d+",
            r"ci_dropped=\d+",
            rf"policy=(?:fixed:{_NUMBER}|validation:(?:youden|max_f1|sensitivity)|top_k:{_NUMBER})",
            r"eod_from=(?:tpr|fpr)",
            r"groups_without_(?:positives|negatives)=\d+",
        ]
    )
    + ")$"
)


_ATTACHED: dict[int, dict[str, Any]] = {}


def remember(frame: pl.DataFrame, info: Mapping[str, Any]) -> pl.DataFrame:
    """Attach provenance `info` to `frame` for as long as the frame lives (polars frames have no attrs).

    `read_predictions` attaches the input files and their SHA-256, `score` the resolved call;
    `write_results` writes what is attached to the frame it writes.
    """
    key = id(frame)
    _ATTACHED[key] = dict(info)
    weakref.finalize(frame, _ATTACHED.pop, key, None)
    return frame


def recall(frame: pl.DataFrame) -> dict[str, Any]:
    """The provenance attached to `frame` by `remember` (empty when none)."""
    return dict(_ATTACHED.get(id(frame), {}))


def empty_results() -> pl.DataFrame:
    """A result table with no rows."""
    return pl.DataFrame(schema=RESULT_SCHEMA)


def make_rows(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Build a result table from row dicts.

    Missing columns are null (``n_runs`` defaults to 1), values are cast to `RESULT_SCHEMA`, ``None``
    in a float column of `value` becomes NaN, and rows are sorted by `SORT_COLUMNS` (nulls first).

    Args:
        rows: dicts keyed by column names of `RESULT_SCHEMA`.

    Returns:
        The result frame.

    Example:
        >>> make_rows([{"task": "mortality", "metric": "auroc_score", "statistic": "estimate",
        ...             "target": "mortality", "value": 0.8, "n": 100}]).shape
        (1, 19)
    """
    columns: dict[str, list[Any]] = {name: [] for name in RESULT_SCHEMA}
    for row in rows:
        unknown = set(row) - set(RESULT_SCHEMA)
        if unknown:
            raise ValueError(f"result rows have unknown column(s) {sorted(unknown)}")
        for name in RESULT_SCHEMA:
            value = row.get(name)
            if name == "n_runs" and value is None:
                value = 1
            elif name == "value" and value is None:
                value = math.nan
            elif isinstance(value, np.generic):
                value = value.item()
            columns[name].append(value)
    frame = pl.DataFrame(
        {
            name: pl.Series(name, values, dtype=RESULT_SCHEMA[name], strict=False)
            for name, values in columns.items()
        }
    )
    return sort_results(frame)


def sort_results(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted by `SORT_COLUMNS`, nulls first (stable)."""
    return frame.sort(list(SORT_COLUMNS), nulls_last=False, maintain_order=True)


def check_notes(frame: pl.DataFrame) -> None:
    """Raise `ValueError` when the ``notes`` column holds a token outside `NOTE_TOKENS`."""
    for notes in frame["notes"].drop_nulls().unique().to_list():
        for token in notes.split(";"):
            if not _NOTE_PATTERN.match(token):
                raise ValueError(
                    f"unknown note token {token!r} in {notes!r}; allowed: {', '.join(NOTE_TOKENS)}"
                )


def check_schema(frame: pl.DataFrame) -> None:
    """Raise `ValueError` unless `frame` has exactly the columns, order and dtypes of `RESULT_SCHEMA`."""
    if dict(frame.schema) != RESULT_SCHEMA:
        raise ValueError(
            f"not a result table: expected columns {dict(RESULT_SCHEMA)}, got {dict(frame.schema)}"
        )


def _versions() -> dict[str, str]:
    versions = {}
    for distribution in ("carebench-eval", "numpy", "polars", "scikit-learn"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = "unknown"
    return versions


def _provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "versions": _versions(), **dict(provenance or {})}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to provenance JSON")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value


def _dumps(document: Any) -> str:
    return json.dumps(_finite_or_none(document), indent=2, default=_json_default, allow_nan=False) + "\n"


def _umask() -> int:
    """The process umask (from /proc on Linux, so other threads never see it change)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            return int(next(line for line in handle if line.startswith("Umask:")).split()[1], 8)
    except (OSError, ValueError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _atomic_write(path: Path, write: Any) -> None:
    """Write through `write(temporary_path)` in the target folder, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        # mkstemp creates 0600; a result file gets the permissions of any file the user creates.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _sidecar(path: Path) -> Path:
    name = path.name
    for suffix in (".parquet", ".pq", ".csv"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".meta.json")
    return path.with_name(name + ".meta.json")


RESULT_SUFFIXES = (".parquet", ".pq", ".csv", ".json")


def check_results_path(path: str | os.PathLike[str]) -> None:
    """Raise `ValueError` (one line) unless `path` can take a result file: a known suffix, not a directory."""
    target = Path(path)
    if target.suffix.lower() not in RESULT_SUFFIXES:
        raise ValueError(f"unknown result format {target.suffix!r} of {target}; use .parquet, .csv or .json")
    if target.is_dir():
        raise ValueError(f"{target} is a directory; give the path of a .parquet, .csv or .json file")


def write_results(
    frame: pl.DataFrame, path: str | os.PathLike[str], *, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write a result table atomically; the format follows the suffix.

    - ``.parquet`` / ``.pq``: exact round trip; sidecar ``<stem>.meta.json`` holds the provenance.
    - ``.csv``: UTF-8, header, NaN as ``NaN``, null as empty, shortest round-trip floats; sidecar as above.
    - ``.json``: one document ``{"schema_version": 1, "provenance": {...}, "rows": [...]}`` (NaN → null).

    Provenance always records the schema version and the versions of carebench-eval, numpy, polars and
    scikit-learn, never a wall-clock time, so reruns are byte-identical.

    Args:
        frame: a result table (`RESULT_SCHEMA`).
        path: output file.
        provenance: the resolved call and inputs to record; merged over what `score` attached to `frame`.

    Returns:
        The written path.
    """
    check_schema(frame)
    target = Path(path)
    check_results_path(target)
    document = _provenance({**recall(frame), **dict(provenance or {})})
    suffix = target.suffix.lower()
    if suffix == ".json":
        rows = frame.to_dicts()
        text = _dumps({"schema_version": SCHEMA_VERSION, "provenance": document, "rows": rows})
        _atomic_write(target, lambda temporary: temporary.write_text(text, encoding="utf-8"))
        return target
    if suffix in (".parquet", ".pq"):
        _atomic_write(target, lambda temporary: frame.write_parquet(temporary))
    else:
        _atomic_write(target, lambda temporary: frame.write_csv(temporary, null_value=""))
    sidecar_text = _dumps(document)
    _atomic_write(_sidecar(target), lambda temporary: temporary.write_text(sidecar_text, encoding="utf-8"))
    return target


def results_json(frame: pl.DataFrame, *, provenance: Mapping[str, Any] | None = None) -> str:
    """The JSON document of `write_results` as text (for printing to stdout)."""
    check_schema(frame)
    document = _provenance({**recall(frame), **dict(provenance or {})})
    return _dumps({"schema_version": SCHEMA_VERSION, "provenance": document, "rows": frame.to_dicts()})


def read_results(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read a result table written by `write_results`, restoring the exact dtypes.

    JSON has no NaN: ``value`` nulls come back as NaN, other float nulls stay null.

    Args:
        path: a ``.parquet``, ``.pq``, ``.csv`` or ``.json`` file.

    Returns:
        The result frame.
    """
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame = pl.read_parquet(source)
    elif suffix == ".csv":
        frame = pl.read_csv(source, schema=RESULT_SCHEMA, null_values=[""])
    elif suffix == ".json":
        document = json.loads(source.read_text(encoding="utf-8"))
        rows = document["rows"] if isinstance(document, dict) else document
        frame = pl.DataFrame(rows, schema=RESULT_SCHEMA) if rows else empty_results()
        frame = frame.with_columns(pl.col("value").fill_null(math.nan))
    else:
        raise ValueError(f"unknown result format {source.suffix!r}; use .parquet, .csv or .json")
    frame = frame.select([pl.col(name).cast(dtype) for name, dtype in RESULT_SCHEMA.items()])
    check_schema(frame)
    return frame
