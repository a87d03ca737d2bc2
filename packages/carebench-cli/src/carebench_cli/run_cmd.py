"""`carebench run`: train and evaluate the benchmark grid, resumable, then write the report.

With no arguments it generates the synthetic demo dataset once (cached under `$CAREBENCH_CACHE`,
default `./.carebench/`), runs every registered model on the three tasks with the quick profile and
writes `runs/report/`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from carebench_cli.config import (
    RunConfig,
    check_model_names,
    check_names,
    check_override_types,
    read_toml,
    resolve_config,
)
from carebench_cli.errors import USAGE_EXIT, CliError, handle_errors
from carebench_cli.grid import RunSpec, expand_grid, parse_shard, shard
from carebench_cli.placement import (
    JobSlot,
    Placement,
    available_cpus,
    loader_workers_for,
    memory_fraction,
    plan_jobs,
    select_gpus,
    visible_gpus,
)
from carebench_cli.progress import FinishedRow, GridProgress
from carebench_cli.run_store import METRICS_FILE, RunStatus, RunStore
from carebench_data.locks import LockHeldError, LockInfo
from carebench_data.outputs import check_output_dir

logger = logging.getLogger(__name__)


def _names(values: list[str] | None, *, option: str) -> list[str] | None:
    """Repeatable and comma-separated names: `-m lstm -m drfuse` or `-m lstm,drfuse`.

    Raises:
        CliError: the option was given without a name (`--models ,`), which must not mean "all".
    """
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise CliError(
            f"{option} {','.join(values)!r} names nothing; name at least one, or leave {option} out",
            exit_code=USAGE_EXIT,
        )
    return names


def _flags(**values: Any) -> dict[str, Any]:
    """Command-line values; None and empty lists (option not given) count as not given."""
    return {key: (None if value in ([], ()) else value) for key, value in values.items()}


def load_run_config(config_file: Path | None, flags: dict[str, Any]) -> RunConfig:
    """Resolve flag > TOML file > default (names are checked later, against registry and dataset)."""
    file_values = read_toml(config_file) if config_file is not None else {}
    base_dir = config_file.parent if config_file is not None else None
    return resolve_config(file_values=file_values, flags=flags, base_dir=base_dir)


def prepare_dataset(config: RunConfig, console: Console) -> Path:
    """The dataset directory: the configured one, or the cached synthetic demo (built on first use)."""
    if config.dataset is not None:
        if not (config.dataset / "manifest.json").is_file():
            raise CliError(
                f"--dataset {config.dataset}: not a carebench dataset directory (no manifest.json); "
                "build one with `carebench data build`",
                exit_code=USAGE_EXIT,
            )
        return config.dataset
    from carebench_cli.demo import ensure_demo_dataset

    return ensure_demo_dataset(console=console)


def preflight(specs: list[RunSpec], task_infos: dict[str, Any], dataset_dir: Path) -> None:
    """Build each distinct model config and trainer config once, so a bad override fails before training.

    The models load their CXR weights here too, so a weights file that does not fit the CNN fails now.
    """
    from carebench_cli.pipeline import feature_count, model_overrides, train_config_values
    from carebench_models import TaskSpec, create_model
    from carebench_models.training import TrainConfig

    features = feature_count(dataset_dir)
    seen: set[str] = set()
    for spec in specs:
        overrides = model_overrides(spec, features)
        key = json.dumps([spec.model, spec.task, spec.profile, overrides, dict(spec.train)], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        task = TaskSpec.from_info(task_infos[spec.task])
        create_model(spec.model, task=task, profile=spec.profile, **overrides)
        TrainConfig.for_profile(spec.profile, **train_config_values(spec.train))


@contextlib.contextmanager
def torch_threads(config: RunConfig, device: str) -> Iterator[int]:
    """Apply the `threads` setting to torch for the block (yields the count in use), then restore it."""
    import torch

    previous = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    elif config.profile == "quick" and device == "cpu":
        torch.set_num_threads(1)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _locks_released_on_exit(store: RunStore) -> Iterator[None]:
    """Release the store's run locks however the block ends, SIGTERM included (it becomes SystemExit)."""

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        store.release_all()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _elsewhere_row(spec: RunSpec, holder: LockInfo) -> FinishedRow:
    return FinishedRow(
        spec=spec,
        status=f"running elsewhere (pid {holder.pid} on {holder.host})",
        epochs=None,
        val_metric=None,
        test_metric=None,
        test_metric_name="",
        seconds=None,
    )


