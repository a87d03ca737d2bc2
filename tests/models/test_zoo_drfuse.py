"""DrFuse: logit average, JSD, disease-wise attention and the ranking loss; CXR terms only on paired rows."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from carebench_models import CarebenchModelError, TaskSpec, create_model
from carebench_models.testing import (
    parameter_count,
    select_rows,
    task_spec,
    tiny_batch,
    tiny_model,
    train_steps,
)
from carebench_models.zoo.drfuse import DrFuseModel, jensen_shannon, logit_average

CXR_TERMS = ("jsd", "orth_cxr", "pred_cxr", "rank")


def trained_model(kind: str = "multilabel", **overrides: Any) -> DrFuseModel:
    task = task_spec(kind)
    model = tiny_model("drfuse", task, **overrides)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=1)])
    assert isinstance(model, DrFuseModel)
    return model.eval()


def captured_attention(model: DrFuseModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The attention weights a [B, K, 3] of one forward pass."""
    captured: list[torch.Tensor] = []
    attend = model.disease_attention

    def spy(tokens: torch.Tensor, available: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, attention = attend(tokens, available)
        captured.append(attention.detach())
        return logits, attention

    model.disease_attention = spy  # type: ignore[method-assign]
    with torch.no_grad():
        model(batch)
    del model.disease_attention
    return captured[0]


def test_logit_average_formula_and_saturation() -> None:
    h1, h2 = torch.randn(4, 5), torch.randn(4, 5)
    e1, e2 = h1.exp(), h2.exp()
    expected = torch.log((2 * e1 * e2 + e1 + e2) / (2 + e1 + e2))
    torch.testing.assert_close(logit_average(h1, h2), expected)
    extreme = logit_average(torch.full((1, 3), 80.0), torch.full((1, 3), -90.0))
    assert torch.isfinite(extreme).all()


def test_jensen_shannon_matches_the_definition() -> None:
    h1, h2 = torch.randn(6, 4), torch.randn(6, 4)
    p, q = torch.sigmoid(h1), torch.sigmoid(h2)
    m = (p + q) / 2
    expected = (0.5 * (p * (p / m).log() + q * (q / m).log())).sum(dim=1).mean()
    torch.testing.assert_close(jensen_shannon(h1, h2), expected)
    assert jensen_shannon(h1, h1).abs() < 1e-6
    assert torch.isfinite(jensen_shannon(torch.full((2, 3), -200.0), torch.full((2, 3), 200.0)))


def test_attention_sums_to_one_and_ignores_the_cxr_token_on_unpaired_rows() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=2)
    attention = captured_attention(model, batch)
    assert attention.shape == (8, 3, 3)
    torch.testing.assert_close(attention.sum(dim=2), torch.ones(8, 3))
    paired = batch["has_cxr"]
    assert (attention[~paired][:, :, 2] == 0).all()
    assert (attention[paired][:, :, 2] > 0).all()


def test_final_logits_read_each_labels_own_attended_vector() -> None:
    model = trained_model()
    torch.manual_seed(3)
    tokens = torch.randn(4, 3, 32)
    available = torch.tensor([[True, True, True], [True, True, False]] * 2)
    with torch.no_grad():
        logits, attention = model.disease_attention(tokens, available)
        projected = model.attention_proj(tokens).view(4, 3, 5, 32)
        for b in range(4):
            present = available[b]
            query = projected[b, present, 0].mean(dim=0)
            for j in range(3):
                scores = projected[b, present, 2 + j] @ query / math.sqrt(32)
                weights = torch.softmax(scores, dim=0)
                torch.testing.assert_close(attention[b, j, present], weights)
                attended = weights @ projected[b, present, 1]
                expected = attended @ model.final.weight[j] + model.final.bias[j]
                torch.testing.assert_close(logits[b, j], expected, atol=1e-5, rtol=1e-5)


def test_cxr_terms_vanish_without_a_cxr_and_count_only_paired_rows() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=4)
    with torch.no_grad():
        blank = model(dict(batch, has_cxr=torch.zeros(8, dtype=torch.bool))).aux_losses
        mixed = model(batch).aux_losses
        paired_only = model(select_rows(batch, batch["has_cxr"].nonzero().flatten())).aux_losses
    for name in CXR_TERMS:
        assert blank[name] == 0, name
        assert mixed[name] > 0, name
        torch.testing.assert_close(mixed[name], paired_only[name])  # means over the paired rows
    assert blank["orth_ehr"] > 0 and blank["pred_ehr"] > 0 and blank["pred_shared"] > 0


