"""Lock files that hold across processes and machines on a shared filesystem, without `flock`.

A lock is a small JSON file created atomically (`O_CREAT | O_EXCL`) that names its holder: host,
pid (and, on Linux, the pid's start time, so that a reused pid is not mistaken for the holder),
start time, a heartbeat that a background thread refreshes every `HEARTBEAT_SECONDS`, a random
token and what the lock is for. Another process finds the lock held while its holder is alive:

- same host: the pid still runs (and is the same process);
- another host: the heartbeat is younger than `stale_after` seconds (default `STALE_AFTER_SECONDS`).

A lock whose holder is gone is stale and is taken over, with a warning. Two processes that find the
same stale lock break it under a second exclusive file (`<lock>.break`) after checking it again, so
only one of them takes it over. Release removes the file only while it still carries our token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from carebench_data.errors import CarebenchDataError

__all__ = [
    "HEARTBEAT_SECONDS",
    "STALE_AFTER_SECONDS",
    "FileLock",
    "LockHeldError",
    "LockInfo",
    "acquire_lock",
    "live_holder",
    "lock_holder",
]

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
"""How often a held lock's heartbeat is refreshed."""
STALE_AFTER_SECONDS = 300.0
"""A lock of another host whose heartbeat is older than this counts as abandoned."""
_BREAK_STALE_SECONDS = 60.0
"""A `<lock>.break` file older than this was left by a process that died while breaking a lock."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock (the JSON content of the lock file)."""

    host: str
    pid: int
    started: float
    """Unix time when the lock was taken."""
    heartbeat: float
    """Unix time of the holder's last sign of life."""
    token: str
    purpose: str = ""
    pid_start: int | None = None
    """Start time of the holder's process in clock ticks since boot (Linux), to detect a reused pid."""

    def describe(self) -> str:
        """`pid 123 on host-a since 2025-01-01 10:00:00 UTC`."""
        since = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {self.pid} on {self.host} since {since}"


class LockHeldError(CarebenchDataError):
    """Another live process holds the lock.

    Attributes:
        holder: who holds it.
        path: the lock file.
    """

    def __init__(self, message: str, *, holder: LockInfo, path: Path) -> None:
        super().__init__(message)
        self.holder = holder
        self.path = path


def _process_start(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_alive(pid: int, pid_start: int | None) -> bool:
    """Whether `pid` runs on this host and is the process that took the lock (not a zombie)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    if pid_start is not None:
        current = _process_start(pid)
        if current is not None and current != pid_start:
            return False  # the pid was reused by another process
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            state = next(line for line in handle if line.startswith("State:"))
    except (OSError, StopIteration):
        return True  # no /proc: the signal check above is all there is
    return state.split()[1:2] != ["Z"]


def _read(path: Path) -> tuple[LockInfo | None, float] | None:
    """(holder, file mtime), holder None when the file cannot be parsed; None when there is no file."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return None, time.time()
    stripped = text.strip()
    if stripped.isdigit():  # the pid-only lock files of earlier carebench versions
        pid = int(stripped)
        return LockInfo(host=socket.gethostname(), pid=pid, started=mtime, heartbeat=mtime, token=""), mtime
    try:
        data = json.loads(text)
        return (
            LockInfo(
                host=str(data["host"]),
                pid=int(data["pid"]),
                started=float(data["started"]),
                heartbeat=float(data["heartbeat"]),
                token=str(data["token"]),
                purpose=str(data.get("purpose", "")),
                pid_start=None if data.get("pid_start") is None else int(data["pid_start"]),
            ),
            mtime,
        )
    except (ValueError, KeyError, TypeError):
        return None, mtime


def lock_holder(path: Path) -> LockInfo | None:
    """Who holds the lock at `path` (None: no lock file, or one still being written)."""
    found = _read(Path(path))
    return None if found is None else found[0]


def live_holder(path: Path, *, stale_after: float = STALE_AFTER_SECONDS) -> LockInfo | None:
    """The live holder of the lock at `path`; None when there is no lock or its holder is gone."""
    found = _read(Path(path))
    if found is None or _is_stale(found[0], found[1], stale_after=stale_after):
        return None
    holder, mtime = found
    return holder or LockInfo(host="?", pid=0, started=mtime, heartbeat=mtime, token="")


def _is_stale(holder: LockInfo | None, mtime: float, *, stale_after: float) -> bool:
    if holder is None:  # unreadable: a holder that died between creating and writing it, or one writing now
        return time.time() - mtime > stale_after
    if holder.host == socket.gethostname():
        return not _process_alive(holder.pid, holder.pid_start)
    return time.time() - holder.heartbeat > stale_after


class _Heartbeat:
    """One daemon thread per process that refreshes the heartbeat of every lock the process holds."""

    def __init__(self) -> None:
        self._locks: set[FileLock] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, lock: FileLock) -> None:
        with self._guard:
            self._locks.add(lock)
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._loop, name="carebench-lock-heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, lock: FileLock) -> None:
        with self._guard:
            self._locks.discard(lock)

    def _loop(self) -> None:
        while True:
            locks = self._snapshot()
            time.sleep(min([1.0, *(lock.heartbeat_seconds for lock in locks)]))
            for lock in locks:
                if time.time() - lock.info.heartbeat >= lock.heartbeat_seconds:
                    lock.refresh()

    def _snapshot(self) -> list[FileLock]:
        with self._guard:
            return list(self._locks)


