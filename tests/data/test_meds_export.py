"""`carebench data export-meds`: a dataset as MEDS, checked with the meds schemas and against the arrays."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_data.build import build_dataset
from carebench_data.config import BuildConfig
from carebench_data.meds import MedsExportError, export_meds, validate_meds
from carebench_data.splits import split_of
from carebench_data.testing import write_tiny_dataset

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("meds") is None,
    reason="the MEDS export needs the meds package: pip install 'carebench-data[meds]'",
)
DEMO = Path(__file__).resolve().parents[3] / "shared" / "data" / "mimic-iv-demo-2.2"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(
        tmp_path_factory.mktemp("meds") / "dataset", n_stays=60, paired_fraction=0.4, seed=5
    )


@pytest.fixture(scope="module")
def exported(dataset: Path) -> Path:
    return export_meds(dataset, dataset.parent / "meds", fold=1)


def read_events(root: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(path) for path in sorted((root / "data").rglob("*.parquet"))])


def test_every_file_passes_the_meds_schemas(exported: Path) -> None:
    """Checked here with the meds package directly, independently of the exporter's own validation."""
    import meds
    import pyarrow.parquet as pq

    shards = sorted((exported / "data").rglob("*.parquet"))
    assert {path.parent.name for path in shards} <= {meds.train_split, meds.tuning_split, meds.held_out_split}
    for path in shards:
        meds.DataSchema.validate(pq.read_table(path))
    labels = sorted((exported / "labels").rglob("*.parquet"))
    assert len(labels) == 1 + 1 + 25  # mortality, los, one file per phenotype
    for path in labels:
        meds.LabelSchema.validate(pq.read_table(path))
    meds.SubjectSplitSchema.validate(pq.read_table(exported / meds.subject_splits_filepath))
    meds.CodeMetadataSchema.validate(pq.read_table(exported / meds.code_metadata_filepath))
    metadata = json.loads((exported / meds.dataset_metadata_filepath).read_text())
    meds.DatasetMetadataSchema.validate(metadata)
    assert metadata["additional_value_modality_columns"] == ["image_path"]
    assert metadata["raw_source_id_columns"] == ["stay_id"]
    counts = validate_meds(exported)
    assert counts["labels"] == 27 and counts["events"] == read_events(exported).height