def _cached_row(store: RunStore, spec: RunSpec, *, status: str = "cached") -> FinishedRow:
    metrics = json.loads((store.run_dir(spec.run_id) / METRICS_FILE).read_text(encoding="utf-8"))
    primary = metrics.get("primary_metric", "")
    return FinishedRow(
        spec=spec,
        status=status,
        epochs=metrics.get("epochs"),
        val_metric=metrics.get("val", {}).get(primary),
        test_metric=metrics.get("test", {}).get(spec.setting_name("natural"), {}).get(primary),
        test_metric_name=primary.removesuffix("_score"),
        seconds=metrics.get("seconds"),
    )


CHILD_ENTRY = "from carebench_cli.main import app; app()"
"""`python -c` program of a child `carebench` process (the interpreter and environment of this one)."""
_POLL_SECONDS = 0.5


def end_with_parent() -> None:
    """In a job child before exec (Linux): ask the kernel for SIGTERM when the parent `carebench run` dies.

    Without it a SIGKILLed parent would leave its jobs training on; with it they stop, and their
    unfinished run directories (no `DONE`) are redone by the next `carebench run`.
    """
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _run_jobs(
    todo: list[RunSpec],
    *,
    slots: list[JobSlot],
    child_args: list[str],
    shard_spec: str | None,
    store: RunStore,
    ui: GridProgress,
) -> list[RunSpec]:
    """Run `todo` in one child process per slot, each a sub-shard of this shard; the parent shows progress.

    Children are plain `carebench run --shard ...` processes (no shared state, no pickled objects):
    shard I of N splits into sub-shards I + N*j of N*jobs, which partition it exactly. Each child
    logs to `<out>/logs/job-<j>.log`, takes each run's lock itself and is placed by its slot (its GPU,
    memory share, threads and loader workers).

    Returns:
        The runs that are not done: the children (all of which exited cleanly) skipped them because
        another process held them at the time.
    """
    index, count = parse_shard(shard_spec) if shard_spec is not None else (0, 1)
    logs = store.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children: list[tuple[int, Path, subprocess.Popen[bytes]]] = []
    pending = {spec.run_id: spec for spec in todo}
    jobs = len(slots)
    try:
        for slot in slots:
            job = slot.job
            log = logs / f"job-{job}.log"
            sub_shard = f"{index + count * job}/{count * jobs}"
            command = [
                sys.executable,
                "-c",
                CHILD_ENTRY,
                "run",
                *child_args,
                "--shard",
                sub_shard,
                "--jobs",
                "1",
            ]
            with log.open("wb") as handle:
                process = subprocess.Popen(
                    [*command, *slot.args(), "--no-report"],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **slot.env()},
                    preexec_fn=end_with_parent if sys.platform == "linux" else None,
                )
            children.append((job, log, process))
        while True:
            exited = all(process.poll() is not None for _, _, process in children)
            for run_id in [run_id for run_id in pending if store.status(run_id) is RunStatus.DONE]:
                ui.finish_run(_cached_row(store, pending.pop(run_id), status="done"))
            ui.show_running(
                [spec for spec in pending.values() if store.status(spec.run_id) is RunStatus.PARTIAL]
            )
            if exited:
                break
            time.sleep(_POLL_SECONDS)
    except BaseException:
        for _, _, process in children:
            if process.poll() is None:
                process.terminate()
                process.wait()
        raise
    for job, log, process in children:
        if process.returncode != 0:
            raise CliError(f"job {job} failed (exit code {process.returncode}); see its log {log}")
    return [spec for spec in pending.values() if store.status(spec.run_id) is not RunStatus.DONE]


_WAIT_SECONDS = 2.0


