"""Batched chest X-ray transforms on tensors (data.md §6.4): no JPEG decoding, GPU-ready.

Images arrive as uint8 [B, S, S] rows of ``cxr.npy``. Evaluation takes the center crop of side
``round(S * 224 / 256)`` (224 at the default S = 256) and resizes it to ``image_size``. Training may
first apply a random affine (rotation ±45°, scale 0.85-1.15, translation ±15 %, no shear: the
CareBench values) or a random crop, as one affine sampling grid + ``grid_sample`` per batch, so the same
code runs on CPU workers or on the GPU. The output is replicated to 3 channels and normalized with the
ImageNet mean and std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as functional

__all__ = [
    "CROP_FRACTION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "augment_thetas",
    "crop_size",
    "image_pixels",
    "normalize_pixels",
    "prepare_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 224 / 256
"""Side of the center (or random) crop relative to the stored image side S."""


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Training-time image augmentation.

    Attributes:
        mode: ``affine`` (random affine, then center crop) or ``random_crop`` (a crop at a random
            position instead of the center).
        degrees: maximum absolute rotation in degrees.
        scale: range of the isotropic scale factor.
        translate: maximum absolute shift as a fraction of the image side, per axis.
    """

    mode: Literal["affine", "random_crop"] = "affine"
    degrees: float = 45.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.15

    def __post_init__(self) -> None:
        if self.mode not in ("affine", "random_crop"):
            raise ValueError(f"augment mode must be 'affine' or 'random_crop', not {self.mode!r}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"augment scale range must be positive and ordered, got {self.scale}")


def crop_size(image_side: int) -> int:
    """Crop side in stored pixels: ``round(S * 224 / 256)`` (224 for S = 256)."""
    return max(1, round(image_side * CROP_FRACTION))


def _uniform(shape: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _affine_thetas(
    batch: int, crop_fraction: float, augment: AugmentConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Float64 [B, 2, 3] maps from output to input coordinates (``affine_grid`` convention).

    The augmented image is J(p) = I(A^-1 (p - t)) with A = s·R(angle); the crop then reads
    J(c·u) for output coordinates u in [-1, 1]: theta = [c·A^-1 | -A^-1 t].
    """
    if augment.mode == "random_crop":
        shift = 1.0 - crop_fraction
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = theta[:, 1, 1] = crop_fraction
        theta[:, 0, 2] = _uniform(batch, -shift, shift, generator)
        theta[:, 1, 2] = _uniform(batch, -shift, shift, generator)
        return theta
    angle = _uniform(batch, -augment.degrees, augment.degrees, generator) * (math.pi / 180.0)
    scale = _uniform(batch, augment.scale[0], augment.scale[1], generator)
    # translation as a fraction of the side; normalized coordinates span 2
    shift = torch.stack(
        [_uniform(batch, -augment.translate, augment.translate, generator) * 2.0 for _ in range(2)], dim=1
    )
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    inverse = torch.stack([torch.stack([cos, sin], dim=1), torch.stack([-sin, cos], dim=1)], dim=1)  # [B,2,2]
    offset = -(inverse @ shift.unsqueeze(-1))  # [B,2,1]
    return torch.cat([crop_fraction * inverse, offset], dim=2)


def augment_thetas(
    batch: int, *, image_side: int, augment: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The random draws of one augmented batch, as float64 [B, 2, 3] sampling maps.

    `image_pixels` draws exactly these from ``generator`` when it is given none; drawing them on the
    CPU and passing them in (``theta=``) lets the images be augmented on another device with the same
    draws, e.g. a GPU batch of uint8 images.

    Args:
        batch: B, the number of images.
        image_side: S, the side of the stored images.
        augment: the augmentation.
        generator: CPU generator of the draws.
    """
    return _affine_thetas(batch, crop_size(image_side) / image_side, augment, generator)


def _sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``affine_grid(theta, [B, 1, size, size], align_corners=False)`` by broadcasting.

    The result is identical; the broadcast form avoids a batched matmul with inner dimension 3, which
    is about twice as slow on CPU.
    """
    coords = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1
    x, y = coords.view(1, 1, size), coords.view(1, size, 1)
    rows = [theta[:, axis, 0].view(-1, 1, 1) * x + theta[:, axis, 1].view(-1, 1, 1) * y for axis in (0, 1)]
    return torch.stack([rows[axis] + theta[:, axis, 2].view(-1, 1, 1) for axis in (0, 1)], dim=-1)


def image_pixels(
    images: torch.Tensor,
    *,
    image_size: int,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    theta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop, resize and (optionally) augment stored images, keeping the 0-255 intensity scale.

    Args:
        images: uint8 [B, S, S] grayscale rows of ``cxr.npy`` (any device).
        image_size: output side H = W.
        augment: training augmentation, or None for the deterministic center crop.
        generator: CPU generator for the augmentation draws (seeded by the caller).
        theta: float64 [B, 2, 3] draws from `augment_thetas` (any device); None = draw them from
            ``generator`` here.

    Returns:
        float32 [B, 1, image_size, image_size] on the device of ``images``, values in [0, 255].
    """
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be [B, S, S], got {tuple(images.shape)}")
    batch, side = images.shape[0], images.shape[1]
    crop = crop_size(side)
    if augment is None:
        start = (side - crop) // 2
        # crop before converting, so only the kept pixels become float
        pixels = images[:, start : start + crop, start : start + crop].unsqueeze(1).to(torch.float32)
        if crop != image_size:
            pixels = functional.interpolate(
                pixels, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
            )
        return pixels
    pixels = images.unsqueeze(1).to(torch.float32)  # [B, 1, S, S]
    if image_size < crop:
        # shrink first (antialiased) so the grid sampling below never aliases
        reduced = max(image_size, round(side * image_size / crop))
        pixels = functional.interpolate(
            pixels, size=(reduced, reduced), mode="bilinear", antialias=True, align_corners=False
        )
    if theta is None:
        theta = _affine_thetas(batch, crop / side, augment, generator)
    grid = _sampling_grid(theta.to(pixels), image_size)
    return functional.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def normalize_pixels(pixels: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Replicate to 3 channels and apply the ImageNet normalization, in one pass.

    ``(pixels / 255 - mean_c) / std_c`` is computed as ``pixels * a_c + b_c``.

    Args:
        pixels: float32 [B, 1, H, W] in [0, 255] (`image_pixels`).
        out: optional float32 [B, 3, H, W] destination (e.g. a slice of a preallocated batch).

    Returns:
        float32 [B, 3, H, W] (``out`` when given).
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    gain = (1.0 / (255.0 * std)).to(device=pixels.device, dtype=torch.float32).view(1, 3, 1, 1)
    offset = (-mean / std).to(device=pixels.device, dtype=torch.float32).view(1, 3, 1, 1)
    if out is None:
        return torch.addcmul(offset, pixels, gain)
    return torch.addcmul(offset, pixels, gain, out=out)


def prepare_images(
    images: torch.Tensor,
    *,
    image_size: int,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Turn stored uint8 images into the model input of the batch contract.

    Args:
        images: uint8 [B, S, S] grayscale rows of ``cxr.npy`` (any device, e.g. a GPU batch).
        image_size: output side H = W.
        augment: training augmentation, or None for the deterministic center crop.
        generator: CPU generator for the augmentation draws (seeded by the caller).

    Returns:
        float32 [B, 3, image_size, image_size] on the device of ``images``, ImageNet-normalized.
    """
    return normalize_pixels(image_pixels(images, image_size=image_size, augment=augment, generator=generator))
