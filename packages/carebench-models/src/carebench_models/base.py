"""The model contract (DESIGN.md §4, models.md §2): `FusionModel`, `ModelOutput`, `TrainState`.

A model implements `forward(batch) -> ModelOutput`; everything else has a default. Training-time
extras (several optimisers, per-epoch statistics, a warm-up sample order, training stages) are
optional hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from carebench_models.config import CommonConfig
from carebench_models.task import TaskSpec

if TYPE_CHECKING:
    from carebench_models.training.config import TrainConfig

Batch = Mapping[str, Tensor]
"""A batch dict of DESIGN.md §2: ehr, ehr_mask, cxr, has_ehr, has_cxr, cxr_hours, y (optional), stay_id."""
SampleOrder = Literal["shuffle", "modality_count_desc"]
StepLog = dict[str, "float | Tensor"]
StageRows = Literal["all", "paired"]


@dataclass(frozen=True)
class TrainingStage:
    """One stage of a staged training protocol (see `FusionModel.training_stages`).

    Attributes:
        name: the stage's name, passed to `FusionModel.set_training_stage` and logged with each of its
            epochs (`stage` in the training log).
        rows: `all` (every training and validation row) or `paired` (only the rows with a CXR, for a
            stage that trains the image side alone).
    """

    name: str
    rows: StageRows = "all"


@dataclass
class ModelOutput:
    """What `forward` returns.

    Attributes:
        logits: float32 [B, K]; never passed through a sigmoid or softmax.
        aux_losses: named, already weighted scalar losses that training adds to the task loss.
    """

    logits: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class TrainState:
    """Per-run training state handed to `training_step` and the epoch hooks.

    Attributes:
        epoch: current epoch (0-based).
        global_step: optimiser steps taken so far (batches).
        max_epochs: the epoch budget of the run.
        device: device the model and batches live on.
        amp_dtype: autocast dtype (torch.bfloat16 on CUDA) or None for float32.
        generator: seeded CPU generator for any randomness a hook or step needs.
        max_grad_norm: gradient-norm clip applied by the default step, or None (off, as upstream).
        extra: per-run statistics that are not part of the model (FIM history, ACA sums).
    """

    epoch: int = 0
    global_step: int = 0
    max_epochs: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)
    max_grad_norm: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def autocast(self) -> torch.autocast:
        """Autocast context of this run (disabled when `amp_dtype` is None)."""
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.amp_dtype or torch.bfloat16,
            enabled=self.amp_dtype is not None,
        )


class FusionModel(nn.Module):
    """Base class of every carebench model.

    Subclasses implement `forward`. Class variables describe behaviour the trainer and the contract
    tests rely on: `eval_batch_dependent` (outputs depend on the other rows of the batch, M3Care) and
    `conditional_parameters` (dotted name prefixes of parameters that only get a gradient under a
    condition, e.g. AUG's boosting slots or MoE experts).
    """

    eval_batch_dependent: ClassVar[bool] = False
    conditional_parameters: ClassVar[tuple[str, ...]] = ()

    def __init__(self, task: TaskSpec, config: CommonConfig) -> None:
        super().__init__()
        self.task = task
        self.config = config

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits float32 [B, K] and weighted aux losses for one batch (see `Batch` for the keys)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch)")  # abstract

    def total_loss(self, output: ModelOutput, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Task loss plus every aux term, and the detached terms for logging.

        Returns:
            (loss scalar, {"loss": total, "task": task loss, "<aux name>": aux value, ...}), detached.
        """
        task_loss = self.task.loss(output.logits, y)
        loss = task_loss
        for value in output.aux_losses.values():
            loss = loss + value.float()
        logs = {"loss": loss.detach(), "task": task_loss.detach()}
        logs.update({name: value.detach().float() for name, value in output.aux_losses.items()})
        return loss, logs

    def training_step(
        self, batch: Batch, optimizers: list[torch.optim.Optimizer], state: TrainState
    ) -> StepLog:
        """One optimisation step: zero_grad, forward, task loss + Σ aux, backward, step.

        The trainer calls it inside the run's autocast context. Values of the returned dict are
        floats or detached scalar tensors (the trainer averages them with one sync per epoch).
        """
        optimizer = optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        output = self(batch)
        loss, logs = self.total_loss(output, batch["y"])
        loss.backward()
        if state.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters(), state.max_grad_norm)
        optimizer.step()
        return dict(logs)

    def predict_proba(self, batch: Batch) -> Tensor:
        """Probabilities float32 [B, K] under `inference_mode`; never toggles train/eval, needs no `y`."""
        with torch.inference_mode():
            return self.task.proba(self(batch).logits)

    def configure_optimizers(self, train_cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        """One AdamW over all trainable parameters with the run's lr, betas, eps and weight decay."""
        return [adamw(self.parameters(), train_cfg)]

    def prepare(self, train_batches: Iterable[Batch]) -> None:
        """Called once before training with the training batches in a fixed order (no-op by default)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Called before each training epoch (no-op by default)."""

    def on_epoch_end(self, state: TrainState, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """Called after each training epoch, before validation; returns values to log."""
        return {}

    def training_stages(self) -> tuple[TrainingStage, ...]:
        """The stages `Trainer.fit` runs in order; `()` (the default) is one ordinary fit.

        Each stage is a complete fit of its own: fresh optimisers and schedulers from
        `configure_optimizers`, early stopping on the validation metric of that stage's outputs, and its
        best epoch reloaded before the next stage starts.
        """
        return ()

    def set_training_stage(self, stage: str | None) -> None:
        """Called by the trainer before each stage with its name, and with None after the last one.

        A staged model switches what `forward` computes here (e.g. a unimodal head while an encoder is
        pretrained); None restores the full model, which prediction uses. No-op by default.
        """

    def variant(self) -> str:
        """A short description of the method variant the config selects, for reports.

        Empty for models with a single form; models with a documented option (e.g. DAFT's direction)
        name the one that runs.
        """
        return ""

    def sample_order(self, epoch: int) -> SampleOrder:
        """Training order of the epoch: seeded `shuffle`, or `modality_count_desc` (paired rows first)."""
        return "shuffle"

    def is_conditional(self, parameter_name: str) -> bool:
        """Whether a parameter is listed (by itself or a parent module) in `conditional_parameters`."""
        return any(
            parameter_name == prefix or parameter_name.startswith(prefix + ".")
            for prefix in self.conditional_parameters
        )


def adamw(parameters: Iterable[nn.Parameter], train_cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable ones of `parameters` (duplicates dropped) with the run's lr, betas, eps, weight decay."""
    unique = list({id(p): p for p in parameters if p.requires_grad}.values())
    return torch.optim.AdamW(
        unique, lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps, weight_decay=train_cfg.weight_decay
    )


def reset_optimizer_state(optimizers: Iterable[torch.optim.Optimizer], parameters: Iterable[Tensor]) -> None:
    """Forget what every optimiser holds for `parameters` (AdamW moments and step count).

    The next step treats them as new parameters: for a layer re-initialised during training (AUG's
    boosting slots), stale moments from its previous life would otherwise drive its first updates.
    """
    chosen = list(parameters)
    for optimizer in optimizers:
        for parameter in chosen:
            optimizer.state.pop(parameter, None)
