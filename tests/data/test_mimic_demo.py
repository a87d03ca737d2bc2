"""Real data: the open MIMIC-IV Clinical Database Demo 2.2 (100 patients, 140 ICU stays), EHR only.

Builds the demo with the default and the extended feature sets and checks the cohort, the labels,
`verify`, and the four rules real data needed: censored troponin T kept from `comments`, height
and admission weight charted in the minute of intime, ICD-10 codes split after the 2018 GEM mapped
through their child codes, and the demo's own fingerprint and expectations. Values that the
builder produces are also derived here independently from the raw files.

The demo copy sits in the team's shared data folder next to the checkout; without it these tests
skip. Its chartevents is a faithful reconstruction (numeric values only), the other tables are the
release's bytes.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_data.build import build_dataset
from carebench_data.config import BuildConfig
from carebench_data.download import demo_files
from carebench_data.manifest import sha256_file
from carebench_data.registry import load_registry
from carebench_data.verify import verify_dataset, verify_raw

DEMO = Path(__file__).resolve().parents[3] / "shared" / "data" / "mimic-iv-demo-2.2"
pytestmark = pytest.mark.skipif(
    not DEMO.is_dir(), reason="the MIMIC-IV demo (shared data folder next to the checkout) is absent"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo")
    return {
        registry: build_dataset(
            BuildConfig.from_dict(
                {
                    "mimic_iv": str(DEMO),
                    "out": str(root / registry),
                    "features": {"registry": registry},
                    "cxr": {"enabled": False},
                }
            )
        )
        for registry in ("default", "extended")
    }


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_raw_tree_is_fingerprinted_and_counted_as_the_demo() -> None:
    report = verify_raw(DEMO, "2.2", counts=True)
    assert report.info["fingerprint"]["version"] == "2.2-demo"
    assert report.problems == [] and "row counts" in report.checked


def test_build_verifies_without_warnings(built: dict[str, Path]) -> None:
    for path in built.values():
        report = verify_dataset(path)
        assert report.warnings == [] and report.info["stays"] == 74
        manifest = _manifest(path)
        assert manifest["source"]["mimic_iv_version"] == "2.2"
        assert manifest["source"]["fingerprint"]["detected"] == "2.2-demo"
        assert manifest["warnings"] == []


def test_cohort_steps(built: dict[str, Path]) -> None:
    steps = [(s["step"], s["stays"], s["subjects"]) for s in _manifest(built["default"])["counts"]["cohort"]]
    assert steps == [
        ("icustays", 140, 100),
        ("valid_times", 140, 100),
        ("linked", 140, 100),
        ("adult", 140, 100),
        ("min_los", 74, 56),
        ("single_careunit", 74, 56),
        ("one_stay_per_admission", 74, 56),
        ("first_stay_per_subject", 74, 56),
        ("alive_at_prediction", 74, 56),
        ("has_diagnoses", 74, 56),
        ("has_ehr", 74, 56),
        ("cohort", 74, 56),
    ]


def test_label_prevalence(built: dict[str, Path]) -> None:
    counts = _manifest(built["default"])["counts"]["labels"]
    assert counts["mortality_positive"] == 9
    assert counts["los_class"] == {
        "2-3d": 19,
        "3-4d": 14,
        "4-5d": 10,
        "5-6d": 6,
        "6-7d": 5,
        "7-14d": 15,
        "14+d": 5,
    }
    assert counts["phenotype"]["positives"]["gem_ccs"] == {
        "acute_renal_failure": 34,
        "acute_cerebrovascular_disease": 4,
        "acute_myocardial_infarction": 9,
        "cardiac_dysrhythmias": 32,
        "chronic_kidney_disease": 21,
        "copd_bronchiectasis": 15,
        "complications_of_care": 26,
        "conduction_disorders": 9,
        "chf_nonhypertensive": 24,
        "coronary_atherosclerosis": 25,
        "diabetes_with_complications": 12,
        "diabetes_without_complication": 24,
        "lipid_disorders": 37,  # 35 before E780 mapped through its child codes
        "essential_hypertension": 28,
        "fluid_electrolyte_disorders": 33,
        "gi_hemorrhage": 8,
        "hypertension_with_complications": 30,
        "other_liver_diseases": 23,
        "other_lower_respiratory": 11,
        "other_upper_respiratory": 9,
        "pleurisy_pneumothorax_collapse": 11,
        "pneumonia": 15,
        "respiratory_failure": 39,
        "septicemia": 22,
        "shock": 22,
    }
    labels = pl.read_parquet(built["default"] / "labels.parquet")
    assert int(labels["mortality"].sum()) == 9 and int(labels["lipid_disorders"].sum()) == 37


def test_split_icd10_codes_map_through_their_children(built: dict[str, Path]) -> None:
    counts = _manifest(built["default"])["counts"]["labels"]
    mapping = counts["mapping"]
    assert mapping["codes"]["child_fallback"] == 6 and mapping["diagnoses"]["child_fallback"] == 10
    assert {entry["icd_code"]: entry["ccs_ids"] for entry in mapping["child_fallback_codes"]} == {
        "E780": [53],
        "A047": [135],
        "I272": [103],
        "H540": [89],
        "K5660": [145],
        "T8359XA": [237],
    }
    assert mapping["parent_fallback_codes"] == [] and mapping["codes"]["unmapped"] == 1
    assert [(u["icd_code"], u["count"]) for u in counts["icd_unmapped"]] == [("T383X6A", 1)]
    labels = pl.read_parquet(built["default"] / "labels.parquet")
    pure_hypercholesterolemia = labels.filter(pl.col("stay_id").is_in([31338022, 34107647]))
    assert pure_hypercholesterolemia["lipid_disorders"].to_list() == [1, 1]


def _stays(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path / "stays.parquet").with_row_index("row")


def _in_window(events: pl.DataFrame) -> pl.DataFrame:
    """Events of a stay in its window, minute resolution at both ends (derived here on its own)."""
    start = pl.col("intime").dt.truncate("1m")
    end = (pl.col("intime") + timedelta(hours=48)).dt.truncate("1m")
    hour = ((pl.col("charttime") - pl.col("intime")).dt.total_seconds() // 3600).clip(lower_bound=0)
    return events.filter((pl.col("charttime") >= start) & (pl.col("charttime") < end)).with_columns(
        hour=hour.cast(pl.Int64)
    )


def test_height_and_admission_weight_charted_in_the_intime_minute(built: dict[str, Path]) -> None:
    manifest = _manifest(built["default"])
    chart = manifest["counts"]["events"]["chartevents"]
    assert chart["intime_minute_kept"] == 135 and chart["prediction_minute_dropped"] == 3
    features = manifest["counts"]["features"]
    assert (features["height"]["intime_minute"], features["height"]["stays_observed"]) == (56, 28)  # was 0
    assert (features["weight"]["intime_minute"], features["weight"]["stays_observed"]) == (38, 71)  # was 69

    stays = _stays(built["default"])
    height_cm = pl.read_csv(
        DEMO / "icu" / "chartevents.csv.gz",
        columns=["stay_id", "charttime", "itemid", "valuenum"],
        schema_overrides={"charttime": pl.Datetime("us"), "itemid": pl.Int32, "valuenum": pl.Float64},
    ).filter(pl.col("itemid") == 226730)
    expected = (
        _in_window(height_cm.join(stays.select("stay_id", "row", "intime"), on="stay_id"))
        .sort("charttime")
        .group_by("row", "hour")
        .agg(pl.col("valuenum").last())
    )
    ehr = np.load(built["default"] / "ehr.npy")
    column = ehr[:, :, load_registry("default").names.index("height")]
    observed = np.argwhere(~np.isnan(column))
    assert sorted(map(tuple, observed.tolist())) == sorted(expected.select("row", "hour").rows())
    assert np.array_equal(
        column[expected["row"].to_numpy(), expected["hour"].to_numpy()],
        expected["valuenum"].to_numpy().astype(np.float32),
    )
    assert set(expected["hour"].to_list()) == {0}  # charted at ICU admission


def test_censored_troponin_is_kept(built: dict[str, Path]) -> None:
    troponin = _manifest(built["extended"])["counts"]["features"]["troponin_t"]
    assert (troponin["rows_in_window"], troponin["censored"], troponin["unparseable"]) == (69, 22, 0)
    assert (troponin["observed_cells"], troponin["stays_observed"]) == (69, 32)  # was 47 cells in 18 stays

    labs = pl.read_csv(
        DEMO / "hosp" / "labevents.csv.gz",
        columns=["subject_id", "itemid", "charttime", "storetime", "valuenum", "value", "comments"],
        schema_overrides={
            "charttime": pl.Datetime("us"),
            "storetime": pl.Datetime("us"),
            "valuenum": pl.Float64,
            "value": pl.String,
            "comments": pl.String,
        },
    ).filter(pl.col("itemid") == 51003)
    # Real results beyond the assay range: no value, the censored value leads the comment.
    from_comment = pl.col("comments").str.extract(r"^\s*(?:<|>|LESS THAN|GREATER THAN)\s*([0-9.]*[0-9])", 1)
    labs = labs.with_columns(
        x=pl.when(pl.col("valuenum").is_not_null())
        .then(pl.col("valuenum"))
        .when(pl.col("value").is_null())
        .then(from_comment.cast(pl.Float64))
    ).filter(pl.col("x").is_between(0, 50))
    stays = _stays(built["extended"])
    expected = (
        _in_window(labs.join(stays.select("subject_id", "row", "intime"), on="subject_id"))
        .sort("charttime", "storetime", "x")
        .group_by("row", "hour")
        .agg(pl.col("x").last(), pl.col("valuenum").is_null().last().alias("censored"))
    )
    ehr = np.load(built["extended"] / "ehr.npy")
    column = ehr[:, :, load_registry("extended").names.index("troponin_t")]
    assert int((~np.isnan(column)).sum()) == expected.height == 69
    assert np.array_equal(
        column[expected["row"].to_numpy(), expected["hour"].to_numpy()],
        expected["x"].to_numpy().astype(np.float32),
    )
    censored = expected.filter(pl.col("censored"))
    assert censored.height == 22 and set(censored["x"].to_list()) == {0.01}  # "<0.01.  cTropnT > 0.10 ..."


def _release_copy(target: Path, *, corrupt: str | None = None) -> Path:
    """A local copy of the demo laid out as the PhysioNet release, with its own SHA256SUMS.txt."""
    for relpath in [*demo_files(), "LICENSE.txt", "README.txt"]:
        (target / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO / relpath, target / relpath)
    (target / "hosp" / "emar.csv.gz").write_bytes(b"a release table carebench never reads")
    listed = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    (target / "SHA256SUMS.txt").write_text("".join(f"{sha256_file(target / p)} {p}\n" for p in listed))
    if corrupt is not None:
        (target / corrupt).write_bytes((target / corrupt).read_bytes()[:-10] + b"0123456789")
    return target


def test_demo_command_fetches_a_local_release_copy_and_builds_it(tmp_path: Path) -> None:
    served = _release_copy(tmp_path / "physionet")
    runner = CliRunner()
    dest, out = tmp_path / "mimic-iv-demo", tmp_path / "dataset"
    arguments = ["data", "demo", "--mimic-iv-demo", str(dest), "--out", str(out)]

    refused = runner.invoke(app, arguments)  # the download is explicit, never automatic
    assert refused.exit_code == 2 and "--download" in refused.output and not dest.exists()

    result = runner.invoke(app, [*arguments, "--download", "--base-url", served.as_uri()])
    assert result.exit_code == 0, result.output
    assert "SHA-256 sums checked" in result.output and "cohort" in result.output
    assert not (dest / "hosp" / "emar.csv.gz").exists()  # only what carebench reads is fetched
    assert verify_dataset(out).info["stays"] == 74
    checked = verify_raw(dest, counts=True, checksums=True)
    assert checked.info["fingerprint"]["version"] == "2.2-demo"
    skipped = [Path(p).name for p in checked.info["checksums"]["skipped"]]
    assert skipped == ["LICENSE.txt", "README.txt", "emar.csv.gz"]  # listed, never read: not "missing"
    assert len(checked.info["checksums"]["checked"]) == len(demo_files())

    again = runner.invoke(
        app, ["data", "demo", "--mimic-iv-demo", str(dest), "--out", str(tmp_path / "twice")]
    )
    assert again.exit_code == 0, again.output  # an existing copy is built without any download


def test_demo_command_rejects_a_corrupt_download(tmp_path: Path) -> None:
    served = _release_copy(tmp_path / "physionet", corrupt="hosp/labevents.csv.gz")
    dest = tmp_path / "mimic-iv-demo"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "demo",
            "--mimic-iv-demo",
            str(dest),
            "--out",
            str(tmp_path / "dataset"),
            "--download",
            "--base-url",
            served.as_uri(),
        ],
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hosp/labevents.csv.gz: SHA-256" in errors[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["physionet"]  # nothing half-written
