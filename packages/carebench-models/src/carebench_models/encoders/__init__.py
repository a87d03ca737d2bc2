"""Shared encoders: EHR (`TransformerEHR`, `LSTMEHR`) and CXR (`ResNet50CXR`, `SmallCNN`)."""

from carebench_models.encoders.cxr import (
    IMAGENET_WEIGHT_NAMES,
    CXREncoder,
    ProjectedCXR,
    ResNet50CXR,
    SmallCNN,
    build_cxr_encoder,
    download_imagenet_weights,
    file_sha256,
    imagenet_cache_path,
    imagenet_weights_description,
    load_cxr_weights,
    resolve_cxr_weights,
)
from carebench_models.encoders.ehr import LSTMEHR, TransformerEHR, ehr_input

__all__ = [
    "IMAGENET_WEIGHT_NAMES",
    "LSTMEHR",
    "CXREncoder",
    "ProjectedCXR",
    "ResNet50CXR",
    "SmallCNN",
    "TransformerEHR",
    "build_cxr_encoder",
    "download_imagenet_weights",
    "ehr_input",
    "file_sha256",
    "imagenet_cache_path",
    "imagenet_weights_description",
    "load_cxr_weights",
    "resolve_cxr_weights",
]
