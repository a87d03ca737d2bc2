"""SMIL: priors from `prepare`, the inner loop adapts θ without leaking into `.grad`, reconstruction at test time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from carebench_models import (
    BatchDictDataset,
    CarebenchModelError,
    TrainConfig,
    Trainer,
    TrainState,
    create_model,
    load_weights,
    save_weights,
)
from carebench_models.testing import TINY_OVERRIDES, task_spec, tiny_arrays, tiny_batch, tiny_model
from carebench_models.zoo.smil import SMILConfig, SMILModel, kmeans


def quick_model(kind: str = "binary", seed: int = 0, **overrides: Any) -> SMILModel:
    model = tiny_model("smil", task_spec(kind), seed=seed, **overrides)
    assert isinstance(model, SMILModel)
    return model


def unprepared(kind: str = "binary", **overrides: Any) -> SMILModel:
    model = create_model("smil", task=task_spec(kind), profile="quick", **{**TINY_OVERRIDES, **overrides})
    assert isinstance(model, SMILModel)
    return model


def test_without_prepare_forward_and_training_raise_a_clear_error() -> None:
    model = unprepared()
    batch = tiny_batch(model.task, 6, paired_fraction=0.5)
    optimizers = model.configure_optimizers(TrainConfig())
    for call in (
        lambda: model(batch),
        lambda: model.predict_proba(batch),
        lambda: model.training_step(batch, optimizers, TrainState()),
    ):
        with pytest.raises(
            CarebenchModelError, match=r"smil has no modality priors yet: call model\.prepare"
        ):
            call()


def test_prepare_needs_as_many_paired_rows_as_priors() -> None:
    model = unprepared(clusters=4)
    with pytest.raises(CarebenchModelError, match="at least 4 training rows with a CXR"):
        model.prepare([tiny_batch(model.task, 12, paired_fraction=0.25)])


def test_kmeans_recovers_separated_centres() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([centre + 0.1 * torch.randn(50, 2, generator=generator) for centre in centres])
    found = kmeans(points, 3, iterations=100)
    order = torch.tensor([int((found - centre).norm(dim=1).argmin()) for centre in centres])
    torch.testing.assert_close(found[order], centres, atol=0.05, rtol=0)
    torch.testing.assert_close(kmeans(points, 3, iterations=100), found)  # fixed seed


def test_priors_are_kmeans_of_the_paired_rows_cxr_features_only() -> None:
    model = unprepared()
    batches = [tiny_batch(model.task, 16, paired_fraction=0.5, seed=seed) for seed in (1, 2)]
    model.prepare(batches)
    assert model.training  # prepare runs the CNN in eval mode and restores the mode it found
    model.eval()
    with torch.no_grad():
        features = torch.cat([model.cxr_branch(b["cxr"][b["has_cxr"]]) for b in batches])
    torch.testing.assert_close(model.priors, kmeans(features, 4, iterations=100))
    # Noise in the image slots of rows without a CXR changes nothing.
    noisy = [
        dict(b, cxr=torch.where(b["has_cxr"][:, None, None, None], b["cxr"], torch.randn_like(b["cxr"])))
        for b in batches
    ]
    other = unprepared()
    other.cxr_branch.load_state_dict(model.cxr_branch.state_dict())
    other.prepare(noisy)
    torch.testing.assert_close(other.priors, model.priors)


def test_prior_rows_caps_the_rows_read() -> None:
    model = unprepared(prior_rows=5)
    seen: list[int] = []
    handle = model.cxr_branch.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    model.prepare([tiny_batch(model.task, 8, paired_fraction=0.5, seed=s) for s in (1, 2, 3)])
    handle.remove()
    assert seen == [4, 1]


def gradients_of(model: SMILModel, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names, parameters = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return {name: grad for name, grad in zip(names, grads, strict=True) if grad is not None}


@pytest.mark.parametrize("second_order", [False, True])
def test_inner_loop_does_not_leak_gradients_into_the_outer_step(second_order: bool) -> None:
    model = quick_model("multilabel", inner_steps=2, second_order=second_order).train()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=3)
    torch.manual_seed(7)
    loss, _ = model.meta_objective(batch)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad never writes .grad
    expected = gradients_of(model, loss)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(7)
    model.training_step(batch, [frozen], TrainState())
    observed = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert observed.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(observed[name], grad, msg=name)


def outer_loss(model: SMILModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    torch.manual_seed(11)
    return model.meta_objective(batch)[1]["outer"]


def test_the_outer_loss_reads_the_adapted_parameters() -> None:
    # Upstream built θ' and then ran the functional forward with the old θ: the inner step changed nothing.
    batch = tiny_batch(task_spec("binary"), 8, paired_fraction=0.5, seed=4)
    losses = [outer_loss(quick_model(inner_lr=lr).train(), batch) for lr in (0.0, 0.5)]
    assert (losses[0] - losses[1]).abs() > 1e-4
    same = [outer_loss(quick_model(inner_lr=0.0).train(), batch) for _ in range(2)]
    torch.testing.assert_close(same[0], same[1])


def test_second_order_term_changes_the_encoder_gradient() -> None:
    batch = tiny_batch(task_spec("binary"), 8, paired_fraction=0.5, seed=5)
    grads = []
    for second_order in (False, True):
        model = quick_model(second_order=second_order, inner_lr=0.5).train()
        torch.manual_seed(12)
        loss, _ = model.meta_objective(batch)
        grads.append(gradients_of(model, loss)["ehr_encoder.input_proj.weight"])
    assert (grads[0] - grads[1]).abs().max() > 1e-6


def test_without_paired_rows_the_step_is_the_first_order_training_loss() -> None:
    model = quick_model().train()
    loss, logs = model.meta_objective(tiny_batch(model.task, 6, paired_fraction=0.0, seed=6))
    assert set(logs) == {"loss", "inner"} and torch.equal(logs["loss"], logs["inner"])
    assert not any(name.startswith("cxr_branch.") for name in gradients_of(model, loss))


def test_missing_rows_are_predicted_from_the_reconstruction() -> None:
    model = quick_model().eval()
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=7)
    paired = batch["has_cxr"]
    before = model.predict_proba(batch)
    with torch.no_grad():
        model.priors.add_(torch.randn(model.priors.shape, generator=torch.Generator().manual_seed(0)))
    after = model.predict_proba(batch)
    assert (after[~paired] - before[~paired]).abs().min() > 1e-7  # reconstruction is used at test time
    torch.testing.assert_close(after[paired], before[paired], atol=0, rtol=0)  # clean path on paired rows
    assert torch.equal(model.predict_proba(batch), after)  # no noise at evaluation


def test_round_trip_makes_a_fresh_model_ready(tmp_path: Path) -> None:
    model = quick_model().eval()
    path = save_weights(model, tmp_path / "smil.safetensors")
    fresh = unprepared().eval()
    load_weights(fresh, path)
    batch = tiny_batch(model.task, 8, paired_fraction=0.5, seed=8)
    assert torch.equal(fresh.predict_proba(batch), model.predict_proba(batch))


def test_trainer_prepares_on_the_data_it_is_given() -> None:
    task = task_spec("binary")
    train = BatchDictDataset(tiny_arrays(task, 32, paired_fraction=0.5, seed=1))
    clean = BatchDictDataset(tiny_arrays(task, 32, paired_fraction=0.5, seed=2))
    config = TrainConfig.for_profile("quick", max_epochs=1, device="cpu")
    calls: list[list[int]] = []
    model = unprepared()
    original = model.prepare

    def spy(batches: Any) -> None:
        calls.append([int(i) for b in batches for i in b["stay_id"]])
        original(batches)

    model.prepare = spy  # type: ignore[method-assign]
    Trainer(model, config).fit(train, train, prepare_data=clean)
    assert calls == [clean.tensors["stay_id"].tolist()]  # the whole given split, in its fixed order
    assert model.has_priors


def test_profiles() -> None:
    quick, paper = SMILConfig.for_profile("quick"), SMILConfig.for_profile("paper")
    assert (quick.clusters, quick.head_width, quick.second_order) == (4, 16, False)
    assert (paper.clusters, paper.head_width, paper.second_order) == (10, 64, True)
    with pytest.raises(CarebenchModelError, match="smil"):
        SMILConfig.for_profile("quick", inner_steps=0)


def test_priors_are_refreshed_every_n_epochs_when_asked() -> None:
    task = task_spec("binary")
    arrays = tiny_arrays(task, 48, paired_fraction=0.5, seed=3)
    data = BatchDictDataset(arrays)
    config = TrainConfig.for_profile("quick", max_epochs=1, min_epochs=1, device="cpu")
    priors = []
    for every in (0, 1):
        torch.manual_seed(0)
        model = unprepared(prior_refresh_every=every)
        initial = kmeans_of_cnn(model, arrays)
        Trainer(model, config).fit(data, data)
        priors.append(model.priors.clone())
    torch.testing.assert_close(priors[0], initial)  # never refreshed: the untrained CNN's features
    torch.testing.assert_close(priors[1], kmeans_of_cnn(model, arrays))  # refreshed after the epoch
    assert not torch.allclose(priors[0], priors[1])


def kmeans_of_cnn(model: SMILModel, arrays: dict[str, torch.Tensor]) -> torch.Tensor:
    training = model.training
    model.eval()
    with torch.no_grad():
        features = model.cxr_branch(arrays["cxr"][arrays["has_cxr"]])
    model.train(training)
    return kmeans(features, model.settings.clusters, iterations=model.settings.kmeans_iterations)
