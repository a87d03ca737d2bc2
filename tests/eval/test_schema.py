"""Tidy schema, notes vocabulary, registry naming rule and serialization round trips (eval.md §2.1, §8)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

import carebench_eval as ce
from carebench_eval.registry import REGISTRY, metric_info, task_kind
from carebench_eval.schema import RESULT_SCHEMA, check_notes, make_rows, read_results, write_results
from carebench_eval.testing import synthetic_predictions


def sample_results() -> pl.DataFrame:
    preds = synthetic_predictions(n_samples=60, tasks=("mortality", "phenotype"), models=("a", "b"), seed=1)
    preds = preds.with_columns(
        pl.when(pl.col("target") == "copd").then(0).otherwise(pl.col("y_true")).cast(pl.Int8).alias("y_true")
    )
    with pytest.warns(ce.UndefinedMetricWarning):
        return ce.score(preds, metrics=["auroc_score", "ppv_score"], n_boot=20)


def test_make_rows_fills_casts_and_sorts() -> None:
    frame = make_rows(
        [
            {
                "model": "b",
                "task": "t",
                "metric": "auroc_score",
                "statistic": "estimate",
                "target": "x",
                "value": 0.7,
                "n": 5,
            },
            {
                "model": None,
                "task": "t",
                "metric": "auroc_score",
                "statistic": "estimate",
                "target": "x",
                "value": None,
                "n": 5,
            },
            {
                "model": "a",
                "seed": 3,
                "task": "t",
                "metric": "auroc_score",
                "statistic": "estimate",
                "target": "x",
                "value": 0.6,
                "n": 5,
            },
        ]
    )
    assert dict(frame.schema) == RESULT_SCHEMA
    assert frame["model"].to_list() == [None, "a", "b"]
    assert math.isnan(frame["value"][0]) and frame["n_runs"].to_list() == [1, 1, 1]
    assert ce.empty_results().height == 0 and dict(ce.empty_results().schema) == RESULT_SCHEMA
    with pytest.raises(ValueError, match="unknown column"):
        make_rows([{"metric": "x", "colour": "red"}])


def test_check_notes_vocabulary() -> None:
    good = make_rows(
        [
            {
                "task": "t",
                "metric": "m",
                "statistic": "estimate",
                "target": "x",
                "value": 1.0,
                "n": 1,
                "notes": "single_class;labels_used=3/25;ci_dropped=4;policy=fixed:0.5;eod_from=tpr",
            }
        ]
    )
    check_notes(good)
    check_notes(good.with_columns(notes=pl.lit("policy=validation:youden;policy=top_k:0.1")))
    with pytest.raises(ValueError, match="unknown note token 'made_up'"):
        check_notes(good.with_columns(notes=pl.lit("single_class;made_up")))


def test_registry_naming_rule() -> None:
    descriptive = {
        "base_rate",
        "positive_rate",
        "threshold",
        "cxr_missing_rate",
        "calibration_slope",
        "calibration_intercept",
    }
    for name, spec in REGISTRY.items():
        if name.endswith("_score"):
            assert spec.higher_is_better is True, name
        elif name.endswith(("_loss", "_error", "_difference")):
            assert spec.higher_is_better is False, name
        elif name.endswith("_ratio"):
            assert spec.higher_is_better is True, name
        else:
            assert name in descriptive and spec.higher_is_better is None, name
    info = metric_info()
    assert info.columns == ["name", "kinds", "input", "higher_is_better", "needs_threshold", "display"]
    assert info.filter(pl.col("name") == "fpr_error")["display"].item() == "FPR"


def test_task_kind_resolution() -> None:
    assert task_kind("los", n_targets=7) == "multiclass"
    assert task_kind("new_task", n_targets=1) == "binary"
    assert task_kind("new_task", n_targets=3) == "multilabel"
    assert task_kind("mortality", n_targets=1, kinds={"mortality": "multilabel"}) == "multilabel"
    with pytest.raises(ValueError, match="must be one of"):
        task_kind("x", n_targets=1, kinds={"x": "ordinal"})


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_exact_round_trip(tmp_path: Path, suffix: str) -> None:
    frame = sample_results()
    assert frame["value"].is_nan().any() and frame["notes"].null_count() > 0
    path = write_results(frame, tmp_path / f"results{suffix}", provenance={"function": "score", "n_boot": 20})
    back = read_results(path)
    assert dict(back.schema) == RESULT_SCHEMA
    assert back.equals(frame)
    sidecar = json.loads((tmp_path / "results.meta.json").read_text())
    assert sidecar["schema_version"] == 1 and sidecar["n_boot"] == 20
    assert set(sidecar["versions"]) == {"carebench-eval", "numpy", "polars", "scikit-learn"}
    assert {p.name for p in tmp_path.iterdir()} == {"results.meta.json", f"results{suffix}"}


def test_csv_writes_nan_and_empty_null(tmp_path: Path) -> None:
    frame = sample_results()
    text = write_results(frame, tmp_path / "r.csv").read_text()
    assert ",NaN," in text
    assert text.splitlines()[0] == ",".join(RESULT_SCHEMA)


def test_json_round_trip_maps_nan_to_null(tmp_path: Path) -> None:
    frame = sample_results()
    path = write_results(frame, tmp_path / "r.json", provenance={"function": "score"})
    document = json.loads(path.read_text())
    assert document["schema_version"] == 1 and document["provenance"]["function"] == "score"
    assert len(document["rows"]) == frame.height
    assert "NaN" not in path.read_text()
    back = read_results(path)
    assert dict(back.schema) == RESULT_SCHEMA
    expected = frame.with_columns(
        [pl.col(name).fill_nan(None) for name in ("ci_low", "ci_high", "p_value", "p_adjusted")]
    )
    assert back.equals(expected)
    assert (
        path.read_text()
        == write_results(frame, tmp_path / "again.json", provenance={"function": "score"}).read_text()
    )


def test_write_rejects_other_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a result table"):
        write_results(pl.DataFrame({"a": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="unknown result format"):
        write_results(ce.empty_results(), tmp_path / "x.xlsx")


def test_score_provenance_is_written_with_the_results(tmp_path: Path) -> None:
    path = tmp_path / "preds.csv"
    synthetic_predictions(n_samples=40, tasks=("mortality", "los"), models=("a",), seed=2).write_csv(path)
    table = ce.score(path, metrics=["auroc_score", "kappa_linear_score"], n_boot=10, random_state=3)
    write_results(table, tmp_path / "scores.parquet", provenance={"note": "from test"})
    document = json.loads((tmp_path / "scores.meta.json").read_text())
    assert document["function"] == "score" and document["note"] == "from test"
    assert document["arguments"]["n_boot"] == 10 and document["arguments"]["random_state"] == 3
    assert document["arguments"]["threshold"] == "policy=fixed:0.5"
    assert document["inputs"][0]["path"] == str(path) and len(document["inputs"][0]["sha256"]) == 64
    assert document["tasks"]["los"] == {
        "kind": "multiclass",
        "targets": ["2-3d", "3-4d", "4-5d", "5-6d", "6-7d", "7-14d", "14+d"],
    }
    assert "time" not in json.dumps(document)
