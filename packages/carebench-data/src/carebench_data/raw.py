"""Raw MIMIC-IV / MIMIC-CXR-JPG inputs: table resolution, headers, version fingerprint, block reading.

Stage S0 of the build (spec/data.md §1, §2): every table resolves to `<name>.parquet`, `<name>.csv`
or `<name>.csv.gz`; its header is checked against the columns carebench reads; the MIMIC-IV version
is fingerprinted. Event tables are read in one streaming pass of bounded blocks (§11): a reader
thread inflates gzip into `chunk_mib` blocks cut at record boundaries, and polars parses each block.
"""

from __future__ import annotations

import gzip
import json
import logging
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import polars as pl

from carebench_data import mimic_schemas
from carebench_data.errors import CarebenchDataError
from carebench_data.mimic_schemas import CHEXPERT_FINDINGS

try:  # the optional [fast] extra: ISA-L inflates gzip about twice as fast as zlib, same API
    from isal import isal_zlib as inflate_backend
except ImportError:
    inflate_backend = zlib  # type: ignore[no-redef]

logger = logging.getLogger(__name__)
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (
    zlib.error,
    cast(type[BaseException], inflate_backend.error),
)
INFLATE_BACKEND = inflate_backend.__name__
"""Name of the module that inflates gzip CSV (`zlib` or `isal.isal_zlib`); written to manifest.build."""

FORMATS = (".parquet", ".csv", ".csv.gz")
DATE_FORMAT = "%Y-%m-%d"
FIRST_CLASS_ICUSTAYS = {73_181: "2.2", 94_458: "3.1", 140: "2.2-demo"}
"""icustays row counts of the first-class releases → their fingerprint: v2.2, v3.1 and the open v2.2 demo."""
DEMO_SUFFIX = "-demo"


def base_version(fingerprint: str) -> str:
    """The MIMIC-IV version of a fingerprint: `2.2-demo` → `2.2` (the demo is a 100-patient 2.2 subset).

    >>> base_version("2.2-demo"), base_version("3.1")
    ('2.2', '3.1')
    """
    return fingerprint.removesuffix(DEMO_SUFFIX)


class MissingTableError(CarebenchDataError):
    """A required raw table is absent in every accepted format."""


class MissingColumnError(CarebenchDataError):
    """A raw table lacks a column that carebench reads."""


class VersionError(CarebenchDataError):
    """The MIMIC-IV version is unknown or contradicts the declared one."""


class CorruptInputError(CarebenchDataError):
    """A raw file is truncated, corrupt or structurally malformed."""


@dataclass(frozen=True)
class TableSpec:
    """Where a raw table lives and which columns (with their target dtypes) are read from it."""

    name: str
    folder: str
    columns: dict[str, pl.DataType]
    required: bool = True


def _read_spec(name: str, folder: str, columns: tuple[str, ...], *, required: bool = True) -> TableSpec:
    """The `TableSpec` reading `columns` of `<folder>/<name>` with the dtypes of its real header."""
    header = (
        mimic_schemas.MIMIC_IV_TABLES[f"{folder}/{name}"] if folder else mimic_schemas.MIMIC_CXR_TABLES[name]
    )
    return TableSpec(name, folder, {column: header[column] for column in columns}, required=required)


MIMIC_IV_TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        _read_spec(
            "patients",
            "hosp",
            ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"),
        ),
        _read_spec(
            "admissions",
            "hosp",
            (
                "subject_id",
                "hadm_id",
                "admittime",
                "dischtime",
                "deathtime",
                "admission_type",
                "insurance",
                "race",
                "hospital_expire_flag",
            ),
        ),
        _read_spec(
            "icustays",
            "icu",
            (
                "subject_id",
                "hadm_id",
                "stay_id",
                "first_careunit",
                "last_careunit",
                "intime",
                "outtime",
                "los",
            ),
        ),
        _read_spec(
            "chartevents",
            "icu",
            ("stay_id", "charttime", "storetime", "itemid", "value", "valuenum", "valueuom"),
        ),
        _read_spec(
            "labevents",
            "hosp",
            (
                "subject_id",
                "hadm_id",
                "itemid",
                "charttime",
                "storetime",
                "value",
                "valuenum",
                "valueuom",
                "comments",
            ),
        ),
        _read_spec(
            "outputevents",
            "icu",
            ("stay_id", "charttime", "storetime", "itemid", "value", "valueuom"),
            required=False,
        ),
        _read_spec("d_items", "icu", ("itemid", "label", "linksto", "category", "unitname")),
        _read_spec("d_labitems", "hosp", ("itemid", "label", "fluid", "category")),
        _read_spec("diagnoses_icd", "hosp", ("subject_id", "hadm_id", "seq_num", "icd_code", "icd_version")),
        _read_spec("d_icd_diagnoses", "hosp", ("icd_code", "icd_version", "long_title"), required=False),
    )
}

