"""Unimodal baselines and EHR + CXR fusion models in plain PyTorch, with a shared trainer.

>>> from carebench_models import TaskSpec, create_model, available_models
>>> task = TaskSpec("mortality", "binary", 1, ("mortality",))
>>> model = create_model("latefusion", task=task, profile="quick")
"""

from carebench_models.base import Batch, FusionModel, ModelOutput, TrainingStage, TrainState
from carebench_models.config import CommonConfig, TransformerEHRConfig
from carebench_models.data import BatchDictDataset
from carebench_models.defaults import TaskDefaults, task_defaults
from carebench_models.errors import CarebenchModelError
from carebench_models.export import long_predictions
from carebench_models.registry import (
    ModelInfo,
    available_models,
    build_model,
    create_model,
    model_info,
    register_model,
)
from carebench_models.task import TaskSpec
from carebench_models.training import (
    FitResult,
    PredictionArrays,
    TrainConfig,
    Trainer,
    seed_everything,
)
from carebench_models.weights import load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BatchDictDataset",
    "CarebenchModelError",
    "CommonConfig",
    "FitResult",
    "FusionModel",
    "ModelInfo",
    "ModelOutput",
    "PredictionArrays",
    "TaskDefaults",
    "TaskSpec",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "TrainingStage",
    "TransformerEHRConfig",
    "__version__",
    "available_models",
    "build_model",
    "create_model",
    "load_weights",
    "long_predictions",
    "model_info",
    "register_model",
    "save_weights",
    "seed_everything",
    "task_defaults",
]
