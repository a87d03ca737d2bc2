"""`_synthetic_truth/`: latent state, noiseless and coded labels, expected cohort and CXR selection.

The builder never opens this folder (data.md §13.7); tests use it to score planted signal and to
check the builder against what the generator intended.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from carebench_data.synthetic import vocab
from carebench_data.synthetic.chart import DIRT_KINDS
from carebench_data.synthetic.cxr import FINDINGS, CxrPlan, expected_selection
from carebench_data.synthetic.latent import Population
from carebench_data.synthetic.phenotypes import PHENOTYPE_COLUMNS
from carebench_data.synthetic.render import RenderParams
from carebench_data.synthetic.rng import SECONDS_PER_DAY, SECONDS_PER_HOUR
from carebench_data.synthetic.trajectory import to_datetime

LOS_EDGES_DAYS = (3, 4, 5, 6, 7, 14)
STATE_COLUMNS = (
    "shock",
    "resp_fail",
    "overload",
    "aki",
    "fever",
    "fever_grade",
    "febrile",
    "neuro",
    "central_line",
    "dysrhythmia",
)


def stays_truth(
    population: Population, coded: np.ndarray, plan: CxrPlan, dirt: np.ndarray, mimic_version: str
) -> pl.DataFrame:
    """One row per ICU stay (ascending stay_id) with everything the generator decided.

    Args:
        population: the sampled population.
        coded: [A, 25] phenotypes as the emitted ICD codes encode them under `gem_ccs`.
        plan: the CXR schedule.
        dirt: [N, len(DIRT_KINDS)] injected chartevents dirt per stay.
        mimic_version: for the anchor-group names.
    """
    stays, adm, pat = population.stays, population.admissions, population.patients
    a = stays["admission"]
    intime, outtime = stays["intime"], stays["outtime"]
    prediction = intime + 48 * SECONDS_PER_HOUR
    deathtime = adm["deathtime"][a]
    valid = outtime > intime
    los_hours = (outtime - intime) / SECONDS_PER_HOUR
    alive = ~((deathtime >= 0) & (deathtime < prediction))
    dod = pat["dod"][adm["patient"][a]]
    dod_only = (deathtime < 0) & (dod >= 0)
    alive &= ~(dod_only & (dod // SECONDS_PER_DAY < prediction // SECONDS_PER_DAY))
    in_cohort = valid & (adm["age"][a] >= 18) & (los_hours >= 48) & alive & adm["has_diagnoses"][a]
    mortality = (deathtime >= prediction) & (deathtime <= outtime)
    los_days = los_hours / 24
    groups = np.asarray(vocab.ANCHOR_GROUPS[mimic_version], dtype=object)
    films = np.bincount(plan.images["stay_row"][plan.images["stay_row"] >= 0], minlength=a.size)
    columns: dict[str, object] = {
        "subject_id": stays["subject_id"],
        "hadm_id": stays["hadm_id"],
        "stay_id": stays["stay_id"],
        "age": adm["age"][a],
        "sex": adm["sex"][a].astype(str),
        "race_group": adm["race_group"][a].astype(str),
        "insurance": adm["insurance"][a].astype(str),
        "age_bin": adm["age_bin"][a].astype(str),
        "anchor_year_group": groups[adm["anchor_group"][a]].astype(str),
        "cxr_era": adm["cxr_era"][a],
    }
    for name in ("severity", "cardiac", "pulmonary", "renal", "infection", "metabolic"):
        columns[f"z_{name}"] = adm[f"z_{name}"][a]
    for name in STATE_COLUMNS:
        columns[name] = adm[name][a]
    columns["ventilated"] = stays["ventilated"]
    for name in FINDINGS:
        columns[name] = adm[name][a]
    columns.update(
        {
            "intime": to_datetime(intime, "intime"),
            "outtime": to_datetime(outtime, "outtime"),
            "los_hours": los_hours,
            "icu_death": stays["icu_death"],
            "hosp_death": adm["hosp_death"][a],
            "deathtime": to_datetime(deathtime, "deathtime"),
            "expected_in_cohort": in_cohort,
            "expected_mortality": mortality.astype(np.int8),
            "expected_los_days": los_days,
            "expected_los_class": np.searchsorted(LOS_EDGES_DAYS, los_days, side="right").astype(np.int8),
            "cxr_probability": adm["cxr_probability"][a],
            "cxr_planned": stays["cxr_planned"],
            "n_films": films.astype(np.int32),
            "has_diagnoses": adm["has_diagnoses"][a],
            "bad_times": stays["bad_times"],
        }
    )
    for j, name in enumerate(PHENOTYPE_COLUMNS):
        columns[f"true_{name}"] = adm["true_labels"][a, j].astype(np.int8)
    for j, name in enumerate(PHENOTYPE_COLUMNS):
        columns[f"coded_{name}"] = coded[a, j].astype(np.int8)
    for j, kind in enumerate(DIRT_KINDS):
        columns[f"dirt_{kind}"] = dirt[:, j]
    frame = pl.DataFrame(columns)
    return frame.join(expected_selection(population, plan), on="stay_id", how="left").sort("stay_id")


def findings_truth(plan: CxrPlan, params: list[RenderParams], population: Population) -> pl.DataFrame:
    """One row per image: ids, kind, view, time, severities and render parameters."""
    im = plan.images
    stay_row = im["stay_row"]
    stay_id = np.where(stay_row >= 0, population.stays["stay_id"][np.maximum(stay_row, 0)], -1)
    frame = pl.DataFrame(
        {
            "dicom_id": im["dicom_id"].astype(str),
            "subject_id": im["subject_id"],
            "study_id": im["study_id"],
            "stay_id": pl.Series("stay_id", stay_id).replace(-1, None),
            "kind": im["kind"].astype(str),
            "view": pl.Series("view", im["view"].tolist(), dtype=pl.String),
            "true_view": im["true_view"].astype(str),
            "study_datetime": pl.Series("t", im["time_ms"] * 1000).cast(pl.Datetime("us")),
            **{name: im[name] for name in FINDINGS},
            "tube": im["tube"],
            "central_line": im["central_line"],
            "noise_factor": im["noise_factor"],
            "render_base": [p.base for p in params],
            "render_heart": [p.heart for p in params],
            "render_effusion_left": [p.effusion_left for p in params],
            "render_effusion_right": [p.effusion_right for p in params],
            "render_blobs": [len(p.blobs) for p in params],
            "render_pneumothorax_side": [p.pneumothorax_side for p in params],
            "render_noise_sd": [p.noise_sd for p in params],
            "render_contrast": [p.contrast for p in params],
            "render_gamma": [p.gamma for p in params],
            "render_shift_x": [p.shift_x for p in params],
            "render_shift_y": [p.shift_y for p in params],
        }
    )
    return frame
