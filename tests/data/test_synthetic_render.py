"""Procedural CXR rendering: each finding changes the pixels where it should; encoding is deterministic."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from carebench_data.synthetic.render import RenderParams, TemplateCache


@pytest.fixture(scope="module")
def cache() -> TemplateCache:
    return TemplateCache(64, seed=0)


def plain() -> RenderParams:
    return RenderParams(
        base=0,
        heart=1,
        effusion_left=-1,
        effusion_right=-1,
        blobs=np.zeros((0, 3)),
        lobar=0.0,
        lobar_side=0,
        edema=0.0,
        pneumothorax_side=-1,
        atelectasis=0.0,
        tube=False,
        central_line=False,
        noise=0,
        noise_sd=0.0,
        contrast=1.0,
        gamma=3,
        shift_x=0,
        shift_y=0,
        lateral=False,
    )


def region_mean(image: np.ndarray, rows: slice, cols: slice) -> float:
    return float(image[rows, cols].astype(np.float64).mean())


def test_effusion_brightens_the_lung_base_of_its_side(cache: TemplateCache) -> None:
    base = cache.render(plain())
    left = cache.render(dataclasses.replace(plain(), effusion_left=7))
    lower_left, lower_right = (slice(40, 50), slice(14, 28)), (slice(40, 50), slice(36, 50))
    assert region_mean(left, *lower_left) > region_mean(base, *lower_left) + 30
    assert region_mean(left, *lower_right) == pytest.approx(region_mean(base, *lower_right), abs=1)


def test_cardiomegaly_widens_the_heart(cache: TemplateCache) -> None:
    small = cache.render(dataclasses.replace(plain(), heart=0)).astype(np.float64)
    large = cache.render(dataclasses.replace(plain(), heart=7)).astype(np.float64)
    heart_rows = slice(34, 42)
    assert (large[heart_rows] > 120).sum() > (small[heart_rows] > 120).sum() + 40


def test_consolidation_and_pneumothorax_change_their_zones(cache: TemplateCache) -> None:
    base = cache.render(plain())
    consolidated = cache.render(dataclasses.replace(plain(), lobar=0.6, lobar_side=1))
    upper_right = (slice(15, 24), slice(38, 48))
    assert region_mean(consolidated, *upper_right) > region_mean(base, *upper_right) + 50
    # Lobar consolidation is a large opacity (most of one lung field), salient at 64 px.
    changed = np.abs(consolidated.astype(np.float64) - base.astype(np.float64)) > 15
    assert changed.sum() > 200
    assert changed[:, 32:].sum() > 0.95 * changed.sum()
    collapsed = cache.render(dataclasses.replace(plain(), pneumothorax_side=0))
    apex_left = (slice(15, 20), slice(16, 20))
    assert region_mean(collapsed, *apex_left) < region_mean(base, *apex_left)


def test_noise_and_contrast_of_low_quality_films(cache: TemplateCache) -> None:
    clean = cache.render(plain()).astype(np.float64)
    noisy = cache.render(dataclasses.replace(plain(), noise_sd=0.08, noise=5)).astype(np.float64)
    flat = cache.render(dataclasses.replace(plain(), contrast=0.6)).astype(np.float64)
    assert np.std(noisy - clean) > 10
    assert flat.std() < clean.std()


def test_encode_is_deterministic_grayscale_jpeg(cache: TemplateCache) -> None:
    params = dataclasses.replace(plain(), tube=True, central_line=True, shift_x=2, noise_sd=0.03)
    first, second = cache.encode(params), cache.encode(params)
    assert first == second
    image = Image.open(io.BytesIO(first))
    assert image.format == "JPEG" and image.mode == "L" and image.size == (64, 64)


def test_the_heart_border_stays_visible_under_lung_opacities(cache: TemplateCache) -> None:
    """Cardiomegaly is drawn over edema and consolidation, so a hazy chest still shows its width."""
    hazy = dataclasses.replace(plain(), edema=0.3, lobar=0.9, lobar_side=2)
    small = cache.render(dataclasses.replace(hazy, heart=0)).astype(np.float64)
    large = cache.render(dataclasses.replace(hazy, heart=7)).astype(np.float64)
    heart_rows = slice(34, 42)
    assert (large[heart_rows] > 200).sum() > (small[heart_rows] > 200).sum() + 40
