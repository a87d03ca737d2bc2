"""A dataset's `finish_batch` runs on every batch after the device transfer; epochs record training time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from carebench_models import BatchDictDataset, TrainConfig, Trainer
from carebench_models.testing import task_spec, tiny_arrays, tiny_model


class HalfImages(BatchDictDataset):
    """Ships `cxr` at half its values under another key; `finish_batch` restores the batch contract."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        super().__init__(tensors)
        self.finished: list[int] = []

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        batch = super().__getitems__(indices)
        batch["cxr_half"] = batch.pop("cxr") / 2
        return batch

    def finish_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.finished.append(int(batch["has_cxr"].shape[0]))
        finished = {key: value for key, value in batch.items() if key != "cxr_half"}
        finished["cxr"] = batch["cxr_half"] * 2
        return finished


def _fit(train, val):  # type: ignore[no-untyped-def]
    task = task_spec("binary")
    model = tiny_model("latefusion", task, seed=3)
    trainer = Trainer(model, TrainConfig(max_epochs=2, min_epochs=2, batch_size=8, device="cpu", seed=5))
    fit = trainer.fit(train, val)
    return fit, trainer.predict(val)


def test_finish_batch_gives_the_same_fit_as_ready_batches() -> None:
    task = task_spec("binary")
    train_arrays, val_arrays = tiny_arrays(task, 40, seed=1), tiny_arrays(task, 24, seed=2)
    plain_fit, plain_pred = _fit(BatchDictDataset(train_arrays), BatchDictDataset(val_arrays))
    train, val = HalfImages(train_arrays), HalfImages(val_arrays)
    fit, pred = _fit(train, val)
    # every training batch (2 epochs × 5 of 8) and every evaluation batch (2 validations and 1
    # prediction, each 16 + 8 rows) was finished
    assert train.finished == [8] * 10
    assert val.finished == [16, 8] * 3
    np.testing.assert_array_equal(pred.proba, plain_pred.proba)
    for key, value in plain_fit.best_state.items():
        torch.testing.assert_close(fit.best_state[key], value, rtol=0, atol=0)
    for record in fit.epochs:
        assert record["train_samples"] == 40
        assert 0 < record["train_seconds"] <= record["seconds"]
