"""Tiny synthetic batches with planted signal, and the registry-parametrised contract checks.

Any test, fork or plugin can use them (like `polars.testing`):

>>> from carebench_models.testing import task_spec, tiny_batch
>>> batch = tiny_batch(task_spec("binary"), 8, paired_fraction=0.5)
>>> batch["ehr"].shape, int(batch["has_cxr"].sum())
(torch.Size([8, 48, 6]), 4)

The signal: each sample draws latent scores z (one per label; one for binary and multiclass);
labels follow z plus noise; the EHR carries z in features 0..L-1 at every hour, and the CXR carries z
as a fixed blob per label (a quadrant of the image), so either modality alone is informative.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, TrainState
from carebench_models.data import BatchDictDataset
from carebench_models.encoders.cxr import CXREncoder
from carebench_models.errors import CarebenchModelError
from carebench_models.registry import create_model, model_info
from carebench_models.task import TaskSpec
from carebench_models.training.config import TrainConfig
from carebench_models.weights import load_weights, save_weights

TINY_EHR_FEATURES = 6
TINY_IMAGE_SIZE = 32
TINY_OVERRIDES: dict[str, Any] = {"ehr_features": TINY_EHR_FEATURES, "image_size": TINY_IMAGE_SIZE}
"""Config overrides matching `tiny_batch` (quick profile at F 6, 32-px images)."""

PREPARE_SEED = 99
"""Seed of the batch `tiny_model` hands to `prepare`."""

LOS_CLASSES = ("2-3d", "3-4d", "4-5d", "5-6d", "6-7d", "7-14d", "14+d")


def task_spec(kind: str) -> TaskSpec:
    """The test task of each kind: binary `mortality` (K 1), multilabel `phenotype` (K 3), multiclass `los` (K 7)."""
    if kind == "binary":
        return TaskSpec("mortality", "binary", 1, ("mortality",))
    if kind == "multilabel":
        return TaskSpec("phenotype", "multilabel", 3, ("sepsis", "shock", "chf"))
    if kind == "multiclass":
        return TaskSpec("los", "multiclass", 7, LOS_CLASSES)
    raise CarebenchModelError(f"task kind must be binary, multilabel or multiclass, got {kind!r}")


def tiny_arrays(
    task: TaskSpec,
    size: int,
    *,
    paired_fraction: float = 0.5,
    seed: int = 0,
    ehr_features: int = TINY_EHR_FEATURES,
    ehr_steps: int = 48,
    image_size: int = TINY_IMAGE_SIZE,
    with_labels: bool = True,
) -> dict[str, Tensor]:
    """`size` rows of the batch contract with planted signal (see the module docstring).

    Args:
        task: decides the label layout: y float32 [N, K] (binary, multilabel) or int64 [N].
        size: N.
        paired_fraction: share of rows with a CXR (exactly round(N × fraction) rows).
        seed: seeds everything.
        ehr_features: F (at least the number of latent scores).
        ehr_steps: T.
        image_size: H = W.
        with_labels: include `y`.

    Returns:
        ehr [N,T,F], ehr_mask [N,T,F], cxr [N,3,S,S] (zeros where missing), has_ehr, has_cxr,
        cxr_hours, stay_id, and y.
    """
    rng = np.random.default_rng(seed)
    latent_count = task.num_outputs if task.kind == "multilabel" else 1
    if ehr_features < latent_count:
        raise CarebenchModelError(f"ehr_features must be >= {latent_count} for task {task.name!r}")
    z = rng.standard_normal((size, latent_count)).astype(np.float32)
    noisy = z + 0.3 * rng.standard_normal(z.shape).astype(np.float32)
    if task.kind == "multiclass":
        edges = np.quantile(noisy[:, 0], np.linspace(0, 1, task.num_outputs + 1)[1:-1])
        y = torch.from_numpy(np.digitize(noisy[:, 0], edges).astype(np.int64))
    else:
        y = torch.from_numpy((noisy > 0).astype(np.float32))

    ehr = rng.standard_normal((size, ehr_steps, ehr_features)).astype(np.float32)
    ehr[:, :, :latent_count] += 1.5 * z[:, None, :]
    ehr_mask = rng.random((size, ehr_steps, ehr_features)) < 0.6

    paired = np.zeros(size, dtype=bool)
    paired[rng.permutation(size)[: round(size * paired_fraction)]] = True
    cxr = 0.5 * rng.standard_normal((size, 3, image_size, image_size)).astype(np.float32)
    half = image_size // 2
    for label in range(latent_count):
        top, left = (label % 2) * half, ((label // 2) % 2) * half
        cxr[:, :, top : top + half, left : left + half] += 1.5 * z[:, label, None, None, None]
    cxr[~paired] = 0.0
    cxr_hours = np.where(paired, rng.uniform(-6.0, 24.0, size), 0.0).astype(np.float32)

    arrays = {
        "ehr": torch.from_numpy(ehr),
        "ehr_mask": torch.from_numpy(ehr_mask),
        "cxr": torch.from_numpy(cxr),
        "has_ehr": torch.ones(size, dtype=torch.bool),
        "has_cxr": torch.from_numpy(paired),
        "cxr_hours": torch.from_numpy(cxr_hours),
        "stay_id": torch.arange(1000, 1000 + size, dtype=torch.int64),
    }
    if with_labels:
        arrays["y"] = y
    return arrays


def tiny_batch(
    task: TaskSpec, batch_size: int = 8, *, paired_fraction: float = 0.5, seed: int = 0, **kwargs: Any
) -> dict[str, Tensor]:
    """One batch dict of `batch_size` rows; keyword arguments as `tiny_arrays`."""
    return tiny_arrays(task, batch_size, paired_fraction=paired_fraction, seed=seed, **kwargs)


def tiny_dataset(
    task: TaskSpec, size: int = 512, *, paired_fraction: float = 0.5, seed: int = 0, **kwargs: Any
) -> BatchDictDataset:
    """A `BatchDictDataset` of `size` rows with planted signal; keyword arguments as `tiny_arrays`."""
    return BatchDictDataset(tiny_arrays(task, size, paired_fraction=paired_fraction, seed=seed, **kwargs))


def tiny_model(name: str, task: TaskSpec, *, seed: int = 0, **overrides: Any) -> FusionModel:
    """Model `name` in the quick profile sized for `tiny_batch`, initialised under `seed`, and prepared.

    `prepare` (a no-op for most models; SMIL computes its priors) sees one 16-row training batch,
    half of it with a CXR, as `Trainer.fit` would show it the training data before the first epoch.
    """
    torch.manual_seed(seed)
    model = create_model(name, task=task, profile="quick", **{**TINY_OVERRIDES, **overrides})
    config = model.config
    model.prepare(
        [
            tiny_batch(
                task,
                16,
                paired_fraction=0.5,
                seed=PREPARE_SEED,
                ehr_features=config.ehr_features,
                image_size=config.image_size,
            )
        ]
    )
    return model


def select_rows(batch: Batch, rows: Tensor) -> dict[str, Tensor]:
    """The rows `rows` (int64 indices) of every tensor of a batch."""
    return {key: value.index_select(0, rows) for key, value in batch.items()}


def train_steps(
    model: FusionModel, batches: list[Batch], *, seed: int = 0, on_step: Callable[[], None] | None = None
) -> list[dict[str, float]]:
    """Run `training_step` on each batch with the model's own optimisers; returns the logged values."""
    model.train()
    optimizers = model.configure_optimizers(TrainConfig())
    state = TrainState(max_epochs=1, generator=torch.Generator().manual_seed(seed))
    logs = []
    for batch in batches:
        step = model.training_step(batch, optimizers, state)
        logs.append({key: float(value) for key, value in step.items()})
        state.global_step += 1
        if on_step is not None:
            on_step()
    return logs


