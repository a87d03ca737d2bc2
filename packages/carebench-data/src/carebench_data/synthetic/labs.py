"""labevents emission (data.md §13.4): daily panels, blood gases, admission markers, urine traps.

Labs belong to admissions (ICU admissions first, then background admissions), are keyed by
subject_id and hadm_id (null for pre-admission ED draws), and carry one specimen_id per panel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from carebench_data.synthetic.config import SyntheticConfig
from carebench_data.synthetic.events import TEXT_CODE, EventBuffer, value_expressions
from carebench_data.synthetic.hosp import provider_ids
from carebench_data.synthetic.latent import Population, age_bins, subgroup_factor
from carebench_data.synthetic.rng import SECONDS_PER_DAY, SECONDS_PER_HOUR, sigmoid
from carebench_data.synthetic.trajectory import severity_at, shock_at, to_datetime


@dataclass
class LabContext:
    """Per-event covariates of lab values ([E] arrays)."""

    severity: np.ndarray
    shock: np.ndarray
    z: dict[str, np.ndarray]
    states: dict[str, np.ndarray]
    noise: np.random.Generator

    def n(self, sd: float) -> np.ndarray:
        """Gaussian noise with this SD."""
        return self.noise.normal(0, sd, size=self.severity.size)


ValueFn = Callable[[LabContext], np.ndarray]

# itemid -> (valueuom, decimals, ref low, ref high, value function)
LAB_ITEMS: dict[int, tuple[str | None, int, float, float, ValueFn]] = {
    50912: (
        "mg/dL",
        1,
        0.5,
        1.2,
        lambda c: 0.9 * np.exp(0.4 * c.z["renal"] + 0.3 * c.severity + 0.5 * c.states["aki"] + c.n(0.15)),
    ),
    51006: ("mg/dL", 0, 6, 20, lambda c: 18 * np.exp(0.35 * c.z["renal"] + 0.2 * c.severity + c.n(0.2))),
    50983: ("mEq/L", 0, 133, 145, lambda c: 139 + c.n(3)),
    50971: ("mEq/L", 1, 3.3, 5.1, lambda c: 4.2 + 0.3 * c.z["renal"] + c.n(0.4)),
    50902: ("mEq/L", 0, 96, 108, lambda c: 103 + c.n(3)),
    50882: ("mEq/L", 0, 22, 32, lambda c: 24 - 2 * c.severity - 2 * c.shock + c.n(2)),
    50868: ("mEq/L", 0, 8, 20, lambda c: 13 + 1.5 * c.severity + 2 * c.shock + c.n(2)),
    50931: ("mg/dL", 0, 70, 100, lambda c: 130 + 35 * c.z["metabolic"] + c.n(25)),
    51301: (
        "K/uL",
        1,
        4.0,
        11.0,
        lambda c: 9.9 * np.exp(0.25 * c.z["infection"] + 0.4 * c.states["wbc_high"] + c.n(0.15)),
    ),
    51222: ("g/dL", 1, 13.7, 17.5, lambda c: 10.5 + c.n(1.2)),
    51221: ("%", 1, 40, 51, lambda c: 31.5 + c.n(3.5)),
    51265: ("K/uL", 0, 150, 400, lambda c: 220 * np.exp(c.n(0.3))),
    50960: ("mg/dL", 1, 1.6, 2.6, lambda c: 2.0 + c.n(0.2)),
    50970: ("mg/dL", 1, 2.7, 4.5, lambda c: 3.5 + 0.5 * c.z["renal"] + c.n(0.6)),
    50893: ("mg/dL", 1, 8.4, 10.3, lambda c: 8.6 + c.n(0.5)),
    52033: (None, 0, np.nan, np.nan, lambda c: np.full(c.severity.size, np.nan)),
    50820: ("units", 2, 7.35, 7.45, lambda c: 7.40 - 0.04 * c.severity - 0.06 * c.shock + c.n(0.03)),
    50821: ("mm Hg", 0, 85, 105, lambda c: 95 - 10 * c.z["pulmonary"] + c.n(20)),
    50818: ("mm Hg", 0, 35, 45, lambda c: 40 + 3 * c.z["pulmonary"] + c.n(5)),
    50802: ("mEq/L", 0, -2, 3, lambda c: -2 * c.severity - 2 * c.shock + c.n(2)),
    50813: ("mmol/L", 1, 0.5, 2.0, lambda c: np.exp(0.45 + 0.35 * c.severity + 0.4 * c.shock + c.n(0.25))),
    50817: ("%", 0, 95, 100, lambda c: 96 - 1.5 * c.z["pulmonary"] + c.n(1.5)),
    50809: ("mg/dL", 0, 70, 105, lambda c: 130 + 35 * c.z["metabolic"] + c.n(25)),
    51237: (None, 1, 0.9, 1.1, lambda c: 1.2 * np.exp(0.15 * c.severity + c.n(0.15))),
    51274: ("sec", 1, 9.4, 12.5, lambda c: 13 * np.exp(0.15 * c.severity + c.n(0.12))),
    51275: ("sec", 1, 25, 36.5, lambda c: 31 + c.n(6)),
    50861: ("IU/L", 0, 0, 40, lambda c: 30 * np.exp(c.n(0.6))),
    50878: ("IU/L", 0, 0, 40, lambda c: 35 * np.exp(c.n(0.6))),
    50863: ("IU/L", 0, 35, 105, lambda c: 90 * np.exp(c.n(0.4))),
    50885: ("mg/dL", 1, 0, 1.5, lambda c: 0.8 * np.exp(c.n(0.7))),
    50862: ("g/dL", 1, 3.5, 5.2, lambda c: 3.2 + c.n(0.5)),
    50963: (
        "pg/mL",
        0,
        0,
        353,
        lambda c: np.exp(6 + 1.3 * c.z["cardiac"] + 0.5 * c.states["overload"] + c.n(0.5)),
    ),
    51003: ("ng/mL", 2, 0, 0.01, lambda c: 0.03 * np.exp(0.8 * c.z["cardiac"] + c.n(1.0))),
    50889: ("mg/L", 1, 0, 5, lambda c: 20 * np.exp(0.8 * c.z["infection"] + c.n(0.6))),
    51491: ("units", 1, 5, 8, lambda c: 6 + c.n(0.8)),
    51478: ("mg/dL", 0, np.nan, np.nan, lambda c: np.full(c.severity.size, np.nan)),
}
METABOLIC = (50912, 51006, 50983, 50971, 50902, 50882, 50868, 50931)
BLOOD_COUNT = (51301, 51222, 51221, 51265)
MINERALS = (50960, 50970, 50893)
BLOOD_GAS = (52033, 50820, 50821, 50818, 50802, 50813, 50817, 50809)
COAGULATION = (51237, 51274, 51275)
LIVER = (50861, 50878, 50863, 50885, 50862)
ADMISSION_MARKERS = (50963, 51003, 50889)
URINE = (51491, 51478)
_TEXT_ITEMS = {52033: TEXT_CODE["ART."], 51478: TEXT_CODE["NEG"]}
CENSORED_RESULTS: dict[int, tuple[str, float, str]] = {
    51003: ("<", 0.01, "<0.01.  cTropnT > 0.10 ng/mL suggests acute MI."),
    50963: (">", 70000.0, "GREATER THAN 70000.  REFERENCE VALUES VARY WITH AGE, SEX, AND RENAL FUNCTION."),
}
"""itemid → (side, assay limit, comment): results beyond the limit are written as real MIMIC-IV does,
with null value and valuenum and the censored value in `comments` (deterministic, no random draw)."""


def _censored_comment() -> pl.Expr:
    """The comment of a result beyond its assay limit (`CENSORED_RESULTS`), else null."""
    comment: pl.Expr = pl.lit(None, pl.String)
    for itemid, (side, limit, text) in CENSORED_RESULTS.items():
        beyond = pl.col("valuenum") < limit if side == "<" else pl.col("valuenum") > limit
        comment = pl.when((pl.col("itemid") == itemid) & beyond).then(pl.lit(text)).otherwise(comment)
    return comment


@dataclass
class LabChunk:
    """One chunk of labevents rows (labevent_id and specimen_id still to be numbered)."""

    frame: pl.DataFrame
    panels: int


def _panel_draws(
    rng: np.random.Generator,
    owner: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    probability: np.ndarray,
    per_day: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Daily 06:00 (±1 h) draws between start and end, kept with `probability` per owner."""
    first_day = (start // SECONDS_PER_DAY) * SECONDS_PER_DAY
    counts = np.maximum((end - first_day) // SECONDS_PER_DAY + 1, 0).astype(np.int64) * per_day
    rows = np.repeat(np.arange(owner.size), counts)
    k = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    day = k // per_day
    hour = np.array([6.0, 18.0, 12.0])[k % per_day]
    times = np.repeat(first_day, counts) + day * SECONDS_PER_DAY + (hour * SECONDS_PER_HOUR).astype(np.int64)
    times = times + rng.integers(-3600, 3600, size=rows.size)
    keep = (
        (times >= np.repeat(start, counts))
        & (times < np.repeat(end, counts))
        & (rng.random(rows.size) < probability[rows])
    )
    return rows[keep], (times[keep] // 60) * 60


def lab_chunk(
    population: Population, config: SyntheticConfig, rng: np.random.Generator, *, icu: bool, lo: int, hi: int
) -> LabChunk:
    """Labevents of ICU admissions lo..hi-1 (icu=True) or background admissions lo..hi-1."""
    adm, bg, pat, stays = population.admissions, population.background, population.patients, population.stays
    source = adm if icu else bg
    owner = np.arange(lo, hi)
    patient = source["patient"][owner]
    attributes = {
        "race": pat["race_group"][patient],
        "sex": pat["sex"][patient],
        "age_bin": age_bins(pat["age_float"][patient]),
        "insurance": pat["insurance"][patient],
    }
    density = np.clip(0.95 * subgroup_factor(config, "lab_density", attributes, owner.size), 0, 1)
    admit = source["admittime"][owner]
    if icu:
        first_stay = np.searchsorted(stays["admission"], owner)
        end = source["dischtime"][owner]
        if config.chart_cap_hours is not None:
            end = np.minimum(
                end, stays["intime"][first_stay] + int(config.chart_cap_hours * SECONDS_PER_HOUR)
            )
    else:
        first_stay = np.zeros(owner.size, dtype=np.int64)
        end = np.minimum(source["dischtime"][owner], admit + config.background_lab_days * SECONDS_PER_DAY)
    per_day = config.lab_panels_per_day

    # Draw events: (owner row, time, panel kind).
    draws: list[tuple[np.ndarray, np.ndarray, tuple[int, ...], bool]] = []
    for panel in (METABOLIC, BLOOD_COUNT, MINERALS):
        r, t = _panel_draws(rng, owner, admit, end, density, per_day)
        draws.append((r, t, panel, False))
    for panel in (COAGULATION, LIVER):
        r, t = _panel_draws(rng, owner, admit, end, density * 0.5, per_day)
        draws.append((r, t, panel, False))
    at_admission = admit + rng.integers(0, 2 * SECONDS_PER_HOUR, size=owner.size) // 60 * 60
    everyone = np.arange(owner.size)
    draws.append((everyone, at_admission, METABOLIC + BLOOD_COUNT, False))
    if icu:
        markers = rng.random(owner.size) < 0.8
        draws.append((everyone[markers], at_admission[markers], ADMISSION_MARKERS, False))
        severity = source["z_severity"][owner]
        stat = rng.random(owner.size) < sigmoid(severity - 1.0)
        stat_time = admit + (rng.random(owner.size) * np.maximum(end - admit, 1)).astype(np.int64) // 60 * 60
        draws.append((everyone[stat], stat_time[stat], METABOLIC, True))
        vent = stays["ventilated"][first_stay]
        vent_start = stays["intime"][first_stay]
        vent_end = np.minimum(stays["vent_end"][first_stay], end)
        cadence = 6 * SECONDS_PER_HOUR
        counts = np.where(vent, np.maximum((vent_end - vent_start) // cadence, 0), 0).astype(np.int64)
        r = np.repeat(everyone, counts)
        k = np.arange(r.size) - np.repeat(np.cumsum(counts) - counts, counts)
        t = np.repeat(vent_start, counts) + k * cadence + rng.integers(0, cadence, size=r.size)
        draws.append((r, t // 60 * 60, BLOOD_GAS, True))
    urine = rng.random(owner.size) < 0.3
    draws.append((everyone[urine], at_admission[urine] + 1800, URINE, False))
    emergency = source["edregtime"][owner] >= 0
    pre = emergency & (rng.random(owner.size) < 0.5)
    pre_time = source["edregtime"][owner] + 1800
    draws.append((everyone[pre], pre_time[pre], BLOOD_COUNT, True))

    buf = EventBuffer()
    specimen_parts: list[np.ndarray] = []
    priority_parts: list[np.ndarray] = []
    hadm_null_parts: list[np.ndarray] = []
    panel_counter = 0
    for (r, t, panel, stat), is_pre in zip(draws, [False] * (len(draws) - 1) + [True], strict=True):
        if r.size == 0:
            continue
        specimen = panel_counter + np.arange(r.size)
        panel_counter += r.size
        if icu:
            s_t = severity_at(population, first_stay[r], t)
            shock = shock_at(population, first_stay[r], t).astype(np.float64)
            a = owner[r]
            z = {
                name: adm[f"z_{name}"][a]
                for name in ("renal", "metabolic", "infection", "pulmonary", "cardiac")
            }
            states = {name: adm[name][a].astype(np.float64) for name in ("aki", "wbc_high", "overload")}
        else:
            s_t = rng.normal(-0.8, 0.7, size=r.size)
            shock = np.zeros(r.size)
            z = {
                name: rng.normal(0, 0.6, size=r.size)
                for name in ("renal", "metabolic", "infection", "pulmonary", "cardiac")
            }
            states = {name: np.zeros(r.size) for name in ("aki", "wbc_high", "overload")}
        context = LabContext(severity=s_t, shock=shock, z=z, states=states, noise=rng)
        for itemid in panel:
            _, decimals, _, _, fn = LAB_ITEMS[itemid]
            values = fn(context)
            buf.add(r, t, itemid, values, text=_TEXT_ITEMS.get(itemid, -1), decimals=decimals)
            specimen_parts.append(specimen)
            priority_parts.append(np.full(r.size, stat))
            hadm_null_parts.append(np.full(r.size, is_pre))
    ev = buf.arrays()
    n = ev["rows"].size
    specimen = np.concatenate(specimen_parts) if specimen_parts else np.zeros(0, dtype=np.int64)
    priority = np.concatenate(priority_parts) if priority_parts else np.zeros(0, dtype=bool)
    hadm_null = np.concatenate(hadm_null_parts) if hadm_null_parts else np.zeros(0, dtype=bool)
    rows = ev["rows"]
    itemids = ev["itemid"]
    uom = {k: v[0] for k, v in LAB_ITEMS.items()}
    ref_low = np.vectorize(lambda i: LAB_ITEMS[int(i)][2], otypes=[np.float64])(itemids) if n else np.zeros(0)
    ref_high = (
        np.vectorize(lambda i: LAB_ITEMS[int(i)][3], otypes=[np.float64])(itemids) if n else np.zeros(0)
    )
    values = np.round(ev["valuenum"], 2)
    abnormal = (values < ref_low) | (values > ref_high)
    hadm = source["hadm_id"][owner][rows]
    value, valuenum = value_expressions()
    comments_blank = rng.random(n) < 0.02
    frame = (
        pl.DataFrame(
            {
                "subject_id": source["subject_id"][owner][rows],
                "hadm_id": hadm,
                "hadm_null": hadm_null,
                "specimen_id": specimen,
                "itemid": itemids,
                "order_provider_id": pl.Series("p", provider_ids(rng, n).astype(str)),
                "has_provider": rng.random(n) < 0.3,
                "charttime": to_datetime(ev["times"], "charttime"),
                "storetime": to_datetime(
                    ev["times"] + rng.integers(1800, 3 * 3600, size=n) // 60 * 60, "storetime"
                ),
                "valuenum": ev["valuenum"],
                "text": ev["text"],
                "decimals": ev["decimals"],
                "ref_range_lower": ref_low,
                "ref_range_upper": ref_high,
                "abnormal": abnormal,
                "priority": np.where(priority, "STAT", "ROUTINE"),
                "comments_blank": comments_blank,
            }
        )
        .with_columns(
            value,
            valuenum,
            pl.col("itemid").replace_strict(uom, default=None, return_dtype=pl.String).alias("valueuom"),
        )
        .with_columns(censored_comment=_censored_comment())
        .with_columns(
            pl.when(pl.col("hadm_null")).then(None).otherwise(pl.col("hadm_id")).alias("hadm_id"),
            pl.when(pl.col("has_provider")).then(pl.col("order_provider_id")).alias("order_provider_id"),
            pl.when(pl.col("abnormal")).then(pl.lit("abnormal")).alias("flag"),
            pl.when(pl.col("censored_comment").is_not_null())
            .then(pl.col("censored_comment"))
            .when(pl.col("comments_blank"))
            .then(pl.lit("___"))
            .alias("comments"),
            pl.when(pl.col("censored_comment").is_null()).then(pl.col("value")).alias("value"),
            pl.when(pl.col("censored_comment").is_null()).then(pl.col("valuenum")).alias("valuenum"),
            pl.when(pl.col("ref_range_lower").is_nan())
            .then(None)
            .otherwise(pl.col("ref_range_lower"))
            .alias("ref_range_lower"),
            pl.when(pl.col("ref_range_upper").is_nan())
            .then(None)
            .otherwise(pl.col("ref_range_upper"))
            .alias("ref_range_upper"),
        )
        .sort(["subject_id", "charttime", "specimen_id", "itemid"], maintain_order=True)
    )
    return LabChunk(frame=frame, panels=panel_counter)
