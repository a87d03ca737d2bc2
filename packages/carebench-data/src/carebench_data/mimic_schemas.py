"""Real column names, order and dtypes of every MIMIC-IV 2.2 / 3.1 and MIMIC-CXR-JPG 2.0.0 table used.

The one source of truth for the raw headers: the build (`carebench_data.raw`) reads a subset of these
columns, and the synthetic generator (`carebench_data.synthetic`) writes them all.

The MIMIC-IV columns follow the official 2.2 schema (mimic-code `buildmimic/postgres/create.sql`);
v3.1 renamed or removed no column (data.md §1.4), so both versions share these headers and differ
only in vocabularies.
"""

from __future__ import annotations

import polars as pl

Schema = dict[str, pl.DataType]

_I64 = pl.Int64()
_I32 = pl.Int32()
_I16 = pl.Int16()
_I8 = pl.Int8()
_F64 = pl.Float64()
_STR = pl.String()
_DT = pl.Datetime("us")
_DATE = pl.Date()

MIMIC_IV_TABLES: dict[str, Schema] = {
    "hosp/patients": {
        "subject_id": _I64,
        "gender": _STR,
        "anchor_age": _I16,
        "anchor_year": _I16,
        "anchor_year_group": _STR,
        "dod": _DATE,
    },
    "hosp/admissions": {
        "subject_id": _I64,
        "hadm_id": _I64,
        "admittime": _DT,
        "dischtime": _DT,
        "deathtime": _DT,
        "admission_type": _STR,
        "admit_provider_id": _STR,
        "admission_location": _STR,
        "discharge_location": _STR,
        "insurance": _STR,
        "language": _STR,
        "marital_status": _STR,
        "race": _STR,
        "edregtime": _DT,
        "edouttime": _DT,
        "hospital_expire_flag": _I8,
    },
    "hosp/transfers": {
        "subject_id": _I64,
        "hadm_id": _I64,
        "transfer_id": _I64,
        "eventtype": _STR,
        "careunit": _STR,
        "intime": _DT,
        "outtime": _DT,
    },
    "hosp/diagnoses_icd": {
        "subject_id": _I64,
        "hadm_id": _I64,
        "seq_num": _I16,
        "icd_code": _STR,
        "icd_version": _I8,
    },
    "hosp/d_icd_diagnoses": {"icd_code": _STR, "icd_version": _I8, "long_title": _STR},
    "hosp/labevents": {
        "labevent_id": _I64,
        "subject_id": _I64,
        "hadm_id": _I64,
        "specimen_id": _I64,
        "itemid": _I32,
        "order_provider_id": _STR,
        "charttime": _DT,
        "storetime": _DT,
        "value": _STR,
        "valuenum": _F64,
        "valueuom": _STR,
        "ref_range_lower": _F64,
        "ref_range_upper": _F64,
        "flag": _STR,
        "priority": _STR,
        "comments": _STR,
    },
    "hosp/d_labitems": {"itemid": _I32, "label": _STR, "fluid": _STR, "category": _STR},
    "icu/icustays": {
        "subject_id": _I64,
        "hadm_id": _I64,
        "stay_id": _I64,
        "first_careunit": _STR,
        "last_careunit": _STR,
        "intime": _DT,
        "outtime": _DT,
        "los": _F64,
    },
    "icu/chartevents": {
        "subject_id": _I64,
        "hadm_id": _I64,
        "stay_id": _I64,
        "caregiver_id": _I64,
        "charttime": _DT,
        "storetime": _DT,
        "itemid": _I32,
        "value": _STR,
        "valuenum": _F64,
        "valueuom": _STR,
        "warning": _I8,
    },
    "icu/d_items": {
        "itemid": _I32,
        "label": _STR,
        "abbreviation": _STR,
        "linksto": _STR,
        "category": _STR,
        "unitname": _STR,
        "param_type": _STR,
        "lownormalvalue": _F64,
        "highnormalvalue": _F64,
    },
    "icu/inputevents": {
        "subject_id": _I64,
        "hadm_id": _I64,
        "stay_id": _I64,
        "caregiver_id": _I64,
        "starttime": _DT,
        "endtime": _DT,
        "storetime": _DT,
        "itemid": _I32,
        "amount": _F64,
        "amountuom": _STR,
        "rate": _F64,
        "rateuom": _STR,
        "orderid": _I64,
        "linkorderid": _I64,
        "ordercategoryname": _STR,
        "secondaryordercategoryname": _STR,
        "ordercomponenttypedescription": _STR,
        "ordercategorydescription": _STR,
        "patientweight": _F64,
        "totalamount": _F64,
        "totalamountuom": _STR,
        "isopenbag": _I8,
        "continueinnextdept": _I8,
        "statusdescription": _STR,
        "originalamount": _F64,
        "originalrate": _F64,
    },
    "icu/outputevents": {
        "subject_id": _I64,
        "hadm_id": _I64,
        "stay_id": _I64,
        "caregiver_id": _I64,
        "charttime": _DT,
        "storetime": _DT,
        "itemid": _I32,
        "value": _F64,
        "valueuom": _STR,
    },
    "icu/procedureevents": {
        "subject_id": _I64,
        "hadm_id": _I64,
        "stay_id": _I64,
        "caregiver_id": _I64,
        "starttime": _DT,
        "endtime": _DT,
        "storetime": _DT,
        "itemid": _I32,
        "value": _F64,
        "valueuom": _STR,
        "location": _STR,
        "locationcategory": _STR,
        "orderid": _I64,
        "linkorderid": _I64,
        "ordercategoryname": _STR,
        "ordercategorydescription": _STR,
        "patientweight": _F64,
        "isopenbag": _I8,
        "continueinnextdept": _I8,
        "statusdescription": _STR,
        "originalamount": _F64,
        "originalrate": _F64,
    },
}

CHEXPERT_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

_LABELS: Schema = {"subject_id": _I64, "study_id": _I64, **{name: pl.Float32() for name in CHEXPERT_FINDINGS}}

MIMIC_CXR_TABLES: dict[str, Schema] = {
    "mimic-cxr-2.0.0-metadata": {
        "dicom_id": _STR,
        "subject_id": _I64,
        "study_id": _I64,
        "PerformedProcedureStepDescription": _STR,
        "ViewPosition": _STR,
        "Rows": _I32,
        "Columns": _I32,
        "StudyDate": _I32,
        # Text on purpose: the real file holds unpadded floats such as 80556.875 (data.md G1).
        "StudyTime": _STR,
        "ProcedureCodeSequence_CodeMeaning": _STR,
        "ViewCodeSequence_CodeMeaning": _STR,
        "PatientOrientationCodeSequence_CodeMeaning": _STR,
    },
    "mimic-cxr-2.0.0-chexpert": _LABELS,
    "mimic-cxr-2.0.0-negbio": dict(_LABELS),
    "mimic-cxr-2.0.0-split": {"dicom_id": _STR, "study_id": _I64, "subject_id": _I64, "split": _STR},
}
