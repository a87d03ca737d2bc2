"""ShaSpec: one shared encoder for both modalities, residual fusion, alignment and domain losses."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from carebench_models import CarebenchModelError, TaskSpec, create_model
from carebench_models.encoders.ehr import ehr_input
from carebench_models.testing import parameter_count, task_spec, tiny_batch, tiny_model, train_steps
from carebench_models.zoo.shaspec import ShaSpecModel


def trained_model(kind: str = "binary", **overrides: Any) -> ShaSpecModel:
    task = task_spec(kind)
    model = tiny_model("shaspec", task, **overrides)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=1)])
    assert isinstance(model, ShaSpecModel)
    return model.eval()


def features(model: ShaSpecModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Shared and specific features written out independently of `forward` (eval mode)."""
    idx = batch["has_cxr"].nonzero().flatten()
    x = ehr_input(batch)
    with torch.no_grad():
        ehr_tokens = model.shared_ehr_tokens(x) + model.modality_embedding[0] + model.shared_position
        cxr = batch["cxr"][idx]
        cxr_token = model.shared_cxr_tokens(cxr) + model.modality_embedding[1] + model.shared_position[0]
        return {
            "r_e": model.shared_out(model.shared_layer(ehr_tokens).mean(dim=1)),
            "r_c": model.shared_out(model.shared_layer(cxr_token[:, None]).mean(dim=1)),
            "s_e": model.specific_ehr(x),
            "s_c": model.specific_cxr(cxr),
            "idx": idx,
        }


def test_missing_cxr_takes_the_ehr_shared_feature() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=2)
    f = features(model, batch)
    fused_ehr = f["r_e"] + model.residual(torch.cat([f["r_e"], f["s_e"]], dim=1))
    fused_cxr = f["r_e"].clone()
    fused_cxr[f["idx"]] = f["r_c"] + model.residual(torch.cat([f["r_c"], f["s_c"]], dim=1))
    with torch.no_grad():
        expected = model.head((fused_ehr + fused_cxr) / 2)
        logits = model(batch).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_alignment_and_domain_losses() -> None:
    model = trained_model(alpha=0.5, beta=2.0)
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=3)
    f = features(model, batch)
    with torch.no_grad():
        aux = model(batch).aux_losses
        specific = torch.cat([f["s_e"], f["s_c"]])
        labels = torch.tensor([0] * 8 + [1] * 4)
        domain = F.cross_entropy(model.domain_classifier(specific), labels)
    align = (f["r_e"][f["idx"]] - f["r_c"]).abs().mean()
    torch.testing.assert_close(aux["align"], 0.5 * align)
    torch.testing.assert_close(aux["domain"], 2.0 * domain)


def test_cxr_free_batch_aligns_nothing_and_classifies_ehr_rows_only() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 6, paired_fraction=0.0, seed=4)
    f = features(model, batch)
    with torch.no_grad():
        aux = model(batch).aux_losses
        domain = F.cross_entropy(model.domain_classifier(f["s_e"]), torch.zeros(6, dtype=torch.long))
    assert aux["align"] == 0
    torch.testing.assert_close(aux["domain"], model.beta * domain)


def test_one_shared_layer_reads_both_modalities() -> None:
    model = trained_model()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=5)
    shapes: list[tuple[int, ...]] = []
    handle = model.shared_layer.register_forward_hook(
        lambda _m, args, _out: shapes.append(tuple(args[0].shape))
    )
    try:
        model.predict_proba(batch)
    finally:
        handle.remove()
    assert shapes == [(8, 48, 32), (4, 1, 32)]
    assert model.shared_layer.activation is F.gelu


def test_domain_loss_trains_the_specific_encoders_only() -> None:
    model = tiny_model("shaspec", task_spec("binary"))
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=6)
    model.zero_grad()
    model(batch).aux_losses["domain"].backward()
    assert (
        model.specific_cxr.proj.weight.grad is not None
        and model.specific_ehr.input_proj.weight.grad is not None
    )
    assert model.shared_out.weight.grad is None and model.shared_cxr_tokens.proj.weight.grad is None


def test_invalid_weights_raise() -> None:
    with pytest.raises(CarebenchModelError, match="shaspec"):
        tiny_model("shaspec", task_spec("binary"), alpha=-1.0)


@pytest.mark.slow
def test_paper_profile_size_and_forward() -> None:
    assert parameter_count("shaspec") / 1e6 == pytest.approx(49.9, rel=0.02)
    task = TaskSpec("phenotype", "multilabel", 25, tuple(f"label_{i}" for i in range(25)))
    model = create_model("shaspec", task=task, profile="paper", cxr_weights="none").eval()
    batch = tiny_batch(task, 2, paired_fraction=0.5, ehr_features=27, image_size=224, with_labels=False)
    assert model.predict_proba(batch).shape == (2, 25)
