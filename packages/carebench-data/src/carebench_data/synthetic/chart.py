"""chartevents emission (data.md §13.4): real itemids and units, cadences, text items, distractors, dirt.

Every EHR-side term of the planted signal shows in a default-set feature: severity and shock in
MAP/HR/RR/SpO2/GCS/pH, infection and fever in temperature and HR, pulmonary load and fluid
overload in RR/SpO2/FiO2 and daily weight, metabolism in fingerstick glucose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from carebench_data.synthetic.config import SyntheticConfig
from carebench_data.synthetic.events import (
    GCS_EYE_TEXT,
    GCS_MOTOR_TEXT,
    GCS_VERBAL_TEXT,
    RASS_TEXT,
    TEXT_CODE,
    EventBuffer,
    value_expressions,
)
from carebench_data.synthetic.latent import Population
from carebench_data.synthetic.rng import SECONDS_PER_DAY, SECONDS_PER_HOUR, sigmoid
from carebench_data.synthetic.trajectory import severity_at, shock_at, slots, to_datetime

VALUEUOM: dict[int, str | None] = {
    220045: "bpm",
    220046: "bpm",
    220047: "bpm",
    220050: "mmHg",
    220051: "mmHg",
    220052: "mmHg",
    220056: "mmHg",
    220058: "mmHg",
    220074: "mmHg",
    220179: "mmHg",
    220180: "mmHg",
    220181: "mmHg",
    220210: "insp/min",
    220277: "%",
    220339: "cmH2O",
    223751: "mmHg",
    223752: "mmHg",
    223761: "°F",
    223762: "°C",
    223769: "%",
    223770: "%",
    223830: "units",
    223834: "L/min",
    223835: None,
    224161: "insp/min",
    224162: "insp/min",
    224639: "kg",
    224684: "mL",
    224685: "mL",
    224687: "L/min",
    224690: "insp/min",
    224695: "cmH2O",
    224696: "cmH2O",
    224697: "cmH2O",
    224700: "cmH2O",
    225664: "mg/dL",
    226253: "%",
    226512: "kg",
    226531: "lbs",
    226707: "Inch",
    226730: "cm",
}

# Extra items of full charting (perf10 volume): (itemid, cadence h, condition, constant value, text).
_FILLER: tuple[tuple[int, float, str, float, str], ...] = (
    (220056, 1.0, "aline", 90.0, ""),
    (220058, 1.0, "aline", 160.0, ""),
    (223751, 1.0, "all", 160.0, ""),
    (223752, 1.0, "all", 90.0, ""),
    (223769, 1.0, "all", 100.0, ""),
    (223770, 1.0, "all", 90.0, ""),
    (224161, 1.0, "all", 35.0, ""),
    (224162, 1.0, "all", 8.0, ""),
    (224641, 1.0, "all", 1.0, "1"),
    (224168, 1.0, "all", 1.0, "1"),
    (224054, 1.0, "all", np.nan, "Slightly Limited"),
    (224055, 1.0, "all", np.nan, "No Impairment"),
    (224056, 1.0, "all", np.nan, "Slightly Limited"),
    (224057, 1.0, "all", np.nan, "Slightly Limited"),
    (224058, 1.0, "all", np.nan, "No Impairment"),
    (224059, 1.0, "all", np.nan, "No Impairment"),
    (224080, 1.0, "all", np.nan, "30 Degrees"),
    (224082, 1.0, "all", np.nan, "Side to Side"),
    (224093, 1.0, "all", np.nan, "Supine"),
    (227969, 1.0, "all", np.nan, "Bed locked / low position"),
    (224650, 1.0, "all", np.nan, "No Impairment"),
    (220074, 1.0, "central_line", 10.0, ""),
    (223834, 2.0, "not_vent", 2.0, ""),
    (220339, 1.0, "vent", 5.0, ""),
    (224700, 1.0, "vent", 6.0, ""),
    (224684, 1.0, "vent", 450.0, ""),
    (224685, 1.0, "vent", 460.0, ""),
    (224687, 1.0, "vent", 8.0, ""),
    (224695, 1.0, "vent", 24.0, ""),
    (224696, 1.0, "vent", 19.0, ""),
    (224697, 1.0, "vent", 10.0, ""),
)

DIRT_KINDS = ("out_of_range", "fraction_scale", "unit_fixed", "unmatched_text", "duplicates")


@dataclass
class ChartChunk:
    """One chunk of chartevents rows and the dirt injected per stay ([stays in chunk, len(DIRT_KINDS)])."""

    frame: pl.DataFrame
    dirt: np.ndarray


def charting_window(
    population: Population, config: SyntheticConfig, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) seconds of charting per stay row: intime to death/outtime, capped by chart_cap_hours."""
    stays = population.stays
    start = stays["intime"][rows]
    end = stays["end_of_charting"][rows]
    if config.chart_cap_hours is not None:
        end = np.minimum(end, start + int(config.chart_cap_hours * SECONDS_PER_HOUR))
    return start, np.maximum(end, start)


