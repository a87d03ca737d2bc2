"""One place that turns known errors into one clear line and an exit code (STYLE.md: CLI)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

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
    """Error types of the libraries that carry a user-facing message (imported lazily)."""
    known: list[type[BaseException]] = [CliError, FileNotFoundError, PermissionError]
    try:
        from carebench_eval import PredictionsError

        known.append(PredictionsError)
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
    return USAGE_EXIT if isinstance(error, ValueError | FileNotFoundError) else FAILURE_EXIT


def fail(message: str, *, exit_code: int = FAILURE_EXIT) -> typer.Exit:
    """Print `message` as one line on stderr and return the Exit to raise."""
    _stderr.print(f"[bold red]error:[/] {message}")
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
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise fail(message, exit_code=exit_code_for(error)) from None
        except KeyboardInterrupt:
            _stderr.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper
