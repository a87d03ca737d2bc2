"""Time-varying latent state and event slots, vectorized over all events of a chunk.

S_t = S + drift · τ + 0.35 · Σ_j sin(2π t / P_j + φ_j), τ = t / LoS: a smooth, autocorrelated path
that drifts down for survivors and up before an ICU death (data.md §13.3), evaluated at any event
time without per-stay loops.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from carebench_data.synthetic.latent import Population
from carebench_data.synthetic.rng import SECONDS_PER_HOUR

_WAVE_PERIODS_HOURS = np.array([11.0, 23.0, 37.0])


def severity_at(population: Population, stay_rows: np.ndarray, t_seconds: np.ndarray) -> np.ndarray:
    """Latent severity S_t of each event.

    Args:
        population: the sampled population.
        stay_rows: [E] stay row of each event.
        t_seconds: [E] absolute event times (seconds).

    Returns:
        [E] float64 severity.
    """
    stays = population.stays
    adm = stays["admission"][stay_rows]
    hours = (t_seconds - stays["intime"][stay_rows]) / SECONDS_PER_HOUR
    tau = np.clip(hours / np.maximum(stays["los_hours"][stay_rows], 1.0), 0.0, 1.0)
    drift = np.where(stays["icu_death"][stay_rows], 1.2, -0.4)
    phase = stays["wave_phase"][stay_rows]
    wave = np.sin(2 * np.pi * hours[:, None] / _WAVE_PERIODS_HOURS[None, :] + phase).sum(axis=1)
    return population.admissions["z_severity"][adm] + drift * tau + 0.35 * wave


def shock_at(population: Population, stay_rows: np.ndarray, t_seconds: np.ndarray) -> np.ndarray:
    """[E] bool: the stay's shock episode is ongoing at the event time."""
    stays = population.stays
    adm = stays["admission"][stay_rows]
    return population.admissions["shock"][adm] & (t_seconds < stays["shock_end"][stay_rows])


def slots(
    rng: np.random.Generator,
    stay_rows: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    cadence_hours: float,
    *,
    jitter_minutes: float = 6.0,
    keep_probability: float | np.ndarray = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Regular event times between start and end for each stay, with a random phase and jitter.

    Args:
        rng: random stream.
        stay_rows: [n] stay rows that chart this item.
        start: [n] window start in seconds.
        end: [n] window end in seconds (exclusive).
        cadence_hours: spacing of the slots.
        jitter_minutes: SD of the Gaussian jitter of each slot.
        keep_probability: scalar or [n] probability of keeping each slot.

    Returns:
        (rows, times): [E] stay rows and [E] times (seconds, whole minutes), in stay then time order.
    """
    cadence = cadence_hours * SECONDS_PER_HOUR
    phase = rng.uniform(0, cadence, size=stay_rows.size)
    counts = np.maximum(np.ceil((end - start - phase) / cadence), 0).astype(np.int64)
    rows = np.repeat(stay_rows, counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(rows.size) - first
    base = np.repeat(start + phase, counts) + k * cadence
    times = base + rng.normal(0, jitter_minutes * 60, size=rows.size)
    lo = np.repeat(start, counts)
    hi = np.repeat(end, counts) - 60
    times = (np.clip(times, lo, np.maximum(hi, lo)) // 60 * 60).astype(np.int64)
    keep_p = np.repeat(np.broadcast_to(keep_probability, stay_rows.shape), counts)
    keep = rng.random(rows.size) < keep_p
    return rows[keep], times[keep]


def to_datetime(seconds: np.ndarray, name: str) -> pl.Series:
    """Seconds since 1970 as a polars Datetime[us] series; negative values become null."""
    micros = pl.Series(name, np.asarray(seconds, dtype=np.int64) * 1_000_000)
    return pl.select(pl.when(micros >= 0).then(micros).cast(pl.Datetime("us")).alias(name)).to_series()


def to_date(seconds: np.ndarray, name: str) -> pl.Series:
    """Seconds since 1970 as a polars Date series; negative values become null."""
    return to_datetime(seconds, name).dt.date()
