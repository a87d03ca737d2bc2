"""Manifest, hashing and atomic dataset writes (stage S8, spec/data.md §9)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from carebench_data.outputs import DatasetExistsError, atomic_directory, current_umask

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "DatasetExistsError",
    "atomic_directory",
    "canonical_json",
    "content_hash",
    "file_hashes",
    "is_dataset_dir",
    "make_read_only",
    "plain",
    "sha256_file",
    "write_json",
    "write_npy",
    "write_parquet",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PARQUET_ROW_GROUP = 65_536


def plain(value: Any) -> Any:
    """Convert numpy scalars and non-finite floats to JSON-safe Python values (NaN → null)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def canonical_json(value: Any) -> str:
    """Sorted keys, 2-space indent, shortest round-trip floats, trailing newline."""
    return json.dumps(plain(value), sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_json(path: Path, value: Any) -> None:
    """Write canonical JSON and fsync it."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(canonical_json(value))
        handle.flush()
        os.fsync(handle.fileno())


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Deterministic Parquet: zstd level 3, fixed row-group size, statistics on."""
    frame.write_parquet(
        path, compression="zstd", compression_level=3, statistics=True, row_group_size=PARQUET_ROW_GROUP
    )


def write_npy(array: np.ndarray, path: Path) -> None:
    """`numpy.save` and fsync."""
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 8 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(8 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def file_hashes(directory: Path) -> dict[str, dict[str, Any]]:
    """{relpath: {sha256, bytes}} for every file of the dataset but the manifest, sorted by path."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {
        p.relative_to(directory).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in files
    }


def content_hash(files: dict[str, dict[str, Any]], *, config: dict[str, Any]) -> str:
    """SHA-256 over the sorted `relpath sha256` lines plus the canonical JSON of the output config."""
    lines = "".join(f"{relpath} {entry['sha256']}\n" for relpath, entry in sorted(files.items()))
    return hashlib.sha256((lines + canonical_json(config)).encode()).hexdigest()


def make_read_only(directory: Path) -> None:
    """Data files are written read-only (verify flags hash drift if someone changes them anyway)."""
    mode = (stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH) & ~current_umask()
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(mode)


def is_dataset_dir(path: Path) -> bool:
    """Whether `path` holds a carebench dataset: its manifest.json names a schema version, files and hash."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and isinstance(manifest.get("schema_version"), int)
        and isinstance(manifest.get("files"), dict)
        and isinstance(manifest.get("content_hash"), str)
    )
