"""Per-fold normalization statistics and the load-time EHR transform (data.md §7.2).

Statistics come from the **train stays of one fold** and are written at build time as
``stats/fold<k>.json``; the transform is applied when a dataset is loaded, so the directory on disk
holds raw values only. The transform, vectorized over all stays:

1. ``ehr_mask = ~isnan(raw)``, taken before any filling;
2. forward fill along the 48 hours, inside the window only (a leading gap stays empty);
3. remaining gaps get the fold's train median;
4. scaling: robust ``(x - median) / iqr`` by default, falling back to ``std`` when the IQR is 0 and to
   1 when the std is 0 or undefined; ``standard`` is ``(x - mean) / std``; ``none`` leaves the value;
   a registry ``scale`` overrides the method per feature;
5. no NaN (nor infinity) may remain (checked). Nothing is clipped.

Example:
    >>> import numpy as np
    >>> raw = np.array([[[np.nan], [2.0], [np.nan]], [[1.0], [np.nan], [3.0]]], dtype=np.float32)
    >>> stats = compute_fold_stats(raw, np.array([0, 1]), feature_names=["hr"],
    ...                            train_stay_ids=np.array([30000001, 30000002]))
    >>> stats["features"][0]["median"], stats["features"][0]["iqr"]
    (2.0, 1.0)
    >>> values, mask = normalize(raw, stats)
    >>> values[:, :, 0].tolist(), mask[:, :, 0].tolist()
    ([[0.0, 0.0, 0.0], [-1.0, -1.0, 1.0]], [[False, True, False], [True, False, True]])
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from carebench_data.errors import CarebenchDataError

__all__ = [
    "SCALE_METHODS",
    "STATS_SCHEMA_VERSION",
    "NormalizationError",
    "compute_fold_stats",
    "forward_fill",
    "normalize",
    "read_fold_stats",
    "scaling_parameters",
    "stay_ids_sha256",
    "write_fold_stats",
]

logger = logging.getLogger(__name__)

STATS_SCHEMA_VERSION = 1
"""Version of the ``stats/fold<k>.json`` layout written by `compute_fold_stats`."""

SCALE_METHODS = ("robust", "standard", "none")
"""Load-time scaling methods; a registry ``scale`` may also say ``inherit`` (use the method)."""

ScaleMethod = Literal["robust", "standard", "none"]

_STAT_KEYS = ("n_obs", "median", "q25", "q75", "iqr", "mean", "std", "min", "max")
_CHUNK_STAYS = 4096


class NormalizationError(CarebenchDataError):
    """Bad statistics, a shape mismatch, an unknown scaling method, or NaN left after the transform."""


def stay_ids_sha256(stay_ids: np.ndarray) -> str:
    """SHA-256 (hex) of the sorted stay ids written in decimal, one per line, no trailing newline.

    This is the ``train_stay_ids_sha256`` of a stats file: it proves which stays produced it.
    """
    ids = np.sort(np.asarray(stay_ids, dtype=np.int64))
    return hashlib.sha256("\n".join(str(int(i)) for i in ids).encode("ascii")).hexdigest()


def _feature_stats(values: np.ndarray) -> dict[str, Any]:
    """The per-feature entry of a stats file from the observed values (float64 [n], no NaN)."""
    if values.size == 0:
        return {key: (0 if key == "n_obs" else None) for key in _STAT_KEYS}
    q25, median, q75 = (float(q) for q in np.quantile(values, [0.25, 0.5, 0.75], method="linear"))
    return {
        "n_obs": int(values.size),
        "median": median,
        "q25": q25,
        "q75": q75,
        "iqr": q75 - q25,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def compute_fold_stats(
    ehr: np.ndarray,
    train_rows: np.ndarray,
    *,
    feature_names: list[str],
    train_stay_ids: np.ndarray,
) -> dict[str, Any]:
    """Normalization statistics of one fold from its training stays (the ``stats/fold<k>.json`` dict).

    Args:
        ehr: float32 [N, T, F] raw hourly values with NaN where not observed (may be memory-mapped).
        train_rows: int [n] rows of ``ehr`` that are the fold's train stays (base cohort).
        feature_names: the F feature names, in F order.
        train_stay_ids: int64 [n] stay ids of those rows (hashed into the file).

    Returns:
        ``{"schema_version", "n_train_stays", "train_stay_ids_sha256", "quantile_method",
        "features": [{"name", "n_obs", "median", "q25", "q75", "iqr", "mean", "std", "min", "max"}]}``
        with one feature entry per F, in order. Statistics are over the observed hourly values of the
        train stays, in float64, with linear-interpolation quantiles and the population std. A
        feature never observed in training has ``n_obs`` 0 and null statistics.
    """
    if ehr.ndim != 3:
        raise NormalizationError(f"ehr must be [N, T, F], got shape {ehr.shape}.")
    n_features = ehr.shape[2]
    if len(feature_names) != n_features:
        raise NormalizationError(f"{len(feature_names)} feature names for F = {n_features} features.")
    rows = np.sort(np.asarray(train_rows, dtype=np.int64))
    if rows.size == 0:
        raise NormalizationError("no training stays: an empty train split cannot give statistics.")
    if rows[0] < 0 or rows[-1] >= ehr.shape[0] or np.any(np.diff(rows) == 0):
        raise NormalizationError(f"train_rows must be distinct row numbers in 0..{ehr.shape[0] - 1}.")
    stay_ids = np.asarray(train_stay_ids)
    if stay_ids.shape != rows.shape:
        raise NormalizationError(f"{stay_ids.size} train_stay_ids for {rows.size} train rows.")
    flat = np.asarray(ehr[rows], dtype=np.float32).reshape(-1, n_features)
    features = []
    for index, name in enumerate(feature_names):
        column = flat[:, index].astype(np.float64)  # one feature at a time in float64 keeps memory low
        entry = {"name": name, **_feature_stats(column[~np.isnan(column)])}
        if entry["n_obs"] == 0:
            logger.warning(
                "feature %r is never observed in the training stays; it will be filled with 0", name
            )
        features.append(entry)
    return {
        "schema_version": STATS_SCHEMA_VERSION,
        "n_train_stays": int(rows.size),
        "train_stay_ids_sha256": stay_ids_sha256(stay_ids),
        "quantile_method": "linear",
        "features": features,
    }


def write_fold_stats(stats: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a stats dict as JSON (sorted keys, 2-space indent, trailing newline), atomically."""
    target = Path(path)
    text = json.dumps(stats, sort_keys=True, indent=2, allow_nan=False) + "\n"
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def read_fold_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a ``stats/fold<k>.json`` file."""
    source = Path(path)
    if not source.is_file():
        raise NormalizationError(f"{source}: statistics file not found; rebuild the dataset directory.")
    stats = json.loads(source.read_text(encoding="utf-8"))
    if not isinstance(stats, dict) or not isinstance(stats.get("features"), list):
        raise NormalizationError(f"{source}: not a carebench stats file (no 'features' list).")
    return stats


def _stat(entry: Mapping[str, Any], key: str) -> float:
    """A statistic as float, NaN when null (feature never observed)."""
    value = entry.get(key)
    return math.nan if value is None else float(value)


def scaling_parameters(
    stats: Mapping[str, Any],
    *,
    method: ScaleMethod = "robust",
    feature_scale: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature fill value, center and divisor of the load-time transform.

    Args:
        stats: a stats dict (`compute_fold_stats` / ``stats/fold<k>.json``).
        method: ``robust`` (default), ``standard`` or ``none``.
        feature_scale: optional ``{feature name: robust | standard | none | inherit}`` overrides (the
            registry's ``scale`` field).

    Returns:
        ``(fill, center, divisor)``, each float64 [F]: ``x_scaled = (x_filled - center) / divisor``.
        A feature never observed in training gets fill 0, center 0 and divisor 1.
    """
    if method not in SCALE_METHODS:
        raise NormalizationError(
            f"unknown scaling method {method!r}; choose one of {', '.join(SCALE_METHODS)}."
        )
    entries = stats["features"]
    overrides = dict(feature_scale or {})
    unknown = sorted(set(overrides) - {entry["name"] for entry in entries})
    if unknown:
        raise NormalizationError(f"feature_scale names features absent from the stats: {unknown}.")
    fill, center, divisor = (np.zeros(len(entries)), np.zeros(len(entries)), np.ones(len(entries)))
    for index, entry in enumerate(entries):
        scale = overrides.get(entry["name"], "inherit")
        if scale == "inherit":
            scale = method
        if scale not in SCALE_METHODS:
            raise NormalizationError(
                f"feature {entry['name']!r}: unknown scale {scale!r}; use inherit, robust, standard or none."
            )
        median, iqr, std = _stat(entry, "median"), _stat(entry, "iqr"), _stat(entry, "std")
        if math.isnan(median):
            continue
        fill[index] = median
        std_or_one = std if std > 0 else 1.0
        if scale == "robust":
            center[index] = median
            divisor[index] = iqr if iqr > 0 else std_or_one
        elif scale == "standard":
            center[index] = _stat(entry, "mean")
            divisor[index] = std_or_one
    return fill, center, divisor


