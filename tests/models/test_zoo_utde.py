"""UTDE (models.md §8.5): mTAND interpolation, the imputation/mTAND gate, time-attention CXR stream."""

from __future__ import annotations

import math

import pytest
import torch

from carebench_models import CarebenchModelError
from carebench_models.testing import task_spec, tiny_batch, tiny_model, train_steps
from carebench_models.zoo.utde import MTANDEmbedding, RowBatchNorm, TimeEmbedding, UTDEConfig, UTDEModel


def trained_model(kind: str = "binary") -> UTDEModel:
    task = task_spec(kind)
    model = tiny_model("utde", task)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=1)])
    assert isinstance(model, UTDEModel)
    return model.eval()


def masked_softmax_reference(mtand: MTANDEmbedding, ehr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mTAND written out as one batched masked softmax over [B, h, T, T, F] (models.md §8.5 step 2)."""
    batch, steps, features = ehr.shape
    scores = mtand.scores()[None, :, :, :, None].expand(batch, -1, -1, -1, features)
    scores = scores.masked_fill(~mask[:, None, None, :, :], -math.inf)
    weights = torch.softmax(scores, dim=3).nan_to_num(0.0)  # never-observed features: all -inf → 0
    values = (weights * ehr[:, None, None, :, :]).sum(dim=3)  # [B, h, T(ref), F]
    indicator = (weights * mask[:, None, None, :, :].float()).sum(dim=3)
    z = torch.cat([values, indicator], dim=3).permute(0, 2, 1, 3).reshape(batch, steps, -1)
    return mtand.output(z)


def test_mtand_equals_the_masked_softmax_and_guards_unobserved_features() -> None:
    torch.manual_seed(0)
    mtand = MTANDEmbedding(5, 12, time_dim=16, heads=8, d_model=7)
    ehr = torch.randn(3, 12, 5)
    mask = torch.rand(3, 12, 5) < 0.3
    mask[0, :, 1] = False  # never observed
    mask[1, :, :] = False  # a stay with no observation at all
    mask[2, 4, 3] = True
    out = mtand(ehr, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, masked_softmax_reference(mtand, ehr, mask), atol=1e-5, rtol=1e-5)
    # Unobserved values never matter: the interpolation reads observed hours only.
    noisy = torch.where(mask, ehr, 100.0 * torch.randn_like(ehr))
    torch.testing.assert_close(mtand(noisy, mask), out, atol=1e-5, rtol=1e-5)


def test_mtand_interpolates_at_every_reference_time() -> None:
    torch.manual_seed(1)
    mtand = MTANDEmbedding(2, 10, time_dim=8, heads=2, d_model=4)
    ehr = torch.zeros(1, 10, 2)
    mask = torch.zeros(1, 10, 2, dtype=torch.bool)
    mask[0, [2, 7], 0] = True
    ehr[0, 2, 0], ehr[0, 7, 0] = 1.0, 3.0
    captured: list[torch.Tensor] = []
    handle = mtand.output.register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    mtand(ehr, mask)
    handle.remove()
    z = captured[0].reshape(1, 10, 2, 4)  # [B, T, heads, (x_0, x_1, m_0, m_1)]
    values = z[0, :, :, 0]
    # A convex combination of the two observations at every reference time, varying with time.
    assert bool(((values >= 1.0 - 1e-6) & (values <= 3.0 + 1e-6)).all())
    assert values.std() > 1e-3
    torch.testing.assert_close(z[0, :, :, 2], torch.ones(10, 2))  # observed indicator of feature 0
    torch.testing.assert_close(z[0, :, :, [1, 3]], torch.zeros(10, 2, 2))  # feature 1 never observed


def test_time_embedding_is_one_linear_and_periodic_units() -> None:
    torch.manual_seed(2)
    embedding = TimeEmbedding(6)
    times = torch.linspace(0, 1, 5)
    phi = embedding(times)
    assert phi.shape == (5, 6)
    torch.testing.assert_close(phi[:, 0], embedding.linear.weight[0, 0] * times + embedding.linear.bias[0])
    expected = torch.sin(times[:, None] * embedding.periodic.weight[:, 0] + embedding.periodic.bias)
    torch.testing.assert_close(phi[:, 1:], expected)


def test_gate_is_per_step_and_channel_and_mixes_the_two_embeddings() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 4, seed=2)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model.gate_out.register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("gate", torch.sigmoid(out))
        ),
        model.imputation_embedding.register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("imp", out)
        ),
        model.mtand.register_forward_hook(lambda _m, _i, out: captured.__setitem__("mt", out)),
    ]
    with torch.no_grad():
        model.embed_ehr(batch)
    for hook in hooks:
        hook.remove()
    gate = captured["gate"]
    assert gate.shape == (4, 48, 32)
    assert bool(((gate > 0) & (gate < 1)).all()) and gate.std() > 1e-3
    assert (captured["imp"] - captured["mt"]).abs().max() > 1e-3


def test_ehr_stream_keeps_its_temporal_structure() -> None:
    # Upstream repeated one pooled vector at every position; here each hour has its own state.
    model = trained_model()
    batch = tiny_batch(model.task, 2, seed=3)
    with torch.no_grad():
        sequence = model.embed_ehr(batch)
        assert (sequence[:, 0] - sequence[:, -1]).abs().max() > 1e-3
        later = dict(batch, ehr=batch["ehr"].clone())
        later["ehr"][:, -1] += 3.0
        assert (model(later).logits - model(batch).logits).abs().max() > 1e-5


def test_cxr_stream_is_constant_over_time_and_ignores_the_image_time() -> None:
    # One image = one key: the time-attention weight is 1 at every reference time, whatever cxr_hours is.
    model = trained_model("multilabel")
    batch = tiny_batch(model.task, 6, paired_fraction=0.5, seed=4)
    idx = batch["has_cxr"].nonzero().squeeze(1)
    with torch.no_grad():
        stream = model.embed_cxr(batch, idx, 48)
        torch.testing.assert_close(stream, stream[:, :1].expand_as(stream))
        shifted = dict(batch, cxr_hours=batch["cxr_hours"] + 17.0)
        torch.testing.assert_close(model(shifted).logits, model(batch).logits)
        # The image itself does matter for paired rows.
        brighter = dict(batch, cxr=batch["cxr"] * 2.0)
        assert (model(brighter).logits - model(batch).logits)[idx].abs().max() > 1e-5


def test_row_batch_norm_handles_a_single_training_row() -> None:
    torch.manual_seed(3)
    norm = RowBatchNorm(4)
    norm(torch.randn(8, 4) * 3 + 1)
    running = (norm.running_mean.clone(), norm.running_var.clone())
    row = torch.randn(1, 4)
    out = norm(row)
    torch.testing.assert_close(norm.running_mean, running[0])
    torch.testing.assert_close(norm.running_var, running[1])
    norm.eval()
    torch.testing.assert_close(out, norm(row))
    model = tiny_model("utde", task_spec("binary"))
    logs = train_steps(model, [tiny_batch(model.task, 1, paired_fraction=1.0, seed=5)])
    assert math.isfinite(logs[0]["loss"])


def test_profiles_and_validation() -> None:
    paper, quick = UTDEConfig.for_profile("paper"), UTDEConfig.for_profile("quick")
    assert (paper.time_dim, paper.mtand_heads, paper.fusion_heads, paper.cross_layers) == (64, 8, 4, 1)
    assert (quick.time_dim, quick.fusion_heads, quick.d_model) == (16, 2, 32)
    model = tiny_model("utde", task_spec("binary"))
    assert model.mtand.output.in_features == 2 * 8 * 6  # heads × 2F at F 6
    with pytest.raises(CarebenchModelError, match="mtand_heads"):
        UTDEConfig.for_profile("quick", time_dim=12, mtand_heads=8)
    with pytest.raises(CarebenchModelError, match="fusion_heads"):
        UTDEConfig.for_profile("quick", fusion_heads=5)


def test_ehr_layers_see_the_hour_through_learned_positions() -> None:
    # A stay whose every hour looks the same gives the same gated embedding at every step; only the
    # positions of TransformerEHR (a [T, d] table, U(-0.1, 0.1)) let the EHR layers tell the hours apart.
    model = tiny_model("utde", task_spec("binary")).eval()
    assert isinstance(model, UTDEModel)
    assert tuple(model.ehr_position.shape) == (48, 32)
    assert 0 < float(model.ehr_position.detach().abs().max()) <= 0.1
    batch = tiny_batch(model.task, 2, seed=6)
    constant = dict(
        batch,
        ehr=batch["ehr"][:, :1].expand_as(batch["ehr"]).contiguous(),
        ehr_mask=torch.ones_like(batch["ehr_mask"]),
    )
    with torch.no_grad():
        sequence = model.embed_ehr(constant)
    assert (sequence[:, 0] - sequence[:, -1]).abs().max() > 1e-3
    with torch.no_grad():
        model.ehr_position.zero_()
        flat = model.embed_ehr(constant)
    torch.testing.assert_close(flat[:, 0], flat[:, -1], atol=1e-5, rtol=0)


def test_cxr_batch_norm_statistics_never_see_the_missing_token() -> None:
    task = task_spec("binary")
    model = tiny_model("utde", task, dropout=0.0)
    assert isinstance(model, UTDEModel)
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=7)
    paired = batch["has_cxr"]
    norm = model.cxr_embedding[1]
    assert isinstance(norm, RowBatchNorm)
    outputs, running = [], []
    for value in (0.0, 4.0):
        norm.reset_running_stats()
        with torch.no_grad():
            model.cxr_missing.value.fill_(value)
        model.train()
        with torch.no_grad():
            outputs.append(model(batch).logits)
        running.append((norm.running_mean.clone(), norm.running_var.clone()))
    torch.testing.assert_close(outputs[0][paired], outputs[1][paired], atol=1e-5, rtol=0)
    assert (outputs[0][~paired] - outputs[1][~paired]).abs().max() > 1e-4
    torch.testing.assert_close(running[0], running[1])
