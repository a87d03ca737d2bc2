"""`carebench data ...`: build a benchmark dataset from raw MIMIC files, verify it, make synthetic data."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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

from carebench_cli.errors import CliError, handle_errors

if TYPE_CHECKING:
    from carebench_data.config import BuildConfig

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
    _print_summary(_build_with_progress(build_config))


def _build_with_progress(build_config: BuildConfig) -> Path:
    """Run `build_dataset` with a progress bar that names the current stage; returns the dataset path."""
    from carebench_data.build import PROGRESS_TOTAL, build_dataset, check_build_output

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
    return path


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


@data_app.command("demo")
@handle_errors
def demo_command(
    mimic_iv_demo: Annotated[
        Path,
        typer.Option(
            "--mimic-iv-demo", help="MIMIC-IV demo root: an existing copy, or where --download puts it."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Dataset directory to create (EHR only).")],
    download: Annotated[
        bool,
        typer.Option(
            "--download",
            help="Fetch the open MIMIC-IV demo 2.2 from PhysioNet into --mimic-iv-demo when it is not there "
            "(only the tables carebench reads; every file checked against the published SHA-256 sums).",
        ),
    ] = False,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url", help="Release folder to fetch from (default: PhysioNet; file:// for a copy)."
        ),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option("--registry", help="Feature set: default (17), extended (47) or a TOML path."),
    ] = None,
) -> None:
    """Build an EHR-only dataset from the open MIMIC-IV Clinical Database Demo (real data, no credentials)."""
    import time

    from carebench_data.config import BuildConfig
    from carebench_data.download import DEMO_BASE_URL, fetch_mimic_iv_demo

    present = (mimic_iv_demo / "hosp").is_dir() and (mimic_iv_demo / "icu").is_dir()
    if not present:
        if not download:
            raise CliError(
                f"{mimic_iv_demo} holds no MIMIC-IV demo (hosp/ and icu/); add --download to fetch it "
                "from PhysioNet (open access, ODC Open Database License)",
                exit_code=2,
            )
        source = base_url or DEMO_BASE_URL
        with Progress(
            TextColumn("[bold]fetching the MIMIC-IV demo"),
            BarColumn(bar_width=32),
            TaskProgressColumn(),
            console=_console,
        ) as bar:
            task = bar.add_task("fetch", total=None)
            fetch_mimic_iv_demo(
                mimic_iv_demo,
                base_url=source,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        typer.echo(f"fetched the MIMIC-IV demo from {source} into {mimic_iv_demo} (SHA-256 sums checked)")
    build_config = BuildConfig.from_toml(
        None,
        mimic_iv=str(mimic_iv_demo),
        out=str(out),
        **{"cxr.enabled": False, "features.registry": registry},
    )
    started = time.perf_counter()
    path = _build_with_progress(build_config)
    _print_summary(path)
    typer.echo(f"built {path} in {time.perf_counter() - started:.1f} s")


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
    checksums: Annotated[
        bool,
        typer.Option(
            "--checksums",
            help="With --raw: check SHA256SUMS.txt on the files carebench reads (others skipped).",
        ),
    ] = False,
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
    sums = report.info.get("checksums")
    if sums is not None:
        skipped = sums["skipped"]
        shown = ", ".join(Path(name).name for name in skipped[:8]) + (", …" if len(skipped) > 8 else "")
        typer.echo(
            f"checksums: {len(sums['checked'])} file(s) carebench reads match SHA256SUMS.txt; "
            f"{len(skipped)} listed file(s) it never reads were skipped" + (f" ({shown})" if skipped else "")
        )
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


@data_app.command("export-meds")
@handle_errors
def export_meds_command(
    dataset: Annotated[Path, typer.Argument(help="A built benchmark dataset directory.")],
    out: Annotated[Path, typer.Option("--out", help="MEDS directory to create.")],
    fold: Annotated[
        int, typer.Option("--fold", help="Fold whose train/val/test subjects become train/tuning/held_out.")
    ] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing MEDS directory.")
    ] = False,
) -> None:
    """Write the cohort as MEDS: events, task labels, CXR image paths, subject splits, metadata."""
    from carebench_data.meds import export_meds

    with Progress(
        TextColumn("[bold]writing MEDS images"),
        BarColumn(bar_width=32),
        TaskProgressColumn(),
        console=_console,
    ) as bar:
        task = bar.add_task("images", total=None)
        path = export_meds(
            dataset,
            out,
            fold=fold,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    counts = json.loads((path / "metadata" / "carebench.json").read_text(encoding="utf-8"))["counts"]
    typer.echo(
        f"wrote MEDS to {path}: {counts['subjects']} subjects, {sum(counts['events'].values()):,} events, "
        f"{counts['images']} images; validated with the meds schemas"
    )


def _register_synth() -> None:
    """Attach `carebench data synth` from the synthetic generator's module when it is installed."""
    if importlib.util.find_spec("carebench_cli.data_synth_cmd") is None:
        return
    from carebench_cli.data_synth_cmd import synth_command

    data_app.command("synth")(synth_command)


_register_synth()
