"""Loader throughput versus simply indexing the memory-mapped arrays, measured in the same run.

    python benchmarks/bench_loader.py                 # 3,000 stays, S = 256 stored, 224 px output
    python benchmarks/bench_loader.py --stays 1000 --paired 1.0

For batch sizes 16 and 256 it times one epoch of the train split through `make_loader` (the full
DESIGN §2 batch: normalized EHR, mask, cropped + normalized 3-channel images, optionally augmented)
and one epoch of the baseline, which gathers the same rows of the raw ``ehr.npy`` and ``cxr.npy``
memory maps in the same batches and does nothing else. The ratio loader / baseline is the price of
the batch contract per batch. A second reference, output-alloc, only allocates and fills the
batch's output tensors (float32 [B, 3, 224, 224] images dominate): the memory-bandwidth floor of any
loader that honours the contract.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from carebench_data.testing import write_tiny_dataset
from carebench_data.torch import CarebenchDataset, clear_cache, make_loader


def time_loader(ds: CarebenchDataset, batch_size: int) -> tuple[float, int]:
    start = time.perf_counter()
    batches = 0
    for batch in make_loader(ds, batch_size=batch_size, seed=0, pin_memory=False):
        batches += 1
        assert batch["cxr"].shape[-1] == ds.image_size
    return time.perf_counter() - start, batches


def time_baseline(path: Path, ds: CarebenchDataset, batch_size: int) -> tuple[float, int]:
    ehr = np.load(path / "ehr.npy", mmap_mode="r")
    cxr = np.load(path / "cxr.npy", mmap_mode="r")
    stays = pl.read_parquet(path / "stays.parquet", columns=["stay_id", "cxr_index"])
    row_of = {stay: row for row, stay in enumerate(stays["stay_id"].to_list())}
    rows = np.array([row_of[stay] for stay in ds.stay_ids])
    cxr_index = stays["cxr_index"].to_numpy()
    order = torch.randperm(rows.size, generator=torch.Generator().manual_seed(0)).numpy()
    start = time.perf_counter()
    batches = 0
    for begin in range(0, rows.size, batch_size):
        batch_rows = np.sort(rows[order[begin : begin + batch_size]])
        values = ehr[batch_rows]
        images = cxr[np.sort(cxr_index[batch_rows][cxr_index[batch_rows] >= 0])]
        batches += 1
        assert values.shape[0] == batch_rows.size and images.ndim == 3
    return time.perf_counter() - start, batches


def time_output_floor(ds: CarebenchDataset, batch_size: int) -> float:
    """Seconds to allocate and fill one epoch of output tensors (float32 images dominate)."""
    n_features = len(ds.feature_names)
    start = time.perf_counter()
    for begin in range(0, len(ds), batch_size):
        rows = min(batch_size, len(ds) - begin)
        torch.empty((rows, 3, ds.image_size, ds.image_size), dtype=torch.float32).fill_(1.0)
        torch.empty((rows, 48, n_features), dtype=torch.float32).fill_(1.0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stays", type=int, default=3000, help="stays in the generated dataset")
    parser.add_argument("--paired", type=float, default=0.3, help="fraction of stays with a CXR")
    parser.add_argument(
        "--side", type=int, default=256, help="stored image side S (output: round(S*224/256))"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per measurement (best kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as folder:
        path = write_tiny_dataset(
            Path(folder) / "bench",
            n_stays=args.stays,
            image_size=args.side,
            paired_fraction=args.paired,
            seed=0,
        )
        clear_cache()
        start = time.perf_counter()
        plain = CarebenchDataset(path, task="phenotype", split="train")
        build_seconds = time.perf_counter() - start
        augmented = CarebenchDataset(path, task="phenotype", split="train", augment=True)
        print(
            f"dataset: {args.stays} stays, train split {len(plain)} stays ({int(plain.has_cxr.sum())} with a CXR), "
            f"stored {args.side} px -> {plain.image_size} px; fold normalization + setup {build_seconds:.2f} s"
        )
        header = f"{'variant':<8} {'B':>4} {'batches/s':>10} {'samples/s':>10}"
        print(f"{header} {'mmap-index b/s':>15} {'ratio':>7} {'output-alloc b/s':>17} {'ratio':>7}")
        for batch_size in args.batch_sizes:
            base_seconds, batches = min(time_baseline(path, plain, batch_size) for _ in range(args.repeats))
            floor_seconds = min(time_output_floor(plain, batch_size) for _ in range(args.repeats))
            for name, ds in (("eval", plain), ("augment", augmented)):
                seconds, _ = min(time_loader(ds, batch_size) for _ in range(args.repeats))
                print(
                    f"{name:<8} {batch_size:>4} {batches / seconds:>10.1f} {len(ds) / seconds:>10.0f} "
                    f"{batches / base_seconds:>15.1f} {seconds / base_seconds:>6.1f}x "
                    f"{batches / floor_seconds:>17.1f} {seconds / floor_seconds:>6.1f}x"
                )


if __name__ == "__main__":
    main()
