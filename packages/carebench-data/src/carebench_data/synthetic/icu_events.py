"""outputevents, inputevents and procedureevents (data.md §13.4); the last two are for fidelity only."""

from __future__ import annotations

import numpy as np
import polars as pl

from carebench_data.synthetic.chart import charting_window
from carebench_data.synthetic.config import SyntheticConfig
from carebench_data.synthetic.cxr import CxrPlan
from carebench_data.synthetic.latent import Population
from carebench_data.synthetic.rng import SECONDS_PER_HOUR
from carebench_data.synthetic.trajectory import severity_at, slots, to_datetime

# itemid -> (amount uom, rate uom, order category, secondary category, component, category description)
_INPUTS = {
    221906: ("mg", "mcg/kg/min", "01-Drips", "Additive", "Main order parameter", "Continuous Med"),
    225158: ("mL", None, "03-IV Fluid Bolus", None, "Main order parameter", "Bolus"),
    221794: ("mg", None, "05-Med Bolus", None, "Main order parameter", "Drug Push"),
    223258: ("units", "units/hour", "01-Drips", "Additive", "Main order parameter", "Continuous Med"),
    222168: ("mg", "mcg/kg/min", "01-Drips", "Additive", "Main order parameter", "Continuous Med"),
}


def output_chunk(
    population: Population, config: SyntheticConfig, rng: np.random.Generator, lo: int, hi: int
) -> pl.DataFrame:
    """Urine output q1-2 h (Foley 226559 or Void 226560, mL) and occasional GU irrigant pairs."""
    stays, adm = population.stays, population.admissions
    rows = np.arange(lo, hi)
    start, end = charting_window(population, config, rows)
    r, t = slots(rng, rows, start, end, 1.5, jitter_minutes=20)
    a = stays["admission"][r]
    s_t = severity_at(population, r, t)
    volume = (
        70
        * np.exp(-0.6 * adm["z_renal"][a] - 0.3 * s_t - 1.0 * adm["aki"][a] + rng.normal(0, 0.45, r.size))
        * 1.5
    )
    itemid = np.where(stays["catheter"][r], 226559, 226560)
    irrigated = rows[rng.random(rows.size) < 0.03]
    ri, ti = slots(rng, irrigated, start[irrigated - lo], end[irrigated - lo], 6.0)
    irrigant = np.full(ri.size, 300.0)
    all_r = np.concatenate([r, ri, ri])
    all_t = np.concatenate([t, ti, ti])
    values = np.concatenate(
        [np.round(volume / 5) * 5, irrigant, irrigant + np.round(rng.uniform(20, 200, ri.size))]
    )
    items = np.concatenate([itemid, np.full(ri.size, 227488), np.full(ri.size, 227489)])
    return pl.DataFrame(
        {
            "subject_id": stays["subject_id"][all_r],
            "hadm_id": stays["hadm_id"][all_r],
            "stay_id": stays["stay_id"][all_r],
            "caregiver_id": rng.integers(10_000, 100_000, size=all_r.size),
            "charttime": to_datetime(all_t, "charttime"),
            "storetime": to_datetime(all_t + rng.integers(0, 1800, size=all_r.size), "storetime"),
            "itemid": items.astype(np.int32),
            "value": values,
            "valueuom": np.full(all_r.size, "mL"),
        }
    ).sort(["stay_id", "charttime", "itemid"], maintain_order=True)


