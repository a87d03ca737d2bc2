"""`carebench run`: train and evaluate the benchmark grid, resumable, then write the report.

With no arguments it generates the synthetic demo dataset once (cached under `$CAREBENCH_CACHE`,
default `./.carebench/`), runs every registered model on the three tasks with the quick profile and
writes `runs/report/`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from carebench_cli.config import RunConfig, check_names, read_toml, resolve_config
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
    """Build each distinct model config and trainer config once, so a bad override fails before training."""
    from carebench_cli.pipeline import feature_count, train_config_values
    from carebench_models import TaskSpec, create_model
    from carebench_models.training import TrainConfig

    features = feature_count(dataset_dir)
    seen: set[str] = set()
    for spec in specs:
        key = json.dumps(
            [spec.model, spec.task, spec.profile, dict(spec.hparams), dict(spec.train)], sort_keys=True
        )
        if key in seen:
            continue
        seen.add(key)
        task = TaskSpec.from_info(task_infos[spec.task])
        create_model(
            spec.model, task=task, profile=spec.profile, **{"ehr_features": features, **spec.hparams}
        )
        TrainConfig.for_profile(spec.profile, **train_config_values(spec.train))


def _cached_row(store: RunStore, spec: RunSpec) -> FinishedRow:
    metrics = json.loads((store.run_dir(spec.run_id) / METRICS_FILE).read_text(encoding="utf-8"))
    primary = metrics.get("primary_metric", "")
    return FinishedRow(
        spec=spec,
        status="cached",
        epochs=metrics.get("epochs"),
        val_metric=metrics.get("val", {}).get(primary),
        test_metric=metrics.get("test", {}).get(spec.setting_name("natural"), {}).get(primary),
        test_metric_name=primary.removesuffix("_score"),
        seconds=metrics.get("seconds"),
    )


def run_grid(config: RunConfig, *, shard_spec: str | None, write_report: bool, console: Console) -> Path:
    """Run (or resume) the grid of `config`, then write the report unless sharded.

    Returns:
        The run store directory.
    """
    from carebench_cli.pipeline import RunHooks, bundled_defaults, execute_run, resolve_device
    from carebench_data.tasks import read_manifest, task_specs
    from carebench_models import available_models

    dataset_dir = prepare_dataset(config, console)
    task_infos = task_specs(dataset_dir)
    config = check_names(config, known_models=available_models(), known_tasks=list(task_infos))
    dataset_hash = str(read_manifest(dataset_dir)["content_hash"])
    specs = expand_grid(config, dataset_hash=dataset_hash, defaults=bundled_defaults)
    grid_size = len(specs)
    if shard_spec is not None:
        index, count = parse_shard(shard_spec)
        specs = shard(specs, index, count)
    device = resolve_device(config.device)
    preflight(specs, task_infos, dataset_dir)

    store = RunStore(config.out)
    done = [spec for spec in specs if store.status(spec.run_id) is RunStatus.DONE]
    todo = [spec for spec in specs if store.status(spec.run_id) is not RunStatus.DONE]
    redo = [spec for spec in todo if store.status(spec.run_id) is not RunStatus.ABSENT]
    shard_text = f", shard {shard_spec}: {len(specs)} runs" if shard_spec is not None else ""
    console.print(
        f"[bold]carebench run[/]: {grid_size} runs in the grid{shard_text}; {len(done)} finished, "
        f"{len(todo)} to run ({len(redo)} unfinished to redo); dataset {dataset_dir} ({dataset_hash[:12]}); "
        f"profile {config.profile}, device {device}; store {config.out}"
    )
    with GridProgress(len(specs), console=console) as ui:
        for spec in done:
            ui.finish_run(_cached_row(store, spec))
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
        console.print(f"shard {shard_spec} finished; when every shard is done: carebench report {config.out}")
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
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run store directory (default: runs).")
    ] = None,
    shard_spec: Annotated[
        str | None,
        typer.Option("--shard", help="Run only shard I of N (0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/8."),
    ] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report when done.")] = True,
) -> None:
    """Train and evaluate the benchmark grid (resumable), then write the report."""
    flags = _flags(
        dataset=dataset, models=_names(models), tasks=_names(tasks), profile=profile, device=device, out=out
    )
    run_config = load_run_config(config, flags)
    console = Console(stderr=True)
    run_grid(run_config, shard_spec=shard_spec, write_report=report, console=console)
