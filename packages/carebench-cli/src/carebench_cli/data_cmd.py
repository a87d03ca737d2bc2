"""`carebench data ...`: build a benchmark dataset from raw MIMIC files, verify it, make synthetic data."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from carebench_cli.errors import handle_errors

data_app = typer.Typer(
    help="Build, verify and synthesize benchmark datasets (MIMIC-IV + MIMIC-CXR-JPG).",
    no_args_is_help=True,
)
_console = Console(stderr=True, highlight=False)


class _StageHandler(logging.Handler):
    """Shows the build stage that the library logs (`S2: staging events`) as the bar's description, and its warnings."""

    def __init__(self, progress: Progress, task: int) -> None:
        super().__init__(level=logging.INFO)
        self.progress, self.task = progress, task

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.progress.console.print(f"[yellow]warning:[/] {escape(message)}")
        elif record.name == "carebench_data.build" and message[:1] == "S" and ":" in message:
            self.progress.update(self.task, description=message)  # type: ignore[arg-type]


@data_app.command("build")
@handle_errors
def build_command(
    mimic_iv: Annotated[Path, typer.Option("--mimic-iv", help="MIMIC-IV root (holds hosp/ and icu/).")],
    out: Annotated[Path, typer.Option("--out", help="Dataset directory to create.")],
    mimic_cxr: Annotated[
        Path | None, typer.Option("--mimic-cxr", help="MIMIC-CXR-JPG root (metadata tables and files/).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Build configuration TOML (spec/data.md §2); flags win.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing dataset directory.")
    ] = False,
    no_cxr: Annotated[bool, typer.Option("--no-cxr", help="Build EHR only (has_cxr all false).")] = False,
    registry: Annotated[
        str | None,
        typer.Option("--registry", help="Feature set: default (17), extended (47) or a TOML path."),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--mimic-iv-version", help="auto, 2.2, 3.1 or 1.0 (default: auto).")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Image decoding threads.")] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not reuse staged events from a previous build.")
    ] = False,
) -> None:
    """Build the benchmark dataset directory from raw MIMIC-IV (+ MIMIC-CXR-JPG) files."""
    from carebench_data.build import PROGRESS_TOTAL, build_dataset, check_build_output
    from carebench_data.config import BuildConfig

    overrides = {
        "mimic_iv": str(mimic_iv),
        "mimic_cxr": None if mimic_cxr is None else str(mimic_cxr),
        "out": str(out),
        "mimic_iv_version": version,
        "features.registry": registry,
        "cxr.workers": workers,
        "build.overwrite": True if overwrite else None,
        "cxr.enabled": False if no_cxr else None,
        "build.cache": False if no_cache else None,
    }
    build_config = BuildConfig.from_toml(config, **overrides)
    check_build_output(build_config)
    progress = Progress(
        TextColumn("[bold]{task.description:<40}"),
        BarColumn(bar_width=32),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
    )
    library_logger = logging.getLogger("carebench_data")
    with progress:
        task = progress.add_task("starting", total=PROGRESS_TOTAL)
        handler = _StageHandler(progress, task)
        library_logger.addHandler(handler)
        previous_level = library_logger.level
        library_logger.setLevel(logging.INFO)
        try:
            path = build_dataset(
                build_config, progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
        except BaseException:
            progress.live.transient = True  # the error is the one line left on the screen
            raise
        finally:
            library_logger.removeHandler(handler)
            library_logger.setLevel(previous_level)
    _print_summary(path)


def _print_summary(path: Path) -> None:
    import json

    manifest = json.loads((path / "manifest.json").read_text())
    table = Table(title=f"cohort ({path})", show_edge=False)
    for column in ("step", "stays", "subjects", "removed"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step in manifest["counts"]["cohort"]:
        name = step["step"] if step["enabled"] else f"{step['step']} (off)"
        table.add_row(name, str(step["stays"]), str(step["subjects"]), str(step["removed"]))
    _console.print(table)
    ehr, cxr = manifest["shapes"]["ehr"], manifest["shapes"]["cxr"]
    _console.print(
        f"ehr.npy {ehr}, cxr.npy {cxr}, content hash {manifest['content_hash'][:16]}; "
        f"{len(manifest['warnings'])} warning(s) in manifest.json"
    )


@data_app.command("verify")
@handle_errors
def verify_command(
    path: Annotated[Path, typer.Argument(help="A built dataset directory, or a MIMIC-IV root with --raw.")],
    raw: Annotated[
        bool, typer.Option("--raw", help="Verify a raw MIMIC-IV tree instead of a dataset.")
    ] = False,
    mimic_cxr: Annotated[
        Path | None, typer.Option("--cxr", help="With --raw: the MIMIC-CXR-JPG root.")
    ] = None,
    counts: Annotated[bool, typer.Option("--counts", help="With --raw: check exact row counts.")] = False,
    checksums: Annotated[bool, typer.Option("--checksums", help="With --raw: check SHA256SUMS.txt.")] = False,
    version: Annotated[
        str, typer.Option("--mimic-iv-version", help="With --raw: declared version.")
    ] = "auto",
) -> None:
    """Check a dataset (hashes, shapes, consistency) or, with --raw, a raw MIMIC tree."""
    from carebench_data.verify import verify_dataset, verify_raw

    if raw:
        report = verify_raw(path, version, mimic_cxr=mimic_cxr, counts=counts, checksums=checksums)
    else:
        report = verify_dataset(path)
    for warning in report.warnings:
        _console.print(f"[yellow]warning:[/] {warning}")
    typer.echo(f"ok: {path} ({', '.join(report.checked)})")


@data_app.command("convert")
@handle_errors
def convert_command(
    mimic_iv: Annotated[Path, typer.Option("--mimic-iv", help="MIMIC-IV root with csv / csv.gz tables.")],
    out: Annotated[Path, typer.Option("--out", help="New MIMIC-IV root for the Parquet tables.")],
    mimic_cxr: Annotated[
        Path | None, typer.Option("--mimic-cxr", help="Also convert this CXR root's tables.")
    ] = None,
    cxr_out: Annotated[
        Path | None, typer.Option("--cxr-out", help="Where the CXR tables go (default: OUT/mimic-cxr).")
    ] = None,
) -> None:
    """Convert the raw tables carebench reads to typed Parquet (faster rebuilds, same dataset)."""
    from carebench_data.convert import check_convert_output, convert_raw

    check_convert_output(mimic_iv, out, mimic_cxr=mimic_cxr, cxr_out=cxr_out)
    with Progress(
        TextColumn("[bold]converting"), BarColumn(bar_width=32), TaskProgressColumn(), console=_console
    ) as bar:
        task = bar.add_task("convert", total=1)
        rows = convert_raw(
            mimic_iv,
            out,
            mimic_cxr=mimic_cxr,
            cxr_out=cxr_out,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    typer.echo(f"wrote {len(rows)} tables ({sum(rows.values()):,} rows) under {out}")


def _register_synth() -> None:
    """Attach `carebench data synth` from the synthetic generator's module when it is installed."""
    if importlib.util.find_spec("carebench_cli.data_synth_cmd") is None:
        return
    from carebench_cli.data_synth_cmd import synth_command

    data_app.command("synth")(synth_command)


_register_synth()
