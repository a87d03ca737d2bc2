"""DAFT (models.md §8.6): the EHR sets the affine transform inside the CNN's last block."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from carebench_models import CarebenchModelError, create_model
from carebench_models.encoders.cxr import SmallCNN
from carebench_models.testing import count_cxr_encoder_calls, task_spec, tiny_batch, tiny_model, train_steps
from carebench_models.zoo.daft import DAFTBlock, DAFTModel, _map_side


def trained_model(**overrides: Any) -> DAFTModel:
    task = task_spec("binary")
    model = tiny_model("daft", task, **overrides)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=1)])
    assert isinstance(model, DAFTModel)
    return model.eval()


def affine_parameters(model: DAFTModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The auxiliary network's output [α | β] for every row of the batch, [B, 2·C]."""
    captured: list[torch.Tensor] = []
    handle = model.daft_block.aux_out.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
    return captured[0]


def test_affine_parameters_depend_on_each_rows_ehr() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=2)
    reference = affine_parameters(model, batch)
    changed = dict(batch, ehr=batch["ehr"].clone())
    changed["ehr"][[0, 1]] += 2.0
    moved = affine_parameters(model, changed)
    assert (moved[:2] - reference[:2]).abs().amax(dim=1).min() > 1e-4
    torch.testing.assert_close(moved[2:], reference[2:], atol=1e-6, rtol=0)


def test_ehr_reaches_rows_without_cxr_only_through_the_daft_block() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.0, seed=3)
    with torch.no_grad():
        before = model(batch).logits
        changed = dict(batch, ehr=batch["ehr"] + 1.0)
        after = model(changed).logits
        assert (after - before).abs().min() > 1e-5
        # With the transform fixed to the identity (α = 1, β = 0) the EHR has no path to the output.
        model.daft_block.transform = lambda feature_map, tabular: feature_map  # type: ignore[method-assign]
        torch.testing.assert_close(model(batch).logits, model(changed).logits, atol=1e-6, rtol=0)


def test_cxr_free_batch_runs_the_block_on_the_learned_input() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 4, paired_fraction=0.0, seed=4)
    inputs: list[torch.Tensor] = []
    handle = model.daft_block.register_forward_hook(lambda _m, args, _out: inputs.append(args[0].detach()))
    counter, remove = count_cxr_encoder_calls(model)
    try:
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
        remove()
    assert counter[0] == 0
    (block_input,) = inputs
    assert block_input.shape == (4, 64, 4, 4)  # SmallCNN layer3 map of a 32-px image
    expected = model.missing_input.detach()[None, :, None, None].expand_as(block_input)
    torch.testing.assert_close(block_input, expected)


def test_block_geometry_of_the_quick_profile() -> None:
    model = tiny_model("daft", task_spec("multilabel"))
    block = model.daft_block
    assert isinstance(block, DAFTBlock)
    assert (block.in_channels, block.out_channels, block.film_channels) == (64, 128, 128)
    assert block.aux_hidden.in_features == 128 + 32 and block.aux_hidden.out_features == (64 + 32) // 7
    assert block.aux_out.out_features == 2 * 128
    assert block.aux_hidden.bias is None and block.aux_out.bias is None
    assert not block.bn1.affine  # location 3: DAFT supplies the affine parameters
    assert len(model.cxr_encoder.layer4) == 0  # the last block lives outside the encoder
    assert model.head.in_features == 128


@pytest.mark.parametrize("side", [32, 33, 64, 100])
def test_missing_map_grid_matches_the_encoder_output(side: int) -> None:
    encoder = SmallCNN()
    encoder.layer4 = nn.Sequential()
    with torch.no_grad():
        grid = encoder.forward_stages(torch.zeros(1, 3, side, side))[-1].shape[-1]
    assert _map_side(encoder, side) == grid


@pytest.mark.parametrize("location", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("activation", ["linear", "sigmoid", "tanh"])
def test_every_location_and_scale_activation_trains(location: int, activation: str) -> None:
    task = task_spec("binary")
    model = tiny_model("daft", task, location=location, scale_activation=activation)
    batch = tiny_batch(task, 6, paired_fraction=0.5, seed=5)
    logs = train_steps(model, [batch])
    assert torch.isfinite(torch.tensor(logs[0]["loss"]))
    assert model.daft_block.bn1.affine == (location != 3)
    assert model.daft_block.aux_hidden.weight.grad is not None


def test_invalid_options_raise() -> None:
    task = task_spec("binary")
    with pytest.raises(CarebenchModelError, match="location"):
        tiny_model("daft", task, location=5)
    with pytest.raises(CarebenchModelError, match="scale_activation"):
        tiny_model("daft", task, scale_activation="relu")
    # ResNet-50's last bottleneck has no downsample path, so location 2 would equal location 1.
    with pytest.raises(CarebenchModelError, match="location 2"):
        create_model("daft", task=task, profile="paper", location=2)
