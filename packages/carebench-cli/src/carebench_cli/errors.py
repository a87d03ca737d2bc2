"""One place that turns known errors into one clear line and an exit code (STYLE.md: CLI)."""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

P = ParamSpec("P")
R = TypeVar("R")

DEBUG_ENV = "CAREBENCH_DEBUG"
"""Set this environment variable to 1 to see the full traceback of a known error."""

USAGE_EXIT = 2
FAILURE_EXIT = 1

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(Exception):
    """A failure the user can fix; printed as one line. `exit_code` 2 = usage, 1 = failure."""

    def __init__(self, message: str, *, exit_code: int = FAILURE_EXIT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _known_errors() -> tuple[type[BaseException], ...]:
    """Error types that carry a user-facing message: the libraries' (imported lazily) and the system's.

    `OSError` covers what the machine refuses: a missing or unreadable file, a full disk, a file past
    the size limit (EFBIG), a read-only filesystem.
    """
    known: list[type[BaseException]] = [CliError, OSError]
    try:
        from carebench_eval import PredictionsError, PredictionsFileError

        known += [PredictionsError, PredictionsFileError]
    except ImportError:
        pass
    try:
        from carebench_data.errors import CarebenchDataError

        known.append(CarebenchDataError)
    except ImportError:
        pass
    try:
        from carebench_models.errors import CarebenchModelError

        known.append(CarebenchModelError)
    except ImportError:
        pass
    return tuple(known)


def exit_code_for(error: BaseException) -> int:
    """Usage errors (bad input the user passed) exit 2, everything else 1."""
    if isinstance(error, CliError):
        return error.exit_code
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        return code
    return USAGE_EXIT if isinstance(error, ValueError | OSError) else FAILURE_EXIT


_OS_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file grew past the file-size limit (ulimit -f)",
    errno.EROFS: "the filesystem is read-only",
}


def error_line(error: BaseException) -> str:
    """The one line shown for a known error: its message's first line, or what the system refused."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror + (f": {error.filename}" if error.filename else "")
        hint = _OS_HINTS.get(error.errno or 0)
        return f"{text}; {hint}" if hint else text
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def fail(message: str, *, exit_code: int = FAILURE_EXIT) -> typer.Exit:
    """Print `message` as one line on stderr and return the Exit to raise."""
    _stderr.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(exit_code)


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command so that known errors print one line and exit non-zero, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except _known_errors() as error:
            if os.environ.get(DEBUG_ENV):
                raise
            raise fail(error_line(error), exit_code=exit_code_for(error)) from None
        except KeyboardInterrupt:
            _stderr.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper
