"""The run store of DESIGN §6: one directory per run, finished only when `DONE` exists.

```
<runs>/<run_id>/config.json  predictions.parquet  val_predictions.parquet  metrics.json
                 train_log.jsonl  model.safetensors  DONE
                 meds_predictions/<setting>/<task>.parquet   (binary tasks: meds-evaluation's layout)
<runs>/.<run_id>.lock        while a process trains the run
```

Every file is written atomically (temporary file in the same folder, then `os.replace`), and `DONE`
is written last. `DONE` lists the size and SHA-256 of every other file, and both are checked before a
finished run is skipped or reported (each file hashed once per process, cached by path, size and
modification time): a run directory whose files were changed, truncated or removed after the fact
counts as corrupt, is redone by `carebench run` and left out of the report. A directory without
`DONE` is partial (an interrupted run) and is redone from scratch.

A process trains a run only while it holds the run's lock (`carebench_data.locks`: host, pid and
heartbeat in `.<run_id>.lock`, created atomically), so two `carebench run` into one store, two
shards or two machines on a shared filesystem never train or delete the same run; a lock whose
process is gone is taken over.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from carebench_cli.errors import CliError
from carebench_cli.grid import RunSpec
from carebench_data.locks import FileLock, LockInfo, acquire_lock, live_holder
from carebench_data.outputs import OutputDirectoryError, use_umask

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
READ_FILES: tuple[str, ...] = (CONFIG_FILE, PREDICTIONS_FILE, VAL_PREDICTIONS_FILE, METRICS_FILE)
"""The files the report reads (and so verifies) of each finished run."""
_RUN_DIR = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[0-9a-f]{12}$")
_RUN_FILES = frozenset({*REQUIRED_FILES, DONE_FILE})


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


_HASHES: dict[tuple[str, int, int], str] = {}
"""SHA-256 of the files hashed by this process, by (path, size, mtime_ns): each is read once."""


def cached_sha256(path: Path, info: os.stat_result | None = None) -> str:
    """`sha256_file`, computed once per process for a file whose size and modification time are unchanged.

    `info` is the file's `stat()` when the caller has it already.
    """
    info = info or path.stat()
    key = (os.fspath(path.absolute()), info.st_size, info.st_mtime_ns)
    digest = _HASHES.get(key)
    if digest is None:
        digest = _HASHES[key] = sha256_file(path)
    return digest


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null (JSON has neither), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp_path = Path(temporary)
    try:
        yield temp_path
        use_umask(temp_path)  # mkstemp makes 0600 files; results are as readable as any other output
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically: sorted keys, 2-space indent, trailing newline, NaN as null."""
    atomic_write_text(path, json.dumps(_json_safe(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


class RunWriter:
    """Writes the files of one run; `finish()` writes `DONE` last."""

    def __init__(
        self, path: Path, spec: RunSpec, *, lock: FileLock | None = None, on_finish: Any = None
    ) -> None:
        self.path = path
        self.spec = spec
        self.optional: list[str] = []
        self._lock = lock
        self._on_finish = on_finish
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
        """Check that every required file exists, then write `DONE` (with sizes and hashes of every file) last.

        Raises:
            RunLockLostError: another process took the run's lock over meanwhile (nothing is marked done).
        """
        missing = [name for name in REQUIRED_FILES if not (self.path / name).is_file()]
        if missing:
            raise RuntimeError(f"run {self.spec.run_id} cannot finish: missing {missing}")
        if self._lock is not None and not self._lock.owned():
            raise RunLockLostError(
                f"run {self.spec.run_id}: another process took over its lock {self._lock.path}; "
                "this process leaves the run to it"
            )
        files = {
            name: {"bytes": (self.path / name).stat().st_size, "sha256": cached_sha256(self.path / name)}
            for name in (*REQUIRED_FILES, *self.optional)
        }
        write_json(self.path / DONE_FILE, {"run_id": self.spec.run_id, "files": files})
        if self._on_finish is not None:
            self._on_finish()


class RunLockLostError(CliError):
    """The lock of a run was taken over by another process while this one trained it (one line, exit 1)."""


def _is_run_dir(path: Path, run_id: str) -> bool:
    """Whether `path` is run `run_id`'s directory.

    It is when its config.json names the run, or when it holds only what runs write (their files and
    the `meds_predictions/` folder).
    """
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        if json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))["run_id"] == run_id:
            return True
    for entry in path.iterdir():
        name = entry.name
        temporary = name.startswith(".") and name.endswith(".tmp")
        if entry.is_dir() and name == MEDS_PREDICTIONS_DIR:
            continue
        if not entry.is_file() or not (name in _RUN_FILES or temporary):
            return False
    return True


class RunStore:
    """The run directories under one root, and the locks of the runs this object's process trains."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._held: dict[str, FileLock] = {}

    def run_dir(self, run_id: str) -> Path:
        """`<root>/<run_id>`."""
        return self.root / run_id

    def lock_path(self, run_id: str) -> Path:
        """`<root>/.<run_id>.lock`, present while a process trains the run."""
        return self.root / f".{run_id}.lock"

    def run_ids(self) -> list[str]:
        """Names of the run directories present (any state), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _RUN_DIR.match(p.name))

    def status(
        self, run_id: str, *, verify_hashes: bool = True, files: Collection[str] | None = None
    ) -> RunStatus:
        """ABSENT, PARTIAL (no `DONE`), CORRUPT (`DONE` does not match the files) or DONE.

        Sizes are always checked; with `verify_hashes` (the default) the SHA-256 of `files` (default:
        all) too, each file hashed once per process while its size and modification time stay the same.
        """
        path = self.run_dir(run_id)
        if not path.is_dir():
            return RunStatus.ABSENT
        done = path / DONE_FILE
        if not done.is_file():
            return RunStatus.PARTIAL
        try:
            marker = json.loads(done.read_text(encoding="utf-8"))
            listed = marker["files"]
            if marker["run_id"] != run_id or set(REQUIRED_FILES) - set(listed):
                return RunStatus.CORRUPT
            for name, info in listed.items():
                file = path / name
                found = file.stat()
                if not stat.S_ISREG(found.st_mode) or found.st_size != info["bytes"]:
                    return RunStatus.CORRUPT
                checked = files is None or name in files
                if verify_hashes and checked and cached_sha256(file, found) != info["sha256"]:
                    logger.warning("run %s: %s differs from its hash in DONE", run_id, name)
                    return RunStatus.CORRUPT
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            if RunSpec.from_dict(config).run_id != run_id:
                return RunStatus.CORRUPT
        except (ValueError, KeyError, TypeError, OSError):
            return RunStatus.CORRUPT
        return RunStatus.DONE

    def holder(self, run_id: str) -> LockInfo | None:
        """The live process (host, pid) that trains `run_id` now, if any; None also for a stale lock."""
        if run_id in self._held:
            return self._held[run_id].info
        return live_holder(self.lock_path(run_id))

    def claim(self, run_id: str) -> FileLock:
        """Take the run's lock (a stale one is taken over, with a logged warning); re-entrant.

        Raises:
            LockHeldError: another live process trains the run.
        """
        held = self._held.get(run_id)
        if held is not None and not held.lost:
            return held
        self.root.mkdir(parents=True, exist_ok=True)
        lock = acquire_lock(self.lock_path(run_id), purpose=f"carebench run {run_id}")
        self._held[run_id] = lock
        return lock

    def release(self, run_id: str) -> None:
        """Release the run's lock if this store holds it."""
        lock = self._held.pop(run_id, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        """Release every lock this store holds (on exit, interruption or SIGTERM)."""
        for run_id in list(self._held):
            self.release(run_id)

    def start(self, spec: RunSpec) -> RunWriter:
        """Begin (or redo) a run under its lock: remove a partial or corrupt directory, write `config.json`.

        The lock is taken here unless the caller already `claim`ed it; `RunWriter.finish` releases it
        (after an error, `release` does).

        Raises:
            LockHeldError: another live process trains the run.
            OutputDirectoryError: the run's directory holds files that no run writes (left untouched).
        """
        lock = self.claim(spec.run_id)
        path = self.run_dir(spec.run_id)
        if path.exists():
            if not path.is_dir() or not _is_run_dir(path, spec.run_id):
                raise OutputDirectoryError(
                    f"{path} holds files that carebench runs do not write; move them away to redo the run"
                )
            logger.info("removing unfinished run directory %s", path)
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return RunWriter(path, spec, lock=lock, on_finish=lambda: self.release(spec.run_id))

    def finished(
        self, *, verify_hashes: bool = True, files: Collection[str] | None = None
    ) -> tuple[list[FinishedRun], dict[str, RunStatus]]:
        """The finished runs, and the status of every other run directory (left out, logged).

        Args:
            verify_hashes: check the SHA-256 of `files` against `DONE` (cached per process).
            files: which files to hash (default: all); sizes of all are checked regardless.

        Returns:
            (finished runs sorted by run id, {run_id: PARTIAL or CORRUPT}).
        """
        finished: list[FinishedRun] = []
        skipped: dict[str, RunStatus] = {}
        for run_id in self.run_ids():
            status = self.status(run_id, verify_hashes=verify_hashes, files=files)
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
