"""Build a small synthetic tree and compare with its truth folder (data.md §13.8 A13, A16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from carebench_data.build import build_dataset
from carebench_data.config import BuildConfig
from carebench_data.labels import phenotypes
from carebench_data.synthetic import SyntheticConfig, generate_synthetic
from carebench_data.verify import verify_dataset


def _config(root: Path, out: Path, **cxr: object) -> BuildConfig:
    marker = next((root / "mimiciv").glob("*/SYNTHETIC.json"))
    return BuildConfig.from_dict(
        {
            "mimic_iv": str(marker.parent),
            "mimic_cxr": str(root / "mimic-cxr-jpg" / "2.0.0"),
            "out": str(out),
            "cxr": {"workers": 2, **cxr},
        }
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root / "raw", SyntheticConfig.tiny(seed=3))
    out = build_dataset(_config(root / "raw", root / "dataset"))
    return root / "raw", out


def _joined(out: Path, raw: Path) -> pl.DataFrame:
    truth = pl.read_parquet(raw / "_synthetic_truth" / "stays.parquet")
    built = pl.read_parquet(out / "stays.parquet").join(pl.read_parquet(out / "labels.parquet"), on="stay_id")
    return built.join(truth, on="stay_id", how="inner", suffix="_truth")


def test_cohort_labels_and_images_match_the_truth(synthetic: tuple[Path, Path]) -> None:
    raw, out = synthetic
    truth = pl.read_parquet(raw / "_synthetic_truth" / "stays.parquet")
    stays = pl.read_parquet(out / "stays.parquet")
    assert (
        stays["stay_id"].to_list() == truth.filter(pl.col("expected_in_cohort"))["stay_id"].sort().to_list()
    )
    joined = _joined(out, raw)
    assert (joined["mortality"] == joined["expected_mortality"].cast(pl.Int8)).all()
    assert (joined["los_class"] == joined["expected_los_class"].cast(pl.Int8)).all()
    for phenotype in phenotypes():
        coded = joined[f"coded_{phenotype.column}"].cast(pl.Int8)
        assert (joined[phenotype.column] == coded).all(), phenotype.column
    # A13: the builder's selection equals the expected one for every stay.
    assert (
        joined["cxr_dicom_id"].fill_null("").to_list()
        == joined["expected_cxr_dicom_id"].fill_null("").to_list()
    )
    with_cxr = joined.filter(pl.col("has_cxr"))
    assert with_cxr.height > 0
    assert np.allclose(with_cxr["cxr_hours"].to_numpy(), with_cxr["expected_cxr_hours"].to_numpy(), atol=1e-3)
    verify_dataset(out)


def test_no_post_prediction_or_pre_icu_film_is_selected(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    raw, out = synthetic
    findings = pl.read_parquet(raw / "_synthetic_truth" / "cxr_findings.parquet").select("dicom_id", "kind")
    stays = pl.read_parquet(out / "stays.parquet").filter(pl.col("has_cxr"))
    kinds = stays.join(findings, left_on="cxr_dicom_id", right_on="dicom_id", how="left")["kind"]
    assert set(kinds.to_list()) <= {"icu_first", "icu_daily"}
    assert (stays["cxr_hours"] >= 0).all() and (stays["cxr_hours"] <= 48).all()
    # With a 48 h lookback the pre-ICU ED studies become candidates; none lies after prediction_time.
    wide = build_dataset(_config(raw, tmp_path / "lookback", lookback_hours=48))
    wide_stays = pl.read_parquet(wide / "stays.parquet").filter(pl.col("has_cxr"))
    wide_kinds = wide_stays.join(findings, left_on="cxr_dicom_id", right_on="dicom_id", how="left")
    assert wide_kinds.filter(pl.col("kind") == "ed_pre_icu").height > 0
    assert wide_stays.height > stays.height
    assert (wide_stays["cxr_hours"] >= -48).all() and (wide_stays["cxr_hours"] <= 48).all()


def test_build_ignores_the_truth_folder(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    raw, out = synthetic
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy, ignore=shutil.ignore_patterns("_synthetic_truth"))
    isolated = build_dataset(_config(copy, tmp_path / "dataset"))
    first = json.loads((out / "manifest.json").read_text())
    second = json.loads((isolated / "manifest.json").read_text())
    assert first["files"] == second["files"] and first["content_hash"] == second["content_hash"]
    assert second["source"]["kind"] == "synthetic"


def test_censored_results_and_the_intime_minute_of_real_mimic(tmp_path: Path) -> None:
    """The generator writes real MIMIC-IV's quirks; the build reads them as it reads the real demo."""
    generate_synthetic(tmp_path / "raw", SyntheticConfig.tiny(seed=2))
    root = next((tmp_path / "raw" / "mimiciv").glob("*/SYNTHETIC.json")).parent
    labs = pl.read_csv(root / "hosp" / "labevents.csv.gz", infer_schema=False).filter(
        pl.col("itemid") == "51003"
    )
    censored = labs.filter(pl.col("comments").str.starts_with("<0.01."))
    assert censored.height > 0
    assert censored["value"].null_count() == censored["valuenum"].null_count() == censored.height
    assert (labs.filter(pl.col("valuenum").is_not_null())["valuenum"].cast(pl.Float64) >= 0.01).all()
    icustays = pl.read_csv(root / "icu" / "icustays.csv.gz", infer_schema=False)
    assert (icustays["intime"].str.slice(17, 2) != "00").any()  # intime has seconds, charttime minutes

    out = build_dataset(
        BuildConfig.from_dict(
            {
                "mimic_iv": str(root),
                "out": str(tmp_path / "dataset"),
                "features": {"registry": "extended"},
                "cxr": {"enabled": False},
            }
        )
    )
    manifest = json.loads((out / "manifest.json").read_text())
    troponin = manifest["counts"]["features"]["troponin_t"]
    assert troponin["censored"] >= 1 and troponin["unparseable"] == 0
    assert troponin["observed_cells"] == troponin["rows_in_window"] - troponin["duplicates"]
    assert manifest["counts"]["events"]["chartevents"]["intime_minute_kept"] > 0
