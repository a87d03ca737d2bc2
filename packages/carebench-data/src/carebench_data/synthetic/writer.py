"""Deterministic table writing: gzip level 1 with header mtime 0 and no file name, chunk by chunk."""

from __future__ import annotations

import gzip
import io
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl

from carebench_data.manifest import sha256_file
from carebench_data.mimic_schemas import Schema

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT = "%Y-%m-%d"


class CsvGzWriter:
    """Write a csv.gz table chunk by chunk; the file appears atomically on `close`.

    Each chunk is cast to the schema (columns selected by name, in schema order), so a chunk with a
    missing or misnamed column fails loudly instead of shifting columns. Compression runs in one
    background thread (zlib releases the GIL), in submission order, while the next chunk is built.

    Example:
        >>> with CsvGzWriter(path, {"a": pl.Int64()}) as w:  # doctest: +SKIP
        ...     w.write(pl.DataFrame({"a": [1, 2]}))
    """

    def __init__(self, path: Path, schema: Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._raw = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        self._gzip = gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=self._raw, mtime=0)
        self._gzip.write((",".join(schema) + "\n").encode())
        self._executor = ThreadPoolExecutor(max_workers=1)
        self._pending: Future[int] | None = None

    def write(self, frame: pl.DataFrame) -> None:
        """Append the rows of one chunk (no header)."""
        if frame.height == 0:
            return
        ordered = frame.select([pl.col(name).cast(dtype) for name, dtype in self.schema.items()])
        buffer = io.BytesIO()
        ordered.write_csv(
            buffer,
            include_header=False,
            datetime_format=DATETIME_FORMAT,
            date_format=DATE_FORMAT,
            null_value="",
        )
        self._wait()
        self._pending = self._executor.submit(self._gzip.write, buffer.getvalue())
        self.rows += ordered.height

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        """Finish the gzip stream and move the file into place."""
        self._wait()
        self._executor.shutdown()
        self._gzip.close()
        self._raw.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> CsvGzWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._executor.shutdown(cancel_futures=True)
            self._gzip.close()
            self._raw.close()
            self._tmp.unlink(missing_ok=True)


def write_table(path: Path, schema: Schema, frame: pl.DataFrame) -> int:
    """Write a whole table at once; returns its row count."""
    with CsvGzWriter(path, schema) as writer:
        writer.write(frame)
    return writer.rows


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write sorted, indented JSON atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_checksums(root: Path) -> None:
    """Write `SHA256SUMS.txt` (sha256sum format, sorted paths) for every table and marker under root.

    JPEG files are not listed: there are thousands and the metadata table identifies them.
    """
    lines = []
    for path in sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix != ".jpg" and p.name != "SHA256SUMS.txt"
    ):
        digest = sha256_file(path)
        lines.append(f"{digest}  {path.relative_to(root).as_posix()}")
    tmp = root / ".SHA256SUMS.txt.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, root / "SHA256SUMS.txt")
