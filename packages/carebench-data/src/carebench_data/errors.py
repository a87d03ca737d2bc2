"""Errors of the data layer. Every message names the file (and column) and says how to fix it."""

from __future__ import annotations


class CarebenchDataError(Exception):
    """A problem with the raw inputs, the build configuration or a dataset directory.

    The command line prints the message as one line and exits with `exit_code` (2: bad input).
    """

    exit_code = 2