_METADATA = _read_spec(
    "mimic-cxr-2.0.0-metadata",
    "",
    (
        "dicom_id",
        "subject_id",
        "study_id",
        "ViewPosition",
        "StudyDate",
        "StudyTime",
        "ViewCodeSequence_CodeMeaning",
    ),
)

CXR_TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        # StudyDate is read as text, not as the Int32 of its header: cxr.py parses `YYYYMMDD` (and `YYYYMMDD.0`).
        replace(_METADATA, columns={**_METADATA.columns, "StudyDate": pl.String()}),
        _read_spec(
            "mimic-cxr-2.0.0-chexpert", "", ("subject_id", "study_id", *CHEXPERT_FINDINGS), required=False
        ),
        _read_spec(
            "mimic-cxr-2.0.0-split", "", ("dicom_id", "study_id", "subject_id", "split"), required=False
        ),
    )
}


@dataclass(frozen=True)
class ResolvedTable:
    """One raw table resolved to a file: `format` is `parquet`, `csv` or `csv.gz`."""

    table: str
    path: Path
    relpath: str
    format: str
    bytes: int
    header: tuple[str, ...]
    spec: TableSpec

    def describe(self) -> dict[str, object]:
        """The `source.inputs` entry of the manifest (rows_read is added after reading)."""
        return {"table": self.table, "relpath": self.relpath, "format": self.format, "bytes": self.bytes}


def resolve_table(root: Path, spec: TableSpec, *, folder: str | None = None) -> ResolvedTable | None:
    """Find `<root>/<folder>/<name>.{parquet,csv,csv.gz}` (first existing wins) and check its header.

    Returns None for an absent optional table; raises `MissingTableError` for an absent required one
    and `MissingColumnError` when a read column is not in the header.
    """
    base = root / (spec.folder if folder is None else folder)
    candidates = [base / f"{spec.name}{suffix}" for suffix in FORMATS]
    found = [path for path in candidates if path.is_file()]
    if not found:
        if not spec.required:
            return None
        tried = ", ".join(path.name for path in candidates)
        raise MissingTableError(f"required table {spec.name!r} not found in {base} (tried {tried})")
    path = found[0]
    if len(found) > 1:
        logger.info("%s: using %s; ignoring %s", spec.name, path.name, ", ".join(p.name for p in found[1:]))
    fmt = next(suffix for suffix in FORMATS if path.name.endswith(suffix)).lstrip(".")
    header = read_header(path, fmt)
    missing = [column for column in spec.columns if column not in header]
    if missing:
        hint = ""
        if "race" in missing and "ethnicity" in header:
            hint = " (it has `ethnicity`: this looks like MIMIC-IV v1.0; set mimic_iv_version = '1.0')"
        elif missing == ["comments"] and fmt == "parquet":
            hint = " (a Parquet copy from an older `carebench data convert`: convert the raw tables again)"
        raise MissingColumnError(f"{path}: missing column(s) {', '.join(missing)}{hint}")
    return ResolvedTable(
        table=spec.name,
        path=path,
        relpath=str(path.relative_to(root)),
        format=fmt,
        bytes=path.stat().st_size,
        header=header,
        spec=spec,
    )


