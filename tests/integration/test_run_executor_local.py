"""`carebench run --executor local`: submit the grid as shard jobs, kill one job, resubmit, nothing lost.

The jobs run through submitit's local executor, the same code path as `--executor slurm` up to the
scheduler. One job is killed with SIGKILL in the middle of a run (as a node failure or `scancel -s
KILL` would), its lock and partial run left behind; rerunning the same command resubmits only that
shard, takes the dead process's lock over, and the report covers every run, each trained to the end once.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from carebench_cli.config import check_names, read_toml, resolve_config
from carebench_cli.grid import expand_grid, shard
from carebench_cli.pipeline import bundled_defaults
from carebench_cli.run_cmd import CHILD_ENTRY
from carebench_cli.run_store import DONE_FILE, RunStatus, RunStore
from carebench_data.tasks import read_manifest

from .conftest import write_run_config

MODELS = ("lstm", "latefusion")
_JOB = re.compile(r"shard (\d+)/2: job (\d+) ")


def _carebench(*args: str, timeout: float, log: Path) -> tuple[int, str]:
    """Exit code and output of a `carebench` process.

    The output goes through a file, not a pipe: the local executor's jobs inherit the submitting
    process's output, and a pipe would stay open until they end.
    """
    with log.open("w") as handle:
        code = subprocess.run(
            [sys.executable, "-c", CHILD_ENTRY, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        ).returncode
    return code, log.read_text()


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _tree(int(child))
    return found


def _kill_tree(pid: int) -> None:
    for member in _tree(pid):
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(member, signal.SIGKILL)


def _wait_for(condition, *, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_submit_kill_one_job_resubmit_nothing_lost(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml", tiny_dataset, runs, models=MODELS, tasks=("mortality",), seeds=(42, 7)
    )
    resolved = check_names(
        resolve_config(file_values=read_toml(config)), known_models=list(MODELS), known_tasks=["mortality"]
    )
    grid = expand_grid(
        resolved, dataset_hash=read_manifest(tiny_dataset)["content_hash"], defaults=bundled_defaults
    )
    shards = [{spec.run_id for spec in shard(grid, index, 2)} for index in range(2)]
    store = RunStore(runs)
    command = ("run", "--config", str(config), "--executor", "local", "--shards", "2")

    code, output = _carebench(*command, timeout=300, log=tmp_path / "submit.log")
    assert code == 0, output
    output = " ".join(output.split())
    assert "4 runs in the grid, 0 finished; 2 shard(s), 2 with unfinished runs" in output
    assert "carebench report" in output
    jobs = {int(index): int(pid) for index, pid in _JOB.findall(output)}
    assert sorted(jobs) == [0, 1]
    try:
        # Kill shard 0's job (the whole process tree, as a node failure would) while it trains a run.
        _wait_for(
            lambda: any((runs / f".{run_id}.lock").exists() for run_id in shards[0]),
            timeout=240,
            what="shard 0 to start a run",
        )
        assert _alive(jobs[0])
        _kill_tree(jobs[0])
        _wait_for(lambda: not _alive(jobs[1]), timeout=300, what="shard 1's job to end")
        _wait_for(lambda: not any(_alive(pid) for pid in _tree(jobs[0])), timeout=30, what="the kill")
    finally:
        for pid in jobs.values():
            _kill_tree(pid)

    status = {spec.run_id: store.status(spec.run_id) for spec in grid}
    assert all(status[run_id] is RunStatus.DONE for run_id in shards[1])
    killed = [run_id for run_id in shards[0] if status[run_id] is not RunStatus.DONE]
    assert killed, "the killed job had finished its runs"
    # the killed run's lock (of a dead process) is still there
    assert any((runs / f".{run_id}.lock").exists() for run_id in killed)
    finished = {run_id: (runs / run_id / DONE_FILE).stat().st_mtime_ns for run_id in shards[1]}

    code, output = _carebench(*command, "--wait", timeout=400, log=tmp_path / "resubmit.log")
    assert code == 0, output
    output = " ".join(output.split())
    assert f"4 runs in the grid, {4 - len(killed)} finished; 2 shard(s), 1 with unfinished runs" in output
    assert [index for index, _ in _JOB.findall(output)] == ["0"]
    assert "every run of the grid is done (4 runs)" in output
    # the finished runs were not trained again
    assert {run_id: (runs / run_id / DONE_FILE).stat().st_mtime_ns for run_id in shards[1]} == finished
    assert all(store.status(spec.run_id) is RunStatus.DONE for spec in grid)
    assert not list(runs.glob(".*.lock"))
    # the resubmitted shard took the dead process's lock over, and said so
    (job,) = [int(pid) for _, pid in _JOB.findall(output)]
    log = " ".join((runs / "submitit" / str(job) / f"{job}_0_log.err").read_text().split())
    assert "taking over the lock" in log
    report = (runs / "report" / "report.md").read_text()
    assert "4 finished runs" in report and "left out" not in report.split("## ", 2)[1]
    assert "## Compute" in report
