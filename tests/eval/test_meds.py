"""MEDS predictions (meds-evaluation's prediction files) read, validated, scored and written."""

from __future__ import annotations

import datetime as dt
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import carebench_eval as ce
from carebench_eval import meds as meds_io

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("meds") is None,
    reason="MEDS tests need the meds package: pip install 'carebench-eval[meds]'",
)


def meds_predictions(n_subjects: int = 60, seed: int = 0) -> pl.DataFrame:
    """Binary MEDS predictions: 1-4 prediction times per subject, float32 scores with ties, planted signal."""
    rng = np.random.default_rng(seed)
    rows = []
    for subject in range(1, n_subjects + 1):
        frailty = rng.standard_normal()
        for visit in range(int(rng.integers(1, 5))):
            y = bool(rng.random() < 1 / (1 + np.exp(-(frailty - 0.8))))
            score = round(
                float(np.clip(0.35 + 0.25 * y + 0.1 * frailty + 0.2 * rng.standard_normal(), 0, 1)), 2
            )
            rows.append(
                {
                    "subject_id": 1000 + subject,
                    "prediction_time": dt.datetime(2180, 1, 1) + dt.timedelta(days=40 * visit, hours=subject),
                    "boolean_value": y,
                    "predicted_boolean_value": bool(score >= 0.5),
                    "predicted_boolean_probability": score,  # two decimals: ties on purpose
                }
            )
    return pl.DataFrame(rows).with_columns(pl.col("predicted_boolean_probability").cast(pl.Float32))


def test_columns_are_recognized() -> None:
    frame = meds_predictions(5)
    assert meds_io.is_meds_predictions(frame.columns)
    assert meds_io.is_meds_predictions(frame.drop("predicted_boolean_value").columns)
    assert not meds_io.is_meds_predictions(
        frame.drop("predicted_boolean_value", "predicted_boolean_probability").columns
    )
    assert not meds_io.is_meds_predictions([*frame.columns, "y_score"])  # long format wins
    assert meds_io.task_name_of("mortality.parquet") == "mortality"
    assert meds_io.task_name_of("chf.meds.csv.gz") == "chf"


def test_file_becomes_long_predictions_with_subject_clusters(tmp_path: Path) -> None:
    frame = meds_predictions()
    path = tmp_path / "mortality.parquet"
    frame.write_parquet(path)
    preds = ce.read_predictions(path)
    assert preds.height == frame.height
    assert set(preds["task"].unique()) == {"mortality"} == set(preds["target"].unique())
    assert preds["subject_id"].to_list() == [str(s) for s in frame["subject_id"]]
    assert preds["y_true"].to_list() == frame["boolean_value"].cast(pl.Int8).to_list()
    assert np.array_equal(preds["y_score"].to_numpy(), frame["predicted_boolean_probability"].to_numpy())
    first = frame.row(0, named=True)
    assert (
        preds["sample_id"][0] == f"{first['subject_id']}@{first['prediction_time']:%Y-%m-%dT%H:%M:%S}.000000"
    )

    # subject_id is the bootstrap cluster: the same scores as long predictions built by hand with it,
    # and other intervals when every row is its own cluster.
    by_hand = ce.from_arrays(
        frame["boolean_value"].to_numpy(),
        frame["predicted_boolean_probability"].cast(pl.Float64).to_numpy(),
        task="mortality",
        kind="binary",
        targets=["mortality"],
        sample_id=preds["sample_id"].to_numpy(),
        subject_id=frame["subject_id"].to_numpy(),
    )
    scored = ce.score(preds, n_boot=200, random_state=1).filter(pl.col("metric") == "auroc_score")
    expected = ce.score(by_hand, n_boot=200, random_state=1).filter(pl.col("metric") == "auroc_score")
    assert scored.select("value", "ci_low", "ci_high").equals(expected.select("value", "ci_low", "ci_high"))
    unclustered = ce.score(by_hand.drop("subject_id"), n_boot=200, random_state=1)
    row = unclustered.filter(pl.col("metric") == "auroc_score")
    assert row["value"][0] == scored["value"][0]
    assert (row["ci_low"][0], row["ci_high"][0]) != (scored["ci_low"][0], scored["ci_high"][0])


def test_auroc_equals_meds_evaluations_own(tmp_path: Path) -> None:
    evaluate = pytest.importorskip(
        "meds_evaluation.evaluate", reason="the oracle is meds-evaluation itself: pip install meds-evaluation"
    )
    frame = meds_predictions(n_subjects=120, seed=4)
    path = tmp_path / "readmission.parquet"
    frame.write_parquet(path)
    theirs = evaluate.evaluate_binary_classification(pl.read_parquet(path))["samples_equally_weighted"]
    ours = ce.score(ce.read_predictions(path), n_boot=0)
    auroc = ours.filter(pl.col("metric") == "auroc_score")["value"][0]
    assert auroc == pytest.approx(theirs["roc_auc_score"], abs=1e-12)
    brier = ours.filter(pl.col("metric") == "brier_loss")["value"][0]
    assert brier == pytest.approx(theirs["brier_score"], abs=1e-7)  # float32 scores, summed in float64