def test_ehr_events_are_the_hourly_array(dataset: Path, exported: Path) -> None:
    stays = pl.read_parquet(dataset / "stays.parquet").with_row_index("row")
    ehr = np.load(dataset / "ehr.npy")
    names = [feature["name"] for feature in json.loads((dataset / "features.json").read_text())["features"]]
    events = read_events(exported).filter(pl.col("code").str.starts_with("EHR//"))
    assert events.height == int((~np.isnan(ehr)).sum())
    located = events.join(stays.select("stay_id", "row", "intime"), on="stay_id").with_columns(
        hour=((pl.col("time") - pl.col("intime")).dt.total_minutes() // 60 - 1).cast(pl.Int64),
        feature=pl.col("code").str.strip_prefix("EHR//").replace_strict(names, list(range(len(names)))),
    )
    # Stamped at the end of the hour bin: a whole number of hours after intime, 1..48.
    assert ((located["time"] - located["intime"]).dt.total_microseconds() % 3_600_000_000 == 0).all()
    assert located["hour"].min() >= 0 and located["hour"].max() <= 47
    expected = ehr[located["row"].to_numpy(), located["hour"].to_numpy(), located["feature"].to_numpy()]
    assert np.array_equal(located["numeric_value"].to_numpy(), expected)


def test_labels_splits_and_prediction_time(dataset: Path, exported: Path) -> None:
    stays = pl.read_parquet(dataset / "stays.parquet")
    labels = pl.read_parquet(dataset / "labels.parquet").join(stays, on="stay_id")
    assert (labels["prediction_time"] == labels["intime"] + dt.timedelta(hours=48)).all()
    key = ["subject_id", "prediction_time"]
    mortality = pl.read_parquet(exported / "labels" / "mortality.parquet").join(labels, on=key)
    assert mortality.height == stays.height
    assert (mortality["boolean_value"] == (mortality["mortality"] == 1)).all()
    los = pl.read_parquet(exported / "labels" / "los.parquet").join(labels, on=key)
    assert los.height == stays.height and (los["integer_value"] == los["los_class"]).all()
    chf = pl.read_parquet(exported / "labels" / "phenotype" / "chf_nonhypertensive.parquet").join(
        labels, on=key
    )
    assert (chf["boolean_value"] == (chf["chf_nonhypertensive"] == 1)).all()
    notes = json.loads((exported / "metadata" / "carebench.json").read_text())
    assert notes["tasks"]["los"]["classes"][0] == "2-3d" and notes["fold"] == 1

    splits = pl.read_parquet(exported / "metadata" / "subject_splits.parquet")
    subjects = stays.unique("subject_id").sort("subject_id")
    expected = split_of(subjects["subject_id"].to_numpy(), subjects["fold_part"].to_numpy(), fold=1)
    mapping = {"train": "train", "val": "tuning", "test": "held_out"}
    assert dict(splits.iter_rows()) == {
        s: mapping[e] for s, e in zip(subjects["subject_id"].to_list(), expected, strict=True)
    }
    for split in ("train", "tuning", "held_out"):
        shard = pl.read_parquet(exported / "data" / split / "0.parquet")
        assert set(shard["subject_id"].unique()) == set(splits.filter(pl.col("split") == split)["subject_id"])


def test_no_event_after_the_prediction_time(dataset: Path, exported: Path) -> None:
    stays = pl.read_parquet(dataset / "stays.parquet").select("stay_id", "prediction_time")
    timed = read_events(exported).filter(pl.col("time").is_not_null()).join(stays, on="stay_id")
    assert timed.height > 0 and (timed["time"] <= timed["prediction_time"]).all()


def test_cxr_events_point_at_the_images(dataset: Path, exported: Path) -> None:
    stays = pl.read_parquet(dataset / "stays.parquet")
    images = np.load(dataset / "cxr.npy")
    cxr = read_events(exported).filter(pl.col("code") == "CXR").join(stays, on="stay_id")
    assert cxr.height == int(stays["has_cxr"].sum()) > 0
    for row in cxr.iter_rows(named=True):
        pixels = np.asarray(Image.open(io.BytesIO((exported / row["image_path"]).read_bytes())))
        assert np.array_equal(pixels, images[row["cxr_index"]])
        offset = (row["time"] - row["intime"]).total_seconds() / 3600
        assert offset == pytest.approx(row["cxr_hours"], abs=1 / 3600)
    others = read_events(exported).filter(pl.col("code") != "CXR")
    assert others["image_path"].null_count() == others.height


def test_existing_output_needs_overwrite_and_a_failure_leaves_nothing(dataset: Path, exported: Path) -> None:
    with pytest.raises(MedsExportError, match="already exists; pass --overwrite"):
        export_meds(dataset, exported)
    with pytest.raises(MedsExportError, match=r"fold must lie in 0\.\.4"):
        export_meds(dataset, dataset.parent / "other", fold=7)
    assert not (dataset.parent / "other").exists()


def test_output_failing_validation_is_never_renamed_into_place(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import carebench_data.meds as exporter

    def reject(root: Path) -> dict[str, int]:
        raise MedsExportError(f"{root}: rejected")

    monkeypatch.setattr(exporter, "validate_meds", reject)
    with pytest.raises(MedsExportError, match="rejected"):
        export_meds(dataset, tmp_path / "meds")
    assert list(tmp_path.iterdir()) == []


def test_without_the_meds_package(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "meds", None)
    with pytest.raises(MedsExportError, match=r"pip install 'carebench-data\[meds\]'"):
        export_meds(dataset, tmp_path / "meds")


def test_cli_writes_and_reports(dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-meds"
    result = runner.invoke(app, ["data", "export-meds", str(dataset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote MEDS to {out}: " in " ".join(result.output.split())
    assert "validated with the meds schemas" in result.output
    again = runner.invoke(app, ["data", "export-meds", str(dataset), "--out", str(out)])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.output
    missing = runner.invoke(
        app, ["data", "export-meds", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]
    )
    assert missing.exit_code == 2 and "manifest not found" in missing.output


@pytest.mark.skipif(
    not DEMO.is_dir(), reason="the MIMIC-IV demo (shared data folder next to the checkout) is absent"
)
def test_the_mimic_iv_demo_cohort_exports_to_valid_meds(tmp_path: Path) -> None:
    """Real data: the open MIMIC-IV demo built by the real builder (EHR only), exported and validated."""
    import meds
    import pyarrow.parquet as pq

    built = build_dataset(
        BuildConfig.from_dict(
            {"mimic_iv": str(DEMO), "out": str(tmp_path / "demo"), "cxr": {"enabled": False}}
        )
    )
    root = export_meds(built, tmp_path / "demo-meds")
    for path in sorted((root / "data").rglob("*.parquet")):
        meds.DataSchema.validate(pq.read_table(path))
    for path in sorted((root / "labels").rglob("*.parquet")):
        meds.LabelSchema.validate(pq.read_table(path))
    meds.SubjectSplitSchema.validate(pq.read_table(root / meds.subject_splits_filepath))
    meds.CodeMetadataSchema.validate(pq.read_table(root / meds.code_metadata_filepath))
    meds.DatasetMetadataSchema.validate(json.loads((root / meds.dataset_metadata_filepath).read_text()))
    metadata = json.loads((root / meds.dataset_metadata_filepath).read_text())
    assert metadata["license"].startswith("Open Data Commons Open Database License")
    stays = pl.read_parquet(built / "stays.parquet")
    mortality = pl.read_parquet(root / "labels" / "mortality.parquet")
    assert mortality.height == stays.height == 74
    assert not (root / "images").exists()  # EHR only: no CXR events, no images
    assert read_events(root).filter(pl.col("code") == "CXR").height == 0
    assert validate_meds(root)["subjects"] == stays["subject_id"].n_unique()
