"""Benchmark cohorts from raw MIMIC-IV + MIMIC-CXR-JPG files, and a synthetic MIMIC-shaped generator.

The entry points of data.md §0; `carebench_data.torch` (extra `[torch]`) adds the PyTorch dataset.

>>> from carebench_data import BuildConfig, build_dataset, generate_synthetic, SyntheticConfig
"""

__version__ = "0.1.0"

from carebench_data.build import build_dataset
from carebench_data.config import BuildConfig
from carebench_data.convert import convert_raw
from carebench_data.errors import CarebenchDataError
from carebench_data.registry import load_registry
from carebench_data.synthetic import SyntheticConfig, generate_synthetic
from carebench_data.tasks import TaskInfo, task_specs
from carebench_data.verify import verify_dataset, verify_raw

__all__ = [
    "BuildConfig",
    "CarebenchDataError",
    "SyntheticConfig",
    "TaskInfo",
    "__version__",
    "build_dataset",
    "convert_raw",
    "generate_synthetic",
    "load_registry",
    "task_specs",
    "verify_dataset",
    "verify_raw",
]
