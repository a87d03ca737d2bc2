"""The trainer: `Trainer`, `TrainConfig`, `FitResult`, `PredictionArrays` (models.md §5)."""

from carebench_models.training.config import MonitorFn, TrainConfig
from carebench_models.training.metrics import accuracy, average_precision, default_monitor, macro_auprc
from carebench_models.training.trainer import (
    FitResult,
    PredictionArrays,
    ProgressFn,
    Trainer,
    resolve_device,
    seed_everything,
)

__all__ = [
    "FitResult",
    "MonitorFn",
    "PredictionArrays",
    "ProgressFn",
    "TrainConfig",
    "Trainer",
    "accuracy",
    "average_precision",
    "default_monitor",
    "macro_auprc",
    "resolve_device",
    "seed_everything",
]
