"""The run store under several real processes: per-run locks, takeover from the dead, SIGTERM, tampering."""

import json
import os
import re
import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_cli.run_store import DONE_FILE, PREDICTIONS_FILE, RunStatus, RunStore

from .conftest import write_run_config

ENTRY = "from carebench_cli.main import app; app()"
_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}

_HOLDER = """
import sys, time
from pathlib import Path
from carebench_cli.run_store import RunStore
store = RunStore(Path(sys.argv[1]))
store.claim(sys.argv[2])
print("held", flush=True)
release_when = Path(sys.argv[3]) if len(sys.argv) > 3 else None
deadline = time.monotonic() + 600
while time.monotonic() < deadline and not (release_when and release_when.exists()):
    time.sleep(0.05)
store.release_all()
"""


def _hold(script_dir, runs, run_id, *release_when):
    """A real process that holds the lock of `run_id` (until `release_when` exists, if given)."""
    script = script_dir / "holder.py"
    script.write_text(_HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(runs), run_id, *map(str, release_when)],
        stdout=subprocess.PIPE,
        text=True,
        env={**_ENV, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _flat(text: str) -> str:
    return " ".join(text.split())


def _run_ids(config) -> list[str]:
    from carebench_cli.config import check_names, read_toml, resolve_config
    from carebench_cli.grid import expand_grid
    from carebench_cli.pipeline import bundled_defaults
    from carebench_data.tasks import read_manifest, task_specs
    from carebench_models import available_models

    resolved = resolve_config(file_values=read_toml(config), base_dir=config.parent)
    resolved = check_names(
        resolved, known_models=available_models(), known_tasks=list(task_specs(resolved.dataset))
    )
    dataset_hash = str(read_manifest(resolved.dataset)["content_hash"])
    return [
        spec.run_id for spec in expand_grid(resolved, dataset_hash=dataset_hash, defaults=bundled_defaults)
    ]


def test_a_run_held_by_a_live_process_is_skipped_and_taken_over_once_it_dies(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml", tiny_dataset, runs, models=("lstm",), tasks=("mortality",), seeds=(1, 2)
    )
    held, free = _run_ids(config)
    holder = _hold(tmp_path, runs, held)
    try:
        result = CliRunner().invoke(
            app, ["run", "--config", str(config), "--no-report"], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 0, result.output
        output = _flat(result.output)
        assert f"running elsewhere (pid {holder.pid} on" in output
        assert (
            "1 run(s) trained by this command, 0 finished meanwhile by other processes, 1 running" in output
        )
        assert "1 run(s) are being trained by other processes" in output
        store = RunStore(runs)
        assert store.status(free) is RunStatus.DONE
        assert store.status(held) is RunStatus.ABSENT  # never started, never deleted by this process
        assert json.loads(store.lock_path(held).read_text())["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)

    result = CliRunner().invoke(app, ["run", "--config", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    output = _flat(result.output)
    assert f"taking over the lock of pid {holder.pid}" in output
    assert "1 run(s) trained by this command" in output and "report: " in output
    assert all(RunStore(runs).status(run_id) is RunStatus.DONE for run_id in (held, free))
    assert not list(runs.glob(".*.lock"))


def test_a_run_that_writes_the_report_waits_for_runs_held_elsewhere(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml", tiny_dataset, runs, models=("lstm",), tasks=("mortality",), seeds=(1, 2)
    )
    held, free = _run_ids(config)
    # The holder lets go (without finishing) once this process has finished the other run.
    holder = _hold(tmp_path, runs, held, runs / free / DONE_FILE)
    try:
        result = CliRunner().invoke(
            app, ["run", "--config", str(config), "--jobs", "1"], env={"COLUMNS": "200"}
        )
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert result.exit_code == 0, result.output
    output = _flat(result.output)
    assert "waiting for 1 run(s) that other processes train" in output
    assert "2 run(s) trained by this command, 0 finished meanwhile by other processes, 0 running" in output
    assert "report: " in output and (runs / "report" / "report.md").is_file()


def test_two_processes_on_one_store_train_every_run_exactly_once(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml",
        tiny_dataset,
        runs,
        models=("lstm",),
        tasks=("mortality",),
        seeds=(1, 2, 3, 4),
        epochs=2,
    )
    command = [sys.executable, "-c", ENTRY, "run", "--config", str(config), "--jobs", "1"]
    processes = [
        subprocess.Popen(
            command, cwd=tmp_path, env=_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=600)
            assert process.returncode == 0, output
            outputs.append(_flat(output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    trained = [
        int(re.search(r"(\d+) run\(s\) trained by this command", output).group(1)) for output in outputs
    ]
    assert sum(trained) == 4, outputs
    # Each waits for the runs the other trains, so both see the whole grid and write the report.
    assert all("0 running in other processes" in output and "report: " in output for output in outputs)
    store = RunStore(runs)
    assert len(store.run_ids()) == 4
    assert all(store.status(run_id) is RunStatus.DONE for run_id in store.run_ids())
    assert not list(runs.glob(".*.lock"))


def test_sigterm_releases_the_lock_of_the_run_in_progress(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml", tiny_dataset, runs, models=("lstm",), tasks=("mortality",), epochs=200
    )
    config.write_text(config.read_text().replace("min_epochs = 1", "min_epochs = 200"))
    process = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "run", "--config", str(config), "--no-report", "--jobs", "1"],
        cwd=tmp_path,
        env=_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 150
        while not list(runs.glob("*/config.json")):
            assert process.poll() is None, "the grid ended before it could be stopped"
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.05)
        assert list(runs.glob(".*.lock"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    assert not list(runs.glob(".*.lock"))
    (run_id,) = RunStore(runs).run_ids()
    assert RunStore(runs).status(run_id) is RunStatus.PARTIAL


def test_a_run_whose_predictions_were_edited_is_redone(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml", tiny_dataset, runs, models=("lstm",), tasks=("mortality",)
    )
    first = CliRunner().invoke(app, ["run", "--config", str(config), "--no-report"])
    assert first.exit_code == 0, first.output
    (run_id,) = RunStore(runs).run_ids()
    predictions = runs / run_id / PREDICTIONS_FILE
    data = bytearray(predictions.read_bytes())
    data[len(data) // 2] ^= 0x01
    predictions.write_bytes(bytes(data))
    marker = (runs / run_id / DONE_FILE).stat().st_mtime_ns
    again = CliRunner().invoke(app, ["run", "--config", str(config), "--no-report"])
    assert again.exit_code == 0, again.output
    assert "1 runs in the grid; 0 finished, 1 to run (1 unfinished to redo)" in _flat(again.output)
    assert (runs / run_id / DONE_FILE).stat().st_mtime_ns != marker
    assert RunStore(runs).status(run_id) is RunStatus.DONE
