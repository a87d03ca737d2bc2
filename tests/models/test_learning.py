"""Every registered model learns the planted signal on tiny synthetic data, fast, on CPU (models.md §9.10).

A randomly initialised model can already rank the strong planted signal well or badly by chance, so
each model is trained twice, on the labels and on the flipped labels: reaching a high AUROC on both
is impossible without learning.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from carebench_models import BatchDictDataset, TrainConfig, Trainer, available_models
from carebench_models.testing import task_spec, tiny_arrays, tiny_model

TRAIN_ROWS, VAL_ROWS = 192, 96


def datasets(*, flipped: bool) -> tuple[BatchDictDataset, BatchDictDataset]:
    task = task_spec("binary")
    parts = []
    for rows, seed in ((TRAIN_ROWS, 1), (VAL_ROWS, 2)):
        arrays = tiny_arrays(task, rows, paired_fraction=0.75, seed=seed)
        if flipped:
            arrays["y"] = 1.0 - arrays["y"]
        parts.append(BatchDictDataset(arrays))
    return parts[0], parts[1]


@pytest.mark.parametrize("name", available_models())
def test_model_learns_planted_signal(name: str) -> None:
    task = task_spec("binary")
    for flipped in (False, True):
        train, val = datasets(flipped=flipped)
        trainer = Trainer(
            tiny_model(name, task), TrainConfig.for_profile("quick", max_epochs=4, lr=1e-3, device="cpu")
        )
        result = trainer.fit(train, val)
        predictions = trainer.predict(val)
        auroc = roc_auc_score(predictions.y[:, 0], predictions.proba[:, 0])
        paired = predictions.has_cxr
        paired_auroc = roc_auc_score(predictions.y[paired, 0], predictions.proba[paired, 0])
        assert auroc >= 0.75 and paired_auroc >= 0.75, (name, flipped, auroc, paired_auroc)
        seconds_per_512_rows = (
            np.mean([record["seconds"] for record in result.epochs]) * 512 / (TRAIN_ROWS + VAL_ROWS)
        )
        assert seconds_per_512_rows <= 10.0, (name, seconds_per_512_rows)
