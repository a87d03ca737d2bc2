"""Unit tests of the build stages on five-row frames: CXR time parsing and windows, cleaning, binning, labels."""

from __future__ import annotations

import doctest
import io
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from carebench_data import cohort, cxr, download, events, labels, raw, registry
from carebench_data.cxr import (
    CxrError,
    check_leakage,
    decode_image,
    frontal_views,
    parse_study_time,
    window_candidates,
)
from carebench_data.phenotype_tables import compat_table, gem_ccs_table
from carebench_data.registry import Interval, RegistryError, load_registry, validate_against_dictionaries

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
T0 = datetime(2180, 5, 6, 9, 0, 0)


def _meta(times: list[datetime], views: list[str | None], dicoms: list[str] | None = None) -> pl.LazyFrame:
    return pl.LazyFrame(
        schema_overrides={"ViewPosition": pl.String},
        data={
            "dicom_id": dicoms or [f"d{i}" for i in range(len(times))],
            "subject_id": [1] * len(times),
            "study_id": list(range(len(times))),
            "ViewPosition": views,
            "ViewCodeSequence_CodeMeaning": ["antero-posterior"] * len(times),
            "StudyDate": [t.strftime("%Y%m%d") for t in times],
            "StudyTime": [f"{int(t.strftime('%H%M%S'))}.5" for t in times],
        },
    )


def _stays(intime: datetime = T0) -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "row": [0],
            "subject_id": [1],
            "intime": [intime],
            "prediction_time": [intime + timedelta(hours=48)],
        },
        schema={
            "row": pl.Int32,
            "subject_id": pl.Int64,
            "intime": pl.Datetime("us"),
            "prediction_time": pl.Datetime("us"),
        },
    )


def test_study_time_unpadded_floats() -> None:
    meta = pl.LazyFrame(
        {
            "StudyDate": ["21800506"] * 6,
            "StudyTime": ["80556.875", "213014.531", "95959", "5.0", "246000", "126000.1"],
        }
    )
    parsed = parse_study_time(meta).collect()["study_datetime"].to_list()
    assert parsed[:4] == [
        datetime(2180, 5, 6, 8, 5, 56),
        datetime(2180, 5, 6, 21, 30, 14),
        datetime(2180, 5, 6, 9, 59, 59),
        datetime(2180, 5, 6, 0, 0, 5),
    ]
    assert parsed[4:] == [None, None]  # HH ≥ 24, MM ≥ 60


def test_window_bounds_and_leakage_guard() -> None:
    prediction = T0 + timedelta(hours=48)
    times = [
        prediction,
        prediction + timedelta(seconds=1),
        T0 - timedelta(hours=6),
        T0 - timedelta(hours=6, seconds=1),
    ]
    images = parse_study_time(_meta(times, ["AP"] * 4)).pipe(
        frontal_views, views=("AP", "PA"), recover_view=False
    )
    at_zero = window_candidates(images, stays=_stays(), lookback_hours=0).collect()
    assert at_zero["dicom_id"].to_list() == ["d0"]  # exactly at prediction_time kept, 1 s later rejected
    at_six = window_candidates(images, stays=_stays(), lookback_hours=6).collect()
    assert at_six["dicom_id"].to_list() == ["d0", "d2"]  # exactly at intime − lookback kept
    assert at_six["candidate_rank"].to_list() == [0, 1]
    leaked = at_zero.with_columns(pl.col("study_datetime") + timedelta(seconds=1))
    with pytest.raises(CxrError, match="leakage guard"):
        check_leakage(leaked, lookback_hours=0)


def test_unpadded_times_before_ten_near_both_bounds() -> None:
    intime = datetime(2180, 5, 6, 9, 59, 59)
    times = [datetime(2180, 5, 6, 9, 59, 59), datetime(2180, 5, 8, 9, 59, 59), datetime(2180, 5, 8, 10, 0, 0)]
    images = parse_study_time(_meta(times, ["PA", "AP", "AP"])).pipe(
        frontal_views, views=("AP", "PA"), recover_view=False
    )
    kept = window_candidates(images, stays=_stays(intime), lookback_hours=0).collect()
    assert kept["dicom_id"].to_list() == ["d1", "d0"]


