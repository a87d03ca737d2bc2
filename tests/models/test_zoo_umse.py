"""UMSE: observation tokens without imputation, patch tokens at any divisible side, the skip bottleneck."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from carebench_models import CarebenchModelError, TaskSpec, create_model
from carebench_models.testing import parameter_count, task_spec, tiny_batch, tiny_model, train_steps
from carebench_models.zoo.umse import UMSEConfig, UMSEModel, observed_cells


def trained_model(kind: str = "binary", **overrides: Any) -> UMSEModel:
    task = task_spec(kind)
    model = tiny_model("umse", task, **overrides)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=1, image_size=model.config.image_size)])
    assert isinstance(model, UMSEModel)
    return model.eval()


def loop_reference(
    ehr: torch.Tensor, mask: torch.Tensor, cap: int, latest: bool
) -> list[list[tuple[float, int, int]]]:
    """Per row, the kept (value, hour, feature) triples in time order, by plain Python loops."""
    rows = []
    for b in range(ehr.shape[0]):
        cells = [
            (float(ehr[b, t, f]), t, f)
            for t in range(ehr.shape[1])
            for f in range(ehr.shape[2])
            if mask[b, t, f]
        ]
        rows.append(cells[-cap:] if latest and len(cells) > cap else cells[:cap])
    return rows


@pytest.mark.parametrize("latest", [True, False])
def test_observed_cells_match_a_loop_for_any_count(latest: bool) -> None:
    torch.manual_seed(0)
    steps, features, cap = 6, 3, 7
    ehr = torch.randn(5, steps, features)
    mask = torch.zeros(5, steps, features, dtype=torch.bool)
    mask[1, 2, 1] = True  # one observation
    mask[2].view(-1)[:7] = True  # exactly the cap
    mask[3] = torch.rand(steps, features) < 0.5
    mask[4] = True  # 18 > cap
    cells = observed_cells(ehr, mask, cap=cap, latest=latest)
    assert cells.values.shape == (5, cap)
    for b, expected in enumerate(loop_reference(ehr, mask, cap, latest)):
        count = len(expected)
        assert cells.valid[b].tolist() == [True] * count + [False] * (cap - count)
        got = [
            (float(cells.values[b, s]), int(cells.hours[b, s]), int(cells.features[b, s]))
            for s in range(count)
        ]
        assert got == expected


def test_any_number_of_observations_up_to_the_cap() -> None:
    model = trained_model(max_ehr_tokens=20)
    batch = tiny_batch(model.task, 4, paired_fraction=0.5, seed=2)
    mask = torch.zeros_like(batch["ehr_mask"])
    mask[1, 0, 0] = True
    mask[2].view(-1)[:19] = True
    mask[3].view(-1)[:20] = True
    proba = model.predict_proba(dict(batch, ehr_mask=mask))
    assert torch.isfinite(proba).all()  # row 0 has no observation at all: CLS and bottleneck remain
    # Imputed (unobserved) values are never read.
    changed = dict(batch, ehr_mask=mask, ehr=torch.where(mask, batch["ehr"], torch.randn_like(batch["ehr"])))
    torch.testing.assert_close(model.predict_proba(changed), proba, atol=1e-6, rtol=0)


def test_latest_truncation_drops_only_the_earliest_observations() -> None:
    model = trained_model(max_ehr_tokens=30)
    batch = tiny_batch(model.task, 2, paired_fraction=0.0, seed=3)
    batch["ehr_mask"][:] = True  # 48 × 6 observations, the last 30 are kept
    reference = model.predict_proba(batch)
    early = dict(batch, ehr=batch["ehr"].clone())
    early["ehr"][:, 0] += 5.0
    torch.testing.assert_close(model.predict_proba(early), reference, atol=1e-6, rtol=0)
    late = dict(batch, ehr=batch["ehr"].clone())
    late["ehr"][:, -1] += 5.0
    assert (model.predict_proba(late) - reference).abs().max() > 1e-5


@pytest.mark.parametrize("side", [32, 48, 64])
def test_any_image_side_divisible_by_the_patch(side: int) -> None:
    model = trained_model(image_size=32)  # quick patch 16: a 2 × 2 position grid, resized for other sides
    batch = tiny_batch(model.task, 4, paired_fraction=0.5, seed=4, image_size=side)
    assert torch.isfinite(model.predict_proba(batch)).all()
    assert model.patch_positions(side // 16, side // 16).shape == ((side // 16) ** 2, 32)


def test_image_side_not_divisible_by_the_patch_raises() -> None:
    model = trained_model(image_size=32)
    with pytest.raises(CarebenchModelError, match="divisible by its patch size 16"):
        model.predict_proba(tiny_batch(model.task, 4, paired_fraction=0.5, seed=5, image_size=40))
    with pytest.raises(CarebenchModelError, match="divisible by patch_size"):
        UMSEConfig.for_profile("quick", image_size=40)


def test_cxr_time_matters_only_for_rows_with_a_cxr() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=6)
    reference = model.predict_proba(batch)
    shifted = dict(batch, cxr_hours=batch["cxr_hours"] + 30.0)
    changed = (model.predict_proba(shifted) - reference).abs()[:, 0]
    paired = batch["has_cxr"]
    assert (changed[~paired] == 0).all() and (changed[paired] > 1e-6).all()


def test_cxr_stream_runs_on_paired_rows_only() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=7)
    sizes: list[int] = []
    handles = [
        layers[1].register_forward_hook(lambda _m, args, _out: sizes.append(args[0].shape[0]))
        for layers in model.fusion_layers
    ]
    try:
        model.predict_proba(batch)
        model.predict_proba(dict(batch, has_cxr=torch.zeros(8, dtype=torch.bool)))
    finally:
        for handle in handles:
            handle.remove()
    assert sizes == [4, 4]  # both layers on the 4 paired rows; nothing for the CXR-free batch


def test_rows_without_cxr_keep_the_ehr_bottleneck() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=8)
    reference = model.predict_proba(batch)
    alone = model.predict_proba(dict(batch, has_cxr=torch.zeros(8, dtype=torch.bool)))
    missing = ~batch["has_cxr"]
    torch.testing.assert_close(alone[missing], reference[missing], atol=1e-6, rtol=0)
    assert (alone[~missing] - reference[~missing]).abs().max() > 1e-5


def test_profiles_and_options() -> None:
    paper, quick = UMSEConfig.for_profile("paper"), UMSEConfig.for_profile("quick")
    assert (paper.layers, paper.heads, paper.ff, paper.patch_size, paper.max_ehr_tokens) == (
        2,
        4,
        1024,
        32,
        500,
    )
    assert (quick.layers, quick.heads, quick.ff, quick.patch_size, quick.max_ehr_tokens) == (2, 2, 64, 16, 64)
    model = tiny_model("umse", task_spec("binary"), dropout=0.1)
    assert {m.dropout for m in model.modules() if isinstance(m, nn.MultiheadAttention)} == {0.1}
    indexed = trained_model(index_positional_encoding=True, max_ehr_tokens=16)
    assert indexed.index_encoding is not None and indexed.index_encoding.shape == (16, 32)
    with pytest.raises(CarebenchModelError, match="cxr_weights"):
        UMSEConfig.for_profile("paper", cxr_weights="imagenet")
    with pytest.raises(CarebenchModelError, match="truncate"):
        UMSEConfig.for_profile("quick", truncate="middle")


@pytest.mark.slow
def test_paper_profile_size_and_forward() -> None:
    assert parameter_count("umse") / 1e6 == pytest.approx(4.0, rel=0.02)
    task = TaskSpec("phenotype", "multilabel", 25, tuple(f"label_{i}" for i in range(25)))
    model = create_model("umse", task=task, profile="paper").eval()
    batch = tiny_batch(task, 2, paired_fraction=0.5, ehr_features=27, image_size=224, with_labels=False)
    assert model.predict_proba(batch).shape == (2, 25)
