"""`carebench run --executor slurm|local`: the grid as a job array of shards, submitted through submitit.

Each job of the array runs one shard, `carebench run --shard I/N --jobs-per-gpu J --no-report`, on
its node: the same command a user would type, so a shard resumes, locks and places its runs like any
`carebench run`. Shards only ever add finished runs to the store, and the per-run lock lets shards
(and resubmissions) overlap safely, so rerunning the same command resubmits exactly the shards that
still have unfinished runs. `--executor local` runs the jobs as local processes through submitit's
local executor (the path the end-to-end test takes). submitit is imported only here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from carebench_cli.errors import USAGE_EXIT, CliError
from carebench_cli.grid import RunSpec, shard
from carebench_cli.run_store import RunStatus, RunStore

EXECUTORS: tuple[str, ...] = ("slurm", "local")
SUBMITIT_DIR = "submitit"
"""Folder of the run store where submitit keeps its job files and each job's log."""
DEFAULT_ARRAY_PARALLELISM = 8
DEFAULT_TIME = "24:00:00"
DEFAULT_CPUS_PER_GPU = 8
"""Cores requested per GPU of a job when `--cpus-per-job` is not given (the main processes and
their loader workers)."""
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """How `carebench run --executor ...` submits the grid."""

    executor: str
    """`slurm` or `local` (submitit's local executor: processes on this machine)."""
    shards: int = 0
    """Shards of the grid, one array job each; 0 = `array_parallelism`."""
    partition: str | None = None
    """SLURM partition; None = the cluster's default."""
    gpus_per_job: int | None = None
    """GPUs per job; None = 1 on SLURM, 0 (CPU) on the local executor."""
    jobs_per_gpu: int = 1
    """Runs trained at once on each GPU of a job (on CPU: at once per job)."""
    array_parallelism: int = DEFAULT_ARRAY_PARALLELISM
    """Array jobs running at once (SLURM); the local executor starts every job at once."""
    time: str = DEFAULT_TIME
    """Time limit of each job, `[D-]HH:MM:SS`."""
    cpus_per_job: int | None = None
    """Cores per job; None = `DEFAULT_CPUS_PER_GPU` per GPU (at least 2)."""
    slurm_options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Further `#SBATCH` options (`account`, `qos`, `constraint`, `mem`, ...)."""
    wait: bool = False
    """Follow the jobs until they end, then write the report."""

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise CliError(
                f"unknown executor {self.executor!r}; valid executors: {', '.join(EXECUTORS)}",
                exit_code=USAGE_EXIT,
            )
        for name in ("shards", "jobs_per_gpu", "array_parallelism"):
            if getattr(self, name) < (0 if name == "shards" else 1):
                raise CliError(f"--{name.replace('_', '-')} must be positive", exit_code=USAGE_EXIT)
        if self.gpus_per_job is not None and self.gpus_per_job < 0:
            raise CliError("--gpus-per-job must be 0 or more", exit_code=USAGE_EXIT)
        if self.cpus_per_job is not None and self.cpus_per_job < 1:
            raise CliError("--cpus-per-job must be positive", exit_code=USAGE_EXIT)
        time_minutes(self.time)

    @property
    def gpus(self) -> int:
        """GPUs per job."""
        if self.gpus_per_job is not None:
            return self.gpus_per_job
        return 1 if self.executor == "slurm" else 0

    @property
    def cpus(self) -> int:
        """Cores per job."""
        if self.cpus_per_job is not None:
            return self.cpus_per_job
        return max(2, DEFAULT_CPUS_PER_GPU * self.gpus)


def time_minutes(text: str) -> int:
    """`[D-]HH:MM:SS` -> whole minutes, rounded up (submitit's unit).

    Raises:
        CliError: malformed or zero (usage exit).
    """
    match = _TIME.match(text.strip())
    if not match:
        raise CliError(f"--time must look like HH:MM:SS (or D-HH:MM:SS), got {text!r}", exit_code=USAGE_EXIT)
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise CliError(f"--time {text}: the limit must be above zero", exit_code=USAGE_EXIT)
    return -(-total // 60)


def parse_slurm_options(values: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs of `--slurm-option` (e.g. `account=abc`, `mem=64G`).

    Raises:
        CliError: an item without `=` or with an empty key (usage exit).
    """
    options = {}
    for value in values:
        key, separator, item = value.partition("=")
        if not separator or not key.strip():
            raise CliError(
                f"--slurm-option must look like KEY=VALUE (e.g. account=abc), got {value!r}",
                exit_code=USAGE_EXIT,
            )
        options[key.strip().removeprefix("--")] = item.strip()
    return options


def shard_argv(child_args: Sequence[str], *, index: int, count: int, jobs_per_gpu: int) -> list[str]:
    """The `carebench` arguments of shard `index` of `count` (the command each array job runs)."""
    return [
        "run",
        *child_args,
        "--shard",
        f"{index}/{count}",
        "--jobs-per-gpu",
        str(jobs_per_gpu),
        "--no-report",
    ]


def unfinished_shards(specs: Sequence[RunSpec], count: int, store: RunStore) -> dict[int, int]:
    """Shard index -> its unfinished runs, for the shards that still have some."""
    pending = {}
    for index in range(count):
        missing = sum(store.status(spec.run_id) is not RunStatus.DONE for spec in shard(specs, index, count))
        if missing:
            pending[index] = missing
    return pending


class ShardCommand:
    """What an array job runs on its node: `carebench <argv>` as a child process.

    Requeued as it is after a timeout or a preemption (submitit calls `checkpoint`): the shard
    resumes, since its finished runs are skipped and an interrupted run is redone.
    """

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)

    def __call__(self) -> None:
        """Run the shard; raise when it fails, so that submitit records the job as failed.

        Raises:
            RuntimeError: the shard exited with a non-zero code.
        """
        from carebench_cli.run_cmd import CHILD_ENTRY, end_with_parent

        # The shard stops with this process (a cancelled or killed job leaves no training behind).
        process = subprocess.run(
            [sys.executable, "-c", CHILD_ENTRY, *self.argv],
            check=False,
            preexec_fn=end_with_parent if sys.platform == "linux" else None,
        )
        if process.returncode != 0:
            raise RuntimeError(f"carebench {' '.join(self.argv)} exited with code {process.returncode}")

    def checkpoint(self) -> Any:
        """Resubmit the same shard (submitit's requeue hook)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


@dataclass(frozen=True)
class SubmittedShard:
    """One array job: the shard it runs and submitit's handle."""

    index: int
    job: Any


