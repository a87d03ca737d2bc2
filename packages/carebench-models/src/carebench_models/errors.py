"""Errors of the model layer that a user can fix (unknown model or config key, bad batch)."""

from __future__ import annotations


class CarebenchModelError(ValueError):
    """An unknown model name, an unknown or invalid config key, or a batch that breaks the contract."""

    exit_code = 2