_HEARTBEAT = _Heartbeat()


class FileLock:
    """A held lock file; `release()` (or leaving the `with` block) removes it.

    Attributes:
        path: the lock file.
        info: what the lock file says (its heartbeat advances while the lock is held).
        taken_over: the dead holder whose stale lock this one replaced, if any.
    """

    def __init__(
        self,
        path: Path,
        info: LockInfo,
        *,
        heartbeat_seconds: float,
        taken_over: LockInfo | None = None,
    ) -> None:
        self.path = path
        self.info = info
        self.heartbeat_seconds = heartbeat_seconds
        self.taken_over = taken_over
        self.lost = False
        self._state = threading.Lock()

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def owned(self) -> bool:
        """Whether the lock file still carries this lock's token (false after release or a takeover)."""
        holder = lock_holder(self.path)
        return holder is not None and holder.token == self.info.token

    def refresh(self) -> None:
        """Advance the heartbeat in the file (rewritten atomically) while it still carries our token."""
        with self._state:
            if self.lost:
                return
            if not self.owned():
                self.lost = True
                _HEARTBEAT.remove(self)
                logger.warning("lost the lock %s to another process", self.path)
                return
            self.info = LockInfo(**{**asdict(self.info), "heartbeat": time.time()})
            temporary = self.path.with_name(f"{self.path.name}.{self.info.token}.tmp")
            try:
                temporary.write_text(json.dumps(asdict(self.info), sort_keys=True) + "\n", encoding="utf-8")
                os.replace(temporary, self.path)
            except OSError as error:  # a full or unreachable disk: try again at the next beat
                logger.warning("cannot refresh the lock %s: %s", self.path, error)
                temporary.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file if it is still ours; idempotent."""
        with self._state:
            _HEARTBEAT.remove(self)
            if not self.lost and self.owned():
                self.path.unlink(missing_ok=True)
            self.lost = True


def _break(path: Path, seen: LockInfo | None, *, stale_after: float) -> bool:
    """Remove the stale lock at `path` if it is still the one judged stale; True if it is gone."""
    breaker = path.with_name(f"{path.name}.break")
    try:
        descriptor = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - breaker.stat().st_mtime > _BREAK_STALE_SECONDS:
                breaker.unlink()
        return False
    os.close(descriptor)
    try:
        found = _read(path)
        if found is None:
            return True
        holder, mtime = found
        same = (holder is None and seen is None) or (
            holder is not None and seen is not None and holder.token == seen.token
        )
        if same and _is_stale(holder, mtime, stale_after=stale_after):
            path.unlink(missing_ok=True)
            return True
        return False
    finally:
        breaker.unlink(missing_ok=True)


def acquire_lock(
    path: Path,
    *,
    purpose: str,
    stale_after: float = STALE_AFTER_SECONDS,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> FileLock:
    """Take the lock at `path`, taking over a stale one (with a logged warning).

    Args:
        path: the lock file (its folder must exist).
        purpose: what the lock guards, recorded in the file (e.g. `build /data/carebench-v1`).
        stale_after: seconds without a heartbeat after which another host's lock is abandoned.
        heartbeat_seconds: how often the holder's heartbeat is refreshed.

    Returns:
        The held lock.

    Raises:
        LockHeldError: a live process holds it (the message names host, pid and start time).
    """
    path = Path(path)
    taken_over: LockInfo | None = None
    for _ in range(5):
        now = time.time()
        info = LockInfo(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=now,
            heartbeat=now,
            token=secrets.token_hex(8),
            purpose=purpose,
            pid_start=_process_start(os.getpid()),
        )
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            found = _read(path)
            if found is None:
                continue  # released meanwhile: try again
            holder, mtime = found
            if not _is_stale(holder, mtime, stale_after=stale_after):
                shown = holder or LockInfo(host="?", pid=0, started=mtime, heartbeat=mtime, token="")
                raise LockHeldError(
                    f"{path} is held by {shown.describe()}"
                    + (f" ({shown.purpose})" if shown.purpose else ""),
                    holder=shown,
                    path=path,
                ) from None
            if _break(path, holder, stale_after=stale_after):
                taken_over = holder or LockInfo(host="?", pid=0, started=mtime, heartbeat=mtime, token="")
                logger.warning(
                    "taking over the lock %s of %s: that process is gone", path, taken_over.describe()
                )
            else:
                time.sleep(0.05)
            continue
        try:
            os.write(descriptor, (json.dumps(asdict(info), sort_keys=True) + "\n").encode())
            os.fsync(descriptor)
        except BaseException:
            os.close(descriptor)
            path.unlink(missing_ok=True)
            raise
        os.close(descriptor)
        lock = FileLock(path, info, heartbeat_seconds=heartbeat_seconds, taken_over=taken_over)
        _HEARTBEAT.add(lock)
        return lock
    found = _read(path)
    holder = found[0] if found else None
    shown = holder or LockInfo(host="?", pid=0, started=time.time(), heartbeat=time.time(), token="")
    raise LockHeldError(f"{path} is held by {shown.describe()}", holder=shown, path=path)
