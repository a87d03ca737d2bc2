"""Test helpers that ship with carebench-data (like ``polars.testing``).

- `write_tiny_dataset`: a complete benchmark dataset directory (DESIGN §1) with planted signal, in
  well under a second, for testing loaders, models and the command line without MIMIC.
- `write_raw_tree` / `RawTreeTruth`: a tiny hand-written raw MIMIC-IV + MIMIC-CXR-JPG tree and the
  expected outcome of building it, for testing the builder.
"""

from carebench_data.testing.dataset import write_tiny_dataset
from carebench_data.testing.raw import RawTreeTruth, write_raw_tree

__all__ = ["RawTreeTruth", "write_raw_tree", "write_tiny_dataset"]