def test_lateral_never_displaces_frontal_and_ties_follow_view_order() -> None:
    times = [
        T0 + timedelta(hours=2),
        T0 + timedelta(hours=9),
        T0 + timedelta(hours=5),
        T0 + timedelta(hours=5),
    ]
    meta = _meta(times, ["AP", "LATERAL", "PA", "AP"], dicoms=["a", "b", "c", "d"])
    images = parse_study_time(meta).pipe(frontal_views, views=("AP", "PA"), recover_view=False)
    ranked = window_candidates(images, stays=_stays(), lookback_hours=0).collect()
    assert ranked["dicom_id"].to_list() == ["d", "c", "a"]
    null_view = _meta([T0 + timedelta(hours=1)], [None])
    assert (
        parse_study_time(null_view).pipe(frontal_views, views=("AP",), recover_view=False).collect().height
        == 0
    )
    assert parse_study_time(null_view).pipe(frontal_views, views=("AP",), recover_view=True).collect()[
        "view"
    ].to_list() == ["AP"]


def test_draft_decode_matches_full_decode_within_two_grey_levels(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:2048, 0:2500]
    pixels = (127 + 60 * np.sin(xx / 150.0) * np.cos(yy / 190.0) + 30 * (yy / 2048.0)).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels, mode="L").save(path, quality=95)
    fast = decode_image(path, size=256)
    with Image.open(path) as image:
        full = image.convert("L")
        width, height = full.size
        new_width = round(width * 256 / height)
        resized = full.resize((new_width, 256), Image.Resampling.BICUBIC)
        left = (new_width - 256) // 2
        reference = np.asarray(resized.crop((left, 0, left + 256, 256)))
    assert fast.shape == (256, 256) and fast.dtype == np.uint8
    assert np.abs(fast.astype(float) - reference).mean() < 2.0
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(OSError):
        decode_image(broken, size=256)


def test_conversions() -> None:
    frame = pl.LazyFrame(
        {
            "x": [212.0, 37.2, 40.0, 100.0, 0.97, 97.0, 50.0, 0.4, 70.0, 10.0],
            "convert": ["fahrenheit_to_celsius_unless_valid"] * 2
            + ["celsius_fix_fahrenheit"] * 2
            + ["fraction_to_percent_at_most_1"] * 2
            + ["percent_to_fraction_above_1"] * 2
            + ["inch_to_cm", "pound_to_kg"],
        }
    )
    out = events.convert_units(frame).collect()
    assert out["x"].to_list() == pytest.approx(
        [100.0, 37.2, 40.0, (100 - 32) / 1.8, 97.0, 97.0, 0.5, 0.4, 177.8, 4.53592]
    )
    assert out["convert_status"].to_list() == [
        "converted",
        "unit_fixed",
        None,
        "unit_fixed",
        "unit_fixed",
        None,
        "converted",
        None,
        "converted",
        "converted",
    ]


def test_text_encodings_censored_values_and_unparseable() -> None:
    registry = load_registry("default")
    flat = registry.sources_flat()
    by_name = {registry.features[f].name: i for i, (f, _, _) in enumerate(flat)}
    exact, prefixes = [], []
    for index, (_, _, source) in enumerate(flat):
        for text, score in source.encode or ():
            (prefixes if source.encode_match == "prefix" else exact).append((index, text, score))
    encodings = pl.DataFrame(
        exact, schema={"source": pl.Int16, "text": pl.String, "score": pl.Float64}, orient="row"
    )
    frame = pl.LazyFrame(
        {
            "source": [
                by_name["gcs_eye"],
                by_name["gcs_verbal"],
                by_name["capillary_refill"],
                by_name["capillary_refill"],
                by_name["gcs_motor"],
                by_name["heart_rate"],
                by_name["heart_rate"],
                by_name["heart_rate"],
            ],
            "encoded": [True] * 5 + [False] * 3,
            "value": [
                "None",
                " No Response-ETT ",
                "Normal <3 secs",
                "Abnormal >3 Seconds",
                "Sleeping",
                "<10",
                "ERROR",
                "88",
            ],
            "valuenum": [None, None, None, None, None, None, None, 88.0],
            "comments": [None] * 8,
        },
        schema={
            "source": pl.Int16,
            "encoded": pl.Boolean,
            "value": pl.String,
            "valuenum": pl.Float64,
            "comments": pl.String,
        },
    )
    out = (
        events.parse_values(frame.with_row_index("i"), encodings=encodings, prefixes=prefixes)
        .sort("i")
        .collect()
    )
    assert out["x"].to_list() == [1.0, 1.0, 0.0, 1.0, None, 10.0, None, 88.0]
    assert out["parse_status"].to_list() == [
        "encoded",
        "encoded",
        "encoded",
        "encoded",
        "unmatched_text",
        "censored",
        "unparseable",
        "numeric",
    ]