# Contract checks (models.md §9). Each raises AssertionError with a message naming the model.


def assert_forward_contract(name: str, kind: str) -> None:
    """§9.1: float32 [B, K] logits, finite scalar aux losses; config round trip; unknown keys raise."""
    task = task_spec(kind)
    model = tiny_model(name, task)
    batch = tiny_batch(task, 6, paired_fraction=0.5)
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            output = model(batch)
        assert output.logits.dtype == torch.float32, f"{name}: logits are {output.logits.dtype}"
        assert output.logits.shape == (6, task.num_outputs), (
            f"{name}: logits shape {tuple(output.logits.shape)}"
        )
        for aux_name, value in output.aux_losses.items():
            assert value.ndim == 0 and torch.isfinite(value), f"{name}: aux loss {aux_name} = {value}"
    config = model.config
    assert dataclasses.replace(config) == config, f"{name}: config does not survive dataclasses.replace"
    rebuilt = type(config).for_profile(
        config.profile, **{k: v for k, v in config.to_dict().items() if k != "profile"}
    )
    assert rebuilt == config, f"{name}: for_profile(**to_dict()) does not rebuild the config"
    for bad_call in (
        lambda: type(config).for_profile("quick", not_a_field=1),
        lambda: create_model(name, task=task, profile="quick", not_a_field=1),
    ):
        try:
            bad_call()
        except CarebenchModelError:
            continue
        raise AssertionError(f"{name}: an unknown config key did not raise")


