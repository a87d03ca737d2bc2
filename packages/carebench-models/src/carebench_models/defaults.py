"""Bundled per-task defaults keyed by (model, task, cohort) (models.md §2), read from `resources/defaults.toml`.

The CareBench values in that file were tuned on test by CareBench; the file says so and
`TaskDefaults.source` carries the label into run configs.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from carebench_models.errors import CarebenchModelError

COHORTS = ("full", "paired")


@dataclass(frozen=True)
class TaskDefaults:
    """Defaults of one (model, task, cohort).

    Attributes:
        config: model config overrides (field name → value); empty when the file has none.
        train: `TrainConfig` overrides (e.g. `lr` for `lstm`).
        source: provenance label of the values.
    """

    config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@cache
def _table() -> dict[str, Any]:
    text = resources.files("carebench_models").joinpath("resources/defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def defaults_table() -> dict[str, Any]:
    """The whole parsed defaults file (model name → {"config": {task: {cohort: {...}}}, "train": {...}})."""
    return {name: value for name, value in _table().items() if isinstance(value, dict)}


def task_defaults(model: str, task: str, cohort: str = "full") -> TaskDefaults:
    """Bundled defaults of `model` on `task` and `cohort`; empty for combinations the file does not list.

    Raises:
        CarebenchModelError: unknown cohort.

    Example:
        >>> task_defaults("lstm", "mortality").train
        {'lr': 0.0004}
    """
    if cohort not in COHORTS:
        raise CarebenchModelError(f"cohort must be one of {', '.join(COHORTS)}, got {cohort!r}")
    entry = defaults_table().get(model, {})
    config = dict(entry.get("config", {}).get(task, {}).get(cohort, {}))
    return TaskDefaults(
        config=config, train=dict(entry.get("train", {})), source=str(_table().get("source", ""))
    )