def read_header(path: Path, fmt: str) -> tuple[str, ...]:
    """Column names of a raw table, read from the first line (or the Parquet schema)."""
    if fmt == "parquet":
        return tuple(pl.read_parquet_schema(path))
    opener = gzip.open if fmt == "csv.gz" else open
    try:
        with opener(path, "rb") as handle:
            line = handle.readline()
    except (OSError, EOFError, zlib.error) as error:
        raise CorruptInputError(f"{path}: cannot read the header ({error})") from None
    if not line.strip():
        raise CorruptInputError(f"{path}: empty file (no header row)")
    return tuple(name.strip().strip('"') for name in line.decode("utf-8").rstrip("\r\n").split(","))


def parse_timestamp(text: pl.Expr) -> pl.Expr:
    """`YYYY-MM-DD HH:MM:SS` with an optional fraction (G9) → Datetime[μs]; anything else → null.

    The fixed-width head is parsed with a fixed format (about 4× faster than an optional-fraction
    format); a fraction such as `.125` is added as microseconds.

    >>> texts = pl.Series(["2180-01-01 10:00:00.125", "2180-01-01 10:00:00", "x"])
    >>> pl.select(parse_timestamp(pl.lit(texts))).to_series().to_list()
    [datetime.datetime(2180, 1, 1, 10, 0, 0, 125000), datetime.datetime(2180, 1, 1, 10, 0), None]
    """
    length = text.str.len_bytes()
    head = text.str.slice(0, 19).str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us")
    fraction = text.str.slice(19).cast(pl.Float64, strict=False)
    with_fraction = head + pl.duration(microseconds=(fraction * 1e6).round(0).cast(pl.Int64))
    valid_fraction = (length > 19) & (fraction >= 0) & (fraction < 1)
    return pl.when(length == 19).then(head).when(valid_fraction).then(with_fraction)


def parse_columns(frame: pl.LazyFrame, *, columns: dict[str, pl.DataType]) -> pl.LazyFrame:
    """Cast text columns to their target dtypes; unparseable values become null (counted by callers).

    >>> raw = pl.LazyFrame({"stay_id": ["30000001", "x"], "intime": ["2180-01-01 10:00:00", None]})
    >>> parse_columns(raw, columns={"stay_id": pl.Int64(), "intime": pl.Datetime("us")}).collect().shape
    (2, 2)
    """
    schema = frame.collect_schema()
    exprs = []
    for name, dtype in columns.items():
        if name not in schema:
            continue
        column = pl.col(name)
        if schema[name] == dtype:
            exprs.append(column)
        elif schema[name] == pl.String and dtype == pl.Datetime("us"):
            exprs.append(parse_timestamp(column))
        elif schema[name] == pl.String and dtype == pl.Date:
            exprs.append(column.str.strip_chars().str.slice(0, 10).str.to_date(DATE_FORMAT, strict=False))
        elif schema[name] == pl.String and dtype.is_numeric():
            exprs.append(column.cast(dtype, strict=False))
        else:
            exprs.append(column.cast(dtype, strict=False))
    return frame.with_columns(exprs)


def count_parse_failures(raw: pl.DataFrame, parsed: pl.DataFrame, *, columns: list[str]) -> dict[str, int]:
    """Per column: values present in the raw text that did not parse (null after `parse_columns`)."""
    counts = raw.select(
        [
            (pl.col(name).is_not_null() & parsed.get_column(name).is_null()).sum().alias(name)
            for name in columns
            if name in raw.columns
        ]
    )
    return {name: int(value) for name, value in counts.row(0, named=True).items() if value}


