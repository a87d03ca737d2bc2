"""HEALNet: Fourier-tagged raw tokens, the skip of a missing modality, weight tying, layer3 tokens."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from carebench_models import CarebenchModelError, TaskSpec, create_model
from carebench_models.encoders.ehr import ehr_input
from carebench_models.testing import (
    count_cxr_encoder_calls,
    parameter_count,
    task_spec,
    tiny_batch,
    tiny_model,
    train_steps,
)
from carebench_models.zoo.healnet import (
    HEALNetModel,
    LatentAttention,
    fourier_features,
    grid_fourier_features,
)


def trained_model(kind: str = "binary", **overrides: Any) -> HEALNetModel:
    task = task_spec(kind)
    model = tiny_model("healnet", task, **overrides)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=1)])
    assert isinstance(model, HEALNetModel)
    return model.eval()


def ehr_only_logits(model: HEALNetModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every layer's EHR update alone, written out independently of `forward`."""
    with torch.no_grad():
        tokens = model.ehr_tokens(batch)
        latents = model.latents.expand(tokens.shape[0], -1, -1)
        for layer in model.layers():
            latents = layer.update(latents, tokens, 0)
        return model.head(model.head_norm(latents.mean(dim=1)))


def test_fourier_features_follow_the_formula() -> None:
    features = fourier_features(5, bands=3, max_freq=10.0, device=torch.device("cpu"))
    assert features.shape == (5, 2 * 3 + 1)
    u = torch.linspace(-1, 1, 5)
    for j, frequency in enumerate((1.0, 3.0, 5.0)):  # linspace(1, max_freq / 2, 3)
        torch.testing.assert_close(features[:, j], torch.sin(math.pi * frequency * u))
        torch.testing.assert_close(features[:, 3 + j], torch.cos(math.pi * frequency * u))
    torch.testing.assert_close(features[:, -1], u)
    grid = grid_fourier_features(2, 3, bands=3, max_freq=10.0, device=torch.device("cpu"))
    assert grid.shape == (6, 14)
    rows, columns = (
        fourier_features(2, bands=3, max_freq=10.0, device=torch.device("cpu")),
        fourier_features(3, bands=3, max_freq=10.0, device=torch.device("cpu")),
    )
    torch.testing.assert_close(grid[4], torch.cat([rows[1], columns[1]]))  # cell (row 1, column 1)


def test_token_layouts_of_both_modalities() -> None:
    model = trained_model(fourier_bands=2)
    batch = tiny_batch(model.task, 4, paired_fraction=0.5, seed=2)
    tokens = model.ehr_tokens(batch)
    assert tokens.shape == (4, 48, 2 * 6 + 5)
    torch.testing.assert_close(tokens[:, :, :12], ehr_input(batch))
    with torch.no_grad():
        cxr_tokens = model.cxr_tokens(batch["cxr"][:2])
    # SmallCNN layer3 map of a 32-px image: 64 channels on a 4 × 4 grid, plus 2 × 5 position channels.
    assert cxr_tokens.shape == (2, 16, 64 + 10)


def test_rows_without_cxr_take_only_the_ehr_updates() -> None:
    model = trained_model(depth=2)
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=3)
    with torch.no_grad():
        logits = model(batch).logits
    reference = ehr_only_logits(model, batch)
    missing = ~batch["has_cxr"]
    torch.testing.assert_close(logits[missing], reference[missing], atol=1e-5, rtol=0)
    assert (logits[~missing] - reference[~missing]).abs().max() > 1e-4


def test_cxr_free_batch_runs_no_cxr_step() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 6, paired_fraction=0.0, seed=4)
    calls: list[int] = []
    handle = model.first_layer.cross_attention[1].register_forward_hook(lambda *_: calls.append(1))
    counter, remove = count_cxr_encoder_calls(model)
    try:
        with torch.no_grad():
            logits = model(batch).logits
    finally:
        handle.remove()
        remove()
    assert calls == [] and counter[0] == 0
    torch.testing.assert_close(logits, ehr_only_logits(model, batch), atol=1e-5, rtol=0)


