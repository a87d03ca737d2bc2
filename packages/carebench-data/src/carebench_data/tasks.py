"""Task metadata read from a dataset's ``manifest.json["labels"]["tasks"]`` (DESIGN §3).

A task is data, not a branch in code: its kind decides the target layout, loss and probabilities.

| kind | ``y`` in a batch | ``num_outputs`` |
|---|---|---|
| ``binary`` | float32 [B, 1] | 1 |
| ``multilabel`` | float32 [B, K] | K label columns |
| ``multiclass`` | int64 [B] class index | number of class names |
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carebench_data.errors import CarebenchDataError

__all__ = ["TASK_KINDS", "TaskError", "TaskInfo", "read_manifest", "task_specs"]

TASK_KINDS = ("binary", "multilabel", "multiclass")
"""The task kinds the batch contract knows."""

_TASK_ORDER = ("mortality", "phenotype", "los")


class TaskError(CarebenchDataError):
    """A missing or malformed task block in a dataset manifest, or an unknown task name."""


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    """One prediction task of a dataset (plain data; models turn it into their own TaskSpec).

    Attributes:
        name: task name, e.g. ``"mortality"``.
        kind: ``binary``, ``multilabel`` or ``multiclass``.
        num_outputs: K, the width of the model's logits.
        label_names: K target names (binary/multilabel) or class names (multiclass), in output order.
        columns: the ``labels.parquet`` column(s) holding the targets: K columns for binary and
            multilabel, one class-index column for multiclass.
    """

    name: str
    kind: str
    num_outputs: int
    label_names: tuple[str, ...]
    columns: tuple[str, ...]


def read_manifest(dataset_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``<dataset_dir>/manifest.json`` as a dict, with an actionable error when absent."""
    path = Path(dataset_dir) / "manifest.json"
    if not path.is_file():
        raise TaskError(
            f"{path}: manifest not found; {Path(dataset_dir)} is not a carebench dataset directory "
            "(build one with `carebench data build` or `carebench data synth`)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TaskError(f"{path}: invalid JSON ({error}); the dataset directory is damaged.") from error
    if not isinstance(manifest, dict):
        raise TaskError(f"{path}: expected a JSON object.")
    return manifest


def _task_info(name: str, block: Mapping[str, Any], source: str) -> TaskInfo:
    """Validate one ``labels.tasks.<name>`` entry."""
    kind = block.get("kind")
    columns = tuple(block.get("columns") or ())
    label_names = tuple(block.get("label_names") or ())
    if kind not in TASK_KINDS:
        raise TaskError(
            f"{source}: task {name!r} has kind {kind!r}; expected one of {', '.join(TASK_KINDS)}."
        )
    if not columns or not label_names:
        raise TaskError(f"{source}: task {name!r} needs non-empty 'columns' and 'label_names'.")
    if kind == "multiclass":
        if len(columns) != 1:
            raise TaskError(f"{source}: multiclass task {name!r} needs exactly one class-index column.")
    elif len(columns) != len(label_names):
        raise TaskError(
            f"{source}: task {name!r} has {len(columns)} columns but {len(label_names)} label names."
        )
    if kind == "binary" and len(columns) != 1:
        raise TaskError(f"{source}: binary task {name!r} needs exactly one column.")
    return TaskInfo(
        name=name, kind=kind, num_outputs=len(label_names), label_names=label_names, columns=columns
    )


def task_specs(dataset_dir: str | os.PathLike[str]) -> dict[str, TaskInfo]:
    """All tasks of a dataset directory, from ``manifest.json["labels"]["tasks"]``.

    Args:
        dataset_dir: a carebench dataset directory (DESIGN §1).

    Returns:
        ``{task name: TaskInfo}`` in DESIGN §3 order (then any other task by name), e.g. ``mortality`` (binary, K=1), ``phenotype``
        (multilabel, K=25), ``los`` (multiclass, K=7).
    """
    source = str(Path(dataset_dir) / "manifest.json")
    manifest = read_manifest(dataset_dir)
    tasks = (manifest.get("labels") or {}).get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise TaskError(
            f"{source}: no 'labels.tasks' block; rebuild the dataset with this carebench version."
        )
    ordered = sorted(
        tasks, key=lambda name: (_TASK_ORDER.index(name) if name in _TASK_ORDER else len(_TASK_ORDER), name)
    )
    return {name: _task_info(name, tasks[name], source) for name in ordered}
