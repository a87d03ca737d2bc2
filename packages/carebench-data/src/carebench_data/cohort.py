"""Cohort spine (stage S1, spec/data.md §3): one row per ICU stay, every exclusion step counted.

Each step is a small pure `LazyFrame -> LazyFrame` filter; `apply_steps` runs them in order and
records the stays, subjects and removed rows after each one (`counts.cohort`).
"""

from __future__ import annotations

import importlib.resources
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from carebench_data.config import CohortConfig
from carebench_data.errors import CarebenchDataError

logger = logging.getLogger(__name__)

WINDOW_HOURS = 48
"""T, the number of hourly bins (fixed in schema_version 1)."""


class CohortError(CarebenchDataError):
    """The cohort cannot be built (duplicate stay ids, empty cohort)."""


def race_groups() -> dict[str, str]:
    """MIMIC-IV race string → one of the 5 CareBench groups (bundled `resources/race_groups.toml`)."""
    text = importlib.resources.files("carebench_data").joinpath("resources/race_groups.toml").read_text()
    groups = tomllib.loads(text)["groups"]
    return {raw: group for group, strings in groups.items() for raw in strings}


def stay_spine(icustays: pl.LazyFrame, *, admissions: pl.LazyFrame, patients: pl.LazyFrame) -> pl.LazyFrame:
    """Join each ICU stay to its admission and patient and derive the window and death columns.

    Adds: age (§3.1), sex, race (grouped), insurance, admission_type, prediction_time (intime + 48 h),
    los_hours, t_death (deathtime), dod, dischtime, hospital_expire_flag, anchor_year_group,
    `linked` (admission and patient exist and agree on subject_id) and `stays_in_admission`.
    """
    admission_columns = admissions.select(
        pl.col("hadm_id"),
        pl.col("subject_id").alias("admission_subject_id"),
        "admittime",
        "dischtime",
        pl.col("deathtime").alias("t_death"),
        "admission_type",
        "insurance",
        pl.col("race").alias("race_raw"),
        "hospital_expire_flag",
    )
    patient_columns = patients.select(
        "subject_id",
        pl.lit(True).alias("patient_found"),
        pl.col("gender").alias("sex"),
        "anchor_age",
        "anchor_year",
        "anchor_year_group",
        "dod",
    )
    mapping = race_groups()
    return (
        icustays.with_columns(pl.len().over("hadm_id").alias("stays_in_admission"))
        .join(admission_columns, on="hadm_id", how="left")
        .join(patient_columns, on="subject_id", how="left")
        .with_columns(
            linked=(
                pl.col("admission_subject_id").is_not_null()
                & pl.col("patient_found").fill_null(False)
                & (pl.col("admission_subject_id") == pl.col("subject_id"))
            ).fill_null(False),
            age=(pl.col("anchor_age") + pl.col("admittime").dt.year() - pl.col("anchor_year")).cast(pl.Int16),
            prediction_time=pl.col("intime") + timedelta(hours=WINDOW_HOURS),
            los_hours=(pl.col("outtime") - pl.col("intime")).dt.total_microseconds() / 3.6e9,
            race=pl.col("race_raw").replace_strict(mapping, default="OTHER", return_dtype=pl.String),
            race_unmapped=pl.col("race_raw").is_null() | ~pl.col("race_raw").is_in(list(mapping)),
        )
        .drop("admission_subject_id", "patient_found")
    )


def keep_valid_times(spine: pl.LazyFrame) -> pl.LazyFrame:
    """Keep stays with non-null intime and outtime and outtime > intime.

    >>> from datetime import datetime as dt
    >>> t = dt(2180, 1, 1)
    >>> spine = pl.LazyFrame({"intime": [t, t, None, t, t],
    ...     "outtime": [dt(2180, 1, 4), t, dt(2180, 1, 4), None, dt(2179, 12, 31)]})
    >>> keep_valid_times(spine).collect().height
    1
    """
    return spine.filter(
        pl.col("intime").is_not_null()
        & pl.col("outtime").is_not_null()
        & (pl.col("outtime") > pl.col("intime"))
    )


def keep_linked(spine: pl.LazyFrame) -> pl.LazyFrame:
    """Keep stays whose admission and patient exist and agree on subject_id."""
    return spine.filter(pl.col("linked"))


def keep_adults(spine: pl.LazyFrame, *, min_age: int) -> pl.LazyFrame:
    """Keep stays with age at hospital admission ≥ `min_age`.

    >>> keep_adults(pl.LazyFrame({"age": [17, 18, 45, 91, None]}), min_age=18).collect()["age"].to_list()
    [18, 45, 91]
    """
    return spine.filter(pl.col("age") >= min_age)


def keep_min_los(spine: pl.LazyFrame, *, min_hours: float) -> pl.LazyFrame:
    """Keep stays with ICU length of stay ≥ `min_hours` (48 h: the whole window lies in the ICU).

    >>> spine = pl.LazyFrame({"los_hours": [47.99, 48.0, 12.0, 300.0, 48.01]})
    >>> keep_min_los(spine, min_hours=48).collect()["los_hours"].to_list()
    [48.0, 300.0, 48.01]
    """
    return spine.filter(pl.col("los_hours") >= min_hours)