class _Trainer:
    """Trains the runs of a grid in this process, one at a time, each under its lock."""

    def __init__(
        self,
        store: RunStore,
        ui: GridProgress,
        console: Console,
        *,
        dataset_dir: Path,
        task_infos: dict[str, Any],
        device: str,
        placement: Placement | None = None,
    ) -> None:
        self.store, self.ui, self.console = store, ui, console
        self.dataset_dir, self.task_infos, self.device = dataset_dir, task_infos, device
        self.placement = placement or Placement()
        self.trained = 0
        self.finished_meanwhile = 0

    def train_available(self, specs: list[RunSpec]) -> list[RunSpec]:
        """Train every run of `specs` that no other live process holds; returns the ones it holds."""
        elsewhere = []
        for spec in specs:
            try:
                lock = self.store.claim(spec.run_id)
            except LockHeldError as held:
                self.ui.finish_run(_elsewhere_row(spec, held.holder), advance=False)
                elsewhere.append(spec)
                continue
            if lock.taken_over is not None:
                self.console.print(
                    f"[yellow]warning:[/] run {spec.run_id}: taking over the lock of "
                    f"{lock.taken_over.describe()}, a process that is gone"
                )
            try:
                self._train(spec)
            finally:
                self.store.release(spec.run_id)
        return elsewhere

    def _train(self, spec: RunSpec) -> None:
        from carebench_cli.pipeline import RunHooks, execute_run

        if self.store.status(spec.run_id) is RunStatus.DONE:  # finished by another process meanwhile
            self.ui.finish_run(_cached_row(self.store, spec))
            self.finished_meanwhile += 1
            return
        self.ui.start_run(spec)
        result = execute_run(
            spec,
            store=self.store,
            dataset_dir=self.dataset_dir,
            task_info=self.task_infos[spec.task],
            device=self.device,
            hooks=RunHooks(on_epoch=self.ui.on_epoch, on_batch=self.ui.on_batch, on_phase=self.ui.set_phase),
            placement=self.placement,
        )
        self.trained += 1
        self.ui.finish_run(
            FinishedRow(
                spec=spec,
                status="done",
                epochs=result.epochs,
                val_metric=result.val_metric,
                test_metric=result.test_metric,
                test_metric_name=result.test_metric_name,
                seconds=result.seconds,
            )
        )

    def wait_for(self, elsewhere: list[RunSpec]) -> list[RunSpec]:
        """Poll runs held by other processes until each is done, or train it here once it is free."""
        while elsewhere:
            time.sleep(_WAIT_SECONDS)
            waiting, free = [], []
            for spec in elsewhere:
                if self.store.status(spec.run_id) is RunStatus.DONE:
                    self.ui.finish_run(_cached_row(self.store, spec, status="done elsewhere"))
                    self.finished_meanwhile += 1
                else:
                    (free if self.store.holder(spec.run_id) is None else waiting).append(spec)
            elsewhere = waiting + self.train_available(free)
        return elsewhere


MAX_AUTO_JOBS = 8


def auto_jobs(config: RunConfig, device: str, gpus: int = 1) -> int:
    """Parallel runs when `--jobs` is not given: one per GPU on CUDA, one per core for the quick profile on CPU.

    The quick profile's models train fastest on one thread each (`torch_threads`), so a CPU machine
    trains one run per core (at most `MAX_AUTO_JOBS`); the 24-run default grid on 2 cores takes about
    half the time of one process. The paper profile or an explicit `threads` on CPU keep one process.
    """
    if device != "cpu":
        return max(1, gpus)
    if config.profile != "quick" or config.threads:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_JOBS))


def _gpu_plan(device: str, gpus: str | None) -> tuple[list[str], list[int]]:
    """The selected GPUs: their `CUDA_VISIBLE_DEVICES` entries and their torch indices (both empty on CPU).

    Raises:
        CliError: `--gpus` without CUDA, or a bad `--gpus` (usage exit).
    """
    if device == "cpu":
        if gpus is not None:
            raise CliError("--gpus needs CUDA; this run trains on the CPU", exit_code=USAGE_EXIT)
        return [], []
    import torch

    visible = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
    chosen = select_gpus(gpus, visible)
    return [visible[index] for index in chosen], chosen


def _apply_gpu_share(device: str, runs_on_gpu: int) -> None:
    """Cap this process's CUDA allocations at its share of the GPU when `runs_on_gpu` runs share it."""
    if device != "cpu" and runs_on_gpu > 1:
        import torch

        torch.cuda.set_per_process_memory_fraction(memory_fraction(runs_on_gpu), torch.device(device))


