"""`BatchDictDataset`: plain tensors in the batch contract, as a map-style dataset for `Trainer`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from carebench_models.errors import CarebenchModelError

REQUIRED_KEYS = ("ehr", "ehr_mask", "cxr", "has_cxr")


class BatchDictDataset(Dataset):
    """Rows of a dict of tensors that all share their first dimension N (DESIGN.md §2 keys).

    Missing optional keys are filled: `has_ehr` all True, `cxr_hours` zeros, `stay_id` 0..N-1. `y`
    is optional (prediction without labels).

    Args:
        tensors: `ehr` [N, T, F], `ehr_mask` [N, T, F], `cxr` [N, 3, H, W], `has_cxr` [N], and
            optionally `has_ehr`, `cxr_hours`, `y`, `stay_id`.

    Raises:
        CarebenchModelError: a required key is absent or the first dimensions differ.
    """

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        missing = [key for key in REQUIRED_KEYS if key not in tensors]
        if missing:
            raise CarebenchModelError(f"BatchDictDataset needs keys {', '.join(missing)}")
        size = int(tensors["ehr"].shape[0])
        columns = dict(tensors)
        columns.setdefault("has_ehr", torch.ones(size, dtype=torch.bool))
        columns.setdefault("cxr_hours", torch.zeros(size, dtype=torch.float32))
        columns.setdefault("stay_id", torch.arange(size, dtype=torch.int64))
        wrong = {key: int(value.shape[0]) for key, value in columns.items() if int(value.shape[0]) != size}
        if wrong:
            raise CarebenchModelError(f"every tensor needs {size} rows (from 'ehr'); got {wrong}")
        self.tensors = columns

    def __len__(self) -> int:
        return int(self.tensors["ehr"].shape[0])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """One sample: every key without the batch dimension."""
        return {key: value[index] for key, value in self.tensors.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """A whole batch, already stacked (torch's DataLoader calls this with a batch of indices)."""
        rows = torch.as_tensor(list(indices), dtype=torch.int64)
        return {key: value.index_select(0, rows) for key, value in self.tensors.items()}

    @staticmethod
    def collate(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Identity: `__getitems__` already returns a stacked batch."""
        return batch

    @property
    def has_cxr(self) -> np.ndarray:
        """Which rows have a CXR: bool [N]."""
        return self.tensors["has_cxr"].bool().numpy()

    @property
    def stay_ids(self) -> np.ndarray:
        """Stay ids: int64 [N]."""
        return self.tensors["stay_id"].numpy()