def keep_single_careunit(spine: pl.LazyFrame) -> pl.LazyFrame:
    """Keep stays with first_careunit = last_careunit."""
    return spine.filter(pl.col("first_careunit") == pl.col("last_careunit"))


def keep_one_stay_per_admission(spine: pl.LazyFrame) -> pl.LazyFrame:
    """Keep stays of admissions that have exactly one ICU stay in icustays."""
    return spine.filter(pl.col("stays_in_admission") == 1)


def keep_first_stay_per_subject(spine: pl.LazyFrame) -> pl.LazyFrame:
    """Keep each subject's earliest remaining stay (ties by stay_id).

    >>> from datetime import datetime as dt
    >>> spine = pl.LazyFrame({"subject_id": [1, 1, 2, 2, 3], "stay_id": [11, 12, 21, 22, 31],
    ...     "intime": [dt(2180, 5, 1), dt(2180, 1, 1), dt(2180, 1, 1), dt(2180, 1, 1), dt(2180, 1, 1)]})
    >>> keep_first_stay_per_subject(spine).collect().sort("stay_id")["stay_id"].to_list()
    [12, 21, 31]
    """
    return spine.filter(pl.struct("intime", "stay_id").rank("ordinal").over("subject_id") == 1)


def keep_alive_at_prediction(spine: pl.LazyFrame) -> pl.LazyFrame:
    """Drop stays whose patient died before prediction_time (dod-only deaths at day resolution).

    >>> from datetime import date, datetime as dt
    >>> pt = dt(2180, 1, 3, 10)
    >>> spine = pl.LazyFrame({"prediction_time": [pt] * 5,
    ...     "t_death": [dt(2180, 1, 3, 9, 59), pt, None, None, None],
    ...     "dod": [date(2180, 1, 3), date(2180, 1, 3), date(2180, 1, 2), date(2180, 1, 3), None]})
    >>> keep_alive_at_prediction(spine).collect().height
    3
    """
    died_before = pl.when(pl.col("t_death").is_not_null()).then(pl.col("t_death") < pl.col("prediction_time"))
    died_before = died_before.otherwise(pl.col("dod") < pl.col("prediction_time").dt.date())
    return spine.filter(~died_before.fill_null(False))


def keep_with_diagnoses(spine: pl.LazyFrame, *, hadm_ids: pl.Series) -> pl.LazyFrame:
    """Keep stays whose admission has at least one diagnoses_icd row."""
    return spine.filter(pl.col("hadm_id").is_in(hadm_ids.implode()))


@dataclass(frozen=True)
class Step:
    """One inclusion/exclusion step: its manifest key, the filter, and whether it is enabled."""

    key: str
    apply: Callable[[pl.LazyFrame], pl.LazyFrame]
    enabled: bool = True


def cohort_steps(config: CohortConfig, *, diagnosed_hadm_ids: pl.Series) -> list[Step]:
    """The §3.2 steps in order (`has_ehr` runs later, after event cleaning)."""
    return [
        Step("valid_times", keep_valid_times),
        Step("linked", keep_linked),
        Step("adult", lambda lf: keep_adults(lf, min_age=config.min_age)),
        Step("min_los", lambda lf: keep_min_los(lf, min_hours=config.min_los_hours)),
        Step("single_careunit", keep_single_careunit, config.single_careunit),
        Step("one_stay_per_admission", keep_one_stay_per_admission, config.one_stay_per_admission),
        Step("first_stay_per_subject", keep_first_stay_per_subject, config.first_stay_per_subject),
        Step("alive_at_prediction", keep_alive_at_prediction),
        Step(
            "has_diagnoses",
            lambda lf: keep_with_diagnoses(lf, hadm_ids=diagnosed_hadm_ids),
            config.require_diagnoses,
        ),
    ]


def step_count(key: str, frame: pl.DataFrame, *, before: int, enabled: bool = True) -> dict[str, object]:
    """The `counts.cohort` entry of one step."""
    return {
        "step": key,
        "enabled": enabled,
        "stays": frame.height,
        "subjects": frame.get_column("subject_id").n_unique() if frame.height else 0,
        "removed": before - frame.height,
    }


def apply_steps(spine: pl.DataFrame, steps: list[Step]) -> tuple[pl.DataFrame, list[dict[str, object]]]:
    """Run the steps in order; returns the kept stays and one count entry per step (first: `icustays`)."""
    duplicated = spine.filter(pl.col("stay_id").is_duplicated()).get_column("stay_id").unique().sort()
    if duplicated.len():
        raise CohortError(f"icustays: duplicate stay_id {duplicated.head(5).to_list()}; the table is corrupt")
    counts = [step_count("icustays", spine, before=spine.height)]
    frame = spine
    for step in steps:
        before = frame.height
        if step.enabled:
            frame = frame.lazy().pipe(step.apply).collect()
        counts.append(step_count(step.key, frame, before=before, enabled=step.enabled))
        logger.info("cohort step %s: %d stays (%d removed)", step.key, frame.height, before - frame.height)
    if frame.height == 0:
        raise CohortError(
            "the cohort is empty after the inclusion steps; check the inputs and the cohort options"
        )
    return frame.sort("stay_id"), counts
