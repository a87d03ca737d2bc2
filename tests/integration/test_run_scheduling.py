"""Scheduling never changes a run: alone, beside others (`--jobs`) or with loader workers, the same predictions.

Also the compute record each run writes and the report's Compute section built from it.
"""

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_cli.run_store import METRICS_FILE, PREDICTIONS_FILE, VAL_PREDICTIONS_FILE, RunStatus, RunStore

from .conftest import write_run_config


def _run(config, *extra):
    result = CliRunner().invoke(
        app, ["run", "--config", str(config), "--no-report", *extra], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


def _done(runs):
    store = RunStore(runs)
    ids = store.run_ids()
    assert ids and all(store.status(run_id) is RunStatus.DONE for run_id in ids)
    return {run_id: runs / run_id for run_id in ids}


def test_a_run_alone_and_beside_others_gives_identical_predictions(tiny_dataset, tmp_path):
    alone = write_run_config(
        tmp_path / "alone.toml",
        tiny_dataset,
        tmp_path / "alone",
        models=("latefusion",),
        tasks=("mortality",),
    )
    _run(alone, "--jobs", "1")
    (run_id, alone_dir), *_ = _done(tmp_path / "alone").items()

    beside = write_run_config(
        tmp_path / "beside.toml",
        tiny_dataset,
        tmp_path / "beside",
        models=("latefusion",),
        tasks=("mortality",),
        seeds=(42, 7, 9),
    )
    _run(beside, "--jobs", "3")
    beside_runs = _done(tmp_path / "beside")
    assert len(beside_runs) == 3 and run_id in beside_runs
    assert sorted(path.name for path in (tmp_path / "beside" / "logs").iterdir()) == [
        "job-0.log",
        "job-1.log",
        "job-2.log",
    ]

    workers = write_run_config(
        tmp_path / "workers.toml",
        tiny_dataset,
        tmp_path / "workers",
        models=("latefusion",),
        tasks=("mortality",),
    )
    _run(workers, "--jobs", "1", "--loader-workers", "2")
    workers_dir = _done(tmp_path / "workers")[run_id]

    for other in (beside_runs[run_id], workers_dir):
        for name in (PREDICTIONS_FILE, VAL_PREDICTIONS_FILE):
            expected = pl.read_parquet(alone_dir / name)
            assert expected.height > 0
            assert pl.read_parquet(other / name).equals(expected)

    record = json.loads((workers_dir / METRICS_FILE).read_text())["compute"]
    assert record["loader_workers"] == 2


def test_metrics_record_the_compute_of_each_run(finished_store):
    runs, _ = finished_store
    for path in _done(runs).values():
        metrics = json.loads((path / METRICS_FILE).read_text())
        record = metrics["compute"]
        assert record["device"] == "cpu" and record["device_name"]
        assert record["torch"] and "cuda" in record
        assert record["wall_seconds"] == metrics["seconds"]
        assert record["runs_on_device"] == 1
        assert record["device_hours"] == pytest.approx(metrics["seconds"] / 3600, abs=1e-6)
        assert record["epochs"] == metrics["epochs"] == 1
        # one epoch over every training stay
        assert record["train_samples"] == metrics["n_train"]
        assert 0 < record["train_seconds"] < record["wall_seconds"]
        assert record["train_samples_per_s"] == round(record["train_samples"] / record["train_seconds"], 1)
        assert record["loader_workers"] == 0
        assert record["peak_memory_kind"] == "cpu_rss" and record["peak_memory_mib"] > 50


def test_report_has_a_compute_section(finished_store):
    runs, _ = finished_store
    text = (runs / "report" / "report.md").read_text()
    section = text.split("## Compute", 1)[1].split("\n## ", 1)[0]
    total = sum(
        json.loads((path / METRICS_FILE).read_text())["compute"]["device_hours"]
        for path in _done(runs).values()
    )
    assert f"{total:.3g} CPU process-hours for 4 run(s)" in section
    assert "they are not GPU-hours" in section
    for model in ("lstm", "latefusion"):
        assert f"| {model} | 2 | cpu |" in section
    html = (runs / "report" / "index.html").read_text()
    assert "Compute per model" in html