def plan_grid(
    config: RunConfig, console: Console
) -> tuple[RunConfig, Path, dict[str, Any], str, list[RunSpec]]:
    """Check the config, its models' CXR weights and the dataset, and expand the grid.

    Returns:
        (the config with its names filled, the dataset directory, task infos by name, the dataset's
        content hash, every run of the grid).
    """
    from carebench_cli.pipeline import bundled_defaults, resolve_model_weights
    from carebench_data.tasks import read_manifest, task_specs
    from carebench_models import available_models

    # Models and their CXR weights need no dataset: a missing weights file stops the run before the
    # (possibly long) dataset preparation and before any training.
    config = check_model_names(config, known_models=available_models())
    weights = resolve_model_weights(config)
    dataset_dir = prepare_dataset(config, console)
    check_output_dir(config.out, inputs=[dataset_dir], what="run store")
    task_infos = task_specs(dataset_dir)
    config = check_names(config, known_models=available_models(), known_tasks=list(task_infos))
    check_override_types(config)
    dataset_hash = str(read_manifest(dataset_dir)["content_hash"])
    specs = expand_grid(
        config, dataset_hash=dataset_hash, defaults=bundled_defaults, weights=weights.__getitem__
    )
    return config, dataset_dir, task_infos, dataset_hash, specs


def submit_grid(
    config: RunConfig,
    options: Any,
    *,
    child_args: list[str],
    write_report: bool,
    console: Console,
    poll_seconds: float = 10.0,
) -> Path:
    """Submit the shards of the grid that have unfinished runs as a job array (`--executor`).

    Args:
        config: the resolved run config.
        options: `carebench_cli.cluster.ClusterOptions`.
        child_args: the command-line arguments that reproduce `config` in a shard (absolute paths).
        write_report: with `options.wait`, write the report when every run is done.
        console: where progress goes.
        poll_seconds: how often `--wait` looks at the jobs and the store.

    Returns:
        The run store directory.

    Raises:
        CliError: with `--wait`, runs left unfinished when the jobs ended (naming the failed jobs' logs).
    """
    from carebench_cli.cluster import (
        SUBMITIT_DIR,
        describe_failures,
        follow,
        shard_argv,
        submit_shards,
        unfinished_shards,
    )

    config, dataset_dir, task_infos, dataset_hash, specs = plan_grid(config, console)
    store = RunStore(config.out)
    preflight(specs, task_infos, dataset_dir)
    count = min(options.shards or options.array_parallelism, len(specs))
    pending = unfinished_shards(specs, count, store)
    unfinished = sum(pending.values())
    where = f"{options.executor}" + (f", partition {options.partition}" if options.partition else "")
    console.print(
        f"[bold]carebench run[/]: {len(specs)} runs in the grid, {len(specs) - unfinished} finished; "
        f"{count} shard(s), {len(pending)} with unfinished runs; dataset {dataset_dir} ({dataset_hash[:12]}); "
        f"executor {where}: {options.gpus} GPU(s) and {options.cpus} CPU(s) per job, "
        f"{options.jobs_per_gpu} run(s) at once per {'GPU' if options.gpus else 'job'}, time {options.time}"
    )
    submitted = []
    if pending:
        arguments = [*child_args, "--dataset", str(dataset_dir.resolve())]
        argvs = {
            index: shard_argv(arguments, index=index, count=count, jobs_per_gpu=options.jobs_per_gpu)
            for index in pending
        }
        folder = (config.out / SUBMITIT_DIR).resolve()
        submitted = submit_shards(options, argvs=argvs, folder=folder, name=f"carebench-{config.out.name}")
        for item in submitted:
            console.print(
                f"shard {item.index}/{count}: job {item.job.job_id} ({pending[item.index]} run(s)), "
                f"log {item.job.paths.stderr}"
            )
    if not options.wait:
        if submitted:
            console.print(
                f"submitted {len(submitted)} job(s); rerun this command to resubmit the shards that have "
                f"unfinished runs; when every job is done: carebench report {config.out}"
            )
        return config.out
    failures = follow(submitted, specs=specs, store=store, console=console, poll_seconds=poll_seconds)
    left = [spec for spec in specs if store.status(spec.run_id) is not RunStatus.DONE]
    if left:
        failed = f"; failed job(s): {describe_failures(failures, count)}" if failures else ""
        raise CliError(
            f"{len(left)} of {len(specs)} run(s) unfinished when the jobs ended{failed}; "
            "rerun the same command to resubmit their shards"
        )
    console.print(f"every run of the grid is done ({len(specs)} runs)")
    if write_report:
        from carebench_cli.report_cmd import write_report as build_report

        report_dir = build_report(config.out, report_config=config.report, console=console)
        console.print(f"report: {report_dir / 'index.html'}")
    return config.out


