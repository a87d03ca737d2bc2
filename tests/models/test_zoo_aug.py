"""AUG: boosting slots grow on the weaker modality, train with fresh optimiser state and survive a round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from carebench_models import (
    CarebenchModelError,
    TaskSpec,
    TrainConfig,
    Trainer,
    TrainState,
    create_model,
    load_weights,
    save_weights,
)
from carebench_models.testing import task_spec, tiny_batch, tiny_dataset, tiny_model, train_steps
from carebench_models.zoo.aug import CONFIDENCE_KEY, AUGConfig, AUGModel


def quick_model(kind: str = "multilabel", *, seed: int = 0, **overrides: Any) -> AUGModel:
    model = tiny_model("aug", task_spec(kind), seed=seed, **overrides)
    assert isinstance(model, AUGModel)
    return model


def force_ratio(
    model: AUGModel, ratio: float, optimizers: list[torch.optim.Optimizer], *, epoch: int = 0
) -> dict[str, float]:
    """End an epoch whose paired rows had S_ehr / S_cxr = ratio."""
    state = TrainState(epoch=epoch)
    state.extra[CONFIDENCE_KEY] = torch.tensor([ratio * 3.0, 3.0, 5.0])
    return model.on_epoch_end(state, optimizers)


def test_aca_activates_a_slot_of_the_weaker_modality_at_check_epochs() -> None:
    model = quick_model(lam=1.0, delta=0.05, t_check=5)
    optimizers = model.configure_optimizers(TrainConfig())
    logs = force_ratio(model, 1.5, optimizers)  # EHR more confident: the CXR gets a classifier
    assert logs["aug_ratio"] == pytest.approx(1.5)
    assert (model.ehr_slots.active_count, model.cxr_slots.active_count) == (0, 1)
    force_ratio(model, 0.5, optimizers, epoch=1)  # not a check epoch: (1 + 1) % 5 != 0
    assert (model.ehr_slots.active_count, model.cxr_slots.active_count) == (0, 1)
    force_ratio(model, 0.5, optimizers, epoch=4)
    assert (model.ehr_slots.active_count, model.cxr_slots.active_count) == (1, 1)
    force_ratio(model, 1.04, optimizers, epoch=9)  # inside λ ± δ: nothing
    assert (model.ehr_slots.active_count, model.cxr_slots.active_count) == (1, 1)
    for epoch in (14, 19, 24, 29):  # four slots in the quick profile, then ACA logs and skips
        logs = force_ratio(model, 0.5, optimizers, epoch=epoch)
    assert model.ehr_slots.active_count == model.ehr_slots.capacity == 4
    assert logs["aug_ehr_slots"] == 4.0 and int(model.ehr_slots.active) == 4
    # An epoch without paired rows has no ratio and changes nothing.
    assert "aug_ratio" not in model.on_epoch_end(TrainState(epoch=0), optimizers)


def test_activated_slot_receives_gradients_and_a_fresh_optimiser_state() -> None:
    model = quick_model()
    optimizers = model.configure_optimizers(TrainConfig())
    cxr_optimizer = optimizers[1]
    slot_weight, slot_bias = model.cxr_slots.weight[0], model.cxr_slots.bias[0]
    for optimizer in optimizers:  # every slot is registered from the start
        registered = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert (id(slot_weight) in registered) == (optimizer is cxr_optimizer)
    cxr_optimizer.state[slot_weight] = {"step": torch.tensor(40.0), "exp_avg": torch.ones_like(slot_weight)}
    before = slot_weight.detach().clone()
    force_ratio(model, 2.0, optimizers)
    assert slot_weight not in cxr_optimizer.state  # stale moments are gone
    assert not torch.equal(slot_weight.detach(), before)  # re-initialised
    assert torch.count_nonzero(slot_bias) == 0

    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=1)
    model.train()
    model.training_step(batch, optimizers, TrainState())
    assert slot_weight.grad is not None and torch.isfinite(slot_weight.grad).all()
    assert slot_weight.grad.abs().sum() > 0
    assert float(cxr_optimizer.state[slot_weight]["step"]) == 1.0  # AdamW started afresh
    assert model.cxr_slots.weight[1].grad is None  # inactive slots stay out of the step
    assert all(weight.grad is None for weight in model.ehr_slots.weight)


def test_boosted_logits_decompose_into_base_and_slot_terms() -> None:
    model = quick_model("multiclass").eval()
    optimizers = model.configure_optimizers(TrainConfig())
    force_ratio(model, 0.5, optimizers, epoch=0)
    force_ratio(model, 0.5, optimizers, epoch=4)
    features = torch.randn(5, model.config.d_model)
    output = model.boosted_logits(features, model.ehr_embed, model.ehr_slots)
    base = model.fc_out(torch.relu(model.ehr_embed(features)))
    terms = [
        model.fc_out(torch.relu(features @ weight.T + bias))
        for weight, bias in zip(model.ehr_slots.weight[:2], model.ehr_slots.bias[:2], strict=True)
    ]
    assert output.last is not None and output.previous is not None
    torch.testing.assert_close(output.logits, base + terms[0] + terms[1])
    torch.testing.assert_close(output.last, terms[1])
    torch.testing.assert_close(output.previous, base + terms[0])
    y = torch.tensor([0, 3, 6, 2, 1])
    loss = model.boosting_loss(output, y)
    soft = torch.nn.functional.one_hot(y, 7) * torch.softmax(output.previous, dim=1)
    soft_ce = -(soft * torch.log_softmax(output.last, dim=1)).sum(dim=1).mean()
    ce = torch.nn.functional.cross_entropy
    expected = ce(output.logits, y) + ce(output.previous, y) + ce(output.last, y) - 0.5 * soft_ce
    torch.testing.assert_close(loss, expected)


def test_prediction_mixes_modalities_on_paired_rows_only() -> None:
    model = quick_model("binary", alpha=0.7).eval()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=2)
    idx = batch["has_cxr"].nonzero().squeeze(1)
    with torch.no_grad():
        logits = model(batch).logits
        ehr = model.boosted_logits(
            model.ehr_encoder(model_input(batch)), model.ehr_embed, model.ehr_slots
        ).logits
        cxr = model.boosted_logits(
            model.cxr_branch(batch["cxr"][idx]), model.cxr_embed, model.cxr_slots
        ).logits
    expected = ehr.clone()
    expected[idx] = 0.7 * ehr[idx] + 0.3 * cxr
    torch.testing.assert_close(logits, expected)


def model_input(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([batch["ehr"], batch["ehr_mask"].float()], dim=-1)


def test_training_step_steps_each_side_once_and_skips_the_cxr_side_without_pairs() -> None:
    model = quick_model()
    optimizers = model.configure_optimizers(TrainConfig())
    counts = [0, 0]
    for position, optimizer in enumerate(optimizers):
        optimizer.register_step_post_hook(
            lambda *_, position=position: counts.__setitem__(position, counts[position] + 1)
        )
    state = TrainState()
    model.train()
    logs = model.training_step(tiny_batch(model.task, 8, paired_fraction=0.5, seed=3), optimizers, state)
    assert counts == [1, 1] and set(logs) == {"loss", "ehr", "cxr"}
    torch.testing.assert_close(logs["loss"], 0.5 * logs["ehr"] + 0.5 * logs["cxr"])
    assert float(state.extra[CONFIDENCE_KEY][2]) == 4.0  # the four paired rows
    logs = model.training_step(tiny_batch(model.task, 8, paired_fraction=0.0, seed=4), optimizers, state)
    assert counts == [2, 1] and "cxr" not in logs


def test_round_trip_restores_the_grown_classifier(tmp_path: Path) -> None:
    model = quick_model()
    optimizers = model.configure_optimizers(TrainConfig())
    force_ratio(model, 0.5, optimizers, epoch=0)
    force_ratio(model, 0.5, optimizers, epoch=4)
    force_ratio(model, 3.0, optimizers, epoch=9)
    train_steps(model, [tiny_batch(model.task, 8, paired_fraction=0.5, seed=5)])
    model.eval()
    path = save_weights(model, tmp_path / "aug.safetensors")
    fresh = quick_model(seed=1).eval()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=6)
    assert not torch.equal(fresh.predict_proba(batch), model.predict_proba(batch))
    load_weights(fresh, path)
    assert (fresh.ehr_slots.active_count, fresh.cxr_slots.active_count) == (2, 1)
    assert torch.equal(fresh.predict_proba(batch), model.predict_proba(batch))


def test_both_optimisers_get_their_own_plateau_scheduler() -> None:
    task = task_spec("binary")
    data = tiny_dataset(task, 32)
    config = TrainConfig(
        max_epochs=3, min_epochs=3, patience=10, scheduler_patience=0, lr=1e-6, min_lr=1e-9, device="cpu"
    )
    result = Trainer(tiny_model("aug", task), config).fit(data, data)
    lrs = [lr for record in result.epochs for lr in record["lr"]]  # two optimisers per epoch
    assert lrs == pytest.approx([1e-6, 1e-6, 5e-7, 5e-7, 2.5e-7, 2.5e-7])
    assert {"train_ehr", "train_cxr", "aug_ratio", "aug_ehr_slots", "aug_cxr_slots"} <= set(result.epochs[0])


def test_config_checks() -> None:
    assert AUGConfig.for_profile("quick").max_slots == 4 and AUGConfig.for_profile("paper").max_slots == 11
    for bad in ({"alpha": 1.5}, {"t_check": 0}, {"lam": 0.0}, {"max_slots": 0}):
        with pytest.raises(CarebenchModelError, match="aug"):
            AUGConfig.for_profile("quick", **bad)


def test_paper_profile_size_is_the_base_model_plus_66k_per_slot() -> None:
    task = TaskSpec("phenotype", "multilabel", 25, tuple(f"label_{i}" for i in range(25)))
    model = create_model("aug", task=task, profile="paper", cxr_weights="none")
    slots = sum(p.numel() for name, p in model.named_parameters() if model.is_conditional(name))
    base = sum(p.numel() for name, p in model.named_parameters() if not model.is_conditional(name))
    assert base == pytest.approx(24.99e6, rel=0.002)
    assert slots == 2 * 11 * (256 * 256 + 256)  # 65,792 per slot
