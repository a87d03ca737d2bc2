"""A tiny hand-written raw MIMIC-IV + MIMIC-CXR-JPG tree with known expected cohort, labels and images.

`write_raw_tree(root)` writes `<root>/mimiciv/2.2/{hosp,icu}/*` and `<root>/mimic-cxr-jpg/2.0.0/*`
in the real layout and returns a `RawTreeTruth` holding the expected outcome of a default build:
which stays survive each cohort step, their labels, and which image each stay gets. Ten "edge" stays
exercise one rule each (LoS 47 h 59 min, age 17, death before prediction time, dod-only death,
missing and corrupt JPEGs, a study exactly at prediction_time, a pre-ICU study, a post-prediction
film); filler stays make every fold's train, validation and test split non-empty.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from carebench_data.mimic_schemas import MIMIC_CXR_TABLES, MIMIC_IV_TABLES
from carebench_data.registry import load_registry

T0 = datetime(2180, 3, 1, 10, 0, 0)
"""intime of the first edge stay; the others are shifted by whole days."""
N_FILLER = 40
FORMATS = ("csv.gz", "csv", "parquet")


@dataclass
class RawTreeTruth:
    """Expected outcome of a default build of the hand-written tree."""

    mimic_iv: Path
    mimic_cxr: Path
    cohort_stay_ids: list[int]
    excluded: dict[str, list[int]]
    """cohort step key → stay ids removed by it."""
    mortality: dict[int, int]
    los_class: dict[int, int]
    phenotypes: dict[int, set[str]]
    """stay id → phenotype columns that must be 1 (gem_ccs) for the edge stays."""
    cxr_dicom: dict[int, str | None]
    cxr_hours: dict[int, float]
    counts: dict[str, int] = field(default_factory=dict)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _dicom(n: int) -> str:
    return f"{n:08x}-{n + 1:08x}-{n + 2:08x}-{n + 3:08x}-{n + 4:08x}"


def _study_time(t: datetime) -> tuple[str, str]:
    """StudyDate `YYYYMMDD` and an unpadded float StudyTime such as `95959.125` (G1)."""
    return t.strftime("%Y%m%d"), f"{int(t.strftime('%H%M%S'))}.125"


class _Tables:
    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def add(self, table: str, **row: Any) -> None:
        self.rows.setdefault(table, []).append(row)


_REAL_HEADERS = {**MIMIC_IV_TABLES, **MIMIC_CXR_TABLES}
HEADERS = {
    table: list(_REAL_HEADERS[table])
    for table in (
        "hosp/patients",
        "hosp/admissions",
        "hosp/diagnoses_icd",
        "hosp/d_icd_diagnoses",
        "hosp/labevents",
        "hosp/d_labitems",
        "icu/icustays",
        "icu/chartevents",
        "icu/outputevents",
        "icu/d_items",
        "mimic-cxr-2.0.0-metadata",
        "mimic-cxr-2.0.0-split",
    )
}
"""The written tables with their real headers (`carebench_data.mimic_schemas`), in writing order."""


def _write_table(path_without_suffix: Path, header: list[str], rows: list[dict[str, Any]], fmt: str) -> None:
    """Write text columns (empty field = null) as csv.gz (mtime 0), csv or parquet."""
    data = {name: [None if row.get(name) is None else str(row[name]) for row in rows] for name in header}
    frame = pl.DataFrame(data, schema=dict.fromkeys(header, pl.String))
    path_without_suffix.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.write_parquet(path_without_suffix.with_name(path_without_suffix.name + ".parquet"))
        return
    buffer = io.BytesIO()
    frame.write_csv(buffer, null_value="")
    if fmt == "csv":
        path_without_suffix.with_name(path_without_suffix.name + ".csv").write_bytes(buffer.getvalue())
        return
    target = path_without_suffix.with_name(path_without_suffix.name + ".csv.gz")
    with (
        open(target, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as handle,
    ):
        handle.write(buffer.getvalue())


def _jpeg(seed: int, size: int = 300) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size, size + 40)) * 200 + 20).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_raw_tree(root: Path, *, fmt: str = "csv.gz", marker: bool = True) -> RawTreeTruth:
    """Write the tree under `root` in format `fmt` (csv.gz, csv or parquet) and return the expected outcome.

    Args:
        root: output folder; receives `mimiciv/2.2/` and `mimic-cxr-jpg/2.0.0/`.
        fmt: file format of every table.
        marker: write a `SYNTHETIC.json` marker (source kind `synthetic`, count checks from it).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}")
    mimic_iv = root / "mimiciv" / "2.2"
    mimic_cxr = root / "mimic-cxr-jpg" / "2.0.0"
    tables = _Tables()
    images: dict[str, bytes | None] = {}
    truth = RawTreeTruth(
        mimic_iv=mimic_iv,
        mimic_cxr=mimic_cxr,
        cohort_stay_ids=[],
        excluded={},
        mortality={},
        los_class={},
        phenotypes={},
        cxr_dicom={},
        cxr_hours={},
    )
    next_lab = [1]

    def stay(
        n: int,
        *,
        intime: datetime,
        los_hours: float,
        age: int = 65,
        gender: str = "M",
        race: str = "WHITE",
        deathtime: datetime | None = None,
        dod: datetime | None = None,
        codes: tuple[tuple[int, str], ...] = ((9, "4019"),),
        careunits: tuple[str, str] = (
            "Medical Intensive Care Unit (MICU)",
            "Medical Intensive Care Unit (MICU)",
        ),
        anchor_group: str = "2011 - 2013",
    ) -> tuple[int, int, int]:
        subject, hadm, stay_id = 10_000_000 + n, 20_000_000 + n, 30_000_000 + n
        outtime = intime + timedelta(hours=los_hours)
        admittime = intime - timedelta(hours=6)
        dischtime = max(outtime, deathtime or outtime) + timedelta(hours=30 if deathtime is None else 0)
        if deathtime is not None:
            dischtime = deathtime
        tables.add(
            "hosp/patients",
            subject_id=subject,
            gender=gender,
            anchor_age=age,
            anchor_year=intime.year,
            anchor_year_group=anchor_group,
            dod=None if dod is None else dod.strftime("%Y-%m-%d"),
        )
        tables.add(
            "hosp/admissions",
            subject_id=subject,
            hadm_id=hadm,
            admittime=_ts(admittime),
            dischtime=_ts(dischtime),
            deathtime=_ts(deathtime),
            admission_type="EW EMER.",
            admission_location="EMERGENCY ROOM",
            discharge_location="DIED" if deathtime else "HOME",
            insurance="Medicare",
            language="ENGLISH",
            marital_status="MARRIED",
            race=race,
            hospital_expire_flag=int(deathtime is not None),
        )
        tables.add(
            "icu/icustays",
            subject_id=subject,
            hadm_id=hadm,
            stay_id=stay_id,
            first_careunit=careunits[0],
            last_careunit=careunits[1],
            intime=_ts(intime),
            outtime=_ts(outtime),
            los=round(los_hours / 24, 6),
        )
        for seq, (version, code) in enumerate(codes, start=1):
            tables.add(
                "hosp/diagnoses_icd",
                subject_id=subject,
                hadm_id=hadm,
                seq_num=seq,
                icd_code=code,
                icd_version=version,
            )
        return subject, hadm, stay_id

    def chart(
        stay_ids: tuple[int, int, int],
        t: datetime,
        itemid: int,
        value: Any,
        valuenum: float | None,
        uom: str = "",
        stored_after: timedelta = timedelta(minutes=5),
    ) -> None:
        subject, hadm, stay_id = stay_ids
        tables.add(
            "icu/chartevents",
            subject_id=subject,
            hadm_id=hadm,
            stay_id=stay_id,
            caregiver_id=1,
            charttime=_ts(t),
            storetime=_ts(t + stored_after),
            itemid=itemid,
            value=value,
            valuenum=valuenum,
            valueuom=uom or None,
            warning=0,
        )

    def lab(
        subject: int, hadm: int | None, t: datetime, itemid: int, value: Any, valuenum: float | None, uom: str
    ) -> None:
        tables.add(
            "hosp/labevents",
            labevent_id=next_lab[0],
            subject_id=subject,
            hadm_id=hadm,
            specimen_id=next_lab[0],
            itemid=itemid,
            charttime=_ts(t),
            storetime=_ts(t + timedelta(hours=1)),
            value=value,
            valuenum=valuenum,
            valueuom=uom,
            priority="ROUTINE",
        )
        next_lab[0] += 1

    def image(subject: int, study: int, n: int, t: datetime, view: str | None, content: bytes | None) -> str:
        dicom = _dicom(n)
        date, time = _study_time(t)
        tables.add(
            "mimic-cxr-2.0.0-metadata",
            dicom_id=dicom,
            subject_id=subject,
            study_id=study,
            PerformedProcedureStepDescription="CHEST (PORTABLE AP)",
            ViewPosition=view,
            Rows=3050,
            Columns=2539,
            StudyDate=date,
            StudyTime=time,
            ViewCodeSequence_CodeMeaning={"AP": "antero-posterior", "PA": "postero-anterior"}.get(
                view or "", "lateral"
            ),
        )
        tables.add("mimic-cxr-2.0.0-split", dicom_id=dicom, study_id=study, subject_id=subject, split="train")
        images[f"p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"] = content
        return dicom

    def hourly_hr(ids: tuple[int, int, int], intime: datetime, hours: int = 48) -> None:
        for h in range(hours):
            chart(ids, intime + timedelta(hours=h, minutes=30), 220045, 80 + h % 7, 80 + h % 7, "bpm")

    # 1: the reference stay (ICD-9 septicemia + CHF); events exercise parsing, tie-breaks and windows.
    t1 = T0
    s1 = stay(1, intime=t1, los_hours=96, codes=((9, "0389"), (9, "4280")))
    chart(s1, t1 - timedelta(minutes=1), 220045, 150, 150, "bpm")  # before intime: never carried in
    chart(s1, t1, 220045, 90, 90, "bpm")  # exactly at intime: hour 0
    chart(s1, t1 + timedelta(hours=1, minutes=10), 220045, 95, 95, "bpm")
    chart(s1, t1 + timedelta(hours=1, minutes=50), 220045, 97, 97, "bpm")  # last in hour 1 wins
    chart(s1, t1 + timedelta(hours=2), 220045, 0, 0, "bpm")  # out of range (0, 300)
    chart(s1, t1 + timedelta(hours=48), 220045, 99, 99, "bpm")  # at prediction_time: outside the window
    chart(s1, t1 + timedelta(hours=3), 223761, "98.6", 98.6, "°F")  # °F → 37 °C
    chart(s1, t1 + timedelta(hours=4), 223761, "37.5", 37.5, "°F")  # already °C (unit_fixed)
    chart(s1, t1 + timedelta(hours=2, minutes=5), 220739, "Spontaneously", 4, "")
    chart(s1, t1 + timedelta(hours=2, minutes=5), 223901, "Obeys Commands", 6, "")
    chart(s1, t1 + timedelta(hours=2, minutes=5), 223900, "Oriented", 5, "")
    chart(s1, t1 + timedelta(hours=5), 220739, "To Pain", 2, "")  # eye only: no gcs_total in hour 5
    chart(s1, t1 + timedelta(hours=6), 223951, "Abnormal >3 Seconds", None, "")
    chart(s1, t1 + timedelta(hours=7), 223835, "50", 50, "%")  # FiO2 % → 0.5
    chart(s1, t1 + timedelta(hours=8), 226531, "200", 200, "lbs")  # 200 lb → 90.72 kg
    chart(s1, t1 + timedelta(hours=8), 220277, "0.95", 0.95, "%")  # SpO2 fraction → 95
    chart(s1, t1 + timedelta(hours=9), 220045, "ERROR", None, "bpm")  # unparseable
    chart(s1, t1 + timedelta(hours=10, minutes=5), 220179, "120", 120, "mmHg")
    chart(s1, t1 + timedelta(hours=10, minutes=5), 220050, "130", 130, "mmHg")  # same minute, higher priority
    chart(s1, t1 + timedelta(hours=11), 220046, "120", 120, "bpm")  # alarm distractor: not in registry
    chart(s1, t1 + timedelta(hours=11), 220045, 88, 88, "bpm")
    chart(s1, t1 + timedelta(hours=11), 220045, 88, 88, "bpm")  # exact duplicate
    # charted in the last hour but stored 3 h later: counted; removed with availability = storetime
    chart(s1, t1 + timedelta(hours=47, minutes=50), 220045, 111, 111, "bpm", stored_after=timedelta(hours=3))
    lab(s1[0], None, t1 + timedelta(hours=3, minutes=30), 50931, "250", 250, "mg/dL")  # null hadm_id (G7)
    lab(s1[0], s1[1], t1 + timedelta(hours=12), 51478, "100", 100, "mg/dL")  # urine glucose: not in registry
    lab(s1[0], s1[1], t1 + timedelta(hours=13), 50820, "<7.0", None, "units")  # censored pH → 7.0
    hourly_hr(s1, t1 + timedelta(hours=12), hours=36)
    d1 = image(s1[0], 50_000_001, 1, t1 + timedelta(hours=10), "AP", _jpeg(1))
    image(
        s1[0], 50_000_002, 2, t1 + timedelta(hours=20), "LATERAL", _jpeg(2)
    )  # lateral never displaces a frontal
    image(
        s1[0], 50_000_003, 3, t1 + timedelta(hours=48, seconds=1), "AP", _jpeg(3)
    )  # 1 s after prediction_time
    truth.cxr_dicom[s1[2]], truth.cxr_hours[s1[2]] = d1, 10.0
    truth.mortality[s1[2]], truth.los_class[s1[2]] = 0, 2
    truth.phenotypes[s1[2]] = {"septicemia", "chf_nonhypertensive"}

    # 2: LoS 47 h 59 min → min_los.
    t2 = T0 + timedelta(days=20)
    s2 = stay(2, intime=t2, los_hours=47 + 59 / 60)
    hourly_hr(s2, t2, hours=40)
    # 3: age 17 → adult.
    t3 = T0 + timedelta(days=40)
    s3 = stay(3, intime=t3, los_hours=80, age=17)
    hourly_hr(s3, t3)
    # 4: death 1 min before prediction_time → alive_at_prediction.
    t4 = T0 + timedelta(days=60)
    s4 = stay(4, intime=t4, los_hours=48.5, deathtime=t4 + timedelta(hours=47, minutes=59))
    hourly_hr(s4, t4)
    # 5: LoS exactly 72 h (class 1), ICU death after prediction time; ICD-10 GEM codes.
    t5 = T0 + timedelta(days=80)
    s5 = stay(
        5,
        intime=t5,
        los_hours=72,
        gender="F",
        deathtime=t5 + timedelta(hours=60),
        codes=((10, "J9601"), (10, "I2510"), (10, "N171")),
    )
    hourly_hr(s5, t5)
    image(s5[0], 50_000_005, 5, t5 - timedelta(hours=2), "AP", _jpeg(5))  # pre-ICU: excluded at lookback 0
    d5 = image(s5[0], 50_000_006, 6, t5 + timedelta(hours=48), "PA", _jpeg(6))  # exactly at prediction_time
    truth.cxr_dicom[s5[2]], truth.cxr_hours[s5[2]] = d5, 48.0
    truth.mortality[s5[2]], truth.los_class[s5[2]] = 1, 1
    truth.phenotypes[s5[2]] = {"respiratory_failure", "coronary_atherosclerosis", "acute_renal_failure"}
    # 6: no diagnoses → has_diagnoses.
    t6 = T0 + timedelta(days=100)
    s6 = stay(6, intime=t6, los_hours=60, codes=())
    hourly_hr(s6, t6)
    # 7: outtime = intime → valid_times.
    t7 = T0 + timedelta(days=120)
    stay(7, intime=t7, los_hours=0)
    # 8: no registry value in the window → has_ehr.
    t8 = T0 + timedelta(days=140)
    s8 = stay(8, intime=t8, los_hours=60)
    chart(s8, t8 + timedelta(hours=3), 220046, "120", 120, "bpm")
    # 9: LoS 14 d (class 6), dod-only death on the day of ICU discharge, unmapped race; corrupt newest JPEG.
    t9 = T0 + timedelta(days=160)
    s9 = stay(9, intime=t9, los_hours=14 * 24, race="PORTUGUESE", dod=t9 + timedelta(days=14))
    hourly_hr(s9, t9)
    d9 = image(s9[0], 50_000_009, 9, t9 + timedelta(hours=5, minutes=1, seconds=1), "AP", _jpeg(9))
    truncated = _jpeg(10)
    image(s9[0], 50_000_010, 10, t9 + timedelta(hours=30), "AP", truncated[: len(truncated) // 2])
    truth.cxr_dicom[s9[2]], truth.cxr_hours[s9[2]] = d9, 5 + 1 / 60 + 1 / 3600
    truth.mortality[s9[2]], truth.los_class[s9[2]] = 1, 6
    truth.phenotypes[s9[2]] = {"essential_hypertension"}
    # 10: LoS 7 d (class 5), hospital death 2 d after ICU discharge (ICU mortality 0); JPEG file missing.
    t10 = T0 + timedelta(days=180)
    s10 = stay(10, intime=t10, los_hours=7 * 24, deathtime=t10 + timedelta(days=9))
    hourly_hr(s10, t10)
    image(s10[0], 50_000_011, 11, t10 + timedelta(hours=3), "AP", None)
    truth.cxr_dicom[s10[2]] = None
    truth.mortality[s10[2]], truth.los_class[s10[2]] = 0, 5
    truth.phenotypes[s10[2]] = {"essential_hypertension"}

    filler = []
    for index in range(N_FILLER):
        n = 100 + index
        t = T0 + timedelta(days=200 + 3 * index)
        ids = stay(n, intime=t, los_hours=72 + index, gender="F" if index % 2 else "M")
        hourly_hr(ids, t)
        chart(ids, t + timedelta(hours=4), 220181, str(70 + index % 10), 70 + index % 10, "mmHg")
        filler.append(ids[2])
        truth.cxr_dicom[ids[2]] = None

    truth.excluded = {
        "valid_times": [30_000_007],
        "min_los": [30_000_002],
        "adult": [30_000_003],
        "alive_at_prediction": [30_000_004],
        "has_diagnoses": [30_000_006],
        "has_ehr": [30_000_008],
    }
    truth.cohort_stay_ids = sorted([s1[2], s5[2], s9[2], s10[2], *filler])
    truth.counts = {"icustays": 10 + N_FILLER, "file_missing": 1, "decode_failed": 1, "fallback_used": 1}

    # Dictionaries: every itemid of both bundled sets, plus the distractors above.
    registry = load_registry("extended")
    for feature in registry.features:
        for source in feature.sources:
            for itemid in (*source.itemids, *source.subtract_itemids):
                if source.table == "labevents":
                    tables.add(
                        "hosp/d_labitems",
                        itemid=itemid,
                        label=feature.label,
                        fluid="Blood",
                        category="Chemistry",
                    )
                else:
                    tables.add(
                        "icu/d_items",
                        itemid=itemid,
                        label=feature.label,
                        abbreviation=feature.name,
                        linksto=source.table,
                        category="Routine Vital Signs",
                        unitname=feature.unit,
                        param_type="Numeric",
                    )
    tables.add(
        "icu/d_items",
        itemid=220046,
        label="Heart rate Alarm - High",
        abbreviation="HR Alarm - High",
        linksto="chartevents",
        category="Alarms",
        unitname="bpm",
        param_type="Numeric",
    )
    tables.add("hosp/d_labitems", itemid=51478, label="Glucose", fluid="Urine", category="Chemistry")
    for version, code, title in (
        (9, "0389", "Unspecified septicemia"),
        (9, "4280", "Congestive heart failure, unspecified"),
        (9, "4019", "Unspecified essential hypertension"),
        (10, "J9601", "Acute respiratory failure with hypoxia"),
        (10, "I2510", "Atherosclerotic heart disease of native coronary artery"),
        (10, "N171", "Acute kidney failure with acute cortical necrosis"),
    ):
        tables.add("hosp/d_icd_diagnoses", icd_code=code, icd_version=version, long_title=title)
    tables.add(
        "icu/outputevents",
        subject_id=s1[0],
        hadm_id=s1[1],
        stay_id=s1[2],
        caregiver_id=1,
        charttime=_ts(t1 + timedelta(hours=2)),
        storetime=_ts(t1 + timedelta(hours=2, minutes=3)),
        itemid=226559,
        value=120,
        valueuom="ml",
    )

    for table, header in HEADERS.items():
        rows = sorted(tables.rows.get(table, []), key=lambda row: tuple(str(row.get(k)) for k in header[:3]))
        base = mimic_cxr / table if table.startswith("mimic-cxr") else mimic_iv / table
        _write_table(base, header, rows, fmt)
    for relpath, content in images.items():
        if content is None:
            continue
        path = mimic_cxr / "files" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if marker:
        (mimic_iv / "SYNTHETIC.json").write_text(
            json.dumps(
                {
                    "generator": "carebench_data.testing.raw",
                    "mimic_iv_version": "2.2",
                    "scale": "fixture",
                    "row_counts": {"icu/icustays": 10 + N_FILLER},
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
    return truth
