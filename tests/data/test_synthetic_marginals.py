"""Marginals of the 2,000-stay synthetic tree, computed from the raw tables (data.md §13.8 A4-A6, A13-A15)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from carebench_data.synthetic import PHENOTYPE_COLUMNS, SyntheticConfig, generate_synthetic

DT = "%Y-%m-%d %H:%M:%S"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("marginals") / "raw"
    return generate_synthetic(out, SyntheticConfig(n_stays=2000, image_size=64, seed=0))


def table(tree: Path, name: str) -> pl.DataFrame:
    return pl.read_csv(tree / f"mimiciv/2.2/{name}.csv.gz", infer_schema=False)


@pytest.fixture(scope="module")
def icu(tree: Path) -> pl.DataFrame:
    """ICU stays with their admission and patient rows, times parsed, age as the builder computes it."""
    stays = table(tree, "icu/icustays").with_columns(pl.col("intime", "outtime").str.to_datetime(DT))
    admissions = table(tree, "hosp/admissions").with_columns(
        pl.col("admittime", "dischtime").str.to_datetime(DT),
        pl.col("deathtime").str.to_datetime(DT, strict=False),
    )
    patients = table(tree, "hosp/patients").with_columns(pl.col("anchor_age", "anchor_year").cast(pl.Int32))
    return (
        stays.join(admissions.drop("subject_id"), on="hadm_id")
        .join(patients, on="subject_id")
        .with_columns(
            (pl.col("anchor_age") + pl.col("admittime").dt.year() - pl.col("anchor_year")).alias("age"),
            ((pl.col("outtime") - pl.col("intime")).dt.total_seconds() / 86400).alias("los_days"),
        )
    )


def test_demographics(icu: pl.DataFrame) -> None:
    admissions = icu.unique("hadm_id")
    assert 64.0 <= admissions["age"].mean() <= 66.0
    assert 0.43 <= (admissions["gender"] == "F").mean() <= 0.46
    assert (admissions["age"] < 18).sum() >= 1  # the `adult` step has something to remove


def test_outcomes(icu: pl.DataFrame) -> None:
    admissions = icu.unique("hadm_id")
    assert 0.10 <= (admissions["hospital_expire_flag"] == "1").mean() <= 0.13
    icu_death = (
        icu["deathtime"].is_not_null()
        & (icu["deathtime"] >= icu["intime"])
        & (icu["deathtime"] <= icu["outtime"])
    )
    assert 0.06 <= icu_death.mean() <= 0.09
    assert 1.7 <= icu["los_days"].median() <= 2.3
    assert 0.40 <= (icu["los_days"] >= 2).mean() <= 0.48
    assert 0 < (icu["los_days"] <= 0).sum() <= 10  # dirt: outtime <= intime


def test_expected_selection_matches_the_raw_metadata(tree: Path, icu: pl.DataFrame) -> None:
    """Recompute the default CXR rule (AP/PA, [intime, intime + 48 h], latest) from the raw files (A13)."""
    meta = pl.read_csv(tree / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz", infer_schema=False)
    meta = meta.filter(pl.col("ViewPosition").is_in(["AP", "PA"])).with_columns(
        (pl.col("StudyDate") + " " + pl.col("StudyTime").str.split(".").list.first().str.zfill(6))
        .str.to_datetime("%Y%m%d %H%M%S")
        .alias("t")
    )
    candidates = (
        icu.select("stay_id", "subject_id", "intime")
        .join(meta, on="subject_id")
        .filter((pl.col("t") >= pl.col("intime")) & (pl.col("t") <= pl.col("intime") + pl.duration(hours=48)))
    )
    selected = (
        candidates.sort(["stay_id", "t", "ViewPosition", "dicom_id"], descending=[False, True, False, False])
        .group_by("stay_id", maintain_order=True)
        .first()
    )
    truth = pl.read_parquet(tree / "_synthetic_truth/stays.parquet")
    expected = truth.filter(pl.col("expected_cxr_dicom_id").is_not_null())
    assert dict(zip(selected["stay_id"].cast(pl.Int64), selected["dicom_id"], strict=True)) == dict(
        zip(expected["stay_id"], expected["expected_cxr_dicom_id"], strict=True)
    )
    # Leakage traps exist: films after prediction_time and ED films before intime of the same stays.
    findings = pl.read_parquet(tree / "_synthetic_truth/cxr_findings.parquet").join(
        truth.select("stay_id", "intime"), on="stay_id", how="left"
    )
    after = findings.filter(pl.col("study_datetime") > pl.col("intime") + pl.duration(hours=48))
    assert after.height > 0
    assert set(after["dicom_id"]).isdisjoint(expected["expected_cxr_dicom_id"])
    assert (findings["kind"] == "ed_pre_icu").sum() > 0
    ed = set(findings.filter(pl.col("kind") == "ed_pre_icu")["dicom_id"])
    assert ed.isdisjoint(expected["expected_cxr_dicom_id"])


def test_paired_fraction_and_era(tree: Path) -> None:
    truth = pl.read_parquet(tree / "_synthetic_truth/stays.parquet")
    cohort = truth.filter(pl.col("expected_in_cohort"))
    paired = cohort["expected_cxr_dicom_id"].is_not_null()
    assert 0.18 <= paired.mean() <= 0.25
    assert not cohort.filter(~pl.col("cxr_era"))["expected_cxr_dicom_id"].is_not_null().any()
    assert 0.38 <= cohort.height / truth.height <= 0.48


def test_coded_labels_follow_the_emitted_codes(tree: Path) -> None:
    """The truth's coded_* columns equal the labels rebuilt from diagnoses_icd with the bundled gem_ccs map."""
    from carebench_data.synthetic.phenotypes import icd_code_table

    codes = icd_code_table()
    rows = [
        {"icd_version": str(v), "icd_code": c, "phenotype": PHENOTYPE_COLUMNS[g]}
        for v, c, groups in zip(codes.versions, codes.codes, codes.groups, strict=True)
        for g in groups
    ]
    mapping = pl.DataFrame(rows)
    dx = table(tree, "hosp/diagnoses_icd").join(mapping, on=["icd_version", "icd_code"])
    positives = dx.select("hadm_id", "phenotype").unique().with_columns(pl.col("hadm_id").cast(pl.Int64))
    truth = pl.read_parquet(tree / "_synthetic_truth/stays.parquet").unique("hadm_id")
    icu_admissions = set(truth["hadm_id"])
    for name in PHENOTYPE_COLUMNS:
        rebuilt = set(positives.filter(pl.col("phenotype") == name)["hadm_id"]) & icu_admissions
        coded = set(truth.filter(pl.col(f"coded_{name}") == 1)["hadm_id"])
        assert rebuilt == coded, name
    prevalence = np.array([truth[f"true_{name}"].mean() for name in PHENOTYPE_COLUMNS])
    assert np.all((prevalence > 0.02) & (prevalence < 0.5))


def test_injected_dirt_is_in_the_raw_chartevents(tree: Path) -> None:
    chart = table(tree, "icu/chartevents")
    distinct = chart.unique()
    truth = pl.read_parquet(tree / "_synthetic_truth/stays.parquet")
    heart_rate = distinct.filter(pl.col("itemid") == "220045")
    impossible = heart_rate.filter(pl.col("value").is_in(["0", "999"])).height
    assert impossible == truth["dirt_out_of_range"].sum() > 0
    errors = distinct.filter(pl.col("value") == "ERROR")
    assert errors.height == errors["valuenum"].null_count() == truth["dirt_unmatched_text"].sum() > 0
    duplicated = chart.height - distinct.height
    assert duplicated >= truth["dirt_duplicates"].sum() > 0
    celsius_on_f = chart.filter(
        (pl.col("itemid") == "223761") & (pl.col("valuenum").cast(pl.Float64) < 45)
    ).height
    assert celsius_on_f >= truth["dirt_unit_fixed"].sum() > 0
    urine = pl.read_csv(tree / "mimiciv/2.2/hosp/labevents.csv.gz", infer_schema=False).filter(
        pl.col("itemid").is_in(["51491", "51478"])
    )
    assert urine.height > 0
