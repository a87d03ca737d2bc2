"""Shared encoders: EHR (`TransformerEHR`, `LSTMEHR`) and CXR (`ResNet50CXR`, `SmallCNN`)."""

from carebench_models.encoders.cxr import (
    CXREncoder,
    ProjectedCXR,
    ResNet50CXR,
    SmallCNN,
    build_cxr_encoder,
    imagenet_cache_path,
    load_cxr_weights,
)
from carebench_models.encoders.ehr import LSTMEHR, TransformerEHR, ehr_input

__all__ = [
    "LSTMEHR",
    "CXREncoder",
    "ProjectedCXR",
    "ResNet50CXR",
    "SmallCNN",
    "TransformerEHR",
    "build_cxr_encoder",
    "ehr_input",
    "imagenet_cache_path",
    "load_cxr_weights",
]
