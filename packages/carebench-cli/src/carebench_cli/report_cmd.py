"""`carebench report RUNS_DIR`: aggregate the finished runs into report.md, index.html and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from carebench_cli.config import ReportConfig, read_toml, resolve_config
from carebench_cli.errors import USAGE_EXIT, CliError, handle_errors
from carebench_cli.run_store import READ_FILES, RunStore


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
    min_group_n: Annotated[
        int | None,
        typer.Option("--min-group-n", help="Smallest group whose per-group numbers are shown (default 10)."),
    ] = None,
) -> None:
    """Aggregate finished runs with carebench_eval: CIs, paired tests, robustness, fairness, plots."""
    if not runs_dir.is_dir():
        raise CliError(f"{runs_dir}: no such run store directory", exit_code=USAGE_EXIT)
    file_values = read_toml(config).get("report", {}) if config is not None else {}
    if not isinstance(file_values, dict):
        raise CliError(f"run config: report must be a table, got {file_values!r}", exit_code=USAGE_EXIT)
    flags = (("n_boot", n_boot), ("n_perm", n_perm), ("min_group_n", min_group_n))
    overrides = {key: value for key, value in flags if value is not None}
    finished = RunStore(runs_dir).finished(files=READ_FILES)[0]
    profile = "paper" if any(run.spec.profile == "paper" for run in finished) else "quick"
    report_config = resolve_config(
        file_values={"profile": profile, "report": {**file_values, **overrides}}
    ).report
    console = Console(stderr=True)
    report_dir = write_report(runs_dir, report_config=report_config, console=console, out_dir=out)
    console.print(f"report: {report_dir / 'index.html'}")
