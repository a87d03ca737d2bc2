"""`make_loader`: a seeded ``DataLoader`` over a `CarebenchDataset` that uses its batched path."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from carebench_data.torch.dataset import CarebenchDataset

__all__ = ["make_loader"]


def make_loader(
    dataset: CarebenchDataset,
    *,
    batch_size: int,
    shuffle: bool | None = None,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader that fetches each batch with one ``__getitems__`` call.

    Args:
        dataset: the split to iterate.
        batch_size: B.
        shuffle: default True on the train split, False otherwise (fixed row order for evaluation).
        seed: seeds the shuffling generator (the order changes every epoch, reproducibly).
        num_workers: worker processes (each shares the normalized EHR with the parent when forked).
        drop_last: drop a trailing partial batch.
        pin_memory: default True when CUDA is available.

    Returns:
        A ``torch.utils.data.DataLoader`` yielding DESIGN §2 batch dicts.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=dataset.split == "train" if shuffle is None else shuffle,
        generator=torch.Generator().manual_seed(int(seed)),
        num_workers=num_workers,
        collate_fn=CarebenchDataset.collate,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
    )
