"""Flex-MoE: top-k routing with a forced expert per combination, load balance, the bank, warm-up order."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from carebench_models import (
    BatchDictDataset,
    CarebenchModelError,
    TaskSpec,
    TrainConfig,
    Trainer,
    create_model,
)
from carebench_models.testing import (
    parameter_count,
    task_spec,
    tiny_arrays,
    tiny_batch,
    tiny_model,
    train_steps,
)
from carebench_models.zoo.flexmoe import CombinationMoE, FlexMoEModel, cv_squared


def moe(num_experts: int = 4, top_k: int = 2, dim: int = 6, seed: int = 0) -> CombinationMoE:
    torch.manual_seed(seed)
    layer = CombinationMoE(dim, num_experts=num_experts, top_k=top_k, hidden=8)
    with torch.no_grad():
        layer.w_gate.normal_()
    return layer.eval()


def test_top_k_routing_sends_each_token_to_k_experts() -> None:
    layer = moe(num_experts=5, top_k=3)
    tokens = torch.randn(40, 6)
    combination = torch.tensor([0, 1] * 20)
    gates, _ = layer.route(tokens, combination)
    assert ((gates > 0).sum(dim=1) == 3).all()
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(40))
    logits = tokens @ layer.w_gate
    full = combination == 0
    top = logits.topk(3, dim=1).indices
    assert (gates[full].gather(1, top[full]) > 0).all()  # G-Router: the top-k of the logits
    # S-Router: the combination's expert plus the best two of the others.
    others = logits[~full].clone()
    others[:, 1] = float("-inf")
    expected = torch.zeros_like(gates[~full], dtype=torch.bool).scatter(
        1, others.topk(2, dim=1).indices, True
    )
    expected[:, 1] = True
    assert torch.equal(gates[~full] > 0, expected)
    # The gates are the softmax of the selected logits.
    selected = logits.masked_fill(gates == 0, float("-inf"))
    torch.testing.assert_close(gates, torch.softmax(selected, dim=1))


def test_forced_expert_even_with_the_lowest_logit() -> None:
    layer = moe(num_experts=4, top_k=1)
    with torch.no_grad():
        layer.w_gate.zero_()
        layer.w_gate[:, 1] = -5.0
    tokens = torch.ones(6, 6)
    gates, _ = layer.route(tokens, torch.tensor([1, 1, 1, 0, 0, 0]))
    assert torch.equal(gates[:3], torch.eye(4)[[1, 1, 1]])
    assert (gates[3:, 1] == 0).all()


def test_dense_mixture_equals_sparse_dispatch() -> None:
    layer = moe(num_experts=4, top_k=2)
    tokens, combination = torch.randn(10, 6), torch.tensor([0, 1] * 5)
    with torch.no_grad():
        mixed, _ = layer(tokens, combination)
        gates, _ = layer.route(tokens, combination)
        experts = layer.experts
        for n in range(10):
            expected = torch.zeros(6)
            for e in gates[n].nonzero().flatten().tolist():
                hidden = torch.nn.functional.gelu(tokens[n] @ experts.w_in[e] + experts.b_in[e])
                expected += gates[n, e] * (hidden @ experts.w_out[e] + experts.b_out[e])
            torch.testing.assert_close(mixed[n], expected, atol=1e-5, rtol=1e-5)


def test_balance_loss_is_zero_at_uniform_load_and_grows_with_imbalance() -> None:
    assert cv_squared(torch.full((8,), 3.0)) == 0
    assert cv_squared(torch.tensor([4.0, 0.0, 0.0, 0.0])) > cv_squared(torch.tensor([2.0, 1.0, 1.0, 0.0])) > 0
    layer = moe(num_experts=4, top_k=1, dim=4)
    full = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        layer.w_gate.copy_(torch.eye(4) * 10)
    uniform_tokens = torch.eye(4).repeat(2, 1)  # two tokens per expert
    _, uniform_loss = layer.route(uniform_tokens, full)
    skewed_tokens = torch.eye(4)[[0, 0, 0, 0, 0, 1, 2, 3]]
    _, skewed_loss = layer.route(skewed_tokens, full)
    assert uniform_loss.item() == pytest.approx(0.0, abs=1e-6)
    assert skewed_loss.item() > 0.1
    # Non-full tokens are balanced over experts 1…E−1 only and add the router cross-entropy.
    rest = torch.ones(6, dtype=torch.long)
    with torch.no_grad():
        layer.w_gate.zero_()
    _, loss = layer.route(torch.eye(4)[[1, 2, 3, 1, 2, 3]], rest)
    # Equal logits: cross-entropy log 4; all six tokens on their forced expert 1: importance and
    # load [6, 0, 0] over experts 1-3, cv² = var / mean² = 12 / 4 each.
    assert loss.item() == pytest.approx(math.log(4.0) + 3.0 + 3.0, rel=1e-5)


def test_load_is_the_probability_of_being_selected_under_the_noise() -> None:
    layer = moe(num_experts=4, top_k=2, dim=4).train()
    with torch.no_grad():
        layer.w_gate.copy_(torch.diag(torch.tensor([1.0, 0.5, 0.0, -0.5])))
        layer.w_noise.fill_(0.0)
    tokens = torch.ones(20000, 4)
    torch.manual_seed(1)
    u = tokens.float()
    clean = u @ layer.w_gate
    scale = torch.nn.functional.softplus(u @ layer.w_noise) + 0.01
    noisy = clean + torch.randn_like(clean) * scale
    top_values, top_indices = noisy.topk(3, dim=1)
    probability = layer.probability_in_top_k(
        clean, noisy, scale, top_values, torch.zeros_like(noisy, dtype=torch.bool)
    )
    selected = torch.zeros_like(noisy).scatter(1, top_indices[:, :2], 1.0)
    torch.testing.assert_close(probability.mean(dim=0), selected.mean(dim=0), atol=0.02, rtol=0)
    forced = torch.zeros_like(noisy, dtype=torch.bool)
    forced[:, 1] = True
    assert (layer.probability_in_top_k(clean, noisy, scale, top_values, forced)[:, 1] == 1).all()


def test_all_experts_get_gradients_when_k_equals_e() -> None:
    task = task_spec("binary")
    model = tiny_model("flexmoe", task, num_experts=4, top_k=4)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=2)])
    experts = model.moe.experts
    assert experts.w_in.grad is not None
    assert (experts.w_in.grad.flatten(1).abs().sum(dim=1) > 0).all()
    assert (experts.w_out.grad.flatten(1).abs().sum(dim=1) > 0).all()
    assert model.is_conditional("moe.experts.w_in") and not model.is_conditional("moe.w_gate")


def test_rows_without_cxr_read_the_bank_entry_of_their_combination() -> None:
    task = task_spec("binary")
    model = tiny_model("flexmoe", task)
    assert isinstance(model, FlexMoEModel)
    model.eval()
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=3)
    reference = model.predict_proba(batch)
    with torch.no_grad():
        model.bank[0].add_(1.0)
        model.bank[2].add_(1.0)
        model.bank[1, 0].add_(1.0)  # never read: every stay has its EHR
    torch.testing.assert_close(model.predict_proba(batch), reference)
    with torch.no_grad():
        model.bank[1, 1].add_(1.0)
    changed = (model.predict_proba(batch) - reference).abs()[:, 0]
    paired = batch["has_cxr"]
    assert (changed[~paired] > 1e-6).all() and (changed[paired] == 0).all()


def test_gate_loss_is_weighted_and_zero_weight_removes_it() -> None:
    task = task_spec("multilabel")
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=4)
    for weight in (0.0, 0.5):
        model = tiny_model("flexmoe", task, gate_weight=weight).eval()
        with torch.no_grad():
            gate = model(batch).aux_losses["gate"]
        assert (gate == 0) if weight == 0 else (gate > 0)


def test_warm_up_presents_paired_stays_first() -> None:
    task = task_spec("binary")
    model = tiny_model("flexmoe", task, warmup_epochs=1)
    assert [model.sample_order(epoch) for epoch in (0, 1, 5)] == ["modality_count_desc", "shuffle", "shuffle"]
    seen: list[list[bool]] = [[], []]
    step = model.training_step

    def recording_step(batch: Any, optimizers: Any, state: Any) -> Any:
        seen[state.epoch].extend(batch["has_cxr"].tolist())
        return step(batch, optimizers, state)

    model.training_step = recording_step  # type: ignore[method-assign]
    data = BatchDictDataset(tiny_arrays(task, 64, paired_fraction=0.5, seed=5))
    config = TrainConfig.for_profile("quick", max_epochs=2, patience=5, device="cpu")
    Trainer(model, config).fit(data, data)
    assert seen[0] == [True] * 32 + [False] * 32
    assert seen[1] != seen[0] and sum(seen[1]) == 32


@pytest.mark.parametrize("override", [{"num_experts": 2}, {"top_k": 5}, {"top_k": 0}, {"gate_weight": -1.0}])
def test_invalid_options_raise(override: dict[str, Any]) -> None:
    with pytest.raises(CarebenchModelError, match="flexmoe"):
        tiny_model("flexmoe", task_spec("binary"), **override)


def test_dense_experts_are_one_tensor_per_weight() -> None:
    model = tiny_model("flexmoe", task_spec("binary"), num_experts=16)
    shapes = {name: tuple(p.shape) for name, p in model.moe.experts.named_parameters()}
    assert shapes == {"w_in": (16, 32, 64), "b_in": (16, 64), "w_out": (16, 64, 32), "b_out": (16, 32)}
    assert not any(isinstance(module, nn.ModuleList) for module in model.moe.modules())


@pytest.mark.slow
@pytest.mark.parametrize(("experts", "millions"), [(8, 29.4), (16, 31.5)])
def test_paper_profile_size_and_forward(experts: int, millions: float) -> None:
    assert parameter_count("flexmoe", num_experts=experts) / 1e6 == pytest.approx(millions, rel=0.02)
    task = TaskSpec("phenotype", "multilabel", 25, tuple(f"label_{i}" for i in range(25)))
    model = create_model(
        "flexmoe", task=task, profile="paper", cxr_weights="none", num_experts=experts
    ).eval()
    batch = tiny_batch(task, 2, paired_fraction=0.5, ehr_features=27, image_size=224, with_labels=False)
    assert model.predict_proba(batch).shape == (2, 25)


def test_one_call_over_groups_equals_separate_calls() -> None:
    layer = moe(num_experts=5, top_k=2)
    tokens, combination = torch.randn(24, 6), torch.tensor([0, 0, 1] * 8)
    group = torch.arange(2).repeat_interleave(12)
    with torch.no_grad():
        mixed, loss = layer(tokens, combination, group, groups=2)
        parts = [layer(tokens[rows], combination[rows]) for rows in (slice(0, 12), slice(12, 24))]
    torch.testing.assert_close(mixed, torch.cat([part[0] for part in parts]))
    torch.testing.assert_close(loss, parts[0][1] + parts[1][1])
