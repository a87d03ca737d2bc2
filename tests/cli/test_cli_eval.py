"""`carebench eval` on the bundled example predictions (the README quick start)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import carebench_eval as ce
from carebench_cli.main import app

runner = CliRunner()


def test_example_file_ships_with_the_package() -> None:
    preds = ce.read_predictions(ce.example_predictions_path())
    assert set(preds["task"].unique()) == {"mortality", "phenotype", "los"}
    assert set(preds["model"].unique()) == {"lstm", "medfuse"}
    assert preds.filter(pl.col("task") == "mortality").height == 400
    assert {"subject_id", "sex", "race", "age_group", "has_cxr"} <= set(preds.columns)


def test_table_output() -> None:
    result = runner.invoke(
        app, ["eval", str(ce.example_predictions_path()), "--bootstrap", "20"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and "medfuse" in result.output
    assert "rows shown" in result.output


def test_table_fits_an_80_column_terminal() -> None:
    result = runner.invoke(
        app,
        [
            "eval",
            str(ce.example_predictions_path()),
            "--bootstrap",
            "20",
            "--by",
            "sex",
            "--compare",
            "medfuse",
            "lstm",
        ],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.output
    # Short metric names, keys shared by every row in the caption, whole "value [CI]" cells.
    assert "AUROC" in result.output and "auroc_score" not in result.output
    assert any(line.strip().startswith("seed=0") for line in lines)
    assert re.search(r"medfuse +mortality +AUROC +0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", result.output)
    assert "Fairness by sex: mortality" in result.output and "Comparisons" in result.output


def test_json_output_is_the_results_document() -> None:
    result = runner.invoke(
        app, ["eval", str(ce.example_predictions_path()), "--bootstrap", "0", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema_version"] == 1
    assert document["provenance"]["arguments"]["bootstrap"] == 0
    assert document["provenance"]["inputs"][0]["sha256"]
    rows = pl.DataFrame(document["rows"])
    mortality = rows.filter(
        (pl.col("model") == "medfuse") & (pl.col("metric") == "auroc_score") & (pl.col("task") == "mortality")
    )
    expected = ce.score(ce.example_predictions_path(), metrics=["auroc_score"], n_boot=0)
    expected = expected.filter((pl.col("model") == "medfuse") & (pl.col("task") == "mortality"))
    assert mortality["value"].item() == expected["value"].item()


def test_out_file_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "results.parquet"
    result = runner.invoke(
        app, ["eval", str(ce.example_predictions_path()), "--bootstrap", "10", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert ce.read_results(out).height > 100
    assert (tmp_path / "results.meta.json").exists()


def test_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,task,target,y_true,y_score\n1,m,m,1,1.5\n")
    result = runner.invoke(app, ["eval", str(bad)])
    assert result.exit_code == 2
    assert "y_score must be a probability in [0, 1]" in result.output
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["eval", str(tmp_path / "none.parquet")])
    assert missing.exit_code == 2 and "file not found" in missing.output
    wrong = runner.invoke(app, ["eval", str(ce.example_predictions_path()), "--format", "xml"])
    assert wrong.exit_code == 2 and "--format must be one of" in wrong.output


def test_by_and_compare_add_fairness_and_comparison_rows() -> None:
    result = runner.invoke(
        app,
        [
            "eval",
            str(ce.example_predictions_path()),
            "--bootstrap",
            "0",
            "--by",
            "sex",
            "--compare",
            "medfuse",
            "lstm",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = pl.read_csv(result.stdout.encode(), schema_overrides={"seed": pl.Int64})
    assert set(rows.filter(pl.col("group_attribute") == "sex")["group"].drop_nulls()) == {"F", "M"}
    compared = rows.filter(pl.col("baseline") == "lstm")
    assert compared.height > 0 and set(compared["model"]) == {"medfuse"}
    assert compared["p_value"].drop_nulls().len() == compared.height
    unknown = runner.invoke(app, ["eval", str(ce.example_predictions_path()), "--compare", "medfuse", "nope"])
    assert unknown.exit_code == 2 and "model(s) ['nope'] not in predictions" in unknown.output


def test_meds_evaluation_predictions_file_scored_with_its_own_auroc(tmp_path: Path) -> None:
    """A meds-evaluation predictions file goes straight into `carebench eval`, with the same AUROC."""
    pytest.importorskip("meds", reason="needs the meds package: pip install 'carebench-eval[meds]'")
    evaluate = pytest.importorskip(
        "meds_evaluation.evaluate", reason="the oracle: pip install meds-evaluation"
    )
    rng = np.random.default_rng(7)
    n = 400
    subjects = rng.integers(1, 120, n)
    labels = rng.random(n) < 0.25
    scores = np.clip(0.3 + 0.2 * labels + 0.2 * rng.standard_normal(n), 0, 1).astype(np.float32)
    frame = pl.DataFrame(
        {
            "subject_id": subjects,
            "prediction_time": [dt.datetime(2180, 1, 1) + dt.timedelta(hours=int(i)) for i in range(n)],
            "boolean_value": labels,
            "predicted_boolean_value": scores >= 0.5,
            "predicted_boolean_probability": scores,
        }
    )
    path = tmp_path / "in_hospital_mortality.parquet"
    frame.write_parquet(path)

    result = runner.invoke(app, ["eval", str(path), "--format", "json", "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    auroc = next(row for row in rows if row["metric"] == "auroc_score")
    theirs = evaluate.evaluate_binary_classification(pl.read_parquet(path))["samples_equally_weighted"]
    assert auroc["value"] == pytest.approx(theirs["roc_auc_score"], abs=1e-12)
    assert auroc["task"] == "in_hospital_mortality" and auroc["n"] == n
    assert auroc["ci_low"] < auroc["value"] < auroc["ci_high"]  # subject-clustered bootstrap CI

    broken = tmp_path / "broken.parquet"
    frame.drop("predicted_boolean_probability").write_parquet(broken)
    result = runner.invoke(app, ["eval", str(broken)])
    assert result.exit_code == 2
    assert "broken.parquet has predicted_boolean_value but no predicted_boolean_probability" in result.output
