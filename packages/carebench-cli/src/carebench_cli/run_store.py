"""The run store of DESIGN §6: one directory per run, finished only when `DONE` exists.

```
<runs>/<run_id>/config.json  predictions.parquet  val_predictions.parquet  metrics.json
                 train_log.jsonl  model.safetensors  DONE
                 meds_predictions/<setting>/<task>.parquet   (binary tasks: meds-evaluation's layout)
```

Every file is written atomically (temporary file in the same folder, then `os.replace`), and `DONE`
is written last. `DONE` lists the size and SHA-256 of every other file, so a run directory whose
files were truncated or removed after the fact counts as corrupt: a rerun redoes it and the report
leaves it out. A directory without `DONE` is partial (an interrupted run) and is redone from scratch.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from carebench_cli.grid import RunSpec

logger = logging.getLogger(__name__)

DONE_FILE = "DONE"
CONFIG_FILE = "config.json"
PREDICTIONS_FILE = "predictions.parquet"
VAL_PREDICTIONS_FILE = "val_predictions.parquet"
METRICS_FILE = "metrics.json"
TRAIN_LOG_FILE = "train_log.jsonl"
WEIGHTS_FILE = "model.safetensors"
REPORT_DIR = "report"
MEDS_PREDICTIONS_DIR = "meds_predictions"
REQUIRED_FILES: tuple[str, ...] = (
    CONFIG_FILE,
    PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
    METRICS_FILE,
    TRAIN_LOG_FILE,
    WEIGHTS_FILE,
)
_RUN_DIR = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[0-9a-f]{12}$")


class RunStatus(enum.Enum):
    """State of one run directory."""

    ABSENT = "absent"
    PARTIAL = "partial"
    CORRUPT = "corrupt"
    DONE = "done"


@dataclass(frozen=True)
class FinishedRun:
    """A run whose `DONE` marker and files check out."""

    run_id: str
    path: Path
    spec: RunSpec
    metrics: dict[str, Any]

    @property
    def predictions(self) -> Path:
        """Test-split predictions, DESIGN §5 long format, every test setting."""
        return self.path / PREDICTIONS_FILE

    @property
    def val_predictions(self) -> Path:
        """Validation-split predictions (natural setting), for threshold and best-unimodal selection."""
        return self.path / VAL_PREDICTIONS_FILE


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp_path = Path(temporary)
    try:
        yield temp_path
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically: sorted keys, 2-space indent, trailing newline."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n")


class RunWriter:
    """Writes the files of one run; `finish()` writes `DONE` last."""

    def __init__(self, path: Path, spec: RunSpec) -> None:
        self.path = path
        self.spec = spec
        self.optional: list[str] = []
        write_json(path / CONFIG_FILE, {"run_id": spec.run_id, **spec.to_dict()})

    def write_json(self, name: str, payload: Any) -> None:
        """Write `<run>/<name>` as JSON, atomically."""
        write_json(self.path / name, payload)

    def write_parquet(self, name: str, frame: pl.DataFrame) -> None:
        """Write `<run>/<name>` as zstd Parquet, atomically (`name` may hold folders)."""
        with atomic_path(self.path / name) as temporary:
            frame.write_parquet(temporary, compression="zstd")
        if name not in REQUIRED_FILES and name not in self.optional:
            self.optional.append(name)

    def write_train_log(self, records: list[Mapping[str, Any]]) -> None:
        """Write one JSON line per epoch record, atomically."""
        lines = "".join(json.dumps(dict(record), sort_keys=True) + "\n" for record in records)
        atomic_write_text(self.path / TRAIN_LOG_FILE, lines)

    @contextlib.contextmanager
    def file(self, name: str) -> Iterator[Path]:
        """A temporary path that becomes `<run>/<name>` when the block succeeds (for weights)."""
        with atomic_path(self.path / name) as temporary:
            yield temporary

    def finish(self) -> None:
        """Check that every required file exists, then write `DONE` (with sizes and hashes of every file) last."""
        missing = [name for name in REQUIRED_FILES if not (self.path / name).is_file()]
        if missing:
            raise RuntimeError(f"run {self.spec.run_id} cannot finish: missing {missing}")
        files = {
            name: {"bytes": (self.path / name).stat().st_size, "sha256": sha256_file(self.path / name)}
            for name in (*REQUIRED_FILES, *self.optional)
        }
        write_json(self.path / DONE_FILE, {"run_id": self.spec.run_id, "files": files})


class RunStore:
    """The run directories under one root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def run_dir(self, run_id: str) -> Path:
        """`<root>/<run_id>`."""
        return self.root / run_id

    def run_ids(self) -> list[str]:
        """Names of the run directories present (any state), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _RUN_DIR.match(p.name))

    def status(self, run_id: str, *, verify_hashes: bool = False) -> RunStatus:
        """ABSENT, PARTIAL (no `DONE`), CORRUPT (`DONE` does not match the files) or DONE.

        Sizes are always checked; `verify_hashes` also recomputes every SHA-256.
        """
        path = self.run_dir(run_id)
        if not path.is_dir():
            return RunStatus.ABSENT
        done = path / DONE_FILE
        if not done.is_file():
            return RunStatus.PARTIAL
        try:
            marker = json.loads(done.read_text(encoding="utf-8"))
            files = marker["files"]
            if marker["run_id"] != run_id or set(REQUIRED_FILES) - set(files):
                return RunStatus.CORRUPT
            for name, info in files.items():
                file = path / name
                if not file.is_file() or file.stat().st_size != info["bytes"]:
                    return RunStatus.CORRUPT
                if verify_hashes and sha256_file(file) != info["sha256"]:
                    return RunStatus.CORRUPT
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            if RunSpec.from_dict(config).run_id != run_id:
                return RunStatus.CORRUPT
        except (ValueError, KeyError, TypeError):
            return RunStatus.CORRUPT
        return RunStatus.DONE

    def start(self, spec: RunSpec) -> RunWriter:
        """Begin (or redo) a run: remove any partial or corrupt directory, create it, write `config.json`."""
        path = self.run_dir(spec.run_id)
        if path.exists():
            logger.info("removing unfinished run directory %s", path)
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return RunWriter(path, spec)

    def finished(self, *, verify_hashes: bool = False) -> tuple[list[FinishedRun], dict[str, RunStatus]]:
        """The finished runs, and the status of every other run directory (left out, logged).

        Returns:
            (finished runs sorted by run id, {run_id: PARTIAL or CORRUPT}).
        """
        finished: list[FinishedRun] = []
        skipped: dict[str, RunStatus] = {}
        for run_id in self.run_ids():
            status = self.status(run_id, verify_hashes=verify_hashes)
            if status is not RunStatus.DONE:
                logger.warning(
                    "run %s is %s; not reported (rerun `carebench run` to redo it)", run_id, status.value
                )
                skipped[run_id] = status
                continue
            path = self.run_dir(run_id)
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
            finished.append(
                FinishedRun(run_id=run_id, path=path, spec=RunSpec.from_dict(config), metrics=metrics)
            )
        return finished, skipped
