"""Bad inputs, faults and misuse on the command line: each ends in one line on stderr and exit code 2,
with nothing written; `CAREBENCH_DEBUG=1` shows the traceback instead."""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import carebench_eval as ce
from carebench_cli.main import app
from carebench_data.testing import write_tiny_dataset
from carebench_data.testing.raw import write_raw_tree
from carebench_eval.__main__ import main as eval_main

ENTRY = "from carebench_cli.main import app; app()"


def _invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def _one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and "Traceback" not in output, output
    return " ".join(lines[0].split())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("bad") / "dataset", n_stays=40, image_size=16)


@pytest.fixture(scope="module")
def prediction_files(tmp_path_factory) -> dict[str, Path]:
    """One malformed predictions file per way a file can be unreadable or mistyped."""
    root = tmp_path_factory.mktemp("predictions")
    good = ce.read_predictions(ce.example_predictions_path()).filter(pl.col("task") == "mortality")
    good.write_csv(root / "good.csv")
    text = (root / "good.csv").read_bytes()
    files = {
        "empty": root / "empty.csv",
        "not_utf8": root / "latin1.csv",
        "corrupt_parquet": root / "corrupt.parquet",
        "truncated_gzip": root / "truncated.csv.gz",
        "txt_suffix": root / "predictions.txt",
        "seed_not_integer": root / "seed.csv",
        "has_cxr_maybe": root / "has_cxr.csv",
    }
    files["empty"].write_bytes(b"")
    files["not_utf8"].write_bytes(text.replace(b"WHITE", "WHITÉ".encode("latin-1")))
    files["corrupt_parquet"].write_bytes(b"PAR1" + os.urandom(64) + b"PAR1")
    compressed = gzip.compress(text)
    files["truncated_gzip"].write_bytes(compressed[: len(compressed) // 2])
    files["txt_suffix"].write_bytes(text)
    good.with_columns(pl.lit("forty-two").alias("seed")).write_csv(files["seed_not_integer"])
    good.with_columns(pl.lit("maybe").alias("has_cxr")).write_csv(files["has_cxr_maybe"])
    return files


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty", "cannot read"),
        ("not_utf8", "invalid utf-8"),
        ("corrupt_parquet", "as Parquet"),
        ("truncated_gzip", "cannot read"),
        ("txt_suffix", "unknown file type 'predictions.txt'"),
        ("seed_not_integer", "column 'seed' must hold integers"),
        ("has_cxr_maybe", "column 'has_cxr' must hold true or false"),
    ],
)
def test_eval_of_an_unreadable_or_mistyped_file(prediction_files, case, expected):
    result = _invoke("eval", str(prediction_files[case]), "--bootstrap", "0")
    assert result.exit_code == 2, result.output
    assert expected in _one_error_line(result.output)


def test_eval_out_that_is_a_directory(prediction_files, tmp_path):
    (tmp_path / "results.json").mkdir()
    for out in (tmp_path / "results.json", tmp_path):
        result = _invoke("eval", str(prediction_files["empty"].parent / "good.csv"), "--out", str(out))
        assert result.exit_code == 2, result.output
        _one_error_line(result.output)


def test_debug_variable_shows_the_traceback(prediction_files):
    result = _invoke("eval", str(prediction_files["empty"]), env={"CAREBENCH_DEBUG": "1"})
    assert isinstance(result.exception, ce.PredictionsFileError)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ('n_boot = "many"', 'n_boot must be an integer, got "many" (a string)'),
        ("threshold = 0.3", "threshold must be a table, got 0.3"),
        ("level = true", "level must be a number, got true (a boolean)"),
        ("n_bins = [10]", "n_bins must be an integer, got [10] (an array)"),
    ],
)
def test_python_m_carebench_eval_rejects_mistyped_options(
    prediction_files, tmp_path, capsys, options, expected
):
    config = tmp_path / "options.toml"
    config.write_text(options + "\n")
    good = prediction_files["empty"].parent / "good.csv"
    code = eval_main(["score", str(good), "-o", str(tmp_path / "out.json"), "--config", str(config)])
    assert code == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out.json").exists()


