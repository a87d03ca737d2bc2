"""Trainer protocol (models.md §5): early stopping, best checkpoint, determinism, export, data paths."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from carebench_models import (
    BatchDictDataset,
    CarebenchModelError,
    TaskSpec,
    TrainConfig,
    Trainer,
    TrainingStage,
    load_weights,
    long_predictions,
)
from carebench_models.testing import task_spec, tiny_arrays, tiny_dataset, tiny_model
from carebench_models.training.trainer import _chunks
from carebench_models.zoo.lstm import LSTMConfig, LSTMModel

CPU = {"device": "cpu"}


def scripted_monitor(values: list[float]):  # type: ignore[no-untyped-def]
    """A monitor that returns the next scripted value at each validation (0.0 once exhausted)."""
    calls = iter(values)
    return lambda y_true, proba: next(calls, 0.0)


def test_early_stopping_respects_patience_and_min_epochs() -> None:
    task = task_spec("binary")
    data = tiny_dataset(task, 32)
    config = TrainConfig(
        max_epochs=20,
        patience=2,
        min_epochs=1,
        monitor=scripted_monitor([0.5, 0.7, 0.6, 0.7, 0.2] + [0.0] * 20),
        **CPU,
    )
    result = Trainer(tiny_model("lstm", task), config).fit(data, data)
    assert [record["epoch"] for record in result.epochs] == [0, 1, 2, 3]
    assert (result.best_epoch, result.best_metric, result.stopped_early) == (1, 0.7, True)

    late = TrainConfig(
        max_epochs=20, patience=1, min_epochs=6, monitor=scripted_monitor([0.9] + [0.1] * 30), **CPU
    )
    assert len(Trainer(tiny_model("lstm", task), late).fit(data, data).epochs) == 6


def test_nan_metric_never_counts_as_best_once_a_number_exists() -> None:
    task = task_spec("binary")
    data = tiny_dataset(task, 32)
    config = TrainConfig(
        max_epochs=3,
        patience=5,
        min_epochs=1,
        monitor=scripted_monitor([float("nan"), 0.4, float("nan")]),
        **CPU,
    )
    assert Trainer(tiny_model("lstm", task), config).fit(data, data).best_epoch == 1


def test_best_checkpoint_is_reloaded_and_saved(tmp_path: Path) -> None:
    task = task_spec("binary")
    train, val = tiny_dataset(task, 64, seed=1), tiny_dataset(task, 32, seed=2)
    path = tmp_path / "best.safetensors"
    config = TrainConfig(
        max_epochs=4,
        patience=10,
        min_epochs=1,
        lr=1e-3,
        checkpoint_path=path,
        monitor=scripted_monitor([0.1, 0.9, 0.2, 0.3]),
        **CPU,
    )
    model = tiny_model("latefusion", task)
    trainer = Trainer(model, config)
    result = trainer.fit(train, val)
    assert result.best_epoch == 1
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, result.best_state[key])
    assert result.epochs[1]["val_loss"] == pytest.approx(trainer.evaluate(val)[0], rel=1e-5)
    fresh = tiny_model("latefusion", task, seed=5)
    load_weights(fresh, path)
    np.testing.assert_array_equal(
        Trainer(fresh, TrainConfig(**CPU)).predict(val).proba, trainer.predict(val).proba
    )


def test_same_seed_same_run() -> None:
    task = task_spec("multilabel")
    train, val = tiny_dataset(task, 48, seed=3), tiny_dataset(task, 24, seed=4)
    runs = []
    for _ in range(2):
        model = tiny_model("latefusion", task, seed=7)
        result = Trainer(model, TrainConfig(max_epochs=2, seed=11, **CPU)).fit(train, val)
        runs.append([(r["train_loss"], r["val_loss"], r["val_auprc"]) for r in result.epochs])
    assert runs[0] == runs[1]
    other = tiny_model("latefusion", task, seed=7)
    changed = Trainer(other, TrainConfig(max_epochs=2, seed=12, **CPU)).fit(train, val)
    assert [(r["train_loss"], r["val_loss"], r["val_auprc"]) for r in changed.epochs] != runs[0]


def test_epoch_log_is_json_lines_and_progress_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    task = task_spec("multiclass")
    data = tiny_dataset(task, 40)
    calls: list[tuple[int, int]] = []
    with caplog.at_level(logging.INFO, logger="carebench_models.training.trainer"):
        result = Trainer(tiny_model("transformer", task), TrainConfig(max_epochs=2, min_epochs=2, **CPU)).fit(
            data, data, progress=lambda done, total: calls.append((done, total))
        )
    records = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    assert [r["epoch"] for r in records] == [0, 1]
    assert {"lr", "train_loss", "train_task", "val_loss", "val_accuracy", "seconds", "samples_per_s"} <= set(
        records[0]
    )
    assert result.metric_name == "val_accuracy" and calls == [(1, 2), (2, 2)]


def test_scheduler_halves_the_learning_rate_on_a_val_loss_plateau() -> None:
    task = task_spec("binary")
    data = tiny_dataset(task, 16)
    config = TrainConfig(
        max_epochs=4, min_epochs=4, patience=10, scheduler_patience=0, lr=1e-6, min_lr=1e-9, **CPU
    )
    result = Trainer(tiny_model("lstm", task), config).fit(data, data)
    assert [record["lr"][0] for record in result.epochs] == pytest.approx([1e-6, 5e-7, 2.5e-7, 1.25e-7])


def test_batched_getitems_path_and_single_row_tail() -> None:
    task = task_spec("binary")

    class CountingDataset(BatchDictDataset):
        calls = 0

        def __getitems__(self, indices):  # type: ignore[no-untyped-def]
            type(self).calls += 1
            return super().__getitems__(indices)

        def __getitem__(self, index):  # type: ignore[no-untyped-def]
            raise AssertionError("per-sample path used")

    data = CountingDataset(tiny_arrays(task, 33))
    trainer = Trainer(
        tiny_model("lstm", task), TrainConfig(max_epochs=1, batch_size=16, eval_batch_size=16, **CPU)
    )
    trainer.fit(data, data)
    assert CountingDataset.calls == 2 + 2
    assert [len(b) for b in _chunks(range(33), 16)] == [16, 17]


def test_duck_typed_datasets_with_getitems_are_used_as_datasets() -> None:
    task = task_spec("binary")
    inner = tiny_dataset(task, 20, paired_fraction=0.5)

    class Wrapper:
        """Not a torch Dataset: only len, __getitem__, __getitems__, collate and has_cxr."""

        def __len__(self) -> int:
            return len(inner)

        def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
            return inner[index]

        def __getitems__(self, indices):  # type: ignore[no-untyped-def]
            return inner.__getitems__(indices)

        collate = staticmethod(BatchDictDataset.collate)
        has_cxr = inner.has_cxr

    trainer = Trainer(tiny_model("lstm", task), TrainConfig(max_epochs=1, **CPU))
    trainer.fit(Wrapper(), Wrapper())
    np.testing.assert_array_equal(trainer.predict(Wrapper()).stay_id, inner.stay_ids)


def test_ready_made_batches_are_accepted() -> None:
    task = task_spec("binary")
    arrays = tiny_arrays(task, 32)
    batches = [{key: value[start : start + 8] for key, value in arrays.items()} for start in range(0, 32, 8)]
    trainer = Trainer(tiny_model("resnet", task), TrainConfig(max_epochs=2, **CPU))
    result = trainer.fit(batches, batches)
    assert len(result.epochs) == 2
    predictions = trainer.predict(batches)
    np.testing.assert_array_equal(predictions.stay_id, arrays["stay_id"].numpy())
    np.testing.assert_array_equal(predictions.has_cxr, arrays["has_cxr"].numpy())


def test_modality_count_order_puts_paired_rows_first_and_needs_a_dataset() -> None:
    task = task_spec("binary")
    seen: list[torch.Tensor] = []
    model = tiny_model("lstm", task)
    model.sample_order = lambda epoch: "modality_count_desc"  # type: ignore[method-assign]
    original = model.training_step

    def recording_step(batch, optimizers, state):  # type: ignore[no-untyped-def]
        seen.append(batch["has_cxr"].clone())
        return original(batch, optimizers, state)

    model.training_step = recording_step  # type: ignore[method-assign]
    data = tiny_dataset(task, 40, paired_fraction=0.3)
    Trainer(model, TrainConfig(max_epochs=1, batch_size=8, **CPU)).fit(data, data)
    order = torch.cat(seen)
    assert order[:12].all() and not order[12:].any()
    batches = [tiny_arrays(task, 8)]
    with pytest.raises(CarebenchModelError, match="needs a dataset"):
        Trainer(model, TrainConfig(max_epochs=1, **CPU)).fit(batches, batches)


@pytest.mark.parametrize("kind", ["binary", "multilabel", "multiclass"])
def test_predictions_export_in_long_format(kind: str) -> None:
    task = task_spec(kind)
    data = tiny_dataset(task, 10, seed=6)
    predictions = Trainer(tiny_model("latefusion", task), TrainConfig(**CPU)).predict(data)
    columns = long_predictions(
        predictions, task, extra={"has_cxr": predictions.has_cxr}, model="latefusion", seed=42, fold=0
    )
    width = task.num_outputs
    assert list(columns)[:5] == ["sample_id", "task", "target", "y_true", "y_score"]
    assert all(len(column) == 10 * width for column in columns.values())
    np.testing.assert_array_equal(columns["sample_id"][::width], data.stay_ids)
    assert columns["target"][:width].tolist() == list(task.label_names)
    np.testing.assert_allclose(columns["y_score"].reshape(10, width), predictions.proba, rtol=1e-6)
    y = data.tensors["y"].numpy()
    if kind == "multiclass":
        assert columns["y_true"].reshape(10, width).sum(axis=1).tolist() == [1] * 10
        assert columns["y_true"].reshape(10, width).argmax(axis=1).tolist() == y.tolist()
    else:
        np.testing.assert_array_equal(columns["y_true"].reshape(10, width), y)
    assert set(columns["model"]) == {"latefusion"} and columns["seed"].dtype.kind == "i"
    np.testing.assert_array_equal(columns["has_cxr"][::width], predictions.has_cxr)


def test_export_refuses_bad_inputs() -> None:
    task = task_spec("binary")
    predictions = Trainer(tiny_model("lstm", task), TrainConfig(**CPU)).predict(tiny_dataset(task, 4))
    with pytest.raises(CarebenchModelError, match="extra column"):
        long_predictions(predictions, task, extra={"sex": np.array(["F"])})
    with pytest.raises(CarebenchModelError, match="proba has shape"):
        long_predictions(predictions, task_spec("multilabel"))
    predictions.y = None
    with pytest.raises(CarebenchModelError, match="y_true is required"):
        long_predictions(predictions, task)


def test_validation_metric_matches_scikit_learn() -> None:
    from sklearn.metrics import average_precision_score

    from carebench_models.training.metrics import accuracy, macro_auprc

    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(float)
    y[:, 3] = 0.0
    proba = np.round(rng.random((200, 4)), 2)
    expected = np.mean([average_precision_score(y[:, k], proba[:, k]) for k in range(3)])
    assert macro_auprc(y, proba) == pytest.approx(expected, rel=1e-12)
    assert accuracy(np.array([2, 0]), np.array([[0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])) == 0.5


class _StagedLSTM(LSTMModel):
    """The `lstm` model with two training stages; records what the trainer hands each stage."""

    def __init__(self, task: TaskSpec, config: LSTMConfig) -> None:
        super().__init__(task, config)
        self.stage: str | None = None
        self.calls: list[str | None] = []
        self.rows_seen: dict[tuple[str | None, bool], list[bool]] = {}
        self.optimizers: list[torch.optim.Optimizer] = []

    def training_stages(self) -> tuple[TrainingStage, ...]:
        return (TrainingStage("warmup"), TrainingStage("images", rows="paired"))

    def set_training_stage(self, stage: str | None) -> None:
        self.stage = stage
        self.calls.append(stage)

    def configure_optimizers(self, train_cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        optimizers = super().configure_optimizers(train_cfg)
        self.optimizers.append(optimizers[0])  # kept alive, so two stages' optimisers can't share an id
        return optimizers

    def forward(self, batch):  # type: ignore[no-untyped-def]
        self.rows_seen.setdefault((self.stage, self.training), []).extend(batch["has_cxr"].tolist())
        return super().forward(batch)


def test_staged_models_fit_stage_by_stage_with_their_own_rows_and_optimisers() -> None:
    task = task_spec("binary")
    train, val = tiny_dataset(task, 40, seed=1), tiny_dataset(task, 24, seed=2)
    torch.manual_seed(0)
    model = _StagedLSTM(task, LSTMConfig.for_profile("quick", ehr_features=6))
    progress: list[tuple[int, int]] = []
    config = TrainConfig(
        max_epochs=3, patience=1, min_epochs=1, monitor=scripted_monitor([0.5, 0.4, 0.6, 0.7, 0.1]), **CPU
    )
    result = Trainer(model, config).fit(
        train, val, progress=lambda done, total: progress.append((done, total))
    )
    # Stage 1 stops after epochs 0-1 (no improvement at epoch 1); stage 2 runs epochs 2-4.
    assert model.calls == ["warmup", "images", None]
    assert [(record["epoch"], record["stage"]) for record in result.epochs] == [
        (0, "warmup"), (1, "warmup"), (2, "images"), (3, "images"), (4, "images"),
    ]  # fmt: skip
    assert [(s["stage"], s["first_epoch"], s["epochs"], s["best_epoch"]) for s in result.stages] == [
        ("warmup", 0, 2, 0),
        ("images", 2, 3, 3),
    ]
    assert (result.best_epoch, result.best_metric) == (3, 0.7)
    assert progress[-1] == (5, 6)  # epoch budget: 3 per stage
    assert len(model.optimizers) == 2 and model.optimizers[0] is not model.optimizers[1]  # fresh per stage
    # The paired stage trains and validates on the rows with a CXR only; the other sees every row.
    assert all(model.rows_seen[("images", True)]) and all(model.rows_seen[("images", False)])
    assert len(model.rows_seen[("images", True)]) == 3 * int(train.has_cxr.sum())
    assert len(model.rows_seen[("images", False)]) == 3 * int(val.has_cxr.sum())
    assert not all(model.rows_seen[("warmup", True)]) and len(model.rows_seen[("warmup", True)]) == 2 * 40
    # The model holds the best epoch of the last stage.
    assert all(torch.equal(value, result.best_state[key]) for key, value in model.state_dict().items())


def test_a_paired_stage_needs_a_dataset_with_cxrs() -> None:
    task = task_spec("binary")
    model = _StagedLSTM(task, LSTMConfig.for_profile("quick", ehr_features=6))
    batches = [tiny_arrays(task, 8, seed=3)]
    config = TrainConfig(max_epochs=1, min_epochs=1, **CPU)
    with pytest.raises(CarebenchModelError, match="'images' uses only the rows with a CXR"):
        Trainer(model, config).fit(batches, batches)
    without_cxr = tiny_dataset(task, 16, paired_fraction=0.0)
    with pytest.raises(CarebenchModelError, match="the training data has none"):
        Trainer(_StagedLSTM(task, LSTMConfig.for_profile("quick", ehr_features=6)), config).fit(
            without_cxr, without_cxr
        )
