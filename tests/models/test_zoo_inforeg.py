"""InfoReg: the window detector, the proximal term on the dominant encoder only, the Fisher trace."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from carebench_models import CarebenchModelError, TrainConfig, TrainState
from carebench_models.testing import task_spec, tiny_batch, tiny_model
from carebench_models.zoo.inforeg import InfoRegConfig, InfoRegModel, window_score


@pytest.mark.parametrize(
    ("traces", "window", "expected"),
    [
        ([], 3, 1.0),  # epoch 0: the window is open
        ([2.0], 3, 1.0),  # nothing before the last H epochs yet: tr₂ = 0
        ([1.0, 2.0, 4.0, 4.0], 2, (4.0 - 1.5) / 4.0),  # still growing fast
        ([1.0, 3.0, 5.0, 5.0, 5.0, 5.0], 2, 0.0),  # plateau: the window has closed
        ([1.0, 3.0, 5.0, 5.0, 5.0, 5.0], 3, (5.0 - 3.0) / 5.0),  # a wider window still sees the rise
        ([8.0, 8.0, 4.0, 2.0], 2, (3.0 - 8.0) / 3.0),  # information falling: negative
        ([0.0, 0.0], 2, 0.0),  # nothing learned: nothing to regulate
    ],
)
def test_window_score_on_hand_made_trace_histories(traces: list[float], window: int, expected: float) -> None:
    assert window_score(traces, window) == pytest.approx(expected)


def quick_model(seed: int = 0, **overrides: Any) -> InfoRegModel:
    model = tiny_model("inforeg", task_spec("multilabel"), seed=seed, **overrides)
    assert isinstance(model, InfoRegModel)
    return model.train()


def step_with_anchor_offset(
    k: float, offset: float, *, k_thr: float = 0.05
) -> tuple[InfoRegModel, dict[str, Any]]:
    """One training step with window score `k` and θ⁰ = θ − offset for both encoders."""
    model = quick_model(k_thr=k_thr)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # gradients are what we look at
    state = TrainState()
    model.on_epoch_start(state)
    window = model.window_state(state)
    window.k = k
    for anchors in window.anchors.values():
        torch._foreach_sub_(anchors, offset)
    torch.manual_seed(5)
    logs = model.training_step(tiny_batch(model.task, 8, paired_fraction=0.5, seed=1), [optimizer], state)
    return model, logs


def gradients(model: InfoRegModel) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("k", [0.05, 0.01, -0.3])
def test_no_proximal_term_when_k_is_at_or_below_the_threshold(k: float) -> None:
    plain, logs = step_with_anchor_offset(k, 0.0)
    shifted, _ = step_with_anchor_offset(k, 1.0)  # θ − θ⁰ = 1 everywhere would show in every gradient
    assert not any(name.startswith("beta_") for name in logs)
    reference, observed = gradients(plain), gradients(shifted)
    assert reference.keys() == observed.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(observed[name], grad, rtol=0, atol=0, msg=name)


def test_inside_the_window_the_dominant_encoder_alone_is_pulled_back() -> None:
    plain, _ = step_with_anchor_offset(0.5, 0.0)
    shifted, logs = step_with_anchor_offset(0.5, 1.0)
    betas = {name: float(logs[f"beta_{name}"]) for name in ("ehr", "cxr")}
    dominant = "ehr" if betas["ehr"] > 0 else "cxr"
    other = "cxr" if dominant == "ehr" else "ehr"
    assert betas[dominant] > 0 and betas[other] == 0.0
    gamma = {"ehr": shifted.config.gamma_ehr, "cxr": shifted.config.gamma_cxr}[dominant]  # type: ignore[attr-defined]
    assert gamma * torch.exp(torch.tensor(-1.0)) <= betas[dominant] <= gamma * torch.exp(torch.tensor(1.0))
    prefixes = {"ehr": "ehr_encoder.", "cxr": "cxr_branch."}
    reference, observed = gradients(plain), gradients(shifted)
    for name, grad in reference.items():
        # β(θ − θ⁰) with θ − θ⁰ = 1 on the dominant encoder; heads and the other encoder untouched.
        pull = betas[dominant] if name.startswith(prefixes[dominant]) else 0.0
        torch.testing.assert_close(observed[name], grad + pull, rtol=1e-5, atol=1e-6, msg=name)


def test_no_regulation_without_paired_rows() -> None:
    model = quick_model()
    state = TrainState()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model.on_epoch_start(state)
    logs = model.training_step(tiny_batch(model.task, 6, paired_fraction=0.0, seed=2), [optimizer], state)
    assert model.window_state(state).k == 1.0 and "beta_ehr" not in logs and "cxr_head" not in logs


def test_fisher_trace_is_the_mean_squared_gradient_of_the_encoder_weights() -> None:
    model = quick_model(window=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    state = TrainState()
    model.on_epoch_start(state)  # θ⁰ = θ: the proximal term is zero in this step
    model.training_step(tiny_batch(model.task, 8, paired_fraction=0.5, seed=3), [optimizer], state)
    expected = []
    for encoder in (model.ehr_encoder, model.cxr_branch):
        layers = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
        expected.append(sum(float(layer.weight.grad.square().mean()) for layer in layers))  # type: ignore[union-attr]
    logs = model.on_epoch_end(state, [optimizer])
    assert logs["fisher_trace_ehr"] == pytest.approx(expected[0], rel=1e-5)
    assert logs["fisher_trace_cxr"] == pytest.approx(expected[1], rel=1e-5)
    assert logs["inforeg_k"] == 1.0
    # The next epoch's k compares the last trace with the one before (H = 1): 1 − 0 / trace.
    model.on_epoch_start(state)
    assert model.window_state(state).k == pytest.approx(1.0)
    model.on_epoch_end(state, [optimizer])  # no step: trace 0, and k = 0 then (tr₁ = 0)
    model.on_epoch_start(state)
    assert model.window_state(state).k == 0.0
    assert model.window_state(state).traces["ehr"] == [pytest.approx(expected[0]), 0.0]


def test_window_modality_and_config_checks() -> None:
    model = quick_model(window_modality="cxr", window=2)
    state = TrainState()
    window = model.window_state(state)
    window.traces = {"ehr": [1.0, 1.0, 1.0, 1.0], "cxr": [1.0, 1.0, 2.0, 4.0]}
    model.on_epoch_start(state)
    assert window.k == pytest.approx((3.0 - 1.0) / 3.0)
    optimizers = model.configure_optimizers(TrainConfig())
    assert len(optimizers) == 1
    for bad in ({"window": 0}, {"gamma_ehr": -1.0}, {"window_modality": "both"}):
        with pytest.raises(CarebenchModelError, match="inforeg"):
            InfoRegConfig.for_profile("quick", **bad)