def test_python_m_carebench_eval_on_unreadable_inputs(prediction_files, tmp_path, capsys):
    config = tmp_path / "latin1.toml"
    config.write_bytes("n_boot = 10 # é\n".encode("latin-1"))
    good = str(prediction_files["empty"].parent / "good.csv")
    assert eval_main(["score", good, "-o", str(tmp_path / "o.json"), "--config", str(config)]) == 2
    assert "not UTF-8" in _one_error_line(capsys.readouterr().err)
    assert eval_main(["score", str(prediction_files["corrupt_parquet"]), "-o", str(tmp_path / "o.json")]) == 2
    assert "as Parquet" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "dir.csv").mkdir()
    assert eval_main(["score", good, "-o", str(tmp_path / "dir.csv")]) == 2
    assert "is a directory" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"schema_version": 1}', "no file list"),
        (b'{"files": {"stays.parquet": "abc"}}', "no file list"),
    ],
)
def test_verify_of_a_damaged_manifest(dataset, tmp_path, content, expected):
    damaged = tmp_path / "dataset"
    damaged.mkdir()
    (damaged / "manifest.json").write_bytes(content)
    result = _invoke("data", "verify", str(damaged))
    assert result.exit_code == 2, result.output
    assert expected in _one_error_line(result.output)


def test_build_past_the_file_size_limit(tmp_path):
    truth = write_raw_tree(tmp_path / "raw")
    config = tmp_path / "build.toml"
    config.write_text("[cxr]\nworkers = 1\nmax_failure_fraction = 0.5\n")
    out = tmp_path / "dataset"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    arguments = ["data", "build", "--mimic-iv", str(truth.mimic_iv), "--mimic-cxr", str(truth.mimic_cxr)]
    finished = subprocess.run(
        [sys.executable, "-c", ENTRY, *arguments, "--config", str(config), "--out", str(out)],
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
    )
    assert finished.returncode == 2, finished.stderr
    assert "File too large; a file grew past the file-size limit" in _one_error_line(finished.stderr)
    assert not out.exists() and not list(tmp_path.glob(".dataset.*"))


def _run_config(tmp_path: Path, dataset: Path, extra: str) -> Path:
    config = tmp_path / "run.toml"
    config.write_text(f'dataset = "{dataset}"\nout = "{tmp_path / "runs"}"\nmodels = ["lstm"]\n{extra}\n')
    return config


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[train]\nmax_epochs = "ten"', 'train.max_epochs must be an integer, got "ten" (a string)'),
        ("[train]\nlr = true", "train.lr must be a number, got true (a boolean)"),
        ("[train]\nbetas = [0.9]", "train.betas must be an array of 2 items"),
        ('[hparams.lstm]\ndropout = "high"', 'hparams.lstm.dropout must be a number, got "high"'),
        ("[hparams.lstm]\ndrop = 0.1", "unknown key(s) 'hparams.lstm.drop' in [hparams.lstm]"),
        ('threads = "4"', 'threads must be an integer, got "4" (a string)'),
        ("seeds = [1.5]", "seeds[0] must be an integer, got 1.5 (a float)"),
        ('profile = ["quick"]', 'profile must be a string, got ["quick"] (an array)'),
        ("[report]\nbogus = 1", "unknown key(s) 'report.bogus' in [report]"),
        ('[report]\nn_boot = "many"', 'report.n_boot must be an integer, got "many"'),
    ],
)
def test_run_rejects_mistyped_config_values(dataset, tmp_path, extra, expected):
    result = _invoke("run", "--config", str(_run_config(tmp_path, dataset, extra)))
    assert result.exit_code == 2, result.output
    assert expected in _one_error_line(result.output)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option", ["--models", "--tasks"])
