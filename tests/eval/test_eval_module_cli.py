"""`python -m carebench_eval` (argparse, eval.md §8.5): usable without carebench-cli."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import carebench_eval as ce
from carebench_eval.__main__ import main


def test_score_with_config(tmp_path: Path) -> None:
    config = tmp_path / "score.toml"
    config.write_text('n_boot = 20\nmetrics = ["auroc_score"]\n')
    out = tmp_path / "scores.csv"
    assert main(["score", str(ce.example_predictions_path()), "-o", str(out), "--config", str(config)]) == 0
    table = ce.read_results(out)
    assert set(table["metric"]) == {"auroc_score"}
    assert table["ci_low"].null_count() == 0


def test_compare_two_models_of_one_file(tmp_path: Path) -> None:
    config = tmp_path / "compare.toml"
    config.write_text("n_boot = 20\nn_perm = 50\n")
    out = tmp_path / "compare.json"
    code = main(
        [
            "compare",
            str(ce.example_predictions_path()),
            "--models",
            "medfuse",
            "lstm",
            "-o",
            str(out),
            "--config",
            str(config),
        ]
    )
    assert code == 0
    table = ce.read_results(out)
    assert set(table["baseline"].drop_nulls()) == {"lstm"}
    assert table["p_value"].drop_nulls().len() > 0


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    pl.DataFrame(
        {"sample_id": [1], "task": ["m"], "target": ["m"], "y_true": [3], "y_score": [0.5]}
    ).write_csv(bad)
    assert main(["score", str(bad), "-o", str(tmp_path / "x.csv")]) == 2
    error = capsys.readouterr().err
    assert (
        error == "error: predictions: y_true must be 0 or 1; 1 row(s) violate this (first: row 0, value 3)\n"
    )
    config = tmp_path / "typo.toml"
    config.write_text("nboot = 5\n")
    assert (
        main(
            [
                "score",
                str(ce.example_predictions_path()),
                "-o",
                str(tmp_path / "y.csv"),
                "--config",
                str(config),
            ]
        )
        == 2
    )
    assert "unknown option(s) ['nboot'] for score" in capsys.readouterr().err