def run_grid(
    config: RunConfig,
    *,
    shard_spec: str | None,
    write_report: bool,
    console: Console,
    jobs: int = 1,
    child_args: list[str] | None = None,
    gpus: str | None = None,
    jobs_per_gpu: int = 0,
    loader_workers: int | None = None,
    runs_per_gpu: int = 1,
) -> Path:
    """Run (or resume) the grid of `config`, then write the report unless sharded.

    Args:
        config: the resolved run config.
        shard_spec: `I/N` to run one shard only.
        write_report: write `<out>/report` at the end (never for a shard).
        console: where progress goes.
        jobs: parallel child processes (each a sub-shard); 1 = train in this process; 0 = `auto_jobs`.
        child_args: the command-line arguments that reproduce `config` in a child (needed when jobs > 1).
        gpus: `all` (None) or comma-separated torch indices of the GPUs to spread the jobs over.
        jobs_per_gpu: when > 0, jobs = this × the selected GPUs (× 1 on CPU) instead of `jobs`.
        loader_workers: DataLoader workers per run; None = auto (`loader_workers_for` the cores).
        runs_per_gpu: runs that share this process's GPU (set by a parent for its children): caps
            the process at its share of the GPU's memory and enters each run's compute record.

    Returns:
        The run store directory.
    """
    from carebench_cli.pipeline import resolve_device

    config, dataset_dir, task_infos, dataset_hash, specs = plan_grid(config, console)
    grid_size = len(specs)
    if shard_spec is not None:
        index, count = parse_shard(shard_spec)
        specs = shard(specs, index, count)
    device = resolve_device(config.device)
    gpu_entries, gpu_indices = _gpu_plan(device, gpus)
    if jobs_per_gpu:
        jobs = jobs_per_gpu * max(1, len(gpu_entries))
    jobs = jobs or auto_jobs(config, device, len(gpu_entries))
    if gpu_indices and gpu_indices[0] != 0:
        device = f"cuda:{gpu_indices[0]}"  # runs trained in this process use the first selected GPU
    _apply_gpu_share(device, runs_per_gpu)
    placement = Placement(
        loader_workers=loader_workers_for(device, available_cpus())
        if loader_workers is None
        else loader_workers,
        runs_on_device=runs_per_gpu,
    )
    store = RunStore(config.out)
    with torch_threads(config, device) as threads, _locks_released_on_exit(store):
        preflight(specs, task_infos, dataset_dir)

        statuses = {spec.run_id: store.status(spec.run_id) for spec in specs}
        done = [spec for spec in specs if statuses[spec.run_id] is RunStatus.DONE]
        todo = [spec for spec in specs if statuses[spec.run_id] is not RunStatus.DONE]
        redo = [spec for spec in todo if statuses[spec.run_id] is not RunStatus.ABSENT]
        busy = sum(store.holder(spec.run_id) is not None for spec in todo)
        shard_text = f", shard {shard_spec}: {len(specs)} runs" if shard_spec is not None else ""
        busy_text = f", {busy} of them running in another process" if busy else ""
        console.print(
            f"[bold]carebench run[/]: {grid_size} runs in the grid{shard_text}; {len(done)} finished, "
            f"{len(todo)} to run ({len(redo)} unfinished to redo{busy_text}); dataset {dataset_dir} ({dataset_hash[:12]}); "
            f"profile {config.profile}, device {device}, {jobs} job(s) of {threads} CPU thread(s); store {config.out}"
        )
        with GridProgress(len(specs), console=console) as ui:
            for spec in done:
                ui.finish_run(_cached_row(store, spec))
            runner = _Trainer(
                store,
                ui,
                console,
                dataset_dir=dataset_dir,
                task_infos=task_infos,
                device=device,
                placement=placement,
            )
            if jobs > 1 and len(todo) > 1:
                arguments = [*(child_args or []), "--dataset", str(dataset_dir)]
                slots = plan_jobs(
                    jobs, gpus=gpu_entries, cpus=available_cpus(), loader_workers=loader_workers
                )
                skipped = _run_jobs(
                    todo, slots=slots, child_args=arguments, shard_spec=shard_spec, store=store, ui=ui
                )
                runner.trained = len(todo) - len(skipped)
                elsewhere = runner.train_available(skipped)  # those freed meanwhile are trained here
            else:
                elsewhere = runner.train_available(todo)
            wait = write_report and shard_spec is None
            if elsewhere and wait:
                # The report needs the whole grid: wait for the other processes, and take over any
                # run they drop (released or dead) instead of reporting a partial grid.
                ui.progress.console.print(f"waiting for {len(elsewhere)} run(s) that other processes train")
                elsewhere = runner.wait_for(elsewhere)
        console.print(
            f"{runner.trained} run(s) trained by this command, {runner.finished_meanwhile} finished meanwhile "
            f"by other processes, {len(elsewhere)} running in other processes"
        )
        if elsewhere:
            console.print(
                f"{len(elsewhere)} run(s) are being trained by other processes (see the table); "
                f"when they finish: carebench report {config.out}"
            )
        elif wait:
            from carebench_cli.report_cmd import write_report as build_report

            report_dir = build_report(config.out, report_config=config.report, console=console)
            console.print(f"report: {report_dir / 'index.html'}")
        elif shard_spec is not None:
            console.print(
                f"shard {shard_spec} finished; when every shard is done: carebench report {config.out}"
            )
    return config.out


