"""Synthetic raw tree: headers, identifiers, dictionaries, formats and markers (data.md §13.8 A1-A3, A6-A7)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from carebench_data.synthetic import SyntheticConfig, generate_synthetic

# The real MIMIC-IV 2.2 / 3.1 headers (mimic-code create.sql; v3.1 renamed or removed no column).
MIMIC_IV_HEADERS = {
    "hosp/patients": "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "hosp/admissions": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,"
    "admission_location,discharge_location,insurance,language,marital_status,race,edregtime,edouttime,"
    "hospital_expire_flag",
    "hosp/transfers": "subject_id,hadm_id,transfer_id,eventtype,careunit,intime,outtime",
    "hosp/diagnoses_icd": "subject_id,hadm_id,seq_num,icd_code,icd_version",
    "hosp/d_icd_diagnoses": "icd_code,icd_version,long_title",
    "hosp/labevents": "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,"
    "value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments",
    "hosp/d_labitems": "itemid,label,fluid,category",
    "icu/icustays": "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los",
    "icu/chartevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,valueuom,warning",
    "icu/d_items": "itemid,label,abbreviation,linksto,category,unitname,param_type,lownormalvalue,highnormalvalue",
    "icu/inputevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,amount,amountuom,"
    "rate,rateuom,orderid,linkorderid,ordercategoryname,secondaryordercategoryname,ordercomponenttypedescription,"
    "ordercategorydescription,patientweight,totalamount,totalamountuom,isopenbag,continueinnextdept,"
    "statusdescription,originalamount,originalrate",
    "icu/outputevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valueuom",
    "icu/procedureevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,value,valueuom,"
    "location,locationcategory,orderid,linkorderid,ordercategoryname,ordercategorydescription,patientweight,"
    "isopenbag,continueinnextdept,statusdescription,originalamount,originalrate",
}
FINDINGS = (
    "Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,"
    "No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
)
MIMIC_CXR_HEADERS = {
    "mimic-cxr-2.0.0-metadata": "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,"
    "Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning",
    "mimic-cxr-2.0.0-chexpert": f"subject_id,study_id,{FINDINGS}",
    "mimic-cxr-2.0.0-negbio": f"subject_id,study_id,{FINDINGS}",
    "mimic-cxr-2.0.0-split": "dicom_id,study_id,subject_id,split",
}


@pytest.fixture(scope="module", params=["2.2", "3.1"])
def tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp(f"synth{request.param}") / "raw"
    generate_synthetic(out, SyntheticConfig(n_stays=1000, image_size=64, mimic_version=request.param))
    return out, request.param


def read(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema=False)


def test_mimic_iv_headers_are_the_real_ones(tree: tuple[Path, str]) -> None:
    out, version = tree
    for table, header in MIMIC_IV_HEADERS.items():
        with gzip.open(out / "mimiciv" / version / f"{table}.csv.gz", "rt") as handle:
            assert handle.readline().rstrip("\n") == header, table


def test_mimic_cxr_headers_are_the_real_ones(tree: tuple[Path, str]) -> None:
    out, _ = tree
    for table, header in MIMIC_CXR_HEADERS.items():
        with gzip.open(out / "mimic-cxr-jpg/2.0.0" / f"{table}.csv.gz", "rt") as handle:
            assert handle.readline().rstrip("\n") == header, table


def test_gzip_header_has_no_mtime_and_no_name(tree: tuple[Path, str]) -> None:
    out, version = tree
    raw = (out / "mimiciv" / version / "hosp/patients.csv.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    flags, mtime = raw[3], int.from_bytes(raw[4:8], "little")
    assert mtime == 0
    assert flags & 0x08 == 0  # FNAME not set


def test_identifier_ranges_and_formats(tree: tuple[Path, str]) -> None:
    out, version = tree
    root = out / "mimiciv" / version
    stays = read(root / "icu/icustays.csv.gz")
    assert stays["subject_id"].str.contains(r"^1\d{7}$").all()
    assert stays["hadm_id"].str.contains(r"^2\d{7}$").all()
    assert stays["stay_id"].str.contains(r"^3\d{7}$").all()
    assert stays["stay_id"].n_unique() == stays.height == 1000
    meta = read(out / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz")
    assert meta["study_id"].str.contains(r"^5\d{7}$").all()
    assert meta["dicom_id"].str.contains(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$").all()
    assert meta["dicom_id"].n_unique() == meta.height
    timestamps = stays["intime"].str.contains(r"^2[12]\d\d-\d\d-\d\d \d\d:\d\d:\d\d$")
    assert timestamps.all()


def test_icd_codes_keep_leading_zeros_and_are_in_the_dictionary(tree: tuple[Path, str]) -> None:
    out, version = tree
    root = out / "mimiciv" / version
    dx = read(root / "hosp/diagnoses_icd.csv.gz")
    dictionary = read(root / "hosp/d_icd_diagnoses.csv.gz")
    assert dx.join(dictionary, on=["icd_code", "icd_version"], how="anti").height == 0
    icd9 = dx.filter(pl.col("icd_version") == "9")["icd_code"]
    assert icd9.str.starts_with("0").any()
    assert not dx["icd_code"].str.contains(r"\.").any()
    raw = gzip.decompress((root / "hosp/diagnoses_icd.csv.gz").read_bytes()).decode()
    assert re.search(r",0\d{3},9\n", raw) is not None


def test_every_itemid_is_in_its_dictionary(tree: tuple[Path, str]) -> None:
    out, version = tree
    root = out / "mimiciv" / version
    d_items = read(root / "icu/d_items.csv.gz")
    for table in ("chartevents", "outputevents", "inputevents", "procedureevents"):
        used = read(root / f"icu/{table}.csv.gz").select("itemid").unique()
        known = d_items.filter(pl.col("linksto") == table).select("itemid")
        assert used.join(known, on="itemid", how="anti").height == 0, table
    labs = read(root / "hosp/labevents.csv.gz").select("itemid").unique()
    assert labs.join(read(root / "hosp/d_labitems.csv.gz"), on="itemid", how="anti").height == 0
    chart_items = set(read(root / "icu/chartevents.csv.gz")["itemid"].unique().to_list())
    # The 17 default features' main items and the distractors of data.md §13.4 are all charted.
    for itemid in (
        "220045",
        "220210",
        "220277",
        "223761",
        "223762",
        "220739",
        "223900",
        "223901",
        "223951",
        "223835",
        "225664",
        "224639",
        "226730",
        "223830",
        "220046",
        "226253",
    ):
        assert itemid in chart_items, itemid


def test_study_time_is_unpadded_and_matches_the_truth(tree: tuple[Path, str]) -> None:
    out, _ = tree
    meta = read(out / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz")
    study_time = meta["StudyTime"]
    assert study_time.str.contains(r"^[1-9]\d{0,5}\.\d{3}$|^0\.\d{3}$").all()
    integer_part = study_time.str.split(".").list.first().cast(pl.Int64)
    assert (integer_part < 100_000).mean() >= 0.20
    padded = integer_part.cast(pl.String).str.zfill(6)
    parsed = (meta["StudyDate"] + " " + padded).str.to_datetime("%Y%m%d %H%M%S")
    truth = pl.read_parquet(out / "_synthetic_truth/cxr_findings.parquet").select(
        "dicom_id", "study_datetime"
    )
    joined = meta.with_columns(parsed.alias("t")).join(truth, on="dicom_id")
    assert joined.height == meta.height
    assert (joined["t"] == joined["study_datetime"].dt.truncate("1s")).all()


def test_version_vocabularies(tree: tuple[Path, str]) -> None:
    out, version = tree
    root = out / "mimiciv" / version
    admissions = read(root / "hosp/admissions.csv.gz")
    patients = read(root / "hosp/patients.csv.gz")
    insurance = set(admissions["insurance"].unique().to_list())
    groups = set(patients["anchor_year_group"].unique().to_list())
    languages = set(admissions["language"].drop_nulls().unique().to_list())
    if version == "2.2":
        assert insurance == {"Medicare", "Medicaid", "Other"}
        assert groups == {"2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019"}
        assert languages == {"ENGLISH", "?"}
    else:
        assert {"Private", "Medicare", "Medicaid"} <= insurance
        assert "2020 - 2022" in groups
        assert "English" in languages


def test_cxr_only_in_the_2011_2016_era(tree: tuple[Path, str]) -> None:
    out, version = tree
    patients = read(out / "mimiciv" / version / "hosp/patients.csv.gz")
    meta = read(out / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz")
    groups = meta.join(patients, on="subject_id")["anchor_year_group"].unique().to_list()
    assert meta.join(patients, on="subject_id", how="anti").height == 0
    assert set(groups) <= {"2011 - 2013", "2014 - 2016"}


def test_icd9_share_by_anchor_group(tree: tuple[Path, str]) -> None:
    out, version = tree
    root = out / "mimiciv" / version
    share = (
        read(root / "hosp/diagnoses_icd.csv.gz")
        .group_by("hadm_id")
        .agg(pl.col("icd_version").first())
        .join(read(root / "hosp/admissions.csv.gz").select("hadm_id", "subject_id"), on="hadm_id")
        .join(read(root / "hosp/patients.csv.gz").select("subject_id", "anchor_year_group"), on="subject_id")
        .group_by("anchor_year_group")
        .agg((pl.col("icd_version") == "9").mean().alias("icd9"))
    )
    expected = {
        "2008 - 2010": 0.770,
        "2011 - 2013": 0.807,
        "2014 - 2016": 0.438,
        "2017 - 2019": 0.0,
        "2020 - 2022": 0.0,
    }
    for group, icd9 in share.iter_rows():
        assert abs(icd9 - expected[group]) <= 0.01, group


def test_markers_and_checksums(tree: tuple[Path, str]) -> None:
    out, version = tree
    root = out / "mimiciv" / version
    marker = json.loads((root / "SYNTHETIC.json").read_text())
    assert marker["synthetic"] is True and marker["mimic_version"] == version and marker["seed"] == 0
    for table, count in marker["row_counts"].items():
        with gzip.open(root / f"{table}.csv.gz", "rb") as handle:
            assert sum(1 for _ in handle) - 1 == count, table
    assert "z_severity" not in (root / "SYNTHETIC.json").read_text()
    for folder in (root, out / "mimic-cxr-jpg/2.0.0"):
        lines = (folder / "SHA256SUMS.txt").read_text().splitlines()
        assert len(lines) >= 4
        for line in lines:
            digest, relpath = line.split("  ", 1)
            assert hashlib.sha256((folder / relpath).read_bytes()).hexdigest() == digest


def test_images_exist_for_every_metadata_row(tree: tuple[Path, str]) -> None:
    out, _ = tree
    root = out / "mimic-cxr-jpg/2.0.0"
    meta = read(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    files = {p.stem for p in (root / "files").rglob("*.jpg")}
    assert files == set(meta["dicom_id"].to_list())
    first = meta.row(0, named=True)
    path = (
        root
        / f"files/p{first['subject_id'][:2]}/p{first['subject_id']}/s{first['study_id']}/{first['dicom_id']}.jpg"
    )
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"
    views = meta["ViewPosition"].value_counts()
    assert set(views["ViewPosition"].drop_nulls().to_list()) <= {"AP", "PA", "LATERAL", "LL"}
    assert 0.01 < meta["ViewPosition"].is_null().mean() < 0.08
    chexpert = read(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert chexpert.select("study_id").n_unique() == meta["study_id"].n_unique() == chexpert.height
    values = set(np.unique(chexpert.drop("subject_id", "study_id").to_numpy().astype(str)).tolist())
    assert values <= {"1.0", "0.0", "-1.0", "None"}
