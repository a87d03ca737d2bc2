"""Seeded random streams and small numeric helpers shared by the synthetic modules.

Every stream is derived from the root seed and a fixed path of names and chunk indices, so the
output depends only on the configuration, never on call order across tables.
"""

from __future__ import annotations

import hashlib

import numpy as np

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86_400


def rng_for(seed: int, *path: str | int) -> np.random.Generator:
    """A generator for one named stream, e.g. `rng_for(seed, "chartevents", chunk_index)`."""
    words = [int.from_bytes(hashlib.sha256(str(part).encode()).digest()[:4], "little") for part in path]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def calibrate_intercept(linear: np.ndarray, target: float, *, weights: np.ndarray | None = None) -> float:
    """The intercept b with mean(sigmoid(b + linear)) == target, found by bisection.

    Args:
        linear: [n] linear predictor without intercept.
        target: desired mean probability in (0, 1).
        weights: optional [n] non-negative weights of the mean.

    Returns:
        The intercept, within 1e-6 on the logit scale.
    """
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        mean = float(np.average(sigmoid(mid + linear), weights=weights))
        if mean < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def year_start_seconds(years: np.ndarray) -> np.ndarray:
    """Seconds since 1970-01-01 of January 1st of each year (int64)."""
    return (years.astype(np.int64) - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)


def unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """N distinct sorted integers in [low, high) (int64)."""
    ids = np.unique(rng.integers(low, high, size=int(n * 1.2) + 16))
    while ids.size < n:
        ids = np.unique(np.concatenate([ids, rng.integers(low, high, size=n)]))
    return np.sort(rng.choice(ids, size=n, replace=False)).astype(np.int64)


def choice_index(rng: np.random.Generator, probabilities: np.ndarray, size: int) -> np.ndarray:
    """Category indices drawn with the given probabilities (normalized)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return rng.choice(p.size, size=size, p=p / p.sum())
