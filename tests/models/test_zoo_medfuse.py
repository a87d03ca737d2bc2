"""MedFuse (models.md §8.16): the missing CXR shortens the fusion sequence; staged encoder loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from carebench_models import CarebenchModelError, TrainConfig, Trainer, save_weights
from carebench_models.testing import task_spec, tiny_batch, tiny_dataset, tiny_model, train_steps
from carebench_models.zoo.medfuse import MedFuseConfig, MedFuseModel


def trained_model(kind: str = "multilabel", **overrides: Any) -> MedFuseModel:
    task = task_spec(kind)
    model = tiny_model("medfuse", task, **overrides)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=1)])
    assert isinstance(model, MedFuseModel)
    return model.eval()


def ehr_only_logits(model: MedFuseModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fusion LSTM run on the length-1 sequence [e], written out independently of `forward`."""
    with torch.no_grad():
        ehr = model.encode_ehr(batch)
        states, _ = model.fusion_lstm(ehr[:, None, :])
        return model.head(states[:, -1])


def test_rows_without_cxr_equal_the_ehr_only_path() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=2)
    with torch.no_grad():
        logits = model(batch).logits
    reference = ehr_only_logits(model, batch)
    missing = ~batch["has_cxr"]
    torch.testing.assert_close(logits[missing], reference[missing], atol=1e-6, rtol=0)
    # Paired rows read the CXR step: their logits are not the EHR-only ones.
    assert (logits[~missing] - reference[~missing]).abs().max() > 1e-3


def test_cxr_free_batch_takes_the_same_ehr_only_path() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=3)
    blank = dict(batch, has_cxr=torch.zeros(8, dtype=torch.bool))
    with torch.no_grad():
        logits = model(blank).logits
    torch.testing.assert_close(logits, ehr_only_logits(model, batch), atol=1e-6, rtol=0)


def test_ehr_lstm_initialisation_and_dropout() -> None:
    model = tiny_model("medfuse", task_spec("binary"), layers=2)
    assert model.config.dropout == 0.3
    for name, parameter in model.ehr_lstm.named_parameters():
        if name.startswith("weight_hh"):
            # Orthogonal init of the [4d, d] recurrent matrix: orthonormal columns.
            gram = parameter.T @ parameter
            torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
        elif name.startswith("bias"):
            assert torch.count_nonzero(parameter) == 0
    assert model.ehr_lstm.num_layers == 2


def test_paper_profile_defaults() -> None:
    config = MedFuseConfig.for_profile("paper")
    assert (config.d_model, config.dropout, config.layers, config.cxr_encoder) == (256, 0.3, 1, "resnet50")
    with pytest.raises(CarebenchModelError, match="layers"):
        MedFuseConfig.for_profile("quick", layers=0)


def test_pretrained_encoders_load_encoders_only(tmp_path: Path) -> None:
    source = trained_model("binary")
    path = save_weights(source, tmp_path / "medfuse.safetensors")
    torch.manual_seed(5)
    model = tiny_model("medfuse", task_spec("binary"), seed=5, pretrained_encoders=str(path))
    for module_name in ("ehr_lstm", "cxr_branch"):
        loaded, original = getattr(model, module_name).state_dict(), getattr(source, module_name).state_dict()
        assert all(torch.equal(loaded[key], original[key]) for key in original)
    assert not torch.equal(model.fusion_lstm.weight_hh_l0, source.fusion_lstm.weight_hh_l0)
    assert not torch.equal(model.head.weight, source.head.weight)


