"""Procedural chest X-ray rendering with cached templates (data.md §13.5).

A `TemplateCache` holds, for one image size, 32 anatomy bases (body, lungs, mediastinum, ribs),
8 heart widths, 8 effusion levels per side, consolidation blobs, an edema haze, pneumothorax
crescents, device overlays, 64 noise fields and 8 gamma tables. An image is a handful of array
operations on those templates plus a rotation and a JPEG encode, so thousands of films cost seconds.
Pixel convention: bright = dense (bone, heart, fluid), dark = air.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

N_BASES = 32
N_HEART = 8
N_EFFUSION = 8
N_NOISE = 64
N_GAMMA = 8
HEART_CTR = np.linspace(0.38, 0.80, N_HEART)


@dataclass(frozen=True)
class RenderParams:
    """Everything that decides one image besides the cached templates.

    Attributes:
        base: anatomy template index.
        heart: heart-width template index (CTR = HEART_CTR[heart]).
        effusion_left, effusion_right: effusion level index per side, -1 for none.
        blobs: consolidation blob centres and amplitudes, [k, 3] rows of (y, x, amplitude).
        lobar: amplitude of the lobar consolidation haze (0: none); lobar_side: 0 left, 1 right, 2 both.
        edema: perihilar haze amplitude (0: none).
        pneumothorax_side: 0 left, 1 right, -1 none.
        atelectasis: amplitude of the basal plate opacity (0: none).
        tube, central_line: device overlays.
        noise: noise field index; noise_sd: its scale.
        contrast: multiplicative contrast (AP films and low-quality subgroups are flatter).
        gamma: gamma table index; shift_x, shift_y: translation in pixels (rotation is baked into the bases).
        lateral: render a lateral projection (never selected by the builder).
    """

    base: int
    heart: int
    effusion_left: int
    effusion_right: int
    blobs: np.ndarray
    lobar: float
    lobar_side: int
    edema: float
    pneumothorax_side: int
    atelectasis: float
    tube: bool
    central_line: bool
    noise: int
    noise_sd: float
    contrast: float
    gamma: int
    shift_x: int
    shift_y: int
    lateral: bool


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, soft: float
) -> np.ndarray:
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - d) / soft, 0.0, 1.0)


class TemplateCache:
    """All templates for one image size, built once (a few hundred ms at 256 px)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        rng = np.random.default_rng(np.random.SeedSequence([seed, size, 7]))
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size
        yy, xx = np.meshgrid(grid, grid, indexing="ij")
        self.yy, self.xx = yy, xx
        self.bases = np.empty((N_BASES, size, size), dtype=np.float32)
        self.lungs = np.empty((N_BASES, 2, size, size), dtype=np.float32)
        for b in range(N_BASES):
            # Each base carries its own small rotation (±5°), so images need no per-image resampling.
            angle = np.deg2rad(rng.uniform(-5, 5))
            yy_r = 0.5 + (yy - 0.5) * np.cos(angle) - (xx - 0.5) * np.sin(angle)
            xx_r = 0.5 + (yy - 0.5) * np.sin(angle) + (xx - 0.5) * np.cos(angle)
            width = rng.uniform(0.40, 0.47)
            lung_ry, lung_rx = rng.uniform(0.26, 0.32), rng.uniform(0.12, 0.15)
            body = _ellipse(yy_r, xx_r, 0.58, 0.5, 0.62, width, 0.08)
            img = 0.05 + 0.45 * body * (0.8 + 0.2 * (1 - np.abs(xx_r - 0.5) / 0.5))
            left = _ellipse(yy_r, xx_r, 0.45, 0.5 - 0.17, lung_ry, lung_rx, 0.15)
            right = _ellipse(yy_r, xx_r, 0.45, 0.5 + 0.17, lung_ry, lung_rx, 0.15)
            lungs = np.maximum(left, right)
            ribs = (np.sin(2 * np.pi * (yy_r * rng.uniform(8, 10) + 2.5 * (xx_r - 0.5) ** 2)) > 0.55).astype(
                np.float32
            )
            img = img * (1 - 0.72 * lungs) + 0.06 * ribs * lungs
            mediastinum = np.clip(1 - np.abs(xx_r - 0.5) / 0.06, 0, 1) * (yy_r > 0.08) * (yy_r < 0.78)
            img = np.maximum(img, 0.55 * mediastinum)
            abdomen = body * (yy_r > 0.74 + 0.04 * np.cos(np.pi * (xx_r - 0.5) * 3))
            img = np.maximum(img, 0.5 * abdomen)
            self.bases[b] = img
            self.lungs[b, 0], self.lungs[b, 1] = left, right
        self.hearts = np.stack(
            [_ellipse(yy, xx, 0.60, 0.53, 0.14, ctr * 0.36, 0.1) for ctr in HEART_CTR]
        ).astype(np.float32)
        self.effusions = np.empty((2, N_EFFUSION, size, size), dtype=np.float32)
        for side, cx in enumerate((0.5 - 0.17, 0.5 + 0.17)):
            lateral = np.abs(xx - cx) / 0.15
            for level in range(N_EFFUSION):
                height = 0.06 + 0.30 * level / (N_EFFUSION - 1)
                meniscus = 0.76 - height + 0.05 * (1 - lateral) ** 2 - 0.04 * lateral
                self.effusions[side, level] = (
                    np.clip((yy - meniscus) / 0.03, 0, 1) * (np.abs(xx - cx) < 0.17) * (yy < 0.8)
                )
        # Lobar consolidation: a large, smooth opacity over most of one lung field (readable at 64 px).
        self.lobes = np.stack(
            [_ellipse(yy, xx, 0.40, cx, 0.18, 0.13, 0.6) for cx in (0.5 - 0.18, 0.5 + 0.18)]
        ).astype(np.float32)
        blob_size = max(size // 3, 7)
        g = np.linspace(-2.2, 2.2, blob_size, dtype=np.float32)
        self.blob = np.exp(-(g[:, None] ** 2 + g[None, :] ** 2)).astype(np.float32)
        self.edema = (
            _ellipse(yy, xx, 0.45, 0.5 - 0.1, 0.2, 0.12, 1.0)
            + _ellipse(yy, xx, 0.45, 0.5 + 0.1, 0.2, 0.12, 1.0)
        ).astype(np.float32)
        self.pneumothorax = np.empty((2, size, size), dtype=np.float32)
        self.pleural_line = np.empty((2, size, size), dtype=np.float32)
        for side, cx in enumerate((0.5 - 0.21, 0.5 + 0.21)):
            d = np.sqrt(((yy - 0.27) / 0.12) ** 2 + ((xx - cx) / 0.075) ** 2)
            self.pneumothorax[side] = np.clip((1 - d) / 0.1, 0, 1)
            self.pleural_line[side] = np.clip(1 - np.abs(d - 1.0) / 0.06, 0, 1) * (yy < 0.36)
        self.atelectasis = np.clip(1 - np.abs(yy - 0.66 - 0.1 * (xx - 0.5)) / 0.045, 0, 1) * (
            np.abs(np.abs(xx - 0.5) - 0.17) < 0.1
        )
        self.tube = (np.abs(xx - 0.5) < max(1.2 / size, 0.004)) * (yy < 0.32)
        curve_x = 0.2 + 0.28 * np.sqrt(np.clip((yy - 0.12) / 0.38, 0, 1))
        self.central_line = (np.abs(xx - curve_x) < max(1.0 / size, 0.003)) * (yy > 0.12) * (yy < 0.5)
        rings = np.zeros((size, size), dtype=np.float32)
        for cy, cx in ((0.12, 0.3), (0.12, 0.7), (0.8, 0.75)):
            r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            rings = np.maximum(rings, np.clip(1 - np.abs(r - 0.025) / 0.006, 0, 1))
        marker = ((np.abs(xx - 0.9) < 0.006) & (yy > 0.05) & (yy < 0.11)) | (
            (np.abs(yy - 0.11) < 0.006) & (xx > 0.9) & (xx < 0.93)
        )
        self.always = np.maximum(rings, marker.astype(np.float32)).astype(np.float32)
        self.lateral = (
            0.05
            + 0.5
            * _ellipse(yy, xx, 0.55, 0.5, 0.6, 0.36, 0.1)
            * (1 - 0.6 * _ellipse(yy, xx, 0.45, 0.52, 0.3, 0.2, 0.3))
        ).astype(np.float32)
        self.noise = rng.normal(0, 1, size=(N_NOISE, size, size)).astype(np.float32)
        gammas = np.linspace(0.8, 1.25, N_GAMMA)
        levels = np.linspace(0.0, 1.0, 1024)
        self.gamma_tables = np.round(255 * levels[None, :] ** gammas[:, None]).astype(np.uint8)

    def render(self, p: RenderParams) -> np.ndarray:
        """The uint8 [S, S] image (gamma and shift applied)."""
        size = self.size
        if p.lateral:
            img = self.lateral.copy()
        else:
            img = self.bases[p.base].copy()
            lungs = self.lungs[p.base]
            for side, level in ((0, p.effusion_left), (1, p.effusion_right)):
                if level >= 0:
                    img += 0.6 * self.effusions[side, level] * lungs[side]
            lung_any = np.maximum(lungs[0], lungs[1])
            if p.edema > 0:
                img += p.edema * self.edema * lung_any
            if p.lobar > 0:
                sides = (0, 1) if p.lobar_side == 2 else (p.lobar_side,)
                for side in sides:
                    img += p.lobar * self.lobes[side] * lungs[side]
            half = self.blob.shape[0] // 2
            for y, x, amplitude in p.blobs:
                cy, cx = int(y * size), int(x * size)
                y0, x0 = max(cy - half, 0), max(cx - half, 0)
                y1, x1 = min(cy - half + self.blob.shape[0], size), min(cx - half + self.blob.shape[1], size)
                patch = self.blob[y0 - (cy - half) : y1 - (cy - half), x0 - (cx - half) : x1 - (cx - half)]
                img[y0:y1, x0:x1] += amplitude * patch * lung_any[y0:y1, x0:x1]
            if p.pneumothorax_side >= 0:
                region = self.pneumothorax[p.pneumothorax_side]
                img = img * (1 - region) + 0.04 * region
                img += 0.35 * self.pleural_line[p.pneumothorax_side]
            if p.atelectasis > 0:
                img += p.atelectasis * self.atelectasis
            # The cardiac silhouette goes over the lung opacities, so its width stays readable.
            np.maximum(img, 0.9 * self.hearts[p.heart], out=img)
            if p.tube:
                img = np.maximum(img, 0.95 * self.tube)
            if p.central_line:
                img = np.maximum(img, 0.9 * self.central_line)
            img = np.maximum(img, 0.9 * self.always)
        img = 0.5 + p.contrast * (img - 0.5)
        img += p.noise_sd * self.noise[p.noise]
        levels = (np.clip(img, 0, 1) * 1023).astype(np.intp)
        pixels = self.gamma_tables[p.gamma][levels]
        return np.roll(pixels, (p.shift_y, p.shift_x), axis=(0, 1))

    def encode(self, p: RenderParams) -> bytes:
        """The JPEG bytes (quality 90, grayscale) of one image."""
        image = Image.fromarray(self.render(p), mode="L")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()
