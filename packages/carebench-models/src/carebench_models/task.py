"""Prediction tasks as data: the kind decides the loss and the probability function.

Models never branch on the task name (models.md §2). A `TaskSpec` is built from the dataset's
manifest by the CLI (or by hand), so this module does not import carebench_data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from carebench_models.errors import CarebenchModelError

TaskKind = Literal["binary", "multilabel", "multiclass"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task.

    Attributes:
        name: task name as written to the predictions file (`mortality`, `phenotype`, `los`, ...).
        kind: `binary` (K = 1), `multilabel` (K independent labels) or `multiclass` (K classes).
        num_outputs: K, the width of the logits.
        label_names: K names: the label (binary, multilabel) or class (multiclass) of each output.
    """

    name: str
    kind: TaskKind
    num_outputs: int
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(str(label) for label in self.label_names))
        if self.kind not in TASK_KINDS:
            raise CarebenchModelError(f"task kind must be one of {', '.join(TASK_KINDS)}, got {self.kind!r}")
        if self.num_outputs < 1:
            raise CarebenchModelError(f"task {self.name!r}: num_outputs must be >= 1, got {self.num_outputs}")
        if self.kind == "binary" and self.num_outputs != 1:
            raise CarebenchModelError(
                f"binary task {self.name!r} must have num_outputs=1, got {self.num_outputs}"
            )
        if self.kind == "multiclass" and self.num_outputs < 2:
            raise CarebenchModelError(f"multiclass task {self.name!r} needs at least 2 classes")
        if len(self.label_names) != self.num_outputs:
            raise CarebenchModelError(
                f"task {self.name!r}: {len(self.label_names)} label names for {self.num_outputs} outputs"
            )

    @classmethod
    def from_info(cls, info: object) -> TaskSpec:
        """Build a spec from any object with `name`, `kind`, `num_outputs`, `label_names` attributes.

        This accepts `carebench_data.tasks.TaskInfo` without importing carebench_data.
        """
        return cls(
            name=info.name,  # type: ignore[attr-defined]
            kind=info.kind,  # type: ignore[attr-defined]
            num_outputs=int(info.num_outputs),  # type: ignore[attr-defined]
            label_names=tuple(info.label_names),  # type: ignore[attr-defined]
        )

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean task loss in float32.

        Args:
            logits: float [B, K].
            y: float32 [B, K] 0/1 targets (binary, multilabel) or int64 [B] class indices (multiclass).

        Returns:
            Scalar: BCE-with-logits averaged over B×K, or cross-entropy averaged over B.
        """
        self.check_targets(logits, y)
        logits = logits.float()
        if self.kind == "multiclass":
            return F.cross_entropy(logits, y.long())
        return F.binary_cross_entropy_with_logits(logits, y.float().reshape(logits.shape))

    def check_targets(self, logits: Tensor, y: Tensor) -> None:
        """Raise `CarebenchModelError` unless `y` has this task's layout for `logits` [B, K] (shapes only, no sync)."""
        rows = logits.shape[0]
        if logits.ndim != 2 or logits.shape[1] != self.num_outputs:
            raise CarebenchModelError(
                f"task {self.name!r} expects logits [B, {self.num_outputs}], got {tuple(logits.shape)}"
            )
        if self.kind == "multiclass":
            if y.ndim != 1 or y.shape[0] != rows or y.is_floating_point():
                raise CarebenchModelError(
                    f"multiclass task {self.name!r} expects y as int64 class indices [B={rows}], "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
        elif y.numel() != rows * self.num_outputs:
            raise CarebenchModelError(
                f"{self.kind} task {self.name!r} expects y float32 [B={rows}, K={self.num_outputs}], got {tuple(y.shape)}"
            )

    def per_sample_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Loss of each row, float32 [B]; multilabel rows average over their K labels."""
        self.check_targets(logits, y)
        logits = logits.float()
        if self.kind == "multiclass":
            return F.cross_entropy(logits, y.long(), reduction="none")
        elementwise = F.binary_cross_entropy_with_logits(
            logits, y.float().reshape(logits.shape), reduction="none"
        )
        return elementwise.mean(dim=1)

    def proba(self, logits: Tensor) -> Tensor:
        """Probabilities float32 [B, K]: sigmoid per output, or softmax over the K classes."""
        logits = logits.float()
        if self.kind == "multiclass":
            return torch.softmax(logits, dim=1)
        return torch.sigmoid(logits)

    def correct_label_proba(self, logits: Tensor, y: Tensor) -> Tensor:
        """Probability the model gives to the true label of each row, float32 [B] (a confidence score).

        Binary and multilabel: mean over the K labels of `y·p + (1 − y)(1 − p)` with `p = sigmoid`;
        multiclass: the softmax probability of the true class.
        """
        self.check_targets(logits, y)
        proba = self.proba(logits)
        if self.kind == "multiclass":
            return proba.gather(1, y.long().reshape(-1, 1)).squeeze(1)
        target = y.float().reshape(proba.shape)
        return (target * proba + (1 - target) * (1 - proba)).mean(dim=1)

    def one_hot(self, y: Tensor) -> Tensor:
        """Targets as float32 [B, K] 0/1 for every kind (multiclass: one-hot of the class index)."""
        if self.kind == "multiclass":
            return F.one_hot(y.long(), self.num_outputs).float()
        return y.float().reshape(-1, self.num_outputs)
