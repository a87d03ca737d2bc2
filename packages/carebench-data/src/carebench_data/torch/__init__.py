"""PyTorch loading of a benchmark dataset directory (extra ``[torch]``; the only torch import here).

- `CarebenchDataset`: one split of one fold as DESIGN §2 batch dicts (memory-mapped arrays, fold
  normalization cached per process, simulated CXR missingness, batched image transforms).
- `make_loader`: a seeded ``DataLoader`` over it.
- `prepare_images` / `AugmentConfig`: the batched CXR transform, usable on a GPU batch.
"""

from carebench_data.torch.dataset import AGE_EDGES, COHORTS, CarebenchDataset, clear_cache
from carebench_data.torch.loader import make_loader
from carebench_data.torch.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    augment_thetas,
    crop_size,
    image_pixels,
    normalize_pixels,
    prepare_images,
)

__all__ = [
    "AGE_EDGES",
    "COHORTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "CarebenchDataset",
    "augment_thetas",
    "clear_cache",
    "crop_size",
    "image_pixels",
    "make_loader",
    "normalize_pixels",
    "prepare_images",
]