def test_open_and_closed_range_edges() -> None:
    frame = pl.DataFrame({"x": [0.0, 300.0, 14.0, 300.0, 375.0]})
    intervals = [
        Interval.parse("(0, 300)"),
        Interval.parse("(0, 300)"),
        Interval.parse("[14, 300)"),
        Interval.parse("[14, 300)"),
        Interval.parse("(0, 375]"),
    ]
    bounds = pl.DataFrame(
        {
            "low": [i.low for i in intervals],
            "high": [i.high for i in intervals],
            "low_closed": [i.closed in {"both", "left"} for i in intervals],
            "high_closed": [i.closed in {"both", "right"} for i in intervals],
        }
    )
    inside = pl.concat([frame, bounds], how="horizontal").select(events.in_valid_range(pl.col("x")))
    assert inside.to_series().to_list() == [False, False, True, False, True]
    with pytest.raises(RegistryError, match="invalid interval"):
        Interval.parse("0..300")


def test_last_value_tie_break_is_total() -> None:
    t = datetime(2180, 1, 1, 10, 30)
    frame = pl.LazyFrame(
        {
            "row": [0] * 5 + [1] * 2,
            "hour": [0] * 7,
            "feature": [1] * 7,
            "charttime": [t, t, t - timedelta(minutes=5), t, t, t, t],
            "priority": [1, 0, 0, 0, 0, 3, 3],
            "storetime": [t, t, t, t + timedelta(minutes=1), t + timedelta(minutes=1), t, t],
            "x": [50.0, 60.0, 99.0, 61.0, 62.0, 5.0, 6.0],
        }
    )
    out = events.keep_last_per_hour(frame).collect()
    # latest charttime; then the first-listed source; then the latest storetime; then the larger value.
    assert out["x"].to_list() == [62.0, 6.0]


def test_gcs_total_only_with_all_three_components() -> None:
    registry = load_registry("default")
    f = {name: i for i, name in enumerate(registry.names)}
    hourly = pl.DataFrame(
        {
            "row": [0, 0, 0, 0, 0],
            "hour": [0, 0, 0, 1, 1],
            "feature": [f["gcs_eye"], f["gcs_motor"], f["gcs_verbal"], f["gcs_eye"], f["gcs_motor"]],
            "x": [3.0, 5.0, 1.0, 4.0, 6.0],
        }
    )
    ehr = events.scatter_hourly(hourly, n_stays=1, registry=registry)
    assert ehr[0, 0, f["gcs_total"]] == 9.0
    assert np.isnan(ehr[0, 1, f["gcs_total"]])
    assert int((~np.isnan(ehr)).sum()) == 6


def test_urine_sum_minus_irrigant() -> None:
    frame = pl.LazyFrame(
        {
            "row": [0, 0, 0, 0, 0],
            "hour": [2, 2, 2, 3, 3],
            "feature": [46] * 5,
            "x": [100.0, 50.0, 30.0, 20.0, 40.0],
            "sign": [1.0, 1.0, -1.0, 1.0, -1.0],
        }
    )
    out = events.sum_per_hour(frame).collect()
    assert out["x"].to_list() == [120.0, -20.0]  # the negative hour is dropped and counted by clean_events


def test_registry_sets_and_fluid_check() -> None:
    default, extended = load_registry("default"), load_registry("extended")
    assert default.names[:3] == ["capillary_refill", "dbp", "fio2"] and len(default.names) == 17
    assert len(extended.names) == 47 and extended.names[:17] == default.names
    d_items = pl.DataFrame({"itemid": [220045], "label": ["Heart Rate"], "linksto": ["chartevents"]})
    d_labitems = pl.DataFrame(
        {
            "itemid": [50931, 50809, 50817, 50820],
            "label": ["Glucose"] * 4,
            "fluid": ["Blood", "Urine", "Blood", "Blood"],
        }
    )
    with pytest.raises(RegistryError) as error:
        validate_against_dictionaries(default, d_items=d_items, d_labitems=d_labitems)
    assert "50809 (glucose) has fluid 'Urine', expected 'Blood'" in str(error.value)
    assert "220051 (dbp) not in d_items" in str(error.value)
    assert "220045" not in str(error.value)