def submit_shards(
    options: ClusterOptions, *, argvs: Mapping[int, list[str]], folder: Path, name: str = "carebench"
) -> list[SubmittedShard]:
    """Submit one job per shard as a job array (SLURM) or as local processes.

    Args:
        options: executor and resources.
        argvs: shard index -> its `carebench` arguments (`shard_argv`).
        folder: submitit's folder (job files and logs, `<folder>/<job id>/`).
        name: the jobs' name.

    Returns:
        The submitted jobs, in shard order.
    """
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=options.executor)
    parameters: dict[str, Any] = {
        "name": name,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": options.gpus,
        "cpus_per_task": options.cpus,
        "timeout_min": time_minutes(options.time),
    }
    if options.executor == "slurm":
        parameters["slurm_array_parallelism"] = options.array_parallelism
        if options.partition:
            parameters["slurm_partition"] = options.partition
        if options.slurm_options:
            parameters["slurm_additional_parameters"] = dict(options.slurm_options)
    executor.update_parameters(**parameters)
    indices = sorted(argvs)
    with executor.batch():
        jobs = [executor.submit(ShardCommand(argvs[index])) for index in indices]
    return [SubmittedShard(index, job) for index, job in zip(indices, jobs, strict=True)]


def _job_log(job: Any) -> Path:
    """Where a job's `carebench` output goes (its progress and errors are on stderr)."""
    return Path(job.paths.stderr)


def follow(
    submitted: Sequence[SubmittedShard],
    *,
    specs: Sequence[RunSpec],
    store: RunStore,
    console: Console,
    poll_seconds: float,
) -> list[tuple[SubmittedShard, BaseException]]:
    """Show finished runs and job states until every job has ended.

    Returns:
        The jobs that failed (or never completed), with submitit's error.
    """
    columns = (
        TextColumn("[bold]{task.description:<5}"),
        BarColumn(bar_width=32),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=console) as progress:
        runs = progress.add_task("runs", total=len(specs), detail="")
        jobs = progress.add_task("jobs", total=len(submitted), detail="")
        while True:
            ended = sum(item.job.done() for item in submitted)
            states: dict[str, int] = {}
            for item in submitted:
                state = str(item.job.state)
                states[state] = states.get(state, 0) + 1
            done = sum(store.status(spec.run_id) is RunStatus.DONE for spec in specs)
            progress.update(runs, completed=done)
            progress.update(
                jobs,
                completed=ended,
                detail=", ".join(f"{count} {state.lower()}" for state, count in sorted(states.items())),
            )
            if ended == len(submitted):
                break
            time.sleep(poll_seconds)
    failures = []
    for item in submitted:
        error = item.job.exception()
        if error is not None:
            failures.append((item, error))
    return failures


def describe_failures(failures: Sequence[tuple[SubmittedShard, BaseException]], count: int) -> str:
    """One line per failed job: its shard, its id and where its log is."""
    return "; ".join(
        f"shard {item.index}/{count} (job {item.job.job_id}, log {_job_log(item.job)})"
        for item, _ in failures
    )
