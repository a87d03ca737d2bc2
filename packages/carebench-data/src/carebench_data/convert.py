"""`convert_raw`: stream raw CSV / CSV.GZ tables to typed Parquet with only the columns carebench reads.

Later builds then scan Parquet lazily instead of inflating gzip (spec/data.md §1.1). Each table is
read in bounded blocks, parsed to the §1.2 dtypes, written as one part per block and finally
streamed into `<out>/<folder>/<table>.parquet`; the result is written atomically per table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl

from carebench_data.errors import CarebenchDataError
from carebench_data.locks import LockHeldError, acquire_lock
from carebench_data.outputs import check_output_dir
from carebench_data.raw import (
    CXR_TABLES,
    MIMIC_IV_TABLES,
    ResolvedTable,
    TableSpec,
    iter_csv_blocks,
    parse_columns,
    resolve_table,
)

logger = logging.getLogger(__name__)

CONVERTED_MARKER = "carebench-convert.json"
"""Written into every converted root; a later conversion may write into a folder that holds it."""


def _convert_table(resolved: ResolvedTable, target: Path, *, chunk_bytes: int) -> int:
    """Write one table as typed Parquet; returns its row count."""
    # caregiver_id is never read, but the version fingerprint looks for it (data.md §1.4).
    wanted = [*resolved.spec.columns, *(["caregiver_id"] if resolved.table == "chartevents" else [])]
    columns = [name for name in wanted if name in resolved.header]
    dtypes = {name: resolved.spec.columns.get(name, pl.Int64()) for name in columns}
    target.parent.mkdir(parents=True, exist_ok=True)
    parts_dir = target.parent / f".{target.name}.parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir()
    rows = 0
    try:
        if resolved.format == "parquet":
            frames = [pl.scan_parquet(resolved.path).select(columns)]
        else:
            frames = (
                block.lazy() for block in iter_csv_blocks(resolved, columns=columns, chunk_bytes=chunk_bytes)
            )
        for index, frame in enumerate(frames):
            parsed = frame.pipe(parse_columns, columns=dtypes).collect()
            rows += parsed.height
            parsed.write_parquet(parts_dir / f"part-{index:05d}.parquet", compression="lz4")
        parts = sorted(parts_dir.glob("part-*.parquet"))
        temporary = target.parent / f".{target.name}.tmp"
        if parts:
            pl.scan_parquet(parts).sink_parquet(temporary, compression="zstd", compression_level=3)
        else:
            pl.DataFrame(schema=dtypes).write_parquet(temporary)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return rows


def convert_raw(
    root: Path,
    out: Path,
    *,
    mimic_cxr: Path | None = None,
    cxr_out: Path | None = None,
    chunk_mib: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Convert every MIMIC-IV table carebench reads (and the CXR metadata tables) to Parquet.

    Args:
        root: MIMIC-IV root with hosp/ and icu/ (csv, csv.gz or parquet tables).
        out: new MIMIC-IV root receiving `hosp/*.parquet` and `icu/*.parquet` (plus SYNTHETIC.json if present).
        mimic_cxr: MIMIC-CXR-JPG root whose metadata, chexpert and split tables are converted too.
        cxr_out: where the CXR tables go (default: `out` / "mimic-cxr"); images are not copied, a
            `files` symlink points to the original images so that the folder is a complete CXR root.
        chunk_mib: decompressed block size.
        progress: callback `(tables done, tables total)`.

    Returns:
        Rows written per table (`hosp/patients`, `icu/chartevents`, ...).
    """
    root, out = Path(root), Path(out)
    cxr_target = check_convert_output(root, out, mimic_cxr=mimic_cxr, cxr_out=cxr_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire_lock(out.parent / f".{out.name}.lock", purpose=f"convert into {out}")
    except LockHeldError as held:
        raise CarebenchDataError(f"another process is converting into {out}: {held}") from None
    with lock:
        written = _convert_all(
            root, out, mimic_cxr=mimic_cxr, cxr_target=cxr_target, chunk_mib=chunk_mib, progress=progress
        )
    return written


def check_convert_output(
    root: Path, out: Path, *, mimic_cxr: Path | None = None, cxr_out: Path | None = None
) -> Path | None:
    """Refuse outputs that are, lie in or contain an input, and existing folders not written by a conversion.

    Returns:
        Where the CXR tables go (None without `mimic_cxr`).

    Raises:
        OutputDirectoryError: one line naming the output and the conflict.
    """
    cxr_target = Path(cxr_out or Path(out) / "mimic-cxr") if mimic_cxr is not None else None
    for target in (Path(out), cxr_target):
        if target is not None:
            check_output_dir(
                target, inputs=(root, mimic_cxr), replace=True, is_ours=_is_converted, what="converted root"
            )
    return cxr_target


def _is_converted(path: Path) -> bool:
    """Whether `path` was written by `convert_raw` (it holds the marker file)."""
    return (path / CONVERTED_MARKER).is_file()


def _convert_all(
    root: Path,
    out: Path,
    *,
    mimic_cxr: Path | None,
    cxr_target: Path | None,
    chunk_mib: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, int]:
    jobs: list[tuple[Path, TableSpec, Path]] = [(root, spec, out) for spec in MIMIC_IV_TABLES.values()]
    if mimic_cxr is not None and cxr_target is not None:
        jobs += [(Path(mimic_cxr), spec, cxr_target) for spec in CXR_TABLES.values()]
    written: dict[str, int] = {}
    for done, (source_root, spec, target_root) in enumerate(jobs):
        resolved = resolve_table(source_root, spec)
        if resolved is not None:
            key = f"{spec.folder}/{spec.name}" if spec.folder else spec.name
            target = target_root / spec.folder / f"{spec.name}.parquet"
            written[key] = _convert_table(resolved, target, chunk_bytes=chunk_mib << 20)
            logger.info("converted %s: %d rows", key, written[key])
        if progress is not None:
            progress(done + 1, len(jobs))
    if mimic_cxr is not None and cxr_target is not None:
        files = cxr_target / "files"
        if not files.exists():
            files.symlink_to((Path(mimic_cxr) / "files").resolve(), target_is_directory=True)
    marker = root / "SYNTHETIC.json"
    if marker.is_file():
        shutil.copyfile(marker, out / "SYNTHETIC.json")
    for target in (out, cxr_target):
        if target is not None and target.is_dir():
            text = json.dumps({"source": str(root.absolute()), "tables": written}, indent=2, sort_keys=True)
            (target / CONVERTED_MARKER).write_text(text + "\n", encoding="utf-8")
    return written