@pytest.mark.parametrize("value", [",", " , ,"])
def test_an_option_that_names_nothing_is_an_error(dataset, tmp_path, option, value):
    result = _invoke("run", "--dataset", str(dataset), option, value, "--out", str(tmp_path / "runs"))
    assert result.exit_code == 2, result.output
    assert "names nothing" in _one_error_line(result.output)
    assert not (tmp_path / "runs").exists()


def test_run_out_that_is_a_file_or_the_dataset(dataset, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    before = sorted(p.name for p in dataset.iterdir())
    for out, expected in (
        (notes, "is not a directory"),
        (dataset, "is the input"),
        (dataset / "runs", "lies inside the input"),
        (dataset.parent, "contains the input"),
    ):
        result = _invoke("run", "--dataset", str(dataset), "--models", "lstm", "--out", str(out))
        assert result.exit_code == 2, result.output
        assert expected in _one_error_line(result.output)
    assert notes.read_text() == "keep"
    assert sorted(p.name for p in dataset.iterdir()) == before


def test_report_config_error_names_its_section(tmp_path):
    (tmp_path / "runs").mkdir()
    config = tmp_path / "run.toml"
    config.write_text("[report]\nbogus = 1\n")
    result = _invoke("report", str(tmp_path / "runs"), "--config", str(config))
    assert result.exit_code == 2
    assert "unknown key(s) 'report.bogus' in [report]; valid keys:" in _one_error_line(result.output)
    config.write_text("report = 5\n")
    result = _invoke("report", str(tmp_path / "runs"), "--config", str(config))
    assert result.exit_code == 2 and "report must be a table" in _one_error_line(result.output)


def test_report_never_replaces_a_folder_that_is_not_a_report(tmp_path):
    (tmp_path / "runs").mkdir()
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("precious")
    result = _invoke("report", str(tmp_path / "runs"), "--out", str(thesis))
    assert result.exit_code == 2 and "is not a carebench report" in _one_error_line(result.output)
    assert (thesis / "chapter1.tex").read_text() == "precious"
    result = _invoke("report", str(tmp_path / "runs"), "--out", str(thesis / "chapter1.tex"))
    assert result.exit_code == 2 and "is not a directory" in _one_error_line(result.output)


def test_convert_never_writes_into_an_input_or_a_foreign_folder(tmp_path):
    truth = write_raw_tree(tmp_path / "raw")
    before = sorted(str(p) for p in (tmp_path / "raw").rglob("*"))
    for out, expected in (
        (truth.mimic_iv / "parquet", "lies inside the input"),
        (truth.mimic_cxr, "is the input"),
        (tmp_path, "contains the input"),
    ):
        result = _invoke(
            "data",
            "convert",
            "--mimic-iv",
            str(truth.mimic_iv),
            "--mimic-cxr",
            str(truth.mimic_cxr),
            "--out",
            str(out),
        )
        assert result.exit_code == 2, result.output
        assert expected in _one_error_line(result.output)
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    result = _invoke("data", "convert", "--mimic-iv", str(truth.mimic_iv), "--out", str(foreign))
    assert result.exit_code == 2 and "is not a carebench converted root" in _one_error_line(result.output)
    assert sorted(str(p) for p in (tmp_path / "raw").rglob("*")) == before
    converted = tmp_path / "parquet"
    for _ in range(2):  # a converted root may be converted into again
        result = _invoke("data", "convert", "--mimic-iv", str(truth.mimic_iv), "--out", str(converted))
        assert result.exit_code == 0, result.output
    assert json.loads((converted / "carebench-convert.json").read_text())["tables"]


def test_synth_into_a_non_empty_folder(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("precious")
    result = _invoke("data", "synth", "--out", str(tmp_path / "thesis"), "--scale", "tiny")
    assert result.exit_code == 2 and "not empty" in _one_error_line(result.output)
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "precious"