def test_mortality_modes_and_los_edges() -> None:
    pt = datetime(2180, 1, 3, 10)
    stays = pl.LazyFrame(
        {
            "prediction_time": [pt] * 5,
            "outtime": [pt + timedelta(days=2)] * 5,
            "dischtime": [pt + timedelta(days=6)] * 5,
            "t_death": [pt, pt + timedelta(days=2, minutes=1), None, None, None],
            "dod": [pt.date(), (pt + timedelta(days=2)).date(), date(2180, 1, 5), date(2180, 1, 8), None],
            "hospital_expire_flag": [1, 1, 0, 0, 1],
        }
    )
    icu = labels.mortality_labels(stays).collect()["mortality"].to_list()
    grace = labels.mortality_labels(stays, grace_hours=1).collect()["mortality"].to_list()
    hospital = labels.mortality_labels(stays, mode="hospital").collect()["mortality"].to_list()
    assert icu == [1, 0, 1, 0, 0]
    assert grace == [1, 1, 1, 0, 0]
    assert hospital == [1, 1, 1, 1, 1]
    hours = pl.LazyFrame({"los_hours": [71.999, 72.0, 167.99, 168.0, 336.0, 2400.0]})
    assert labels.los_labels(hours).collect()["los_class"].to_list() == [0, 1, 4, 5, 6, 6]


def test_mapping_modes_on_the_known_defects() -> None:
    codes = [
        (10, "J9601"),
        (10, "I2101"),
        (10, "I2510"),
        (10, "N171"),
        (10, "J90"),
        (9, "E8411"),
        (10, "E8411"),
        (10, "J96019"),
    ]
    diagnoses = pl.LazyFrame(
        {
            "hadm_id": list(range(len(codes))),
            "icd_version": [v for v, _ in codes],
            "icd_code": [c for _, c in codes],
        },
        schema={"hadm_id": pl.Int64, "icd_version": pl.Int8, "icd_code": pl.String},
    )
    stays = pl.LazyFrame({"hadm_id": list(range(len(codes)))}, schema={"hadm_id": pl.Int64})
    gem = labels.phenotype_labels(stays, mapped=labels.map_codes(diagnoses, mode="gem_ccs")).collect()
    compat = labels.phenotype_labels(
        stays, mapped=labels.map_codes(diagnoses, mode="carebench_compat")
    ).collect()
    no_parent = labels.phenotype_labels(
        stays, mapped=labels.map_codes(diagnoses, mode="gem_ccs", parent_fallback=False)
    ).collect()

    def positives(frame: pl.DataFrame, hadm: int) -> set[str]:
        row = frame.filter(pl.col("hadm_id") == hadm).row(0, named=True)
        return {k for k, v in row.items() if k != "hadm_id" and v == 1}

    assert positives(gem, 0) == {"respiratory_failure"} and positives(compat, 0) == set()
    assert positives(gem, 1) == {"acute_myocardial_infarction"} and positives(compat, 1) == set()
    assert positives(gem, 2) == {"coronary_atherosclerosis"} and positives(compat, 2) == set()
    assert positives(gem, 3) == {"acute_renal_failure"} and positives(compat, 3) == set()
    assert positives(gem, 4) == {"pleurisy_pneumothorax_collapse"} and positives(compat, 4) == set()
    assert positives(compat, 5) == positives(compat, 6)  # compat ignores the ICD version
    assert positives(gem, 7) == {"respiratory_failure"} and positives(no_parent, 7) == set()  # parent J9601


@pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="reference tables of ../shared/data are not in this checkout"
)
def test_bundled_tables_regenerate_from_the_reference_files() -> None:
    hcup = (SHARED_DATA / "hcup_ccs_2015_definitions.yaml").read_text()
    gem_text = (SHARED_DATA / "cms_2018_I10gem.txt").read_text()
    table = gem_ccs_table(gem_text=gem_text, hcup_text=hcup)
    assert table.equals(labels.gem_ccs_map().with_columns(pl.col("ccs_id").cast(pl.Int16)))
    icd9 = table.filter(pl.col("icd_version") == 9)
    assert icd9.height == 15_072 and icd9["ccs_id"].n_unique() == 283
    expected = {
        "J9601": {131},
        "I2101": {100},
        "J90": {130},
        "I480": {106},
        "E1122": {50},
        "A419": {2},
        "I2510": {101, 104},
    }
    for code, groups in expected.items():
        assert (
            set(table.filter((pl.col("icd_version") == 10) & (pl.col("icd_code") == code))["ccs_id"])
            == groups
        ), code
    for code in ("N171", "N172"):
        assert 157 in set(table.filter(pl.col("icd_code") == code)["ccs_id"])
    compat = compat_table(carebench_text=(SHARED_DATA / "carebench_icd_9_10_definitions.yaml").read_text())
    assert compat.height == 29_166 and compat["code"].n_unique() == 25_163
    assert compat.equals(
        pl.read_csv(io.BytesIO(labels._resource_bytes(labels.COMPAT_FILE)), schema=compat.schema)
    )


@pytest.mark.parametrize(
    "module", [cohort, events, labels, cxr, raw, registry, download], ids=lambda m: m.__name__
)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0
