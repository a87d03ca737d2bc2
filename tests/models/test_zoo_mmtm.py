"""MMTM (models.md §8.7): gates in range, gated CNN features feed the next stage, the `medfuse` schedule."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from carebench_models import CarebenchModelError, TrainState
from carebench_models.testing import task_spec, tiny_batch, tiny_model, train_steps
from carebench_models.training.config import TrainConfig
from carebench_models.zoo.mmtm import MMTMConfig, MMTMModel, MMTMUnit


def quick_model(**overrides: Any) -> MMTMModel:
    model = tiny_model("mmtm", task_spec("multilabel"), **overrides)
    assert isinstance(model, MMTMModel)
    return model


@pytest.mark.parametrize("gate_scale", [2.0, 1.0])
def test_gates_lie_in_zero_to_gate_scale(gate_scale: float) -> None:
    torch.manual_seed(0)
    unit = MMTMUnit(16, 8, ratio=4.0, gate_scale=gate_scale)
    assert unit.squeeze.out_features == int(2 * (16 + 8) / 4)
    cxr_map, ehr_seq = 5.0 * torch.randn(3, 16, 4, 4), 5.0 * torch.randn(5, 48, 8)
    cxr_gate, ehr_gate = unit.gates(cxr_map, ehr_seq, torch.tensor([0, 2, 4]))
    assert cxr_gate is not None and cxr_gate.shape == (3, 16) and ehr_gate.shape == (5, 8)
    for gate in (cxr_gate, ehr_gate):
        assert bool(((gate > 0) & (gate < gate_scale)).all())
        assert gate.std() > 1e-3  # data-dependent, not constant


def test_zero_excitation_is_the_identity_and_gates_change_the_features() -> None:
    model = quick_model().eval()
    batch = tiny_batch(model.task, 6, paired_fraction=1.0, seed=1)
    with torch.no_grad():
        ungated = model.cxr_encoder(batch["cxr"])
        gated = model.fuse(batch).cxr_rows
        assert gated is not None and (gated - ungated).abs().max() > 1e-4
        for unit in model.mmtm.values():
            for layer in (unit.cxr_excitation, unit.ehr_excitation):
                layer.weight.zero_()
                layer.bias.zero_()
        identity = model.fuse(batch).cxr_rows  # 2σ(0) = 1 at every stage
    assert identity is not None
    torch.testing.assert_close(identity, ungated, atol=1e-5, rtol=1e-5)


def test_gated_stage_output_feeds_the_next_stage() -> None:
    # Only the stem is fused; its CXR gate is forced to a constant 0.5 on every channel, so every
    # later stage must see exactly half the stem output (upstream dropped the gated features).
    model = quick_model(stages=(0,)).eval()
    unit = model.mmtm["0"]
    with torch.no_grad():
        unit.cxr_excitation.weight.zero_()
        unit.cxr_excitation.bias.fill_(-torch.log(torch.tensor(3.0)))  # 2σ(−ln 3) = 0.5
    batch = tiny_batch(model.task, 4, paired_fraction=1.0, seed=2)
    encoder = model.cxr_encoder
    with torch.no_grad():
        out = 0.5 * encoder.stem(batch["cxr"])
        for stage in encoder.stages[1:]:
            out = stage(out)
        expected = out.mean(dim=(2, 3))
        gated = model.fuse(batch).cxr_rows
    assert gated is not None
    torch.testing.assert_close(gated, expected, atol=1e-5, rtol=1e-5)


def test_ehr_stream_is_gated_without_any_cxr() -> None:
    model = quick_model().eval()
    batch = tiny_batch(model.task, 4, paired_fraction=0.0, seed=3)
    with torch.no_grad():
        before = model(batch).logits
        model.mmtm["4"].missing_squeeze.value.add_(1.0)
        after = model(batch).logits
    assert (after - before).abs().max() > 1e-5


def test_stage_subset_and_options() -> None:
    model = quick_model(stages=[4, 0, 4])
    assert model.config.stages == (0, 4) and sorted(model.mmtm) == ["0", "4"]
    assert not hasattr(model, "ehr_head")
    with pytest.raises(CarebenchModelError, match="stages"):
        MMTMConfig.for_profile("quick", stages=(5,))
    with pytest.raises(CarebenchModelError, match="schedule"):
        MMTMConfig.for_profile("quick", schedule="alternating")


def count_steps(optimizers: list[torch.optim.Optimizer]) -> list[int]:
    counts = [0] * len(optimizers)
    for position, optimizer in enumerate(optimizers):
        optimizer.register_step_post_hook(
            lambda *_, position=position: counts.__setitem__(position, counts[position] + 1)
        )
    return counts


def test_medfuse_schedule_takes_three_steps_with_split_optimisers() -> None:
    model = quick_model(schedule="medfuse")
    optimizers = model.configure_optimizers(TrainConfig())
    assert len(optimizers) == 3
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [{names[id(p)] for group in opt.param_groups for p in group["params"]} for opt in optimizers]
    assert any(n.startswith("ehr_lstm1.") for n in groups[0]) and not any(
        n.startswith("cxr_encoder.") for n in groups[0]
    )
    assert any(n.startswith("cxr_encoder.") for n in groups[1]) and not any(
        n.startswith("ehr_lstm") for n in groups[1]
    )
    assert all(any(n.startswith(f"mmtm.{stage}.") for n in groups[0] & groups[1]) for stage in "01234")
    assert groups[2] == set(names.values())

    counts = count_steps(optimizers)
    state = TrainState(generator=torch.Generator().manual_seed(0))
    model.train()
    logs = model.training_step(tiny_batch(model.task, 6, paired_fraction=0.5, seed=4), optimizers, state)
    assert counts == [1, 1, 1]
    assert set(logs) == {"loss", "task", "ehr_only", "cxr_only"}
    # Without a CXR there is nothing for the CXR-only head: that step is skipped.
    logs = model.training_step(tiny_batch(model.task, 6, paired_fraction=0.0, seed=5), optimizers, state)
    assert counts == [2, 1, 2] and "cxr_only" not in logs


def test_joint_schedule_is_the_default_single_step() -> None:
    model = quick_model()
    optimizers = model.configure_optimizers(TrainConfig())
    assert len(optimizers) == 1
    counts = count_steps(optimizers)
    model.train()
    model.training_step(tiny_batch(model.task, 6, seed=6), optimizers, TrainState())
    assert counts == [1]


def test_medfuse_schedule_learns_all_heads() -> None:
    model = quick_model(schedule="medfuse")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_steps(model, [tiny_batch(model.task, 8, paired_fraction=0.5, seed=seed) for seed in (7, 8)])
    for prefix in ("ehr_head.", "cxr_head.", "head.", "cxr_encoder.", "ehr_lstm1.", "mmtm.0."):
        assert any(
            not torch.equal(p, before[name])
            for name, p in model.named_parameters()
            if name.startswith(prefix)
        ), prefix