def forward_fill(raw: np.ndarray) -> np.ndarray:
    """Carry the last observed value forward along axis 1 (hours); leading gaps stay NaN.

    Args:
        raw: float [n, T, F] with NaN where not observed.

    Returns:
        A new array of the same shape and dtype.
    """
    hours = np.arange(raw.shape[1]).reshape(1, -1, 1)
    last_seen = np.where(np.isnan(raw), 0, hours)
    np.maximum.accumulate(last_seen, axis=1, out=last_seen)
    return np.take_along_axis(raw, last_seen, axis=1)


def normalize(
    ehr_raw: np.ndarray,
    stats: Mapping[str, Any],
    *,
    method: ScaleMethod = "robust",
    feature_scale: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The load-time transform of data.md §7.2: mask, forward fill, median fill, scale.

    Args:
        ehr_raw: float32 [N, T, F] raw values, NaN where not observed (may be memory-mapped; it is read
            in chunks of stays and never modified).
        stats: the fold's statistics (`compute_fold_stats`), with F feature entries.
        method: ``robust`` (default), ``standard`` or ``none``.
        feature_scale: per-feature overrides of ``method`` (registry ``scale``).

    Returns:
        ``(values, mask)``: float32 [N, T, F] normalized, imputed values with no NaN, and bool
        [N, T, F] ``ehr_mask``, True where the raw value was observed.
    """
    if ehr_raw.ndim != 3:
        raise NormalizationError(f"ehr must be [N, T, F], got shape {ehr_raw.shape}.")
    if len(stats["features"]) != ehr_raw.shape[2]:
        raise NormalizationError(
            f"the stats describe {len(stats['features'])} features but the EHR has F = {ehr_raw.shape[2]}."
        )
    fill, center, divisor = scaling_parameters(stats, method=method, feature_scale=feature_scale)
    values = np.empty(ehr_raw.shape, dtype=np.float32)
    mask = np.empty(ehr_raw.shape, dtype=bool)
    for start in range(0, ehr_raw.shape[0], _CHUNK_STAYS):
        stop = min(start + _CHUNK_STAYS, ehr_raw.shape[0])
        raw = np.asarray(ehr_raw[start:stop], dtype=np.float64)
        mask[start:stop] = ~np.isnan(raw)
        filled = forward_fill(raw)
        filled = np.where(np.isnan(filled), fill, filled)
        values[start:stop] = (filled - center) / divisor
    if not np.isfinite(values).all():
        raise NormalizationError(
            "NaN or infinity left after normalization: the raw EHR holds infinite values; "
            "verify or rebuild the dataset directory."
        )
    return values, mask
