"""Model configuration: one frozen, keyword-only dataclass per model, all deriving from `CommonConfig`.

A subclass declares its fields (each with a docstring) and may add per-profile defaults in a
`profile_defaults` class variable; `XConfig.for_profile("quick", **overrides)` merges the tables of
the whole class hierarchy, then the overrides, and rejects unknown keys (models.md §2, §4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, get_args

from carebench_models.errors import CarebenchModelError

Profile = Literal["paper", "quick"]
PROFILES: tuple[str, ...] = get_args(Profile)
CXREncoderName = Literal["resnet50", "smallcnn"]
CXR_ENCODERS: tuple[str, ...] = get_args(CXREncoderName)
NAMED_CXR_WEIGHTS: tuple[str, ...] = ("none", "imagenet", "imagenet_v1")


@dataclass(frozen=True, kw_only=True)
class CommonConfig:
    """Fields every model shares (models.md §2, §4). Defaults are the `paper` profile."""

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {},
        "quick": {"d_model": 32, "cxr_encoder": "smallcnn", "image_size": 64, "cxr_weights": "none"},
    }

    takes_cxr_weights: ClassVar[bool] = True
    """Whether the model has a CNN that `cxr_weights` can initialise (False for a model that reads
    image patches without one: its `cxr_weights` stays `none`, whatever a run sets for the others)."""

    profile: Profile = "paper"
    """Which profile filled the defaults: `paper` (H100-class GPU) or `quick` (CPU tests)."""
    ehr_features: int = 27
    """F, the number of EHR features (`features.json`); the EHR input has 2F channels."""
    ehr_steps: int = 48
    """T, the number of hourly EHR steps (sizes the learned position tables)."""
    d_model: int = 256
    """Model width d: EHR encoder width and CXR projection width."""
    dropout: float = 0.2
    """Dropout probability used throughout the model unless a model section says otherwise."""
    cxr_encoder: CXREncoderName = "resnet50"
    """CXR backbone: `resnet50` (paper) or `smallcnn` (quick)."""
    cxr_weights: str = "imagenet"
    """Initial weights of the CXR encoder: `imagenet` (torchvision IMAGENET1K_V2, what CareBench
    fine-tunes; the `paper` default), `imagenet_v1` (IMAGENET1K_V1), `none` (random init; the `quick`
    default, the right choice on synthetic data), or a local file path (`.safetensors`, `.pt`,
    `.pth`, torchvision key names; e.g. CXR-domain weights). ImageNet files must be in the torch hub
    cache (`encoders.cxr.imagenet_cache_path`); nothing is downloaded unless `allow_download`."""
    allow_download: bool = False
    """Allow fetching ImageNet weights that are not cached yet; otherwise an uncached file raises."""
    channels_last: bool | None = None
    """Convert images to channels_last before the CNN; None = only when the input is on CUDA."""
    image_size: int = 224
    """Side of the square input image (224 paper, 64 quick); sizes learned spatial missing maps."""

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise CarebenchModelError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.cxr_encoder not in CXR_ENCODERS:
            raise CarebenchModelError(
                f"cxr_encoder must be one of {', '.join(CXR_ENCODERS)}, got {self.cxr_encoder!r}"
            )
        for name in ("ehr_features", "ehr_steps", "d_model"):
            if getattr(self, name) < 1:
                raise CarebenchModelError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise CarebenchModelError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.image_size < 32:
            raise CarebenchModelError(f"image_size must be >= 32, got {self.image_size}")
        weights = str(self.cxr_weights)
        if weights not in NAMED_CXR_WEIGHTS and not Path(weights).suffix:
            raise CarebenchModelError(
                f"cxr_weights must be one of {', '.join(NAMED_CXR_WEIGHTS)} or a weights file path "
                f"(.safetensors, .pt, .pth), got {weights!r}"
            )
        if self.cxr_encoder == "smallcnn" and weights in ("imagenet", "imagenet_v1"):
            raise CarebenchModelError(
                "cxr_encoder 'smallcnn' has no ImageNet weights: use 'none' or a file path"
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all configurable fields, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def profile_values(cls, profile: str) -> dict[str, Any]:
        """The merged profile defaults of the class hierarchy (base classes first)."""
        if profile not in PROFILES:
            raise CarebenchModelError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
        values: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            table = klass.__dict__.get("profile_defaults")
            if table is not None:
                values.update(table.get(profile, {}))
        values["profile"] = profile
        return values

    @classmethod
    def check_keys(cls, keys: object) -> None:
        """Raise `CarebenchModelError` naming every key that is not a field of this config."""
        valid = cls.field_names()
        unknown = sorted(set(keys) - set(valid))  # type: ignore[call-overload]
        if unknown:
            raise CarebenchModelError(
                f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}; valid keys: {', '.join(valid)}"
            )

    @classmethod
    def for_profile(cls, profile: str = "quick", **overrides: Any) -> Self:
        """Config with the profile's defaults, then `overrides`; unknown keys raise.

        Example:
            >>> CommonConfig.for_profile("quick", dropout=0.1).d_model
            32
        """
        cls.check_keys(overrides)
        values = cls.profile_values(profile)
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (JSON-serialisable for the run config)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class TransformerEHRConfig(CommonConfig):
    """`CommonConfig` plus the shared `TransformerEHR` encoder's shape (models.md §3.2, §4)."""

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {"ehr_layers": 1, "ehr_heads": 4, "ehr_ff": 1024},
        "quick": {"ehr_layers": 1, "ehr_heads": 2, "ehr_ff": 64},
    }

    ehr_layers: int = 1
    """Number of post-LN Transformer encoder layers of the EHR encoder."""
    ehr_heads: int = 4
    """Attention heads of the EHR encoder (must divide d_model)."""
    ehr_ff: int = 1024
    """Feed-forward width of the EHR encoder layers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ehr_layers < 1 or self.ehr_heads < 1 or self.ehr_ff < 1:
            raise CarebenchModelError("ehr_layers, ehr_heads and ehr_ff must all be >= 1")
        if self.d_model % self.ehr_heads:
            raise CarebenchModelError(
                f"d_model ({self.d_model}) must be divisible by ehr_heads ({self.ehr_heads})"
            )
