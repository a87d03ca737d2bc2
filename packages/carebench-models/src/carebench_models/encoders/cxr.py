"""Shared CXR encoders with stage-level access (models.md §3.3).

Both encoders expose the same interface, so a model works with either profile:

- `stages`: (stem, layer1, layer2, layer3, layer4), each an `nn.Module` mapping one stage's input to
  its output; `stage_channels` their output channels; `out_channels` = `stage_channels[-1]`;
- `prepare_input(x)` (channels_last conversion), `forward(x) -> [n, out_channels]` (global average
  pool) and `forward_stages(x, upto=None) -> list[Tensor]` (the maps after each stage).

Models call them on the paired rows `cxr[idx]` only (`carebench_models.missing`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3

from carebench_models.config import CommonConfig
from carebench_models.errors import CarebenchModelError

logger = logging.getLogger(__name__)

_IMAGENET_WEIGHTS = {
    "imagenet": ResNet50_Weights.IMAGENET1K_V2,
    "imagenet_v1": ResNet50_Weights.IMAGENET1K_V1,
}
IMAGENET_WEIGHT_NAMES: tuple[str, ...] = tuple(_IMAGENET_WEIGHTS)
"""Named ImageNet weights of ResNet-50: `imagenet` (IMAGENET1K_V2) and `imagenet_v1` (IMAGENET1K_V1)."""


class CXREncoder(nn.Module):
    """Common interface of the CXR backbones (see the module docstring)."""

    stage_channels: tuple[int, ...]
    stem: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module

    def __init__(self, *, channels_last: bool | None) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.weights_sha256: str | None = None

    @property
    def out_channels(self) -> int:
        """Channels of the last stage (2048 ResNet-50, 128 SmallCNN)."""
        return self.stage_channels[-1]

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        """(stem, layer1, layer2, layer3, layer4)."""
        return (self.stem, self.layer1, self.layer2, self.layer3, self.layer4)

    def prepare_input(self, x: Tensor) -> Tensor:
        """`x` in channels_last memory format when configured (None: only on CUDA)."""
        if self.channels_last or (self.channels_last is None and x.is_cuda):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward_stages(self, x: Tensor, upto: int | None = None) -> list[Tensor]:
        """Feature maps after each stage.

        Args:
            x: float [n, 3, H, W] images (paired rows only).
            upto: index of the last stage to run (0 = stem ... 4 = layer4); None runs all five.

        Returns:
            `upto + 1` maps; at 224 px for ResNet-50: [n,64,56,56], [n,256,56,56], [n,512,28,28],
            [n,1024,14,14], [n,2048,7,7].
        """
        last = len(self.stage_channels) - 1 if upto is None else upto
        maps = []
        out = self.prepare_input(x)
        for stage in self.stages[: last + 1]:
            out = stage(out)
            maps.append(out)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        """Globally average-pooled last-stage features: [n, 3, H, W] → [n, out_channels]."""
        out = self.prepare_input(x)
        for stage in self.stages:
            out = stage(out)
        return out.mean(dim=(2, 3))


class ResNet50CXR(CXREncoder):
    """torchvision ResNet-50 without `fc` (23,508,032 parameters; ≈4.1 GMACs per 224-px image).

    Parameter names follow torchvision except the stem: `conv1`/`bn1` live in `stem.0`/`stem.1`.
    """

    def __init__(self, *, channels_last: bool | None = None) -> None:
        super().__init__(channels_last=channels_last)
        backbone = resnet50(weights=None)
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        self.layer1, self.layer2 = backbone.layer1, backbone.layer2
        self.layer3, self.layer4 = backbone.layer3, backbone.layer4
        self.stage_channels = (64, 256, 512, 1024, 2048)


class SmallCNN(CXREncoder):
    """Quick-profile CNN: Conv3×3/2 stem (3→16) + four one-BasicBlock stages (16, 32, 64, 128).

    Strides 1, 2, 2, 2 after the stem: maps at 64 px are 32, 32, 16, 8, 4. ≈0.31 M parameters.
    """

    def __init__(self, *, channels_last: bool | None = None) -> None:
        super().__init__(channels_last=channels_last)
        self.stem = nn.Sequential(conv3x3(3, 16, stride=2), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.layer1 = _basic_block(16, 16, stride=1)
        self.layer2 = _basic_block(16, 32, stride=2)
        self.layer3 = _basic_block(32, 64, stride=2)
        self.layer4 = _basic_block(64, 128, stride=2)
        self.stage_channels = (16, 16, 32, 64, 128)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def _basic_block(in_channels: int, out_channels: int, *, stride: int) -> nn.Module:
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    return nn.Sequential(BasicBlock(in_channels, out_channels, stride=stride, downsample=downsample))


def build_cxr_encoder(config: CommonConfig) -> CXREncoder:
    """The configured CXR encoder (`resnet50` or `smallcnn`) with its weights loaded.

    Raises:
        CarebenchModelError: weights that cannot be resolved or do not fit (see `load_cxr_weights`).
    """
    encoder: CXREncoder
    if config.cxr_encoder == "resnet50":
        encoder = ResNet50CXR(channels_last=config.channels_last)
    else:
        encoder = SmallCNN(channels_last=config.channels_last)
    if config.cxr_weights != "none":
        load_cxr_weights(encoder, config.cxr_weights, allow_download=config.allow_download)
    return encoder


def imagenet_cache_path(name: str) -> Path:
    """Where torch hub caches the torchvision file of `imagenet` / `imagenet_v1` (honours `$TORCH_HOME`).

    Raises:
        CarebenchModelError: `name` is not a named ImageNet weight.
    """
    if name not in _IMAGENET_WEIGHTS:
        raise CarebenchModelError(
            f"unknown named CXR weights {name!r}; named weights: {', '.join(IMAGENET_WEIGHT_NAMES)}"
        )
    url = _IMAGENET_WEIGHTS[name].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def imagenet_weights_description(name: str) -> str:
    """`torchvision ResNet50_Weights.IMAGENET1K_V2` for `imagenet` (and V1 for `imagenet_v1`)."""
    return f"torchvision {_IMAGENET_WEIGHTS[name]}"


def download_imagenet_weights(name: str) -> Path:
    """Fetch the torchvision ImageNet file of `name` into the torch hub cache (hash checked); returns its path.

    The only function of this package that downloads anything; it is called when a user asks for
    the download explicitly (`allow_download=True`, or the command line's weights download).

    Raises:
        CarebenchModelError: unknown name, or the download did not leave the expected file.
    """
    path = imagenet_cache_path(name)
    logger.info("downloading %s weights (%s) to %s", name, imagenet_weights_description(name), path)
    _IMAGENET_WEIGHTS[name].get_state_dict(progress=False, check_hash=True)
    if not path.is_file():
        raise CarebenchModelError(f"downloading {name!r} weights did not write {path}")
    return path


def resolve_cxr_weights(spec: str, *, allow_download: bool) -> Path:
    """The local file holding the weights `spec` names (a path, `imagenet` or `imagenet_v1`).

    ImageNet weights are fetched only if `allow_download` is True and the file is not cached.

    Raises:
        CarebenchModelError: the path does not exist, or the ImageNet file is not cached and
            downloads are not allowed (the message names the expected cache path).
    """
    if spec in _IMAGENET_WEIGHTS:
        path = imagenet_cache_path(spec)
        if path.is_file():
            return path
        if not allow_download:
            raise CarebenchModelError(
                f"CXR weights {spec!r} ({imagenet_weights_description(spec)}) are not cached at {path}; "
                "place the torchvision file there, or set allow_download=True to fetch it once"
            )
        return download_imagenet_weights(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CarebenchModelError(f"CXR weights file not found: {path}")
    return path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a `.safetensors` file, or of a `.pt`/`.pth` file read with `weights_only=True`."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in (".pt", ".pth"):
        raise CarebenchModelError(f"CXR weights must be .safetensors, .pt or .pth, got {path.name}")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise CarebenchModelError(f"{path} does not hold a state dict")
    return dict(loaded)


def _rename_key(key: str) -> str:
    key = key.removeprefix("module.")
    for torchvision_name, ours in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
        if key.startswith(torchvision_name):
            return ours + key[len(torchvision_name) :]
    return key


def load_cxr_weights(encoder: CXREncoder, spec: str, *, allow_download: bool = False) -> str:
    """Load weights into `encoder` and return the file's SHA-256 (also logged and kept on the encoder).

    Torchvision key names are accepted (`conv1`/`bn1` map to the stem), `fc.*` is ignored and a
    `module.` prefix stripped; any other missing or unexpected key raises.

    Raises:
        CarebenchModelError: unresolvable weights or keys that do not match the encoder.
    """
    path = resolve_cxr_weights(spec, allow_download=allow_download)
    state = {_rename_key(key): value for key, value in read_state_dict(path).items()}
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    expected = set(encoder.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CarebenchModelError(
            f"CXR weights {path} do not match {type(encoder).__name__}: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    encoder.load_state_dict(state)
    digest = file_sha256(path)
    encoder.weights_sha256 = digest
    logger.info("loaded CXR weights %s (sha256 %s)", path, digest)
    return digest


class ProjectedCXR(nn.Module):
    """The "ResNet→d" of models.md §8: the configured CXR encoder followed by Linear(out_channels→d).

    Args:
        config: sizes the encoder (`cxr_encoder`, `cxr_weights`, ...) and the projection (`d_model`).
    """

    def __init__(self, config: CommonConfig) -> None:
        super().__init__()
        self.encoder = build_cxr_encoder(config)
        self.proj = nn.Linear(self.encoder.out_channels, config.d_model)

    def forward(self, cxr: Tensor) -> Tensor:
        """[n, 3, H, W] images → [n, d] features."""
        return self.proj(self.encoder(cxr))

    def encode_rows(self, cxr: Tensor, idx: Tensor) -> Tensor | None:
        """Features [n_c, d] of rows `idx` of `cxr` [B, 3, H, W]; None (nothing runs) when `idx` is empty."""
        if idx.numel() == 0:
            return None
        return self(cxr.index_select(0, idx))