def assert_finite_loss(name: str, kind: str) -> None:
    """§9.2: finite training loss on mixed, fully paired and CXR-free batches."""
    task = task_spec(kind)
    model = tiny_model(name, task).train()
    for paired_fraction in (0.5, 1.0, 0.0):
        batch = tiny_batch(task, 6, paired_fraction=paired_fraction, seed=1)
        loss, _ = model.total_loss(model(batch), batch["y"])
        assert torch.isfinite(loss), f"{name}: loss {loss} at paired fraction {paired_fraction}"


def assert_gradients(name: str, kind: str) -> None:
    """§9.3: over two steps on mixed batches every non-conditional trainable parameter gets a finite gradient."""
    task = task_spec(kind)
    model = tiny_model(name, task)
    seen: set[str] = set()

    def record() -> None:
        for parameter_name, parameter in model.named_parameters():
            if parameter.grad is not None:
                assert torch.isfinite(parameter.grad).all(), (
                    f"{name}: non-finite gradient in {parameter_name}"
                )
                seen.add(parameter_name)

    batches = [tiny_batch(task, 8, paired_fraction=0.5, seed=seed) for seed in (2, 3)]
    train_steps(model, batches, on_step=record)
    missing = [
        parameter_name
        for parameter_name, parameter in model.named_parameters()
        if parameter.requires_grad and parameter_name not in seen and not model.is_conditional(parameter_name)
    ]
    assert not missing, f"{name}: parameters without a gradient: {missing}"


def count_cxr_encoder_calls(model: nn.Module) -> tuple[list[int], Callable[[], None]]:
    """Forward hooks on every module inside every `CXREncoder` of `model`.

    Returns:
        ([count], remove): the running call count and a function removing the hooks.
    """
    counter = [0]

    def hook(*_: object) -> None:
        counter[0] += 1

    handles = [
        module.register_forward_hook(hook)
        for encoder in model.modules()
        if isinstance(encoder, CXREncoder)
        for module in encoder.modules()
    ]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return counter, remove


def assert_all_missing(name: str, kind: str) -> None:
    """§9.4: forward, training_step and predict_proba on a CXR-free batch; no CXR encoder module runs."""
    task = task_spec(kind)
    model = tiny_model(name, task)
    batch = tiny_batch(task, 6, paired_fraction=0.0, seed=4)
    counter, remove = count_cxr_encoder_calls(model)
    try:
        model.train()
        output = model(batch)
        assert torch.isfinite(output.logits).all(), f"{name}: non-finite logits without CXRs"
        train_steps(model, [batch])
        model.eval()
        proba = model.predict_proba(batch)
        assert torch.isfinite(proba).all(), f"{name}: non-finite probabilities without CXRs"
    finally:
        remove()
    assert counter[0] == 0, f"{name}: CXR encoder modules ran {counter[0]} times on a batch without CXRs"


def assert_missing_invariance(name: str, kind: str) -> None:
    """§9.5: in eval mode, noise in the `cxr` slots of rows without a CXR changes no prediction."""
    task = task_spec(kind)
    model = tiny_model(name, task)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=5)])
    model.eval()
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=6)
    reference = model.predict_proba(batch)
    noisy = dict(batch)
    noise = torch.randn(batch["cxr"].shape, generator=torch.Generator().manual_seed(7)) * 3.0
    noisy["cxr"] = torch.where(batch["has_cxr"][:, None, None, None], batch["cxr"], noise)
    changed = model.predict_proba(noisy)
    assert torch.allclose(reference, changed, atol=1e-6), (
        f"{name}: missing rows' cxr slots change predictions"
    )


