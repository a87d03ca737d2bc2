"""Patient-level, hash-based splits (data.md §7.1).

Every quantity is a pure function of the subject id and a salt, so a split never depends on the
cohort it is computed on, on row order or on a random generator:

- ``U(s)``: the first 8 bytes of SHA-256 of the UTF-8 string ``s``, read as a big-endian unsigned
  integer and divided by 2^64 (a float in [0, 1)).
- ``fold_part = floor(5 * U("carebench:part:{salt}:{subject_id}"))`` in {0, ..., 4}.
- fold ``k``: test when ``fold_part == k``; validation when ``fold_part != k`` and
  ``U("carebench:val:{salt}:{k}:{subject_id}") < 1/8``; train otherwise (about 70/10/20 % of subjects).

Example:
    >>> import numpy as np
    >>> subjects = np.array([10000032, 10000980, 10001217])
    >>> parts = fold_parts(subjects)
    >>> parts.tolist()
    [3, 4, 1]
    >>> split_of(subjects, parts, fold=0).tolist()
    ['val', 'train', 'train']
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from carebench_data.errors import CarebenchDataError

__all__ = [
    "N_FOLDS",
    "SPLITS",
    "VALIDATION_FRACTION",
    "SplitError",
    "fold_parts",
    "split_of",
    "unit_hash",
    "unit_hashes",
]

N_FOLDS = 5
"""Number of folds; fold k's test split is the subjects with fold_part == k."""

VALIDATION_FRACTION = 1 / 8
"""Fraction of the non-test subjects of a fold that go to validation (1/8 of 80 % = 10 %)."""

SPLITS = ("train", "val", "test")
"""The split names, in the order used everywhere (counts, tables)."""

_TWO_TO_64 = float(2**64)


class SplitError(CarebenchDataError):
    """Invalid input to a split function (non-integer ids, unknown fold, shape mismatch)."""


def unit_hash(text: str) -> float:
    """U(text) of data.md §7.1: a deterministic number in [0, 1) from SHA-256.

    Args:
        text: any string; it is hashed as UTF-8.

    Returns:
        The first 8 digest bytes as a big-endian unsigned integer, divided by 2^64.

    Example:
        >>> round(unit_hash("carebench:part:v1:10000032"), 6)
        0.785949
    """
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _TWO_TO_64


def unit_hashes(texts: Iterable[str]) -> np.ndarray:
    """Vectorized `unit_hash`: float64 [n] in [0, 1), one value per string.

    The digests are packed into one buffer and converted with numpy; the result equals
    ``[unit_hash(t) for t in texts]`` exactly (division by a power of two is exact).
    """
    buffer = b"".join(hashlib.sha256(text.encode("utf-8")).digest()[:8] for text in texts)
    return np.frombuffer(buffer, dtype=">u8").astype(np.float64) / _TWO_TO_64


def _as_subject_ids(subject_ids: np.ndarray | Iterable[int]) -> np.ndarray:
    """Return the ids as a 1-D int64 array, rejecting floats, strings and nulls."""
    ids = np.asarray(subject_ids)
    if ids.ndim != 1:
        raise SplitError(f"subject_ids must be 1-D, got shape {ids.shape}.")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise SplitError(
            f"subject_ids must be integers (MIMIC subject_id), got dtype {ids.dtype}; "
            "cast the column to Int64 and drop nulls first."
        )
    return ids.astype(np.int64, copy=False)


def _hash_per_unique(ids: np.ndarray, template: str) -> np.ndarray:
    """U(template.format(subject_id=id)) for every id, hashing each distinct id once."""
    unique_ids, inverse = np.unique(ids, return_inverse=True)
    values = unit_hashes(template.format(subject_id=int(subject)) for subject in unique_ids)
    return values[inverse.reshape(-1)]


def fold_parts(subject_ids: np.ndarray, *, salt: str = "v1") -> np.ndarray:
    """The fold part of every subject: ``floor(5 * U("carebench:part:{salt}:{subject_id}"))``.

    Args:
        subject_ids: int [n] MIMIC subject ids (repeats allowed: one value per stay).
        salt: changes every assignment at once; ``"v1"`` is the benchmark's.

    Returns:
        int8 [n] values in {0, ..., 4}, aligned with ``subject_ids``.
    """
    ids = _as_subject_ids(subject_ids)
    values = _hash_per_unique(ids, f"carebench:part:{salt}:{{subject_id}}")
    # U < 1 always, but 2^64 - 1 rounds up to 2^64 in float64; clip keeps the part in range.
    return np.minimum(np.floor(N_FOLDS * values), N_FOLDS - 1).astype(np.int8)


def split_of(
    subject_ids: np.ndarray,
    fold_parts: np.ndarray,
    *,
    fold: int,
    salt: str = "v1",
) -> np.ndarray:
    """The split (``"train"``, ``"val"`` or ``"test"``) of every subject in fold ``fold``.

    Args:
        subject_ids: int [n] subject ids (one value per stay is fine: a subject's stays share a split).
        fold_parts: int [n] the stored ``stays.fold_part`` (or `fold_parts` of the same ids).
        fold: the fold number, 0 to 4.
        salt: must be the salt that produced ``fold_parts``.

    Returns:
        ``<U5`` [n] split names aligned with ``subject_ids``.
    """
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 0 <= fold < N_FOLDS:
        raise SplitError(f"fold must be an integer in 0..{N_FOLDS - 1}, got {fold!r}.")
    ids = _as_subject_ids(subject_ids)
    parts = np.asarray(fold_parts)
    if parts.shape != ids.shape:
        raise SplitError(f"fold_parts has shape {parts.shape}, expected {ids.shape} (one per subject id).")
    if parts.size and (parts.min() < 0 or parts.max() >= N_FOLDS):
        raise SplitError(f"fold_parts must lie in 0..{N_FOLDS - 1}, got [{parts.min()}, {parts.max()}].")
    val_hash = _hash_per_unique(ids, f"carebench:val:{salt}:{int(fold)}:{{subject_id}}")
    is_test = parts == fold
    is_val = ~is_test & (val_hash < VALIDATION_FRACTION)
    return np.where(is_test, "test", np.where(is_val, "val", "train")).astype("<U5")