@handle_errors
def run_command(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML run config (flags override its values).")
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option("--dataset", help="Benchmark dataset directory; default: the synthetic demo."),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models", "-m", help="Model name(s), repeatable or comma-separated; default: all registered."
        ),
    ] = None,
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--tasks", "-t", help="Task name(s), repeatable or comma-separated; default: all three."
        ),
    ] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="quick (CPU-sized) or paper.")] = None,
    cxr_weights: Annotated[
        str | None,
        typer.Option(
            "--cxr-weights",
            help="Initial CXR encoder weights: none (random), imagenet, imagenet_v1 or a weights file; "
            "default: the profile's (paper: ImageNet, fetched once with `carebench models weights "
            "--download`; quick: none).",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run store directory (default: runs).")
    ] = None,
    shard_spec: Annotated[
        str | None,
        typer.Option("--shard", help="Run only shard I of N (0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/8."),
    ] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report when done.")] = True,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=0,
            help="Runs trained in parallel, one child process each, spread over the GPUs (CUDA) or the "
            "cores (CPU); default: one per GPU on CUDA, one per core for the quick profile on CPU, else 1.",
        ),
    ] = 0,
    gpus: Annotated[
        str | None,
        typer.Option("--gpus", help="GPUs to spread the jobs over: all (default) or indices like 0,1,2,3."),
    ] = None,
    jobs_per_gpu: Annotated[
        int,
        typer.Option(
            "--jobs-per-gpu",
            min=0,
            help="Runs trained at once on each GPU (on CPU: in all); instead of --jobs. With --executor: "
            "per GPU of each job (default 1).",
        ),
    ] = 0,
    loader_workers: Annotated[
        int | None,
        typer.Option(
            "--loader-workers",
            min=0,
            help="DataLoader worker processes per run (pinned memory on CUDA); default: none on CPU, "
            "on CUDA the run's share of the cores but one, at most 4.",
        ),
    ] = None,
    runs_per_gpu: Annotated[
        int,
        typer.Option("--runs-per-gpu", min=1, hidden=True, help="Set by a parent run for its children."),
    ] = 1,
    executor: Annotated[
        str | None,
        typer.Option(
            "--executor",
            help="Submit the grid as a job array of shards through submitit: slurm, or local "
            "(processes on this machine).",
        ),
    ] = None,
    shards: Annotated[
        int,
        typer.Option(
            "--shards",
            min=0,
            help="With --executor: shards (jobs) of the grid; default: --array-parallelism.",
        ),
    ] = 0,
    partition: Annotated[
        str | None, typer.Option("--partition", help="With --executor slurm: the SLURM partition.")
    ] = None,
    gpus_per_job: Annotated[
        int | None,
        typer.Option(
            "--gpus-per-job", min=0, help="With --executor: GPUs per job (default: 1 on slurm, 0 local)."
        ),
    ] = None,
    array_parallelism: Annotated[
        int | None,
        typer.Option("--array-parallelism", min=1, help="With --executor: jobs running at once (default 8)."),
    ] = None,
    time_limit: Annotated[
        str | None,
        typer.Option("--time", help="With --executor: time limit per job, HH:MM:SS (default 24:00:00)."),
    ] = None,
    cpus_per_job: Annotated[
        int | None,
        typer.Option(
            "--cpus-per-job", min=1, help="With --executor: cores per job (default: 8 per GPU, at least 2)."
        ),
    ] = None,
    slurm_option: Annotated[
        list[str] | None,
        typer.Option(
            "--slurm-option",
            help="With --executor slurm: an #SBATCH option as KEY=VALUE (account=abc, qos=high, mem=64G); "
            "repeatable.",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="With --executor: follow the jobs with a progress bar and write the report when they are done.",
        ),
    ] = False,
) -> None:
    """Train and evaluate the benchmark grid (resumable), then write the report."""
    cluster_flags = {
        "--shards": shards or None,
        "--partition": partition,
        "--gpus-per-job": gpus_per_job,
        "--array-parallelism": array_parallelism,
        "--time": time_limit,
        "--cpus-per-job": cpus_per_job,
        "--slurm-option": slurm_option or None,
        "--wait": wait or None,
    }
    if executor is None:
        given = [name for name, value in cluster_flags.items() if value is not None]
        if given:
            raise CliError(f"{', '.join(given)} need(s) --executor slurm or local", exit_code=USAGE_EXIT)
    elif shard_spec is not None or jobs:
        raise CliError(
            "--executor shards the grid itself: leave out --shard and --jobs (use --shards and --jobs-per-gpu)",
            exit_code=USAGE_EXIT,
        )
    if jobs and jobs_per_gpu and executor is None:
        raise CliError("give --jobs or --jobs-per-gpu, not both", exit_code=USAGE_EXIT)
    flags = _flags(
        dataset=dataset,
        models=_names(models, option="--models"),
        tasks=_names(tasks, option="--tasks"),
        profile=profile,
        cxr_weights=cxr_weights,
        device=device,
        out=out,
    )
    run_config = load_run_config(config, flags)
    console = Console(stderr=True)
    child_args = [
        *(["--config", str(config.resolve())] if config is not None else []),
        *(["--models", ",".join(flags["models"])] if flags["models"] else []),
        *(["--tasks", ",".join(flags["tasks"])] if flags["tasks"] else []),
        *(["--profile", profile] if profile else []),
        *(["--cxr-weights", cxr_weights] if cxr_weights else []),
        *(["--device", device] if device else []),
        "--out",
        str(run_config.out.resolve()),
    ]
    if executor is not None:
        from carebench_cli.cluster import (
            DEFAULT_ARRAY_PARALLELISM,
            DEFAULT_TIME,
            ClusterOptions,
            parse_slurm_options,
        )

        options = ClusterOptions(
            executor=executor,
            shards=shards,
            partition=partition,
            gpus_per_job=gpus_per_job,
            jobs_per_gpu=jobs_per_gpu or 1,
            array_parallelism=array_parallelism or DEFAULT_ARRAY_PARALLELISM,
            time=time_limit or DEFAULT_TIME,
            cpus_per_job=cpus_per_job,
            slurm_options=parse_slurm_options(slurm_option or []),
            wait=wait,
        )
        loader = ["--loader-workers", str(loader_workers)] if loader_workers is not None else []
        submit_grid(
            run_config,
            options,
            child_args=[*child_args, *loader],
            write_report=report,
            console=console,
            poll_seconds=1.0 if executor == "local" else 15.0,
        )
        return
    run_grid(
        run_config,
        shard_spec=shard_spec,
        write_report=report,
        console=console,
        jobs=jobs,
        child_args=child_args,
        gpus=gpus,
        jobs_per_gpu=jobs_per_gpu,
        loader_workers=loader_workers,
        runs_per_gpu=runs_per_gpu,
    )