def test_module_command_scores_a_meds_file(tmp_path: Path) -> None:
    path = tmp_path / "mortality.parquet"
    meds_predictions().write_parquet(path)
    out = tmp_path / "scores.csv"
    subprocess.run(
        [sys.executable, "-m", "carebench_eval", "score", str(path), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    scores = pl.read_csv(out)
    auroc = scores.filter(pl.col("metric") == "auroc_score")
    assert auroc["task"].to_list() == ["mortality"] and auroc["ci_low"][0] < auroc["value"][0]


def test_csv_meds_file(tmp_path: Path) -> None:
    frame = meds_predictions(10)
    path = tmp_path / "mortality.csv"
    frame.write_csv(path)
    preds = ce.read_predictions(path)
    assert preds.height == frame.height
    assert preds["sample_id"].to_list() == ce.read_predictions(frame)["sample_id"].to_list()


def test_frame_input_and_explicit_names() -> None:
    frame = meds_predictions(8)
    assert set(ce.read_predictions(frame)["task"].unique()) == {meds_io.FRAME_TASK}
    long = meds_io.from_meds_predictions(frame, task="icu_mortality", model="gbm", setting="held_out")
    checked = ce.read_predictions(long)
    assert set(checked["model"].unique()) == {"gbm"} and set(checked["setting"].unique()) == {"held_out"}


@pytest.mark.parametrize(
    ("change", "code", "fragment"),
    [
        (lambda f: f.drop("predicted_boolean_probability"), "M003", "no predicted_boolean_probability"),
        (lambda f: f.with_columns(model=pl.lit("gbm")), "M002", "Disallowed extra columns: model"),
        (
            lambda f: f.with_columns(
                boolean_value=pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise(True)
            ),
            "M002",
            "should have no nulls but do: boolean_value",
        ),
        (
            lambda f: f.with_columns(predicted_boolean_probability=pl.lit(None, dtype=pl.Float32)),
            "M003",
            "no predicted_boolean_probability values",
        ),
        (
            lambda f: f.drop("predicted_boolean_value").with_columns(
                predicted_boolean_probability=pl.lit(None, dtype=pl.Float32)
            ),
            "M002",
            "predicted_boolean_probability hold only nulls",
        ),
    ],
)
def test_invalid_meds_files_fail_with_one_line(tmp_path: Path, change, code: str, fragment: str) -> None:
    path = tmp_path / "mortality.parquet"
    change(meds_predictions(6)).write_parquet(path)
    with pytest.raises(ce.PredictionsError) as caught:
        ce.read_predictions(path)
    assert caught.value.code == code
    message = str(caught.value)
    assert fragment in message and "mortality.parquet" in message and "\n" not in message


def test_probabilities_outside_unit_interval_are_the_contracts_p005(tmp_path: Path) -> None:
    path = tmp_path / "mortality.parquet"
    meds_predictions(6).with_columns(pl.col("predicted_boolean_probability") * 3).write_parquet(path)
    with pytest.raises(ce.PredictionsError) as caught:
        ce.read_predictions(path)
    assert caught.value.code == "P005"


def test_to_meds_predictions_round_trip_and_schema() -> None:
    from meds import LabelSchema

    frame = meds_predictions(30)
    long = ce.read_predictions(frame)
    times = long.select("sample_id", prediction_time=frame["prediction_time"])
    out = meds_io.to_meds_predictions(long.reverse(), times)
    assert out.schema == pl.Schema(
        {
            "subject_id": pl.Int64,
            "prediction_time": pl.Datetime("us"),
            "boolean_value": pl.Boolean,
            "predicted_boolean_value": pl.Boolean,
            "predicted_boolean_probability": pl.Float32,
        }
    )
    assert out.equals(frame.sort("subject_id", "prediction_time"))
    # The label columns satisfy the MEDS label schema as they are, and the whole table the prediction schema.
    LabelSchema.validate(out.select("subject_id", "prediction_time", "boolean_value").to_arrow())
    meds_io.meds_prediction_schema().validate(out.to_arrow())


def test_to_meds_predictions_rejects_what_meds_cannot_hold() -> None:
    frame = meds_predictions(5)
    long = ce.read_predictions(frame)
    times = long.select("sample_id", prediction_time=frame["prediction_time"])
    with pytest.raises(ValueError, match="integer ids"):
        meds_io.to_meds_predictions(long.with_columns(subject_id=pl.lit("p-1")), times)
    with pytest.raises(ValueError, match="no prediction_time"):
        meds_io.to_meds_predictions(long, times.head(2))
    with pytest.raises(ValueError, match="sample_id repeats"):
        meds_io.to_meds_predictions(pl.concat([long, long]), times)
