"""Where the parallel runs of `carebench run --jobs N` go: GPUs, memory shares, CPU threads, loader workers.

Pure functions of the machine's facts (visible GPUs, usable cores), so the plan is tested without a GPU.
On CUDA, job j trains on GPU `j mod G` of the selected GPUs, alone on it as far as CUDA can tell
(`CUDA_VISIBLE_DEVICES` names that one GPU), with an even share of its memory; on CPU every job
gets an even share of the cores. Scheduling never changes a run: batch size, hyperparameters and
seeds are the run's own, whatever runs beside it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from carebench_cli.errors import USAGE_EXIT, CliError

GPU_MEMORY_HEADROOM = 0.9
"""Share of a GPU's memory that the runs on it may take together: the rest holds each process's CUDA
context (about 0.5 GiB each) outside the caching allocator."""
MAX_LOADER_WORKERS = 4
"""Loader worker processes per run at most: with uint8 images finished on the GPU, a few workers keep
a batch-16 run fed."""


def available_cpus() -> int:
    """Cores this process may run on (a SLURM allocation or `taskset` restricts them), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def visible_gpus(cuda_visible_devices: str | None, device_count: int) -> list[str]:
    """The GPUs this process sees, as `CUDA_VISIBLE_DEVICES` entries, in torch's numbering order.

    Args:
        cuda_visible_devices: the environment variable (None when unset): indices, UUIDs or MIG ids.
        device_count: `torch.cuda.device_count()`.

    Returns:
        One entry per visible GPU: the variable's own entries when set (so a child can be given one of
        them), else `0 .. device_count-1`.
    """
    if cuda_visible_devices is None:
        return [str(index) for index in range(device_count)]
    entries = [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()]
    return entries[:device_count]


def select_gpus(spec: str | None, visible: Sequence[str]) -> list[int]:
    """Which visible GPUs to use: `--gpus all` (or None) or a comma-separated list of torch indices.

    Returns:
        Indices into `visible`, in the given order.

    Raises:
        CliError: no GPU visible, a malformed list, a duplicate, or an index past the visible GPUs
            (usage exit).
    """
    if not visible:
        raise CliError("--gpus: no CUDA device is visible", exit_code=USAGE_EXIT)
    if spec is None or spec.strip() == "all":
        return list(range(len(visible)))
    try:
        chosen = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise CliError(
            f"--gpus must be 'all' or GPU indices like 0,1,2, got {spec!r}", exit_code=USAGE_EXIT
        ) from None
    if not chosen:
        raise CliError(f"--gpus {spec!r} names no GPU", exit_code=USAGE_EXIT)
    if len(set(chosen)) != len(chosen):
        raise CliError(f"--gpus {spec!r} names a GPU twice", exit_code=USAGE_EXIT)
    outside = [index for index in chosen if not 0 <= index < len(visible)]
    if outside:
        raise CliError(
            f"--gpus {spec!r}: no GPU {', '.join(map(str, outside))}; {len(visible)} visible "
            f"(0-{len(visible) - 1})",
            exit_code=USAGE_EXIT,
        )
    return chosen


def memory_fraction(runs_on_gpu: int) -> float:
    """The share of its GPU's memory each of `runs_on_gpu` runs may allocate (1.0 for a run alone)."""
    if runs_on_gpu < 1:
        raise ValueError(f"runs_on_gpu must be >= 1, got {runs_on_gpu}")
    return 1.0 if runs_on_gpu == 1 else GPU_MEMORY_HEADROOM / runs_on_gpu


def loader_workers_for(device: str, cpus_per_run: int) -> int:
    """Loader worker processes of one run: none on CPU (the cores train), on CUDA its cores but one (at most 4)."""
    if device == "cpu":
        return 0
    return min(MAX_LOADER_WORKERS, max(1, cpus_per_run - 1))


@dataclass(frozen=True)
class Placement:
    """How one process trains its runs: what `metrics.json` records about sharing, and the loader's workers."""

    loader_workers: int = 0
    """DataLoader worker processes per run (pinned memory on CUDA)."""
    runs_on_device: int = 1
    """Runs training at once on this process's GPU (itself included): its GPU-hours are wall time / this."""


@dataclass(frozen=True)
class JobSlot:
    """One child process of `--jobs N`."""

    job: int
    """0-based job number (its sub-shard and log name)."""
    gpu: str | None
    """`CUDA_VISIBLE_DEVICES` of the child (one GPU); None on CPU."""
    runs_on_gpu: int
    """Jobs sharing that GPU (1 on CPU)."""
    threads: int
    """CPU threads of the child (`OMP_NUM_THREADS`)."""
    loader_workers: int
    """Loader worker processes of each of its runs."""

    def env(self) -> dict[str, str]:
        """Environment variables that place the child."""
        env = {"OMP_NUM_THREADS": str(self.threads)}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    def args(self) -> list[str]:
        """Command-line options that place the child's runs."""
        args = ["--loader-workers", str(self.loader_workers)]
        if self.gpu is not None:
            args += ["--runs-per-gpu", str(self.runs_on_gpu)]
        return args


def plan_jobs(
    jobs: int, *, gpus: Sequence[str], cpus: int, loader_workers: int | None = None
) -> list[JobSlot]:
    """Spread `jobs` child processes over `gpus` round robin (CPU when empty) and share the cores.

    Args:
        jobs: N >= 1.
        gpus: `CUDA_VISIBLE_DEVICES` entries of the GPUs to use; empty = train on CPU.
        cpus: usable cores (`available_cpus`).
        loader_workers: workers per run; None = `loader_workers_for` the job's share of the cores
            (on CUDA each job's workers come out of its share: threads = share - workers, at least 1).

    Returns:
        One slot per job.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    share = max(1, cpus // jobs)
    slots = []
    for job in range(jobs):
        if not gpus:
            workers = 0 if loader_workers is None else loader_workers
            slots.append(JobSlot(job=job, gpu=None, runs_on_gpu=1, threads=share, loader_workers=workers))
            continue
        gpu = job % len(gpus)
        runs_on_gpu = len(range(gpu, jobs, len(gpus)))
        workers = loader_workers_for("cuda", share) if loader_workers is None else loader_workers
        slots.append(
            JobSlot(
                job=job,
                gpu=gpus[gpu],
                runs_on_gpu=runs_on_gpu,
                threads=max(1, share - workers),
                loader_workers=workers,
            )
        )
    return slots
