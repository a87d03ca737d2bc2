"""BatchDictDataset and the safetensors weight files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from carebench_models import BatchDictDataset, CarebenchModelError, load_weights, save_weights
from carebench_models.testing import task_spec, tiny_arrays, tiny_model


def test_batch_dict_dataset_rows_batches_and_defaults() -> None:
    arrays = tiny_arrays(task_spec("multiclass"), 10, paired_fraction=0.3)
    for key in ("has_ehr", "cxr_hours", "stay_id"):
        del arrays[key]
    dataset = BatchDictDataset(arrays)
    assert len(dataset) == 10
    assert dataset.stay_ids.tolist() == list(range(10))
    assert dataset.has_cxr.dtype == np.bool_ and dataset.has_cxr.sum() == 3
    row = dataset[4]
    assert row["ehr"].shape == (48, 6) and row["y"].ndim == 0 and bool(row["has_ehr"])
    batch = dataset.__getitems__([7, 2])
    torch.testing.assert_close(batch["cxr"], arrays["cxr"][[7, 2]])
    assert BatchDictDataset.collate(batch) is batch


def test_batch_dict_dataset_refuses_bad_tensors() -> None:
    arrays = tiny_arrays(task_spec("binary"), 4)
    with pytest.raises(CarebenchModelError, match="needs keys cxr"):
        BatchDictDataset({key: value for key, value in arrays.items() if key != "cxr"})
    arrays["y"] = arrays["y"][:3]
    with pytest.raises(CarebenchModelError, match="4 rows"):
        BatchDictDataset(arrays)


def test_weights_round_trip_and_mismatch(tmp_path: Path) -> None:
    task = task_spec("binary")
    model = tiny_model("latefusion", task, seed=0)
    path = save_weights(model, tmp_path / "nested" / "model.safetensors")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["model.safetensors"]
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then a JSON header
    fresh = tiny_model("latefusion", task, seed=1)
    load_weights(fresh, path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    with pytest.raises(CarebenchModelError, match="does not fit"):
        load_weights(tiny_model("lstm", task), path)
    with pytest.raises(CarebenchModelError, match="other shapes"):
        load_weights(tiny_model("latefusion", task_spec("multiclass")), path)
    with pytest.raises(CarebenchModelError, match="not found"):
        load_weights(model, tmp_path / "absent.safetensors")
