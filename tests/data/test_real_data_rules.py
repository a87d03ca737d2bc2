"""Rules that real MIMIC-IV needs and generated files never showed, on hand-written rows.

Censored lab results in `labevents.comments`, intime with seconds against charttime in minutes,
ICD-10 codes split after the 2018 GEM (child-code fallback), the demo's fingerprint and expected
counts, and SHA256SUMS.txt judged only on the files carebench reads.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from carebench_data import events, labels, raw, verify
from carebench_data.config import CohortConfig
from carebench_data.manifest import sha256_file
from carebench_data.mimic_schemas import MIMIC_IV_TABLES
from carebench_data.registry import load_registry

INTIME = datetime(2180, 1, 1, 10, 0, 40)
"""intime with seconds, as in real MIMIC-IV; charttimes below have whole minutes."""
PREDICTION = INTIME + timedelta(hours=48)


def _write_labevents(root: Path, rows: list[dict[str, Any]]) -> raw.ResolvedTable:
    header = list(MIMIC_IV_TABLES["hosp/labevents"])
    frame = pl.DataFrame(
        {name: [row.get(name) for row in rows] for name in header}, schema=dict.fromkeys(header, pl.String)
    )
    buffer = io.BytesIO()
    frame.write_csv(buffer, null_value="")
    (root / "hosp").mkdir(parents=True)
    (root / "hosp" / "labevents.csv.gz").write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    resolved = raw.resolve_table(root, raw.MIMIC_IV_TABLES["labevents"])
    assert resolved is not None
    return resolved


def _lab(minutes_after_intime_minute: int, *, value: str | None, comments: str | None) -> dict[str, Any]:
    charttime = INTIME.replace(second=0) + timedelta(minutes=minutes_after_intime_minute)
    return {
        "subject_id": "1",
        "hadm_id": "100",
        "itemid": "51003",
        "charttime": charttime.strftime("%Y-%m-%d %H:%M:%S"),
        "storetime": charttime.strftime("%Y-%m-%d %H:%M:%S"),
        "value": value,
        "valuenum": value if value is not None and value[0].isdigit() else None,
        "valueuom": "ng/mL",
        "comments": comments,
    }


def _windows() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "stay_id": [30_000_001],
            "subject_id": [1],
            "row": [0],
            "intime": [INTIME],
            "prediction_time": [PREDICTION],
        },
        schema={
            "stay_id": pl.Int64,
            "subject_id": pl.Int64,
            "row": pl.Int32,
            "intime": pl.Datetime("us"),
            "prediction_time": pl.Datetime("us"),
        },
    )


def test_censored_comments_and_the_intime_minute_through_staging_cleaning_and_binning(tmp_path: Path) -> None:
    rows = [
        _lab(0, value="0.05", comments="<0.01.  a comment beside a real value is ignored"),  # intime minute
        _lab(90, value=None, comments="<0.01.  cTropnT > 0.10 ng/mL suggests acute MI."),  # hour 1
        _lab(150, value=None, comments="GREATER THAN 25.  VERIFIED."),  # hour 2, spelled comparator
        _lab(210, value=None, comments="___"),  # hour 3: nothing to read
        _lab(270, value="<0.02", comments=None),  # hour 4: comparator in value
        _lab(330, value=None, comments="less than 0.03*.  Hemolysis affects this result."),  # hour 5
        _lab(-1, value="0.5", comments=None),  # the minute before intime: never carried in
        _lab(48 * 60, value="0.7", comments=None),  # the minute of prediction_time: outside the window
    ]
    resolved = _write_labevents(tmp_path / "raw", rows)
    registry = load_registry("extended")
    counts = events.stage_table(
        resolved,
        registry=registry,
        windows=_windows(),
        staging_dir=tmp_path / "staging",
        chunk_bytes=1 << 20,
        max_bad_row_fraction=1.0,
    )
    assert (counts.scanned, counts.cohort_kept, counts.window_kept) == (8, 8, 6)
    assert (counts.intime_minute_kept, counts.prediction_minute_dropped) == (1, 1)
    staged = events.read_staged(tmp_path / "staging", tables=["labevents"]).collect().sort("charttime")
    # comments survive staging only where value and valuenum are both null
    assert staged["comments"].is_null().to_list() == [True, False, False, False, True, False]
    assert staged["hour"].to_list() == [0, 1, 2, 3, 4, 5]

    cleaned = events.clean_events(
        events.read_staged(tmp_path / "staging", tables=["labevents"]),
        registry=registry,
        availability="charttime",
    )
    troponin = cleaned.feature_counts["troponin_t"]
    assert troponin["rows_in_window"] == 6 and troponin["intime_minute"] == 1
    assert troponin["censored"] == 4 and troponin["unparseable"] == 1
    ehr = events.scatter_hourly(cleaned.hourly, n_stays=1, registry=registry)
    column = ehr[0, :6, registry.names.index("troponin_t")]
    np.testing.assert_allclose(column, [0.05, 0.01, 25.0, np.nan, 0.02, 0.03], rtol=1e-6)


def test_window_is_compared_at_minute_resolution() -> None:
    frame = pl.LazyFrame(
        {
            "intime": [INTIME] * 6,
            "prediction_time": [PREDICTION] * 6,
            "charttime": [
                datetime(2180, 1, 1, 9, 59),  # the minute before intime's minute
                datetime(2180, 1, 1, 10, 0),  # intime's minute, 40 s "before" intime
                datetime(2180, 1, 1, 11, 0),  # 59 min 20 s after intime: still hour 0
                datetime(2180, 1, 1, 11, 1),  # hour 1
                datetime(2180, 1, 3, 9, 59),  # last minute of the window: hour 47
                datetime(2180, 1, 3, 10, 0),  # prediction_time's minute: outside
            ],
        }
    )
    window = events.keep_in_window(frame).collect()
    assert window["hour"].to_list() == [0, 0, 1, 47]
    assert window["in_intime_minute"].to_list() == [True, False, False, False]
    assert frame.select(events.in_prediction_minute()).collect().to_series().to_list() == [False] * 5 + [True]


def _mapped(codes: list[str], **options: bool) -> pl.DataFrame:
    diagnoses = pl.LazyFrame(
        {"hadm_id": list(range(len(codes))), "icd_version": [10] * len(codes), "icd_code": codes},
        schema={"hadm_id": pl.Int64, "icd_version": pl.Int8, "icd_code": pl.String},
    )
    return labels.map_codes(diagnoses, mode="gem_ccs", **options).collect()


def test_child_code_fallback_for_codes_split_after_the_gem() -> None:
    # E780 (pure hypercholesterolemia) became E7800/E7801; T8359XA's placeholder X became 0-8.
    codes = ["E780", "A047", "I272", "K5660", "H540", "T8359XA", "T8359", "I2510", "J96019", "T383X6A"]
    mapped = _mapped(codes)
    routes = {
        code: (sorted(group["ccs_id"].drop_nulls().to_list()), group["via"][0])
        for (code,), group in mapped.group_by("icd_code")
    }
    assert routes["E780"] == ([53], "child_fallback")  # Disorders of lipid metabolism
    assert routes["A047"] == ([135], "child_fallback")
    assert routes["I272"] == ([103], "child_fallback")
    assert routes["K5660"] == ([145], "child_fallback")
    assert routes["H540"] == ([89], "child_fallback")
    assert routes["T8359XA"] == ([237], "child_fallback")
    assert routes["T8359"] == ([], None)  # its extensions disagree (237, 238, 257): still unmapped
    assert routes["I2510"] == ([101, 104], "gem")  # in the GEM: untouched
    assert routes["J96019"] == ([131], "parent_fallback")  # longer than a GEM code: the parent route
    assert routes["T383X6A"] == ([], None)  # a "no map" row of the GEM: unmapped

    stays = pl.LazyFrame({"hadm_id": list(range(len(codes)))}, schema={"hadm_id": pl.Int64})
    with_children = labels.phenotype_labels(stays, mapped=mapped.lazy()).collect()
    without = labels.phenotype_labels(stays, mapped=_mapped(codes, child_fallback=False).lazy()).collect()
    e780 = pl.col("hadm_id") == codes.index("E780")
    assert with_children.filter(e780)["lipid_disorders"].item() == 1
    assert without.filter(e780)["lipid_disorders"].item() == 0

    counts = labels.mapping_counts(mapped, titles=None)
    assert counts["codes"] == {"ccs": 0, "gem": 1, "child_fallback": 6, "parent_fallback": 1, "unmapped": 2}
    assert counts["no_ccs_group"] == 2
    assert [entry["icd_code"] for entry in counts["child_fallback_codes"]] == sorted(
        ["A047", "E780", "H540", "I272", "K5660", "T8359XA"]
    )


def test_demo_fingerprint_and_its_own_expectations() -> None:
    fingerprint = raw.detect_version(
        Path("/nonexistent"),
        admissions_header=("race",),
        chartevents_header=("caregiver_id",),
        icustays_rows=140,
    )
    assert fingerprint["version"] == "2.2-demo" and raw.base_version("2.2-demo") == "2.2"
    assert verify._expected_counts(fingerprint) == verify.EXPECTED_ROWS["2.2-demo"]

    def manifest(release: str, *, cxr: bool, cohort: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "source": {"kind": "mimic", "mimic_iv_version": "2.2", "fingerprint": {"detected": release}},
            "config": {"cohort": cohort or dataclasses.asdict(CohortConfig()), "cxr": {"enabled": cxr}},
        }

    assert verify._cohort_warnings(manifest("2.2-demo", cxr=False), n_stays=74, n_with_cxr=0) == []
    assert verify._cohort_warnings(manifest("2.2-demo", cxr=False), n_stays=70, n_with_cxr=0) == [
        "cohort N = 70, expected 74 for MIMIC-IV 2.2-demo"
    ]
    # no CXR-fraction warning on an EHR-only build; both warnings with CXR enabled
    assert len(verify._cohort_warnings(manifest("2.2", cxr=False), n_stays=74, n_with_cxr=0)) == 1
    assert len(verify._cohort_warnings(manifest("2.2", cxr=True), n_stays=74, n_with_cxr=0)) == 2
    other_rules = {**dataclasses.asdict(CohortConfig()), "single_careunit": True}
    assert (
        verify._cohort_warnings(manifest("2.2", cxr=True, cohort=other_rules), n_stays=74, n_with_cxr=0) == []
    )


def test_checksums_judge_only_the_files_carebench_reads(tmp_path: Path) -> None:
    from carebench_data.testing.raw import write_raw_tree

    root = write_raw_tree(tmp_path / "raw").mimic_iv
    read = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.csv.gz"))
    (root / "hosp" / "emar.csv.gz").write_bytes(b"never read")
    lines = [f"{sha256_file(root / p)}  {p}" for p in read if p != "icu/outputevents.csv.gz"]
    lines += [f"{'0' * 64}  hosp/emar.csv.gz", f"{'1' * 64}  hosp/omr.csv.gz", f"{'2' * 64}  README.txt"]
    (root / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")
    resolved = {
        name: table
        for name, spec in raw.MIMIC_IV_TABLES.items()
        if (table := raw.resolve_table(root, spec)) is not None
    }
    result = verify.check_sums(root, specs=raw.MIMIC_IV_TABLES, tables=resolved)
    assert result.problems == []
    assert result.skipped == ["README.txt", "hosp/emar.csv.gz", "hosp/omr.csv.gz"]  # wrong sums, not read
    assert len(result.checked) == len(read) - 1
    assert result.warnings == [
        f"{root / 'icu/outputevents.csv.gz'} is not listed in SHA256SUMS.txt (not checked)"
    ]

    (root / "icu" / "outputevents.csv.gz").unlink()
    (root / "SHA256SUMS.txt").write_text("\n".join([*lines, f"{'3' * 64}  icu/outputevents.csv.gz"]) + "\n")
    (root / "hosp" / "patients.csv.gz").write_bytes(gzip.compress(b"subject_id\n1\n"))
    resolved.pop("outputevents")
    result = verify.check_sums(root, specs=raw.MIMIC_IV_TABLES, tables=resolved)
    assert result.problems == [
        f"{root / 'hosp/patients.csv.gz'}: SHA-256 mismatch with SHA256SUMS.txt",
        f"{root / 'icu/outputevents.csv.gz'} listed in SHA256SUMS.txt is missing",
    ]


def test_a_parquet_copy_without_comments_is_a_clear_error(tmp_path: Path) -> None:
    header = [c for c in raw.MIMIC_IV_TABLES["labevents"].columns if c != "comments"]
    (tmp_path / "hosp").mkdir()
    pl.DataFrame(schema=dict.fromkeys(header, pl.String)).write_parquet(
        tmp_path / "hosp" / "labevents.parquet"
    )
    with pytest.raises(
        raw.MissingColumnError, match=r"missing column\(s\) comments.*convert the raw tables again"
    ):
        raw.resolve_table(tmp_path, raw.MIMIC_IV_TABLES["labevents"])


def test_comment_comparators_need_a_number_right_after_them() -> None:
    frame = pl.DataFrame(
        {
            "comments": [
                "<1.",
                ">182*.",
                "LESS THAN 1.0.",
                "greater than  70000.  REFERENCE VALUES VARY",
                "<5 .",
                "NEGATIVE <5",
                "less than detectable",
                ">=1.035",
            ]
        }
    )
    parsed = frame.select(pl.col("comments").str.extract(events._COMMENT_COMPARATOR, 2).cast(pl.Float64))
    values = parsed.to_series().to_list()
    assert values[:5] == [1.0, 182.0, 1.0, 70000.0, 5.0] and values[7] == 1.035
    assert values[5] is None and values[6] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in values)