def input_chunk(
    population: Population, config: SyntheticConfig, rng: np.random.Generator, lo: int, hi: int
) -> pl.DataFrame:
    """Norepinephrine in shock, saline boluses, furosemide with overload, insulin, propofol when ventilated."""
    stays, adm = population.stays, population.admissions
    rows = np.arange(lo, hi)
    start, end = charting_window(population, config, rows)
    a = stays["admission"][rows]
    plan = (
        (221906, adm["shock"][a], 4.0, (0.05, 0.3)),
        (225158, np.ones(rows.size, dtype=bool), 12.0, (500.0, 1000.0)),
        (221794, adm["overload"][a], 12.0, (20.0, 80.0)),
        (223258, adm["z_metabolic"][a] > 1.0, 6.0, (1.0, 6.0)),
        (222168, stays["ventilated"][rows], 4.0, (10.0, 50.0)),
    )
    frames = []
    for itemid, mask, cadence, (low, high) in plan:
        r, t = slots(rng, rows[mask], start[mask], end[mask], cadence, jitter_minutes=10)
        amount_uom, rate_uom, category, secondary, component, description = _INPUTS[itemid]
        duration = np.full(r.size, int(cadence * SECONDS_PER_HOUR) if rate_uom else 60)
        dose = np.round(rng.uniform(low, high, r.size), 3)
        weight = np.round(stays["baseline_weight"][r], 1)
        rate = dose if rate_uom else np.full(r.size, np.nan)
        amount = dose * cadence if rate_uom else dose
        order = rng.integers(1_000_000, 10_000_000, size=r.size)
        frames.append(
            pl.DataFrame(
                {
                    "subject_id": stays["subject_id"][r],
                    "hadm_id": stays["hadm_id"][r],
                    "stay_id": stays["stay_id"][r],
                    "caregiver_id": rng.integers(10_000, 100_000, size=r.size),
                    "starttime": to_datetime(t, "starttime"),
                    "endtime": to_datetime(t + duration, "endtime"),
                    "storetime": to_datetime(t + duration + 600, "storetime"),
                    "itemid": np.full(r.size, itemid, dtype=np.int32),
                    "amount": amount,
                    "amountuom": np.full(r.size, amount_uom),
                    "rate": rate,
                    "rateuom": pl.Series("rateuom", [rate_uom] * r.size, dtype=pl.String),
                    "orderid": order,
                    "linkorderid": order,
                    "ordercategoryname": np.full(r.size, category),
                    "secondaryordercategoryname": pl.Series("s", [secondary] * r.size, dtype=pl.String),
                    "ordercomponenttypedescription": np.full(r.size, component),
                    "ordercategorydescription": np.full(r.size, description),
                    "patientweight": weight,
                    "totalamount": np.where(rate_uom is not None, 250.0, amount),
                    "totalamountuom": np.full(r.size, "mL"),
                    "isopenbag": np.zeros(r.size, dtype=np.int8),
                    "continueinnextdept": np.zeros(r.size, dtype=np.int8),
                    "statusdescription": np.full(r.size, "FinishedRunning"),
                    "originalamount": amount,
                    "originalrate": rate,
                }
            ).with_columns(pl.col("rate").fill_nan(None), pl.col("originalrate").fill_nan(None))
        )
    return pl.concat(frames).sort(["stay_id", "starttime", "itemid"], maintain_order=True)


def procedure_frame(population: Population, plan: CxrPlan, rng: np.random.Generator) -> pl.DataFrame:
    """Invasive (225792) / non-invasive (225794) ventilation and a Chest X-Ray (225459) per ICU film."""
    stays, adm = population.stays, population.admissions
    vent = np.flatnonzero(stays["ventilated"] & ~stays["bad_times"])
    niv = np.flatnonzero(~stays["ventilated"] & adm["resp_fail"][stays["admission"]] & ~stays["bad_times"])
    film = np.flatnonzero(plan.images["stay_row"] >= 0)
    film_rows = plan.images["stay_row"][film]
    film_time = plan.images["time_ms"][film] // 1000 // 60 * 60
    vent_start = stays["intime"][vent] + rng.integers(0, 7200, size=vent.size)
    niv_start = stays["intime"][niv] + rng.integers(0, 7200, size=niv.size)
    niv_end = np.minimum(
        niv_start + rng.integers(3600, 12 * 3600, size=niv.size),
        np.maximum(stays["outtime"][niv], niv_start + 60),
    )
    rows = np.concatenate([vent, niv, film_rows])
    start = np.concatenate([vent_start, niv_start, film_time]) // 60 * 60
    end = (
        np.concatenate([np.maximum(stays["vent_end"][vent], vent_start + 60), niv_end, film_time + 60])
        // 60
        * 60
    )
    itemid = np.concatenate(
        [np.full(vent.size, 225792), np.full(niv.size, 225794), np.full(film.size, 225459)]
    )
    minutes = np.concatenate(
        [(end[: vent.size + niv.size] - start[: vent.size + niv.size]) / 60, np.ones(film.size)]
    )
    n = rows.size
    order = rng.integers(1_000_000, 10_000_000, size=n)
    category = np.where(itemid == 225459, "Imaging", "Ventilation")
    return pl.DataFrame(
        {
            "subject_id": stays["subject_id"][rows],
            "hadm_id": stays["hadm_id"][rows],
            "stay_id": stays["stay_id"][rows],
            "caregiver_id": rng.integers(10_000, 100_000, size=n),
            "starttime": to_datetime(start, "starttime"),
            "endtime": to_datetime(end, "endtime"),
            "storetime": to_datetime(end + 600, "storetime"),
            "itemid": itemid.astype(np.int32),
            "value": np.round(minutes, 0),
            "valueuom": pl.Series("valueuom", np.where(itemid == 225459, "", "min")).replace("", None),
            "location": pl.Series("location", [None] * n, dtype=pl.String),
            "locationcategory": pl.Series("locationcategory", [None] * n, dtype=pl.String),
            "orderid": order,
            "linkorderid": order,
            "ordercategoryname": category,
            "ordercategorydescription": np.full(n, "Task"),
            "patientweight": np.round(stays["baseline_weight"][rows], 1),
            "isopenbag": np.zeros(n, dtype=np.int8),
            "continueinnextdept": np.zeros(n, dtype=np.int8),
            "statusdescription": np.full(n, "FinishedRunning"),
            "originalamount": np.round(minutes, 0),
            "originalrate": np.zeros(n),
        }
    ).sort(["stay_id", "starttime", "itemid"], maintain_order=True)
