"""`carebench report RUNS_DIR`: aggregate the finished runs into report.md, index.html and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from carebench_cli.config import ReportConfig, read_toml, resolve_config
from carebench_cli.errors import USAGE_EXIT, CliError, handle_errors
from carebench_cli.run_store import CONFIG_FILE, RunStatus, RunStore


def write_report(
    runs_dir: Path, *, report_config: ReportConfig, console: Console, out_dir: Path | None = None
) -> Path:
    """Write the report of a run store, showing what is being computed; returns the report directory."""
    from carebench_cli.report import write_report_dir

    with console.status("report: reading runs") as spinner:
        return write_report_dir(
            runs_dir,
            config=report_config,
            out_dir=out_dir,
            status=lambda message: spinner.update(f"report: {message}"),
        )


def _profiles(store: RunStore) -> set[str]:
    """Profiles of the finished runs (the report's statistics default to the largest one present)."""
    return {
        json.loads((store.run_dir(run_id) / CONFIG_FILE).read_text(encoding="utf-8"))["profile"]
        for run_id in store.run_ids()
        if store.status(run_id) is RunStatus.DONE
    }


@handle_errors
def report_command(
    runs_dir: Annotated[Path, typer.Argument(help="Run store written by `carebench run`.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report directory (default: RUNS_DIR/report).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML run config; its [report] table is used.")
    ] = None,
    n_boot: Annotated[
        int | None, typer.Option("--n-boot", help="Bootstrap replicates (default 1000).")
    ] = None,
    n_perm: Annotated[int | None, typer.Option("--n-perm", help="Permutations (default 10000).")] = None,
) -> None:
    """Aggregate finished runs with carebench_eval: CIs, paired tests, robustness, fairness, plots."""
    if not runs_dir.is_dir():
        raise CliError(f"{runs_dir}: no such run store directory", exit_code=USAGE_EXIT)
    file_values = read_toml(config).get("report", {}) if config is not None else {}
    overrides = {key: value for key, value in (("n_boot", n_boot), ("n_perm", n_perm)) if value is not None}
    profile = (
        "paper" if any(run.spec.profile == "paper" for run in RunStore(runs_dir).finished()[0]) else "quick"
    )
    report_config = resolve_config(
        file_values={"profile": profile, "report": {**file_values, **overrides}}
    ).report
    console = Console(stderr=True)
    report_dir = write_report(runs_dir, report_config=report_config, console=console, out_dir=out)
    console.print(f"report: {report_dir / 'index.html'}")