def test_the_cnn_stops_at_layer3() -> None:
    model = tiny_model("healnet", task_spec("binary"))
    assert model.cxr_encoder is not None
    assert len(list(model.cxr_encoder.layer4.parameters())) == 0
    cnn_parameters = sum(p.numel() for p in model.cxr_encoder.parameters())
    prefix = sum(p.numel() for stage in model.cxr_encoder.stages[:4] for p in stage.parameters())
    assert cnn_parameters == prefix


def test_layers_after_the_first_share_one_set_of_weights() -> None:
    task = task_spec("binary")
    depth2 = tiny_model("healnet", task, depth=2)
    depth3 = tiny_model("healnet", task, depth=3)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(depth2) == count(depth3) > count(tiny_model("healnet", task, depth=1))
    assert len(depth3.layers()) == 3 and depth3.layers()[1] is depth3.layers()[2]
    assert len(depth3.first_layer.cross_ff) == 2 and depth3.tied_layer is not None
    assert len(depth3.tied_layer.cross_ff) == 1  # one cross feed-forward serves both modalities
    depth3.load_state_dict(depth2.state_dict())
    depth2.eval(), depth3.eval()
    batch = tiny_batch(task, 4, paired_fraction=0.5, seed=5)
    assert not torch.allclose(depth2.predict_proba(batch), depth3.predict_proba(batch))


def test_attention_scale_is_head_dim_and_temperature() -> None:
    torch.manual_seed(0)
    attention = LatentAttention(8, 5, heads=2, head_dim=4, temperature=0.5, dropout=0.2).eval()
    latents, context = torch.randn(3, 6, 8), torch.randn(3, 7, 5)
    q = attention.to_q(latents).view(3, 6, 2, 4).transpose(1, 2)
    k, v = (part.view(3, 7, 2, 4).transpose(1, 2) for part in attention.to_kv(context).chunk(2, dim=-1))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (math.sqrt(4) * 0.5), dim=-1)
    expected = torch.nn.functional.leaky_relu(
        attention.to_out((weights @ v).transpose(1, 2).reshape(3, 6, 8)), 0.01
    )
    torch.testing.assert_close(attention(latents, context), expected)
    assert attention.to_q.bias is None and attention.to_kv.bias is None


def test_frozen_cnn_keeps_weights_and_statistics() -> None:
    task = task_spec("binary")
    model = tiny_model("healnet", task, freeze_cnn=True)
    assert model.cxr_encoder is not None
    before = {key: value.clone() for key, value in model.cxr_encoder.state_dict().items()}
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=6)])
    assert not model.cxr_encoder.training and model.training
    for key, value in model.cxr_encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_pixel_tokens_need_no_cnn() -> None:
    task = task_spec("binary")
    model = tiny_model("healnet", task, cxr_tokens="pixels", pixel_pool=4, fourier_bands=1)
    assert model.cxr_encoder is None
    batch = tiny_batch(task, 4, paired_fraction=0.5, seed=7)
    tokens = model.cxr_tokens(batch["cxr"][:2])
    assert tokens.shape == (2, (32 // 4) ** 2, 3 + 2 * 3)
    logs = train_steps(model, [batch])
    assert math.isfinite(logs[0]["loss"])
    with pytest.raises(CarebenchModelError, match="pixel_pool"):
        tiny_model("healnet", task, cxr_tokens="pixels", pixel_pool=2)


@pytest.mark.parametrize(
    "override", [{"depth": 0}, {"fourier_bands": 0}, {"max_freq": 0.0}, {"cxr_tokens": "patches"}]
)
def test_invalid_options_raise(override: dict[str, Any]) -> None:
    with pytest.raises(CarebenchModelError, match="healnet"):
        tiny_model("healnet", task_spec("binary"), **override)


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "millions"), [(1, 12.1), (3, 14.7)])
def test_paper_profile_size_and_forward(depth: int, millions: float) -> None:
    assert parameter_count("healnet", depth=depth) / 1e6 == pytest.approx(millions, rel=0.02)
    task = TaskSpec("phenotype", "multilabel", 25, tuple(f"label_{i}" for i in range(25)))
    model = create_model("healnet", task=task, profile="paper", cxr_weights="none", depth=depth).eval()
    batch = tiny_batch(task, 2, paired_fraction=0.5, ehr_features=27, image_size=224, with_labels=False)
    assert model.predict_proba(batch).shape == (2, 25)
