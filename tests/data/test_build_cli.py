"""`carebench data build | verify` on the hand-written raw tree: output, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_data.testing.raw import write_raw_tree


def test_build_verify_and_errors(tmp_path: Path) -> None:
    truth = write_raw_tree(tmp_path / "raw")
    config = tmp_path / "build.toml"
    config.write_text("[cxr]\nworkers = 1\nmax_failure_fraction = 0.5\n")
    runner = CliRunner()
    out = tmp_path / "dataset"
    arguments = [
        "data",
        "build",
        "--mimic-iv",
        str(truth.mimic_iv),
        "--mimic-cxr",
        str(truth.mimic_cxr),
        "--out",
        str(out),
    ]
    result = runner.invoke(app, [*arguments, "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "has_ehr" in result.output and "content hash" in result.output
    assert pl.read_parquet(out / "stays.parquet")["stay_id"].to_list() == truth.cohort_stay_ids

    verified = runner.invoke(app, ["data", "verify", str(out)])
    assert verified.exit_code == 0 and "ok:" in verified.output
    raw = runner.invoke(
        app, ["data", "verify", "--raw", str(truth.mimic_iv), "--cxr", str(truth.mimic_cxr), "--counts"]
    )
    assert raw.exit_code == 0, raw.output

    again = runner.invoke(app, [*arguments, "--config", str(config)])
    assert again.exit_code == 2
    assert "already exists" in again.output and "Traceback" not in again.output

    strict = runner.invoke(app, [*arguments[:-1], str(tmp_path / "strict"), "--no-cache"])
    assert strict.exit_code == 2 and "max_failure_fraction" in strict.output
    assert not (tmp_path / "strict").exists()

    ehr_only = runner.invoke(
        app, ["data", "build", "--mimic-iv", str(truth.mimic_iv), "--out", str(tmp_path / "ehr"), "--no-cxr"]
    )
    assert ehr_only.exit_code == 0, ehr_only.output
    manifest = json.loads((tmp_path / "ehr" / "manifest.json").read_text())
    assert manifest["counts"]["cxr"] == {"enabled": False, "failures": []}
    assert manifest["shapes"]["cxr"] == [0, 256, 256]
