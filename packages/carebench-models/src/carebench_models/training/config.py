"""`TrainConfig`: the trainer protocol's knobs (models.md §5), defaults = the `paper` profile."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from carebench_models.errors import CarebenchModelError

MonitorFn = Callable[[np.ndarray, np.ndarray], float]
"""Validation metric `(y_true, proba) -> float`, higher is better (y_true as the batch's `y`)."""

_PROFILE_TRAIN = {
    "paper": {"max_epochs": 50, "patience": 10, "min_epochs": 4},
    "quick": {"max_epochs": 10, "patience": 3, "min_epochs": 1, "lr": 1e-3},
}
"""Trainer settings of each profile.

`paper` is CareBench's protocol (models.md §4: lr 1e-4, 50/10/4 epochs). `quick` deviates from it on
purpose: lr 1e-3 and 10 epochs with patience 3. Measured on the 5,000-stay synthetic demo, the small
quick CNN does not learn at lr 1e-4 within a CPU-sized run (a few hundred steps), so the image branch
and every fusion model collapse to the EHR-only result; at 1e-3 the planted image signal is recovered.
"""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How `Trainer` fits a model (models.md §5)."""

    lr: float = 1e-4
    """AdamW learning rate (CareBench: 1e-4; 4e-4 for `lstm`)."""
    weight_decay: float = 0.01
    """AdamW weight decay, stated explicitly (upstream got 0.01 from the PyTorch default)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    batch_size: int = 16
    """Training batch size."""
    eval_batch_size: int = 16
    """Validation and prediction batch size (dataset row order)."""
    max_epochs: int = 50
    """Epoch budget."""
    min_epochs: int = 4
    """No early stop before this many epochs."""
    patience: int = 10
    """Stop after this many epochs without strict improvement of the monitored metric."""
    scheduler_patience: int = 5
    """ReduceLROnPlateau patience (epochs) on the validation loss."""
    scheduler_factor: float = 0.5
    """ReduceLROnPlateau factor."""
    min_lr: float = 1e-6
    """ReduceLROnPlateau floor."""
    max_grad_norm: float | None = None
    """Gradient-norm clipping in the default step; None = off (as upstream)."""
    seed: int = 42
    """Seeds python, numpy, torch, the sample order and DataLoader workers."""
    deterministic: bool = True
    """cuDNN deterministic, benchmark off, `use_deterministic_algorithms(warn_only=True)`."""
    device: str = "auto"
    """`auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ..."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto` = bf16 autocast on CUDA, fp32 on CPU."""
    channels_last: bool | None = None
    """Convert the model's 4-d weights to channels_last; None = on CUDA only."""
    compile: bool = False
    """`torch.compile` each shared encoder module (dynamic batch dimension)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    monitor: MonitorFn | None = None
    """Validation metric, higher is better; None = macro AUPRC (accuracy for multiclass tasks)."""
    monitor_name: str | None = None
    """Name of `monitor` in logs; None = `val_auprc` / `val_accuracy` for the default."""
    checkpoint_path: Path | None = None
    """Where to save the best weights (safetensors) after fitting; None = keep them in memory only."""

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise CarebenchModelError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise CarebenchModelError("batch sizes must be >= 1")
        if self.max_epochs < 1 or self.min_epochs < 0 or self.patience < 1:
            raise CarebenchModelError("need max_epochs >= 1, min_epochs >= 0, patience >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise CarebenchModelError("need lr > 0 and weight_decay >= 0")

    @classmethod
    def for_profile(cls, profile: str = "quick", **overrides: Any) -> Self:
        """Settings of the profile, then overrides.

        `paper`: lr 1e-4, 50/10/4 max/patience/min epochs (models.md §4). `quick`: lr 1e-3, 10/3/1, a
        deliberate deviation from the spec (see `_PROFILE_TRAIN`).

        Raises:
            CarebenchModelError: unknown profile or key.
        """
        if profile not in _PROFILE_TRAIN:
            raise CarebenchModelError(f"unknown profile {profile!r}; valid profiles: paper, quick")
        valid = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise CarebenchModelError(
                f"unknown train config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}"
            )
        return cls(**{**_PROFILE_TRAIN[profile], **overrides})
