"""Output directories that are safe to write: never an input, never someone else's folder.

Every carebench command that creates or replaces a directory (`data build`, `data synth`,
`data convert`, `run`, `report`) goes through `check_output_dir` first:

- the output may not be an input root, lie inside one or contain one (paths are compared after
  resolving symbolic links), so `--out <the MIMIC-CXR root>` is refused before anything is written;
- an existing output must be a directory;
- an existing, non-empty output is replaced only when it is carebench's own kind of directory
  (`is_ours`: a dataset whose manifest says so, a report, a synthetic tree), never an unrelated folder.

`atomic_directory` then writes the new directory beside the target and swaps it in under a lock
(`carebench_data.locks`): a killed writer leaves a stale lock, which the next run takes over, and
partial directories, which it removes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from carebench_data.errors import CarebenchDataError
from carebench_data.locks import acquire_lock

__all__ = [
    "OutputDirectoryError",
    "atomic_directory",
    "check_output_dir",
    "current_umask",
    "is_empty_dir",
    "use_umask",
]

logger = logging.getLogger(__name__)

_WAIT_SECONDS = 0.5


class OutputDirectoryError(CarebenchDataError):
    """The output directory is an input, lies inside or around one, is a file, or is not carebench's."""


class DatasetExistsError(OutputDirectoryError):
    """The target directory exists (pass overwrite to replace it) or is being written by another process."""


def current_umask() -> int:
    """The process umask (read from /proc on Linux, so no other thread sees it change)."""
    with (
        contextlib.suppress(OSError, ValueError, StopIteration),
        open("/proc/self/status", encoding="ascii") as handle,
    ):
        return int(next(line for line in handle if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def use_umask(path: Path, *, directory: bool = False) -> None:
    """Give a file made by `tempfile` (0600, directories 0700) the permissions a plain `open` would."""
    path.chmod((0o777 if directory else 0o666) & ~current_umask())


def is_empty_dir(path: Path) -> bool:
    """True for an existing directory without entries."""
    return path.is_dir() and next(path.iterdir(), None) is None


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output_dir(
    target: Path,
    *,
    inputs: Sequence[Path | None] = (),
    replace: bool = False,
    is_ours: Callable[[Path], bool] = is_empty_dir,
    what: str = "output",
) -> None:
    """Refuse an output directory that would destroy or mix with data that is not carebench's own.

    Args:
        target: the directory to create or replace.
        inputs: input roots (None entries are skipped) that the output may not be, lie in or contain.
        replace: the caller will replace an existing `target`; then it must be empty or `is_ours`.
        is_ours: whether an existing non-empty directory is one carebench wrote of the kind at hand.
        what: the kind of directory, for messages (`dataset`, `report`, `run store`).

    Raises:
        OutputDirectoryError: one line naming the output, the conflict and what to do instead.
    """
    resolved = Path(target).resolve()
    for given in inputs:
        if given is None:
            continue
        root = Path(given).resolve()
        if _within(resolved, root):
            place = "is" if resolved == root else "lies inside"
            raise OutputDirectoryError(
                f"{what} {target} {place} the input {given}; write it to a directory outside the inputs"
            )
        if _within(root, resolved):
            raise OutputDirectoryError(
                f"{what} {target} contains the input {given}; write it to a directory outside the inputs"
            )
    if not (target.exists() or target.is_symlink()):
        return
    if not target.is_dir():
        raise OutputDirectoryError(f"{what} {target} exists and is not a directory; choose a directory path")
    if replace and not is_empty_dir(target) and not is_ours(target):
        raise OutputDirectoryError(
            f"{target} exists and is not a carebench {what}; carebench replaces only its own {what} "
            "directories: choose a new directory, or remove this one yourself"
        )


def _restore_interrupted_swap(target: Path) -> None:
    """A writer killed between moving the old directory aside and renaming the new one in: put it back."""
    if target.exists():
        return
    asides = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda path: path.stat().st_mtime)
    if asides:
        logger.warning("restoring %s from %s (a previous write was interrupted)", target, asides[-1])
        os.replace(asides[-1], target)


def _sweep(target: Path) -> None:
    """Remove partial and set-aside directories that a killed writer of `target` left behind."""
    for pattern in (f".{target.name}.partial-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            logger.warning("removing %s, left by an interrupted write of %s", stale, target.name)
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(
    target: Path,
    *,
    overwrite: bool,
    is_ours: Callable[[Path], bool] = is_empty_dir,
    inputs: Sequence[Path | None] = (),
    what: str = "output",
    exists_hint: str = "pass --overwrite (build.overwrite = true) to replace it",
    wait: bool = False,
) -> Iterator[Path]:
    """Yield a partial directory next to `target`; on success swap it in, on error delete it.

    The lock `.<name>.lock` beside the target (`carebench_data.locks`: host, pid, heartbeat) keeps two
    writers of one target apart; a lock whose process is gone is taken over with a warning. Under the
    lock, a target lost by a writer killed mid-swap is restored and stale partial directories are
    removed. An existing target is an error unless `overwrite`; then it must be empty or `is_ours`,
    and it is moved aside and deleted only after the new directory is in place.

    Args:
        target: the directory to write.
        overwrite: replace an existing target.
        is_ours: whether an existing target is carebench's own kind of directory (see `check_output_dir`).
        inputs: input roots the target may not be, lie in or contain.
        what: the kind of directory, for messages.
        exists_hint: what the "already exists" error tells the user to do.
        wait: wait while another live process writes the target (then replace its result) instead of
            failing; for outputs that any writer would write alike, such as a report.

    Raises:
        OutputDirectoryError: the target conflicts with an input, is a file, or is not carebench's.
        DatasetExistsError: the target exists and `overwrite` is false, or another writer holds the lock.
    """
    from carebench_data.locks import LockHeldError

    target = Path(target).absolute()
    check_output_dir(target, inputs=inputs, replace=overwrite, is_ours=is_ours, what=what)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            lock = acquire_lock(parent / f".{target.name}.lock", purpose=f"write {target}")
            break
        except LockHeldError as held:
            if not wait:
                raise DatasetExistsError(f"another process is writing {target}: {held}") from None
            time.sleep(_WAIT_SECONDS)
    with lock:
        _restore_interrupted_swap(target)
        _sweep(target)
        if target.exists():
            if not overwrite:
                raise DatasetExistsError(f"{target} already exists; {exists_hint}")
            check_output_dir(target, replace=True, is_ours=is_ours, what=what)
        partial = parent / f".{target.name}.partial-{secrets.token_hex(4)}"
        partial.mkdir()
        try:
            yield partial
            _sync_directory(partial)
            if target.exists():
                aside = parent / f".{target.name}.old-{secrets.token_hex(4)}"
                os.replace(target, aside)
                os.replace(partial, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(partial, target)
            _sync_directory(parent)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise


def _sync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