def assert_proba_contract(name: str, kind: str) -> None:
    """§9.6: probabilities in [0, 1], multiclass rows sum to 1, no `y` needed, train/eval untouched."""
    task = task_spec(kind)
    model = tiny_model(name, task)
    batch = tiny_batch(task, 6, paired_fraction=0.5, seed=8, with_labels=False)
    for training in (True, False):
        model.train(training)
        proba = model.predict_proba(batch)
        assert model.training is training, f"{name}: predict_proba changed model.training"
        assert proba.shape == (6, task.num_outputs) and proba.dtype == torch.float32
        assert bool(((proba >= 0) & (proba <= 1)).all()), f"{name}: probabilities outside [0, 1]"
        if task.kind == "multiclass":
            assert torch.allclose(proba.sum(dim=1), torch.ones(6), atol=1e-5), f"{name}: rows do not sum to 1"


def assert_row_independence(name: str, kind: str) -> None:
    """§9.7: in eval mode a row's prediction does not depend on the other rows (permute, split).

    Batch-dependent models (`eval_batch_dependent`) instead must be reproducible on the same batch.
    """
    task = task_spec(kind)
    model = tiny_model(name, task).eval()
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=9)
    reference = model.predict_proba(batch)
    if type(model).eval_batch_dependent:
        assert torch.equal(reference, model.predict_proba(batch)), (
            f"{name}: eval predictions not reproducible"
        )
        return
    permutation = torch.randperm(8, generator=torch.Generator().manual_seed(10))
    permuted = model.predict_proba(select_rows(batch, permutation))
    assert torch.allclose(permuted, reference[permutation], atol=1e-5), (
        f"{name}: rows depend on the batch order"
    )
    halves = [model.predict_proba(select_rows(batch, rows)) for rows in torch.arange(8).split(4)]
    assert torch.allclose(torch.cat(halves), reference, atol=1e-5), f"{name}: rows depend on the other rows"


def assert_state_round_trip(name: str, kind: str, directory: Path) -> None:
    """§9.8: safetensors round trip into a fresh instance gives identical eval predictions."""
    task = task_spec(kind)
    model = tiny_model(name, task, seed=0)
    train_steps(model, [tiny_batch(task, 8, paired_fraction=0.5, seed=11)])
    model.eval()
    path = save_weights(model, directory / f"{name}_{kind}.safetensors")
    fresh = tiny_model(name, task, seed=1).eval()
    load_weights(fresh, path)
    batch = tiny_batch(task, 8, paired_fraction=0.5, seed=12)
    assert torch.equal(model.predict_proba(batch), fresh.predict_proba(batch)), (
        f"{name}: round trip changed predictions"
    )


def assert_deterministic(name: str, kind: str) -> None:
    """§9.9: the same seed gives identical losses over three steps on CPU."""
    task = task_spec(kind)
    batches = [tiny_batch(task, 8, paired_fraction=0.5, seed=seed) for seed in (13, 14, 15)]
    runs = []
    for _ in range(2):
        model = tiny_model(name, task, seed=21)
        torch.manual_seed(22)
        runs.append(train_steps(model, batches, seed=23))
    assert runs[0] == runs[1], f"{name}: losses differ between two seeded runs: {runs}"


CONTRACT_CHECKS: Mapping[str, Callable[[str, str], None]] = {
    "forward": assert_forward_contract,
    "finite_loss": assert_finite_loss,
    "gradients": assert_gradients,
    "all_missing": assert_all_missing,
    "missing_invariance": assert_missing_invariance,
    "proba": assert_proba_contract,
    "row_independence": assert_row_independence,
    "deterministic": assert_deterministic,
}
"""The checks that take (model name, task kind); `assert_state_round_trip` also takes a directory."""


def parameter_count(
    name: str, *, task: TaskSpec | None = None, profile: str = "paper", **overrides: Any
) -> int:
    """Number of parameters of model `name` (default: paper profile, F 27, phenotype K 25).

    The CNN starts from random weights unless `cxr_weights` is given: the count does not depend on
    them, and counting needs no weights file.
    """
    task = task or TaskSpec("phenotype", "multilabel", 25, tuple(f"label_{i}" for i in range(25)))
    model_info(name)
    model = create_model(name, task=task, profile=profile, **{"cxr_weights": "none", **overrides})
    return sum(parameter.numel() for parameter in model.parameters())
