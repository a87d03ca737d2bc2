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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from carebench_cli.config import RunConfig, check_model_names, check_names, read_toml, resolve_config
from carebench_cli.errors import USAGE_EXIT, CliError, handle_errors
from carebench_cli.grid import RunSpec, expand_grid, parse_shard, shard
from carebench_cli.progress import FinishedRow, GridProgress
from carebench_cli.run_store import METRICS_FILE, RunStatus, RunStore

logger = logging.getLogger(__name__)


def _names(values: list[str] | None) -> list[str] | None:
    """Repeatable and comma-separated names: `-m lstm -m drfuse` or `-m lstm,drfuse`."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


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


_ENTRY = "from carebench_cli.main import app; app()"
_POLL_SECONDS = 0.5


def _end_with_parent() -> None:
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
    jobs: int,
    child_args: list[str],
    shard_spec: str | None,
    store: RunStore,
    ui: GridProgress,
) -> None:
    """Run `todo` in `jobs` child processes, each a sub-shard of this shard; the parent shows progress.

    Children are plain `carebench run --shard ...` processes (no shared state, no pickled objects):
    shard I of N splits into sub-shards I + N*j of N*jobs, which partition it exactly. Each child
    logs to `<out>/logs/job-<j>.log`.
    """
    index, count = parse_shard(shard_spec) if shard_spec is not None else (0, 1)
    logs = store.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    children: list[tuple[int, Path, subprocess.Popen[bytes]]] = []
    pending = {spec.run_id: spec for spec in todo}
    try:
        for job in range(jobs):
            log = logs / f"job-{job}.log"
            sub_shard = f"{index + count * job}/{count * jobs}"
            command = [sys.executable, "-c", _ENTRY, "run", *child_args, "--shard", sub_shard, "--jobs", "1"]
            with log.open("wb") as handle:
                process = subprocess.Popen(
                    [*command, "--no-report"],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_end_with_parent if sys.platform == "linux" else None,
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
    if pending:
        raise CliError(f"{len(pending)} run(s) did not finish; see the job logs in {logs}")


MAX_AUTO_JOBS = 8


def auto_jobs(config: RunConfig, device: str) -> int:
    """Parallel runs when `--jobs` is not given: one per core for the quick profile on CPU, else 1.

    The quick profile's models train fastest on one thread each (`torch_threads`), so a CPU machine
    trains one run per core (at most `MAX_AUTO_JOBS`); the 24-run default grid on 2 cores takes about
    half the time of one process. A GPU, the paper profile or an explicit `threads` keep one process.
    """
    if device != "cpu" or config.profile != "quick" or config.threads:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_JOBS))


def run_grid(
    config: RunConfig,
    *,
    shard_spec: str | None,
    write_report: bool,
    console: Console,
    jobs: int = 1,
    child_args: list[str] | None = None,
) -> Path:
    """Run (or resume) the grid of `config`, then write the report unless sharded.

    Args:
        config: the resolved run config.
        shard_spec: `I/N` to run one shard only.
        write_report: write `<out>/report` at the end (never for a shard).
        console: where progress goes.
        jobs: parallel child processes (each a sub-shard); 1 = train in this process; 0 = `auto_jobs`.
        child_args: the command-line arguments that reproduce `config` in a child (needed when jobs > 1).

    Returns:
        The run store directory.
    """
    from carebench_cli.pipeline import (
        RunHooks,
        bundled_defaults,
        execute_run,
        resolve_device,
        resolve_model_weights,
    )
    from carebench_data.tasks import read_manifest, task_specs
    from carebench_models import available_models

    # Models and their CXR weights need no dataset: a missing weights file stops the run before the
    # (possibly long) dataset preparation and before any training.
    config = check_model_names(config, known_models=available_models())
    weights = resolve_model_weights(config)
    dataset_dir = prepare_dataset(config, console)
    task_infos = task_specs(dataset_dir)
    config = check_names(config, known_models=available_models(), known_tasks=list(task_infos))
    dataset_hash = str(read_manifest(dataset_dir)["content_hash"])
    specs = expand_grid(
        config, dataset_hash=dataset_hash, defaults=bundled_defaults, weights=weights.__getitem__
    )
    grid_size = len(specs)
    if shard_spec is not None:
        index, count = parse_shard(shard_spec)
        specs = shard(specs, index, count)
    device = resolve_device(config.device)
    jobs = jobs or auto_jobs(config, device)
    with torch_threads(config, device) as threads:
        preflight(specs, task_infos, dataset_dir)

        store = RunStore(config.out)
        done = [spec for spec in specs if store.status(spec.run_id) is RunStatus.DONE]
        todo = [spec for spec in specs if store.status(spec.run_id) is not RunStatus.DONE]
        redo = [spec for spec in todo if store.status(spec.run_id) is not RunStatus.ABSENT]
        shard_text = f", shard {shard_spec}: {len(specs)} runs" if shard_spec is not None else ""
        console.print(
            f"[bold]carebench run[/]: {grid_size} runs in the grid{shard_text}; {len(done)} finished, "
            f"{len(todo)} to run ({len(redo)} unfinished to redo); dataset {dataset_dir} ({dataset_hash[:12]}); "
            f"profile {config.profile}, device {device}, {jobs} job(s) of {threads} CPU thread(s); store {config.out}"
        )
        with GridProgress(len(specs), console=console) as ui:
            for spec in done:
                ui.finish_run(_cached_row(store, spec))
            if jobs > 1 and len(todo) > 1:
                arguments = [*(child_args or []), "--dataset", str(dataset_dir)]
                _run_jobs(todo, jobs=jobs, child_args=arguments, shard_spec=shard_spec, store=store, ui=ui)
                todo = []
            for spec in todo:
                ui.start_run(spec)
                result = execute_run(
                    spec,
                    store=store,
                    dataset_dir=dataset_dir,
                    task_info=task_infos[spec.task],
                    device=device,
                    hooks=RunHooks(on_epoch=ui.on_epoch, on_batch=ui.on_batch, on_phase=ui.set_phase),
                )
                ui.finish_run(
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
        if write_report and shard_spec is None:
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
            help="Runs trained in parallel, one child process each (CPU: up to one per core); "
            "default: one per core for the quick profile on CPU, else 1.",
        ),
    ] = 0,
) -> None:
    """Train and evaluate the benchmark grid (resumable), then write the report."""
    flags = _flags(
        dataset=dataset,
        models=_names(models),
        tasks=_names(tasks),
        profile=profile,
        cxr_weights=cxr_weights,
        device=device,
        out=out,
    )
    run_config = load_run_config(config, flags)
    console = Console(stderr=True)
    child_args = [
        *(["--config", str(config)] if config is not None else []),
        *(["--models", ",".join(flags["models"])] if flags["models"] else []),
        *(["--tasks", ",".join(flags["tasks"])] if flags["tasks"] else []),
        *(["--profile", profile] if profile else []),
        *(["--cxr-weights", cxr_weights] if cxr_weights else []),
        *(["--device", device] if device else []),
        "--out",
        str(run_config.out),
    ]
    run_grid(
        run_config,
        shard_spec=shard_spec,
        write_report=report,
        console=console,
        jobs=jobs,
        child_args=child_args,
    )