def test_pretrained_encoders_reject_foreign_or_partial_files(tmp_path: Path) -> None:
    task = task_spec("binary")
    state = trained_model("binary").state_dict()
    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(CarebenchModelError, match="not a medfuse state dict"):
        tiny_model("medfuse", task, pretrained_encoders=str(foreign))
    partial = tmp_path / "partial.safetensors"
    save_file({key: value for key, value in state.items() if key == "ehr_lstm.weight_ih_l0"}, str(partial))
    with pytest.raises(CarebenchModelError, match="ehr_lstm weights do not fit"):
        tiny_model("medfuse", task, pretrained_encoders=str(partial))
    heads_only = tmp_path / "heads.safetensors"
    save_file({key: value for key, value in state.items() if key.startswith("head.")}, str(heads_only))
    with pytest.raises(CarebenchModelError, match="no encoder weights"):
        tiny_model("medfuse", task, pretrained_encoders=str(heads_only))
    with pytest.raises(CarebenchModelError, match="not found"):
        tiny_model("medfuse", task, pretrained_encoders=str(tmp_path / "absent.safetensors"))
    with pytest.raises(CarebenchModelError, match=r"\.safetensors"):
        MedFuseConfig.for_profile("quick", pretrained_encoders="weights.pt")


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def test_staged_training_pretrains_each_encoder_alone_then_fuses() -> None:
    task = task_spec("binary")
    model = tiny_model("medfuse", task, training="staged")
    assert isinstance(model, MedFuseModel)
    assert [stage.name for stage in model.training_stages()] == ["ehr_pretrain", "cxr_pretrain", "fusion"]
    assert "MedFuse paper" in model.variant()
    # What each stage changed: snapshots taken at every stage boundary.
    parts = ("ehr_lstm", "cxr_branch", "fusion_lstm", "head", "ehr_head", "cxr_head")
    snapshots: list[tuple[str | None, dict[str, dict[str, torch.Tensor]]]] = []
    switch = model.set_training_stage

    def record(stage: str | None) -> None:
        snapshots.append((stage, {part: _snapshot(getattr(model, part)) for part in parts}))
        switch(stage)

    model.set_training_stage = record  # type: ignore[method-assign]
    train = tiny_dataset(task, 64, paired_fraction=0.5, seed=1)
    val = tiny_dataset(task, 32, paired_fraction=0.5, seed=2)
    result = Trainer(model, TrainConfig(max_epochs=2, min_epochs=2, patience=5, device="cpu")).fit(train, val)
    assert [stage for stage, _ in snapshots] == ["ehr_pretrain", "cxr_pretrain", "fusion", None]
    # The training log names the stage of every epoch: the stage boundaries.
    assert [record["stage"] for record in result.epochs] == ["ehr_pretrain"] * 2 + ["cxr_pretrain"] * 2 + [
        "fusion"
    ] * 2
    assert [summary["first_epoch"] for summary in result.stages] == [0, 2, 4]
    after = {part: _snapshot(getattr(model, part)) for part in parts}
    states = [state for _, state in snapshots] + [after]

    def moved(stage_index: int) -> set[str]:
        start, end = states[stage_index], states[stage_index + 1]
        return {
            part
            for part in parts
            if any(not torch.equal(start[part][key], end[part][key]) for key in start[part])
        }

    assert moved(0) == {"ehr_lstm", "ehr_head"}  # EHR encoder pretrained alone
    assert moved(1) == {"cxr_branch", "cxr_head"}  # then the CXR encoder alone
    assert moved(2) == {"ehr_lstm", "cxr_branch", "fusion_lstm", "head"}  # then fused, encoders fine-tuned
    # Prediction uses the fused model.
    assert model.stage is None
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=3)
    model.eval()
    reference = ehr_only_logits(model, batch)
    with torch.no_grad():
        logits = model(batch).logits
    missing = ~batch["has_cxr"]
    torch.testing.assert_close(logits[missing], reference[missing], atol=1e-6, rtol=0)


def test_cxr_pretraining_refuses_rows_without_a_cxr_and_bad_protocols_raise() -> None:
    model = tiny_model("medfuse", task_spec("binary"), training="staged")
    model.set_training_stage("cxr_pretrain")
    with pytest.raises(CarebenchModelError, match="rows with a CXR only"):
        model(tiny_batch(model.task, 4, paired_fraction=0.5))
    with pytest.raises(CarebenchModelError, match="end_to_end, staged"):
        MedFuseConfig.for_profile("quick", training="pretrained")
    default = tiny_model("medfuse", task_spec("binary"))
    assert default.training_stages() == () and not hasattr(default, "ehr_head")
    assert "end-to-end" in default.variant()


def test_paper_profile_starts_from_imagenet_v1_weights() -> None:
    assert MedFuseConfig.for_profile("paper").cxr_weights == "imagenet_v1"
    assert MedFuseConfig.for_profile("quick").cxr_weights == "none"
