"""The `carebench` console script: one Typer app, one module per command group."""

from __future__ import annotations

from typing import Annotated

import typer

from carebench_cli import __version__

app = typer.Typer(
    name="carebench",
    help="Multimodal clinical prediction from EHR time series and chest X-rays: data, models, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"carebench {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Carebench: when does fusing the EHR with a chest X-ray help a clinical prediction."""


def _register() -> None:
    """Attach every command group; each lives in its own module."""
    from carebench_cli import eval_cmd

    app.command("eval")(eval_cmd.eval_command)
    from carebench_cli import data_cmd

    app.add_typer(data_cmd.data_app, name="data", help="Build, verify and synthesize benchmark datasets.")
    from carebench_cli import models_cmd, report_cmd, run_cmd

    app.command("run")(run_cmd.run_command)
    app.command("report")(report_cmd.report_command)
    app.add_typer(models_cmd.models_app, name="models")


_register()
