"""M3Care: the within-batch patient graph, neighbour imputation, batch dependence and fixed eval batching."""

from __future__ import annotations

import pytest
import torch

from carebench_models import TrainConfig, Trainer, model_info
from carebench_models.testing import task_spec, tiny_batch, tiny_dataset, tiny_model, train_steps
from carebench_models.zoo.m3care import M3CareModel, similarity_kernel


def quick_model(kind: str = "binary", seed: int = 0, **overrides: float) -> M3CareModel:
    model = tiny_model("m3care", task_spec(kind), seed=seed, **overrides)
    assert isinstance(model, M3CareModel)
    return model


def set_threshold(model: M3CareModel, value: float) -> None:
    with torch.no_grad():
        model.threshold.fill_(value)


def test_kernel_has_unit_diagonal_and_falls_with_distance() -> None:
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0]])
    kernel = similarity_kernel(points)
    torch.testing.assert_close(torch.diagonal(kernel), torch.ones(3))
    torch.testing.assert_close(kernel, kernel.T)
    assert kernel[0, 1] > 0.9 > kernel[0, 2]
    torch.testing.assert_close(similarity_kernel(torch.zeros(3, 2)), torch.ones(3, 3))  # bandwidth floor


def test_similarity_is_the_mean_kernel_over_shared_modalities() -> None:
    model = quick_model().eval()
    set_threshold(model, -30.0)  # σ(τ) ≈ 0: every edge kept, S unchanged
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=1)
    idx = batch["has_cxr"].nonzero().squeeze(1)
    with torch.no_grad():
        ehr = model.ehr_encoder(torch.cat([batch["ehr"], batch["ehr_mask"].float()], dim=-1))
        cxr = model.cxr_branch(batch["cxr"][idx])
        similarity = model.similarity(
            ehr, model.ehr_projection(ehr), cxr, model.cxr_projection(cxr), idx, batch["has_cxr"]
        )
        ehr_only = model.similarity(ehr, model.ehr_projection(ehr), None, None, idx, batch["has_cxr"])
    torch.testing.assert_close(torch.diagonal(similarity), torch.ones(8), atol=1e-6, rtol=0)
    assert bool(((similarity >= 0) & (similarity <= 1 + 1e-6)).all())
    unpaired = (~batch["has_cxr"]).nonzero().squeeze(1)
    # A pair with a missing CXR is scored on the EHR kernel alone; a paired pair on the mean of both.
    torch.testing.assert_close(similarity[unpaired][:, unpaired], ehr_only[unpaired][:, unpaired])
    paired_block = similarity[idx][:, idx]
    assert not torch.allclose(paired_block, ehr_only[idx][:, idx])


def test_rows_without_a_cxr_are_imputed_from_neighbours_that_have_one() -> None:
    model = quick_model().eval()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=2)
    paired = batch["has_cxr"].nonzero().squeeze(1)
    unpaired = (~batch["has_cxr"]).nonzero().squeeze(1)
    changed = dict(batch, cxr=batch["cxr"].clone())
    changed["cxr"][paired[0]] += 2.0  # a neighbour's image changes
    for threshold, linked in ((-30.0, True), (30.0, False)):
        set_threshold(model, threshold)
        before, after = model.predict_proba(batch), model.predict_proba(changed)
        moved = (after[unpaired] - before[unpaired]).abs().max()
        # Every edge kept: the missing CXRs are imputed from the neighbours' images. Every edge cut:
        # rows without a CXR use the learned token and ignore the other rows' images.
        assert (moved > 1e-6) if linked else (moved == 0), (threshold, moved)


def test_batch_dependence_is_declared_and_real() -> None:
    info = model_info("m3care")
    assert info.batch_dependent and M3CareModel.eval_batch_dependent
    model = quick_model().eval()
    set_threshold(model, -30.0)
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=3)
    whole = model.predict_proba(batch)
    first_half = model.predict_proba({key: value[:4] for key, value in batch.items()})
    assert (whole[:4] - first_half).abs().max() > 1e-6


def test_evaluation_is_deterministic_with_fixed_batches_and_no_batch_of_one() -> None:
    task = task_spec("binary")
    train, data = tiny_dataset(task, 48, seed=1), tiny_dataset(task, 33, seed=4)
    trainer = Trainer(quick_model(), TrainConfig.for_profile("quick", max_epochs=1, device="cpu"))
    trainer.fit(train, data)
    sizes: list[int] = []
    handle = trainer.model.register_forward_pre_hook(
        lambda _m, args: sizes.append(int(args[0]["ehr"].shape[0]))
    )
    try:
        first, second = trainer.predict(data), trainer.predict(data)
    finally:
        handle.remove()
    assert sizes == [16, 17, 16, 17]  # 33 rows: the trailing row joins the previous batch
    assert (first.proba == second.proba).all()
    assert (first.stay_id == data.tensors["stay_id"].numpy()).all()


def test_kernel_parameters_learn_through_surviving_edges() -> None:
    # ε₀, ε₁ and the kernel BatchNorm only get gradients from off-diagonal edges above σ(τ):
    # near-duplicate rows (paired and unpaired) among distinct ones make such edges exist (without
    # dropout, which would pull the duplicates' training-time embeddings apart).
    model = quick_model("multilabel", dropout=0.0)
    base = tiny_batch(model.task, 4, paired_fraction=0.5, seed=5)
    noisy = {key: value.clone() for key, value in base.items()}
    noisy["ehr"] += 1e-3 * torch.randn(noisy["ehr"].shape, generator=torch.Generator().manual_seed(0))
    noisy["cxr"] += 1e-3 * torch.randn(noisy["cxr"].shape, generator=torch.Generator().manual_seed(1))
    noisy["cxr"][~noisy["has_cxr"]] = 0.0
    distinct = tiny_batch(model.task, 4, paired_fraction=0.5, seed=6)
    batch = {key: torch.cat([base[key], noisy[key], distinct[key]]) for key in base}
    seen: set[str] = set()

    def record() -> None:
        seen.update(
            name
            for name, p in model.named_parameters()
            if p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all()
        )

    train_steps(model, [batch, batch], on_step=record)
    for name in ("ehr_mix", "cxr_mix", "kernel_norm.weight", "kernel_norm.bias", "threshold"):
        assert name in seen, name


@pytest.mark.parametrize("paired_fraction", [0.0, 1.0])
def test_stability_term_is_the_weighted_frobenius_gap(paired_fraction: float) -> None:
    model = quick_model()
    batch = tiny_batch(model.task, 6, paired_fraction=paired_fraction, seed=7)
    model.eval()
    with torch.no_grad():
        output = model(batch)
        ehr = model.ehr_encoder(torch.cat([batch["ehr"], batch["ehr_mask"].float()], dim=-1))
        expected = (model.ehr_projection(ehr).norm() - ehr.norm()).abs()
        if paired_fraction:
            cxr = model.cxr_branch(batch["cxr"])
            expected = expected + (model.cxr_projection(cxr).norm() - cxr.norm()).abs()
    torch.testing.assert_close(output.aux_losses["stability"], model.lambda_stab * expected)