def _gcs(
    rng: np.random.Generator, severity: np.ndarray, neuro: np.ndarray, sedated: np.ndarray
) -> tuple[np.ndarray, ...]:
    deficit = (
        1.6 * np.maximum(severity - 0.3, 0)
        + 6.0 * neuro
        + 2.0 * sedated
        + rng.normal(0, 1.0, size=severity.size)
    )
    deficit = np.clip(np.round(deficit), 0, 12)
    eye = 4 - np.minimum(3, np.round(deficit * 3 / 12)).astype(int)
    verbal = 5 - np.minimum(4, np.round(deficit * 4 / 12)).astype(int)
    motor = 6 - np.minimum(5, np.round(deficit * 5 / 12)).astype(int)
    return eye, verbal, motor


def chart_chunk(
    population: Population, config: SyntheticConfig, rng: np.random.Generator, lo: int, hi: int
) -> ChartChunk:
    """Chartevents rows of stays lo..hi-1 (sorted by stay_id, charttime, itemid)."""
    stays = population.stays
    adm = population.admissions
    all_rows = np.arange(lo, hi)
    start, end = charting_window(population, config, all_rows)
    a = stays["admission"][all_rows]
    buf = EventBuffer()

    def latent(name: str, rows: np.ndarray) -> np.ndarray:
        return adm[name][stays["admission"][rows]]

    def state(name: str, rows: np.ndarray) -> np.ndarray:
        return adm[name][stays["admission"][rows]].astype(np.float64)

    def base(name: str, rows: np.ndarray) -> np.ndarray:
        return stays[f"baseline_{name}"][rows]

    def series(
        cadence: float,
        mask: np.ndarray | None = None,
        keep: float | np.ndarray = 1.0,
        until: np.ndarray | None = None,
    ):
        sel = np.ones(all_rows.size, dtype=bool) if mask is None else mask
        stop = end if until is None else np.minimum(end, until)
        keep_arr = keep[sel] if isinstance(keep, np.ndarray) else keep
        return slots(rng, all_rows[sel], start[sel], stop[sel], cadence, keep_probability=keep_arr)

    def once() -> tuple[np.ndarray, np.ndarray]:
        sel = end > start
        offset = rng.uniform(0, 1, size=int(sel.sum())) * np.minimum(
            end[sel] - start[sel], 2 * SECONDS_PER_HOUR
        )
        return all_rows[sel], (start[sel] + offset.astype(np.int64)) // 60 * 60

    effusion = np.maximum(adm["eff_left"], adm["eff_right"])

    # Heart rate, hourly.
    r, t = series(1.0)
    s_t = severity_at(population, r, t)
    hr = (
        86
        + 8 * s_t
        + 6 * latent("z_infection", r)
        + 6 * state("fever_grade", r)
        + 8 * base("hr", r)
        + rng.normal(0, 5, r.size)
    )
    hr_rows = (r, t, np.clip(hr, 30, 220))
    # Respiratory rate, hourly.
    r, t = series(1.0)
    s_t = severity_at(population, r, t)
    rr = (
        19
        + 2.5 * s_t
        + 2 * latent("z_pulmonary", r)
        + 4.0 * state("overload", r)
        + 2 * base("rr", r)
        + rng.normal(0, 2.5, r.size)
    )
    buf.add(r, t, 220210, np.clip(rr, 4, 60))
    # SpO2, hourly; only a faint dip from pleural findings.
    r, t = series(1.0)
    s_t = severity_at(population, r, t)
    spo2 = (
        97
        - 1.2 * s_t
        - 1.5 * latent("z_pulmonary", r)
        - 2.0 * state("overload", r)
        - 0.3 * effusion[stays["admission"][r]]
        + 0.7 * base("spo2", r)
        + rng.normal(0, 1.2, r.size)
    )
    spo2_rows = (r, t, np.clip(spo2, 60, 100))
    # Blood pressure: arterial line hourly, otherwise NIBP about every other hour.
    aline = stays["aline"][all_rows]
    for mask, keep, items in (
        (aline, 1.0, (220050, 220051, 220052)),
        (~aline, 0.5, (220179, 220180, 220181)),
    ):
        r, t = series(1.0, mask, keep)
        s_t = severity_at(population, r, t)
        mbp = 77 - 6 * s_t - 10 * shock_at(population, r, t) + 7 * base("map", r) + rng.normal(0, 4, r.size)
        mbp = np.clip(mbp, 25, 160)
        pulse = np.clip(rng.normal(45, 8, r.size), 20, 90)
        buf.add(r, t, items[0], mbp + 2 * pulse / 3)
        buf.add(r, t, items[1], mbp - pulse / 3)
        buf.add(r, t, items[2], mbp)
    # Temperature q4h: °F for most stays, °C otherwise.
    r, t = series(4.0)
    celsius = (
        36.9
        + 0.3 * latent("z_infection", r)
        + 1.0 * state("fever_grade", r)
        + 0.25 * base("temp", r)
        + rng.normal(0, 0.3, r.size)
    )
    celsius = np.clip(celsius, 33, 42)
    fahrenheit_stay = stays["temp_fahrenheit"][r]
    temp_f = (
        r[fahrenheit_stay],
        t[fahrenheit_stay],
        celsius[fahrenheit_stay] * 1.8 + 32,
        celsius[fahrenheit_stay],
    )
    buf.add(r[~fahrenheit_stay], t[~fahrenheit_stay], 223762, celsius[~fahrenheit_stay], decimals=1)
    buf.add(
        r,
        t + 60,
        224642,
        np.full(r.size, np.nan),
        text=rng.choice([TEXT_CODE[x] for x in ("Oral", "Axillary", "Temporal")], r.size),
    )
    # GCS q4h (MetaVision text plus score), capillary refill, rhythm, RASS.
    r, t = series(4.0)
    s_t = severity_at(population, r, t)
    sedated = stays["ventilated"][r] & (t < stays["vent_end"][r])
    eye, verbal, motor = _gcs(rng, s_t, state("neuro", r), sedated)
    buf.add(r, t, 220739, eye, text=GCS_EYE_TEXT[eye - 1])
    verbal_text = np.where(sedated, TEXT_CODE["No Response-ETT"], GCS_VERBAL_TEXT[verbal - 1])
    buf.add(r, t, 223900, np.where(sedated, 1, verbal), text=verbal_text)
    buf.add(r, t, 223901, motor, text=GCS_MOTOR_TEXT[motor - 1])
    abnormal = rng.random(r.size) < sigmoid(-2.5 + 1.2 * s_t + 2.0 * shock_at(population, r, t))
    refill_item = np.where(rng.random(r.size) < 0.5, 223951, 224308)
    refill_text = np.where(abnormal, TEXT_CODE["Abnormal >3 Seconds"], TEXT_CODE["Normal <3 Seconds"])
    buf.add(r, t, refill_item, np.full(r.size, np.nan), text=refill_text)
    rhythm = np.where(
        state("dysrhythmia", r) > 0,
        TEXT_CODE["AF (Atrial Fibrillation)"],
        np.where(s_t > 1.2, TEXT_CODE["ST (Sinus Tachycardia)"], TEXT_CODE["SR (Sinus Rhythm)"]),
    )
    buf.add(r, t, 220048, np.full(r.size, np.nan), text=rhythm)
    rass = np.where(sedated, rng.integers(-4, -1, r.size), rng.integers(-1, 2, r.size))
    buf.add(r, t, 228096, rass, text=np.vectorize(RASS_TEXT.get, otypes=[np.int16])(rass))
    # Ventilation: FiO2 (%) q2h and total respiratory rate hourly, pH with blood gases q6h.
    vent = stays["ventilated"][all_rows]
    vent_end = stays["vent_end"][all_rows]
    r, t = series(2.0, vent, until=vent_end)
    s_t = severity_at(population, r, t)
    fio2 = np.clip(
        np.round(
            (
                40
                + 12 * s_t
                + 8 * latent("z_pulmonary", r)
                + 8 * state("overload", r)
                + rng.normal(0, 6, r.size)
            )
            / 5
        )
        * 5,
        21,
        100,
    )
    fio2_rows = (r, t, fio2)
    r, t = series(1.0, vent, until=vent_end)
    s_t = severity_at(population, r, t)
    rr_total = 18 + 2.5 * s_t + 2 * latent("z_pulmonary", r) + rng.normal(0, 2, r.size)
    buf.add(r, t, 224690, np.clip(rr_total, 6, 50))
    r, t = series(6.0, vent, until=vent_end)
    s_t = severity_at(population, r, t)
    ph = 7.40 - 0.04 * s_t - 0.06 * shock_at(population, r, t) + rng.normal(0, 0.03, r.size)
    buf.add(r, t, 223830, np.clip(ph, 6.8, 7.7), decimals=2)
    # Fingerstick glucose q6h.
    r, t = series(6.0)
    glucose = 130 + 35 * latent("z_metabolic", r) + 10 * base("glucose", r) + rng.normal(0, 25, r.size)
    buf.add(r, t, 225664, np.clip(glucose, 40, 600))
    # Weight: admission weight once, daily weight with the overload trend.
    r, t = once()
    lbs = stays["weight_in_lbs"][r]
    weight = stays["baseline_weight"][r]
    buf.add(r[~lbs], t[~lbs], 226512, weight[~lbs], decimals=1)
    buf.add(r[lbs], t[lbs], 226531, weight[lbs] * 2.20462, decimals=1)
    r, t = series(24.0)
    days = (t - stays["intime"][r]) / SECONDS_PER_DAY
    slope = np.where(state("overload", r) > 0, 3.0, -0.5)
    buf.add(r, t, 224639, stays["baseline_weight"][r] + slope * days + rng.normal(0, 0.4, r.size), decimals=1)
    # Height once.
    r, t = once()
    inches = stays["height_in_inches"][r]
    buf.add(r[~inches], t[~inches], 226730, stays["height_cm"][r][~inches])
    buf.add(r[inches], t[inches], 226707, stays["height_cm"][r][inches] / 2.54)
    # Distractors of the default registry's neighbourhood.
    r, t = series(4.0)
    buf.add(r, t, 220046, np.full(r.size, 120.0))
    buf.add(r, t, 220047, np.full(r.size, 50.0))
    r, t = series(8.0)
    buf.add(r, t, 226253, np.full(r.size, 88.0))
    if config.full_charting:
        conditions = {
            "all": np.ones(all_rows.size, dtype=bool),
            "aline": aline,
            "vent": vent,
            "not_vent": ~vent,
            "central_line": adm["central_line"][a],
        }
        for itemid, cadence, condition, constant, text in _FILLER:
            interval = config.filler_cadence_hours if condition == "all" else cadence
            r, t = series(interval, conditions[condition])
            buf.add(r, t, itemid, np.full(r.size, constant), text=TEXT_CODE[text] if text else -1)

    # Dirt (data.md §13.4), counted per stay for the truth.
    dirt = np.zeros((all_rows.size, len(DIRT_KINDS)), dtype=np.int64)
    rate = config.dirt_rate

    def mark(rows: np.ndarray, kind: str) -> None:
        np.add.at(dirt[:, DIRT_KINDS.index(kind)], rows - lo, 1)

    r, t, hr = hr_rows
    bad = rng.random(r.size) < rate
    hr = np.where(bad, np.where(rng.random(r.size) < 0.5, 0.0, 999.0), hr)
    mark(r[bad], "out_of_range")
    buf.add(r, t, 220045, hr)
    for (r, t, values), itemid in ((spo2_rows, 220277), (fio2_rows, 223835)):
        frac = rng.random(r.size) < rate
        buf.add(r[~frac], t[~frac], itemid, values[~frac])
        buf.add(r[frac], t[frac], itemid, values[frac] / 100, decimals=2)
        mark(r[frac], "fraction_scale")
    r, t, fahrenheit, celsius = temp_f
    swapped = rng.random(r.size) < rate
    buf.add(r, t, 223761, np.where(swapped, celsius, fahrenheit), decimals=1)
    mark(r[swapped], "unit_fixed")

    ev = buf.arrays()
    numeric = ev["text"] < 0
    already_dirty = (
        ((ev["itemid"] == 220045) & np.isin(ev["valuenum"], (0.0, 999.0)))
        | (np.isin(ev["itemid"], (220277, 223835)) & (ev["valuenum"] <= 1))
        | ((ev["itemid"] == 223761) & (ev["valuenum"] < 45))
    )
    error = numeric & ~already_dirty & (rng.random(ev["rows"].size) < rate / 2)
    ev["text"] = np.where(error, TEXT_CODE["ERROR"], ev["text"]).astype(np.int16)
    ev["valuenum"] = np.where(error, np.nan, ev["valuenum"])
    mark(ev["rows"][error], "unmatched_text")
    duplicate = np.flatnonzero(rng.random(ev["rows"].size) < rate)
    mark(ev["rows"][duplicate], "duplicates")
    n_events = ev["rows"].size
    order_rows = np.concatenate([np.arange(n_events), duplicate])
    ev = {k: v[order_rows] for k, v in ev.items()}
    storetime = ev["times"] + rng.integers(0, 30 * 60, size=n_events)[order_rows]
    caregiver = rng.integers(10_000, 100_000, size=n_events)[order_rows]
    warning = (rng.random(n_events) < 0.005).astype(np.int8)[order_rows]

    rows = ev["rows"]
    value, valuenum = value_expressions()
    frame = (
        pl.DataFrame(
            {
                "subject_id": stays["subject_id"][rows],
                "hadm_id": stays["hadm_id"][rows],
                "stay_id": stays["stay_id"][rows],
                "caregiver_id": caregiver,
                "charttime": to_datetime(ev["times"], "charttime"),
                "storetime": to_datetime(storetime, "storetime"),
                "itemid": ev["itemid"],
                "valuenum": ev["valuenum"],
                "text": ev["text"],
                "decimals": ev["decimals"],
                "warning": warning,
            }
        )
        .with_columns(
            value,
            valuenum,
            pl.col("itemid").replace_strict(VALUEUOM, default=None, return_dtype=pl.String).alias("valueuom"),
        )
        .sort(["stay_id", "charttime", "itemid", "storetime"], maintain_order=True)
    )
    return ChartChunk(frame=frame, dirt=dirt)
