"""`carebench data synth` writes the tree and reports bad options in one line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from carebench_cli.main import app


def test_synth_command_writes_a_tree(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--scale",
            "tiny",
            "--stays",
            "60",
            "--mimic-version",
            "3.1",
            "--seed",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    marker = json.loads((out / "mimiciv/3.1/SYNTHETIC.json").read_text())
    assert marker["seed"] == 7 and marker["scale"] == "tiny" and marker["mimic_version"] == "3.1"
    assert marker["row_counts"]["icu/icustays"] == 60
    assert (out / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz").is_file()


def test_synth_command_rejects_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_version = runner.invoke(
        app, ["data", "synth", "--out", str(tmp_path / "a"), "--mimic-version", "1.4"]
    )
    assert bad_version.exit_code == 2
    assert "--mimic-version" in bad_version.output
    bad_scale = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "b"), "--scale", "huge"])
    assert bad_scale.exit_code == 2
    assert "unknown scale" in bad_scale.output
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("x")
    occupied = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "c"), "--scale", "tiny"])
    assert occupied.exit_code == 2
    assert "not empty" in occupied.output