def read_small_table(
    resolved: ResolvedTable, *, columns: list[str] | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Read a small raw table eagerly (S1): selected columns parsed, plus parse-failure counts."""
    names = list(resolved.spec.columns) if columns is None else columns
    names = [name for name in names if name in resolved.header]
    dtypes = {name: resolved.spec.columns[name] for name in names}
    if resolved.format == "parquet":
        raw = pl.read_parquet(resolved.path, columns=names)
    else:
        frames = [
            block for block in iter_csv_blocks(resolved, columns=names, chunk_bytes=64 << 20) if block.height
        ]
        raw = pl.concat(frames) if frames else pl.DataFrame(schema=dict.fromkeys(names, pl.String))
    parsed = raw.lazy().pipe(parse_columns, columns=dtypes).collect()
    return parsed, count_parse_failures(raw, parsed, columns=names)


def count_rows(resolved: ResolvedTable) -> int:
    """Number of data rows of a raw table (streamed; quoted line breaks are not miscounted)."""
    if resolved.format == "parquet":
        return int(pl.scan_parquet(resolved.path).select(pl.len()).collect().item())
    first = resolved.header[0]
    return sum(block.height for block in iter_csv_blocks(resolved, columns=[first], chunk_bytes=16 << 20))


def _record_cut(block: bytes | bytearray, end: int | None = None) -> int:
    """Offset just past the last complete record of `block[:end]` (0 if none).

    A newline ends a record when an even number of double quotes precedes it since the block start:
    CSV doubles quotes inside fields, so quoted line breaks never count.
    """
    position = block.rfind(b"\n", 0, len(block) if end is None else end)
    while position >= 0:
        if block.count(b'"', 0, position) % 2 == 0:
            return position + 1
        position = block.rfind(b"\n", 0, position)
    return 0


def _inflate(path: Path, fmt: str, *, chunk_bytes: int) -> Iterator[tuple[bytes, int, int]]:
    """Yield (block of whole records, decompressed offset of its start, file bytes read), header removed.

    Decompressed pieces are collected in a list and joined once per block (a growing bytearray
    costs as much as the inflation itself).
    """
    read_size = 1 << 18  # small compressed reads keep zlib's output cache-resident
    with open(path, "rb") as handle:
        decompressor = inflate_backend.decompressobj(wbits=31) if fmt == "csv.gz" else None
        pieces: list[bytes] = []
        size = 0
        offset = -1  # decompressed offset of the first pending byte; -1 until the header is cut
        while True:
            data = handle.read(read_size)
            text = (
                data if decompressor is None else _decompress(decompressor, data, path=path, at=offset + size)
            )
            while decompressor is not None and decompressor.eof and decompressor.unused_data:
                rest = decompressor.unused_data  # a multi-member gzip file: start the next member
                decompressor = inflate_backend.decompressobj(wbits=31)
                text += _decompress(decompressor, rest, path=path, at=offset + size)
            if text:
                pieces.append(text)
                size += len(text)
            if offset < 0:
                joined = b"".join(pieces)
                newline = joined.find(b"\n")
                if newline < 0 and data:
                    pieces = [joined]
                    continue
                offset = newline + 1 if newline >= 0 else len(joined)
                pieces, size = [joined[offset:]], len(joined) - offset
            if not data:
                if decompressor is not None and not decompressor.eof:
                    raise CorruptInputError(
                        f"{path}: gzip stream truncated at decompressed byte {offset + size}; "
                        "the file is incomplete: re-download or re-copy it"
                    )
                block = b"".join(pieces)
                if block.strip():
                    yield (block if block.endswith(b"\n") else block + b"\n"), offset, handle.tell()
                return
            while size >= chunk_bytes:
                joined = b"".join(pieces) if len(pieces) > 1 else pieces[0]
                # Cut at the last record boundary inside the first chunk_bytes (a longer record: its end).
                end = chunk_bytes
                cut = _record_cut(joined, end)
                while not cut and end < len(joined):
                    end = min(2 * end, len(joined))
                    cut = _record_cut(joined, end)
                if not cut:
                    pieces = [joined]
                    break
                yield (joined if cut == len(joined) else joined[:cut]), offset, handle.tell()
                offset += cut
                pieces, size = [joined[cut:]], len(joined) - cut


def _decompress(decompressor: Any, data: bytes, *, path: Path, at: int) -> bytes:
    """Inflate one compressed piece (flush at end of file); a zlib error names the file and offset."""
    try:
        return decompressor.decompress(data) if data else decompressor.flush()
    except _INFLATE_ERRORS as error:
        raise CorruptInputError(
            f"{path}: corrupt gzip stream near decompressed byte {max(at, 0)} ({error}); re-download or re-copy the file"
        ) from None


def _threaded(
    blocks: Iterator[tuple[bytes, int, int]], *, depth: int = 2
) -> Iterator[tuple[bytes, int, int]]:
    """Run a block producer in a reader thread (zlib releases the GIL), keeping `depth` blocks queued."""
    channel: queue.Queue[tuple[bytes, int, int] | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in blocks:
                while not stop.is_set():
                    try:
                        channel.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            channel.put(None)
        except BaseException as error:  # handed to the consumer, which re-raises it
            channel.put(error)

    reader = threading.Thread(target=produce, name="carebench-inflate", daemon=True)
    reader.start()
    try:
        while True:
            item = channel.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)


_EXTRA_FIELD = "__carebench_extra_field__"


def iter_csv_blocks(
    resolved: ResolvedTable,
    *,
    columns: list[str],
    chunk_bytes: int,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[pl.DataFrame]:
    """Parse a CSV / CSV.GZ table block by block into text columns (memory bounded by `chunk_bytes`).

    Only `columns` are materialized, all as text (`parse_columns` casts later, after filtering).
    The schema carries one sentinel column past the header, so a row with more fields than the
    header fills it and raises `CorruptInputError` naming the file and the byte offset; a row with
    fewer fields gets nulls (counted as null keys downstream). `on_bytes(position)` reports how many
    bytes of the file have been read.
    """
    schema = {**dict.fromkeys(resolved.header, pl.String()), _EXTRA_FIELD: pl.String()}
    indices = [resolved.header.index(name) for name in columns] + [len(resolved.header)]
    for block, offset, position in _threaded(
        _inflate(resolved.path, resolved.format, chunk_bytes=chunk_bytes)
    ):
        try:
            frame = pl.read_csv(
                block,
                has_header=False,
                schema=schema,
                columns=indices,
                quote_char='"',
                missing_columns="insert",
                raise_if_empty=False,
            )
        except (pl.exceptions.ComputeError, pl.exceptions.SchemaError) as error:
            raise CorruptInputError(
                f"{resolved.path}: malformed CSV in the block starting at decompressed byte {offset} "
                f"({str(error).splitlines()[0]})"
            ) from None
        extra = frame.get_column(_EXTRA_FIELD)
        if extra.null_count() < frame.height:
            row = int(extra.is_not_null().arg_max() or 0)
            raise CorruptInputError(
                f"{resolved.path}: malformed CSV: row {row + 1} of the block starting at decompressed byte "
                f"{offset} has more fields than the {len(resolved.header)}-column header"
            )
        if on_bytes is not None:
            on_bytes(position)
        yield frame.drop(_EXTRA_FIELD)


def detect_version(
    mimic_iv: Path,
    *,
    admissions_header: tuple[str, ...],
    chartevents_header: tuple[str, ...],
    icustays_rows: int,
) -> dict[str, object]:
    """Fingerprint the MIMIC-IV release (spec/data.md §1.4).

    Returns {"version": "2.2" | "2.2-demo" | "3.1" | "1.0" | "2.0/2.1" | "unknown", "synthetic": dict | None,
    "evidence": [...]}; `2.2-demo` is the open 100-patient demo of v2.2 (140 ICU stays).
    """
    evidence: list[str] = []
    marker = mimic_iv / "SYNTHETIC.json"
    synthetic = json.loads(marker.read_text()) if marker.is_file() else None
    if (mimic_iv / "core").is_dir():
        evidence.append("core/ present")
        return {"version": "1.0", "synthetic": synthetic, "evidence": evidence}
    if "race" in admissions_header and "caregiver_id" in chartevents_header:
        evidence.append("admissions.race and chartevents.caregiver_id")
        version = FIRST_CLASS_ICUSTAYS.get(icustays_rows, "unknown")
        evidence.append(f"icustays rows {icustays_rows}")
    elif "race" in admissions_header:
        evidence.append("admissions.race without chartevents.caregiver_id")
        version = "2.0/2.1"
    else:
        version = "unknown"
    if synthetic is not None:
        evidence.append("SYNTHETIC.json marker")
        version = str(synthetic.get("mimic_version", synthetic.get("mimic_iv_version", version)))
    return {"version": version, "synthetic": synthetic, "evidence": evidence}
