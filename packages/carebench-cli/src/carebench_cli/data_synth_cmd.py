"""`carebench data synth`: write a synthetic MIMIC-IV + MIMIC-CXR-JPG raw tree with planted signal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from carebench_cli.errors import CliError, handle_errors

_console = Console(stderr=True, highlight=False)


@handle_errors
def synth_command(
    out: Annotated[Path, typer.Option("--out", help="Directory to create (must not exist or be empty).")],
    scale: Annotated[
        str,
        typer.Option(
            "--scale",
            help="Preset: tiny (200 stays), demo (2,000 stays) or perf10 (7,318 stays, full charting).",
        ),
    ] = "demo",
    stays: Annotated[
        int | None, typer.Option("--stays", help="Number of ICU stays (overrides the preset).", min=10)
    ] = None,
    mimic_version: Annotated[
        str, typer.Option("--mimic-version", help="MIMIC-IV version whose vocabularies to mimic: 2.2 or 3.1.")
    ] = "2.2",
    seed: Annotated[
        int, typer.Option("--seed", help="Root seed; the same seed gives byte-identical files.")
    ] = 0,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Side of the JPEGs in pixels (64-2048; default 256, tiny 64)."),
    ] = None,
) -> None:
    """Write a MIMIC-shaped raw tree (mimiciv/<version>/, mimic-cxr-jpg/2.0.0/, _synthetic_truth/) under --out."""
    from carebench_data.synthetic import SyntheticConfig, generate_synthetic

    if mimic_version not in ("2.2", "3.1"):
        raise CliError(f"--mimic-version must be 2.2 or 3.1, got {mimic_version!r}", exit_code=2)
    version: Literal["2.2", "3.1"] = "2.2" if mimic_version == "2.2" else "3.1"
    overrides: dict[str, object] = {"seed": seed, "mimic_version": version}
    if stays is not None:
        overrides["n_stays"] = stays
    if image_size is not None:
        overrides["image_size"] = image_size
    config = SyntheticConfig.preset(scale, **overrides)
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]synth"),
        BarColumn(bar_width=40),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=True,
    ) as progress:
        task = progress.add_task("synth", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        generate_synthetic(out, config, progress=report)
    elapsed = time.perf_counter() - started
    _console.print(
        f"wrote {config.n_stays:,} ICU stays ({config.scale}, MIMIC-IV {config.mimic_version}, seed {config.seed}) "
        f"to {out} in {elapsed:.1f} s"
    )
    _console.print(f"  MIMIC-IV root:      {out / 'mimiciv' / config.mimic_version}")
    _console.print(f"  MIMIC-CXR-JPG root: {out / 'mimic-cxr-jpg' / '2.0.0'}")
    _console.print(f"  truth (never read by the builder): {out / '_synthetic_truth'}")