def test_unpaired_rows_use_the_ehr_shared_prediction() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=5)
    inputs: list[torch.Tensor] = []
    handle = model.shared_head.register_forward_hook(lambda _m, args, _out: inputs.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(batch)
            feat = model.ehr_trunk.encode_sequence(
                torch.cat([batch["ehr"], batch["ehr_mask"].float()], dim=2)
            )
            h1 = model.shared_mlp(model.ehr_shared(feat).mean(dim=1))
    finally:
        handle.remove()
    missing = ~batch["has_cxr"]
    torch.testing.assert_close(inputs[0][missing], h1[missing])
    assert (inputs[0][~missing] - h1[~missing]).abs().max() > 1e-4


def test_rank_loss_favours_the_representation_with_the_lower_loss() -> None:
    model = trained_model()
    losses = {"ehr": torch.tensor([[1.0]]), "shared": torch.tensor([[0.5]]), "cxr": torch.tensor([[0.2]])}
    agreeing = torch.tensor([[[0.1, 0.3, 0.6]]])  # lower loss, more attention: no penalty
    assert model.rank_loss(agreeing, losses) == 0
    opposed = torch.tensor([[[0.6, 0.3, 0.1]]])
    # (cxr vs ehr) 0.5, (shared vs ehr) 0.3, (shared vs cxr) 0.2: shared has the higher loss yet more weight.
    expected = ((0.6 - 0.1) + (0.6 - 0.3) + (0.3 - 0.1)) / 3
    assert model.rank_loss(opposed, losses).item() == pytest.approx(expected)


def test_multiclass_ranking_uses_the_rows_cross_entropy() -> None:
    model = trained_model("multiclass")
    logits, y = torch.randn(3, 7), torch.tensor([0, 3, 6])
    elementwise = model.elementwise_loss(logits, y)
    assert elementwise.shape == (3, 7)
    torch.testing.assert_close(
        elementwise, F.cross_entropy(logits, y, reduction="none")[:, None].expand(-1, 7)
    )


def test_lambdas_scale_their_terms() -> None:
    task = task_spec("binary")
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=6)
    base = tiny_model("drfuse", task).eval()
    scaled = tiny_model("drfuse", task, lambda_ds=2.0, lambda_attn=0.0, lambda_pc=3.0).eval()
    with torch.no_grad():
        one, other = base(batch).aux_losses, scaled(batch).aux_losses
    torch.testing.assert_close(other["jsd"], 2 * one["jsd"])
    torch.testing.assert_close(other["pred_cxr"], 3 * one["pred_cxr"])
    assert other["rank"] == 0
    torch.testing.assert_close(other["orth_ehr"], one["orth_ehr"])
    with pytest.raises(CarebenchModelError, match="lambda_de"):
        tiny_model("drfuse", task, lambda_de=-0.1)


def test_profiles_size_the_ehr_feed_forward() -> None:
    assert tiny_model("drfuse", task_spec("binary")).ehr_trunk.layers[0].linear1.out_features == 64
    assert (
        create_model(
            "drfuse", task=task_spec("binary"), profile="paper", cxr_weights="none"
        ).ehr_shared.linear1.out_features
        == 2048
    )


@pytest.mark.slow
@pytest.mark.parametrize(("outputs", "millions"), [(25, 54.2), (1, 52.6)])
def test_paper_profile_size_and_forward(outputs: int, millions: float) -> None:
    task = TaskSpec("phenotype", "multilabel", outputs, tuple(f"label_{i}" for i in range(outputs)))
    assert parameter_count("drfuse", task=task) / 1e6 == pytest.approx(millions, rel=0.02)
    model = create_model("drfuse", task=task, profile="paper", cxr_weights="none").eval()
    batch = tiny_batch(task, 2, paired_fraction=0.5, ehr_features=27, image_size=224, with_labels=False)
    assert model.predict_proba(batch).shape == (2, outputs)
