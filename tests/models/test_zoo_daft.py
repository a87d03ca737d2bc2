"""DAFT (models.md §8.6): the EHR sets the affine transform inside the CNN's last block."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from carebench_models import CarebenchModelError, create_model
from carebench_models.encoders.cxr import SmallCNN
from carebench_models.missing import paired_batch_norm
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


def test_batch_norm_statistics_never_see_the_placeholder_maps() -> None:
    # Rows without a CXR enter the DAFT block as the learned map u_miss; in training, the block's
    # BatchNorms must normalise with statistics of the paired rows only.
    task = task_spec("binary")
    model = tiny_model("daft", task, dropout=0.0)
    assert isinstance(model, DAFTModel)
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=6)
    paired = batch["has_cxr"]
    norms = [module for module in model.daft_block.modules() if isinstance(module, nn.BatchNorm2d)]
    assert len(norms) >= 3
    outputs, running = [], []
    for value in (0.0, 5.0):
        for norm in norms:
            norm.reset_running_stats()
        with torch.no_grad():
            model.missing_input.fill_(value)
        model.train()
        with torch.no_grad():
            outputs.append(model(batch).logits)
        running.append([norm.running_mean.clone() for norm in norms])
    torch.testing.assert_close(outputs[0][paired], outputs[1][paired], atol=1e-5, rtol=0)
    assert (outputs[0][~paired] - outputs[1][~paired]).abs().max() > 1e-4
    for first, second in zip(*running, strict=True):
        torch.testing.assert_close(first, second)


def test_paired_batch_norm_equals_batch_norm_on_the_paired_rows() -> None:
    torch.manual_seed(7)
    reference, norm = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
    for module in (reference, norm):
        nn.init.normal_(module.weight)
        nn.init.normal_(module.bias)
    norm.load_state_dict(reference.state_dict())
    x = torch.randn(6, 4, 3, 3) * 2 + 1
    idx = torch.tensor([0, 2, 5])
    out = paired_batch_norm(norm, x, idx)
    torch.testing.assert_close(out[idx], reference(x[idx]), atol=1e-5, rtol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(norm, name), getattr(reference, name))
    # The other rows are normalised with the same statistics.
    mean, var = x[idx].mean(dim=(0, 2, 3)), x[idx].var(dim=(0, 2, 3), unbiased=False)
    expected = (x[1] - mean[:, None, None]) / torch.sqrt(var[:, None, None] + norm.eps)
    expected = expected * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(out[1], expected, atol=1e-5, rtol=1e-5)
    # No paired row: running statistics, left untouched; eval mode: plain BatchNorm.
    before = norm.running_mean.clone()
    none = paired_batch_norm(norm, x, idx[:0])
    torch.testing.assert_close(norm.running_mean, before)
    norm.eval()
    torch.testing.assert_close(none, norm(x))
    torch.testing.assert_close(paired_batch_norm(norm, x, idx), norm(x))


def test_cxr_to_ehr_direction_lets_the_cxr_stages_modulate_the_ehr() -> None:
    task = task_spec("binary")
    model = tiny_model("daft", task, direction="cxr_to_ehr")
    assert isinstance(model, DAFTModel)
    assert "CareBench" in model.variant() and "DAFT paper" in tiny_model("daft", task).variant()
    assert not hasattr(model, "daft_block") and len(model.film_blocks) == 5
    assert [block.aux_hidden.in_features for block in model.film_blocks] == [
        16 + 32,
        16 + 32,
        32 + 32,
        64 + 32,
        128 + 32,
    ]
    assert all(block.aux_out.out_features == 2 * 32 for block in model.film_blocks)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=1)])
    model.eval()
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=2)
    paired = batch["has_cxr"]
    # Each stage's transform reads its pooled map and scales and shifts the EHR vector [B, d].
    inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [
        block.register_forward_hook(lambda _m, args, _out: inputs.append((args[0], args[1])))
        for block in model.film_blocks
    ]
    with torch.no_grad():
        reference = model(batch).logits
    for handle in handles:
        handle.remove()
    assert [tuple(squeeze.shape) for squeeze, _ in inputs] == [(8, 16), (8, 16), (8, 32), (8, 64), (8, 128)]
    assert all(tuple(ehr.shape) == (8, 32) for _, ehr in inputs)
    # Rows without a CXR use the learned pooled maps.
    for (squeeze, _), missing in zip(inputs, model.squeeze_missing, strict=True):
        torch.testing.assert_close(squeeze[~paired], missing.detach().expand(int((~paired).sum()), -1))
    # The image changes the paired rows' predictions only; the EHR changes every row's.
    with torch.no_grad():
        brighter = model(dict(batch, cxr=batch["cxr"] * 2.0)).logits
        other = tiny_batch(task, 8, paired_fraction=0.5, seed=3)
        shifted = model(dict(batch, ehr=other["ehr"], ehr_mask=other["ehr_mask"])).logits
    assert (brighter - reference)[paired].abs().min() > 1e-6
    torch.testing.assert_close(brighter[~paired], reference[~paired])
    assert (shifted - reference).abs().min() > 1e-7


@pytest.mark.parametrize("check", ["gradients", "all_missing", "missing_invariance", "row_independence"])
def test_cxr_to_ehr_direction_keeps_the_model_contract(check: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import carebench_models.testing as testing

    original = testing.tiny_model
    monkeypatch.setattr(
        testing,
        "tiny_model",
        lambda name, task, **kw: original(name, task, **{"direction": "cxr_to_ehr", **kw}),
    )
    testing.CONTRACT_CHECKS[check]("daft", "multilabel")


def test_unknown_direction_raises() -> None:
    with pytest.raises(CarebenchModelError, match="direction"):
        tiny_model("daft", task_spec("binary"), direction="both")
