"""Kill a grid mid-run with a real signal; the rerun skips finished runs and redoes the partial one."""

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_cli.report.collect import collect_runs
from carebench_cli.run_store import DONE_FILE, RunStatus, RunStore

from .conftest import write_run_config

ENTRY = "from carebench_cli.main import app; app()"


def _start_grid(config, cwd, *, jobs: int) -> subprocess.Popen:
    """`carebench run --config CONFIG --no-report --jobs N` in a real child process, single-threaded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", ENTRY, "run", "--config", str(config), "--no-report", "--jobs", str(jobs)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_partial(store: RunStore, process: subprocess.Popen, timeout: float = 150.0) -> tuple[str, str]:
    """Poll until one run is DONE and another has started (a directory without DONE)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = {run_id: store.status(run_id) for run_id in store.run_ids()}
        done = [run_id for run_id, status in statuses.items() if status is RunStatus.DONE]
        partial = [run_id for run_id, status in statuses.items() if status is RunStatus.PARTIAL]
        if done and partial:
            return done[0], partial[0]
        if process.poll() is not None:
            raise AssertionError(f"the grid ended (code {process.returncode}) before it could be interrupted")
        time.sleep(0.02)
    raise AssertionError("no run finished in time")


def test_killed_grid_resumes(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml",
        tiny_dataset,
        runs,
        models=("lstm",),
        tasks=("mortality",),
        seeds=(1, 2, 3),
        epochs=3,
    )
    process = _start_grid(config, tmp_path, jobs=1)
    store = RunStore(runs)
    try:
        finished, partial = _wait_for_partial(store, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert store.status(finished) is RunStatus.DONE
    assert store.status(partial) is RunStatus.PARTIAL

    # A report of the interrupted store uses only the finished run.
    collection = collect_runs(runs)
    assert [run.run_id for run in collection.runs] == [finished]
    assert collection.skipped == {partial: RunStatus.PARTIAL}
    assert set(collection.test["seed"].unique()) == {collection.runs[0].spec.seed}

    finished_marker = (store.run_dir(finished) / DONE_FILE).stat().st_mtime_ns
    partial_config = (store.run_dir(partial) / "config.json").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--no-report"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "3 runs in the grid; 1 finished, 2 to run (1 unfinished to redo)" in output
    # The finished run is skipped (its DONE untouched); the partial one is redone from scratch.
    assert (store.run_dir(finished) / DONE_FILE).stat().st_mtime_ns == finished_marker
    assert (store.run_dir(partial) / "config.json").stat().st_mtime_ns != partial_config
    assert all(store.status(run_id, verify_hashes=True) is RunStatus.DONE for run_id in store.run_ids())
    assert len(store.run_ids()) == 3


def _alive(pid: int) -> bool:
    """Running, not a zombie (a dead child may stay unreaped under a container's init)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            state = next(line for line in handle if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "Z" not in state.split()[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_jobs_stop_when_the_parent_is_killed(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml",
        tiny_dataset,
        runs,
        models=("lstm",),
        tasks=("mortality",),
        seeds=tuple(range(1, 13)),
        epochs=40,
    )
    # every run trains all its epochs, so the jobs have far more than the grace period left to do
    config.write_text(config.read_text().replace("min_epochs = 1", "min_epochs = 40"))
    process = _start_grid(config, tmp_path, jobs=2)
    store = RunStore(runs)
    try:
        deadline = time.monotonic() + 150
        children: list[int] = []
        while time.monotonic() < deadline and not any(
            store.status(run_id) is RunStatus.PARTIAL for run_id in store.run_ids()
        ):
            time.sleep(0.02)
        with open(f"/proc/{process.pid}/task/{process.pid}/children", encoding="ascii") as handle:
            children = [int(pid) for pid in handle.read().split()]
        assert len(children) == 2
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in children)
    finally:
        if process.poll() is None:
            process.kill()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
