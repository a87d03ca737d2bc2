"""`carebench models`: the registered models, their group and paper; `carebench models weights`: CXR weights."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from carebench_cli.errors import USAGE_EXIT, CliError, handle_errors

GROUP_ORDER: tuple[str, ...] = ("unimodal", "complete", "imbalance", "missing")
GROUP_TITLES: dict[str, str] = {
    "unimodal": "unimodal",
    "complete": "complete-modality",
    "imbalance": "imbalance-aware",
    "missing": "missing-modality",
}

models_app = typer.Typer(
    help="List the registered models; `weights` lists (and with --download fetches) the CXR weights.",
    no_args_is_help=False,
)


def group_title(group: str) -> str:
    """Display name of a registry group (`complete` -> `complete-modality`)."""
    return GROUP_TITLES.get(group, group)


@models_app.callback(invoke_without_command=True)
@handle_errors
def models_command(
    context: typer.Context,
    plain: Annotated[bool, typer.Option("--plain", help="One model name per line (for scripts).")] = False,
) -> None:
    """List the registered models with their group and paper."""
    if context.invoked_subcommand is not None:
        return
    from carebench_models import available_models, model_info

    infos = [model_info(name) for name in available_models()]
    infos.sort(
        key=lambda info: (GROUP_ORDER.index(info.group) if info.group in GROUP_ORDER else 9, info.name)
    )
    if plain:
        for info in infos:
            typer.echo(info.name)
        return
    table = Table(title=f"{len(infos)} registered models", title_justify="left")
    for column in ("model", "group", "paper", "custom step", "description"):
        table.add_column(column)
    for info in infos:
        table.add_row(
            info.name,
            group_title(info.group),
            info.paper,
            "yes" if info.custom_step else "",
            info.description,
        )
    Console().print(table)


def paper_weight_users() -> dict[str, list[str]]:
    """Named weights -> the models whose `paper` profile starts their CXR encoder from them."""
    from carebench_models import available_models, model_info

    users: dict[str, list[str]] = {}
    for name in available_models():
        info = model_info(name)
        if "cxr" in info.modalities:
            users.setdefault(info.config_class.for_profile("paper").cxr_weights, []).append(name)
    return users


@models_app.command("weights")
@handle_errors
def weights_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Named weights to show or fetch (imagenet, imagenet_v1); default: all."),
    ] = None,
    download: Annotated[
        bool,
        typer.Option(
            "--download",
            help="Fetch the named weights that are not cached yet into the torch hub cache "
            "(the only carebench command that downloads anything).",
        ),
    ] = False,
) -> None:
    """Where the CXR encoder's ImageNet weights are cached (the `paper` profile needs them) and whether they are.

    Each line: name, torchvision weights, cache file, `cached` (with its SHA-256) or `missing`, and the
    models whose paper profile starts from it. `--download` fetches the missing files and prints where.
    """
    from carebench_models.encoders import (
        IMAGENET_WEIGHT_NAMES,
        download_imagenet_weights,
        file_sha256,
        imagenet_cache_path,
        imagenet_weights_description,
    )

    chosen = list(names or IMAGENET_WEIGHT_NAMES)
    unknown = [name for name in chosen if name not in IMAGENET_WEIGHT_NAMES]
    if unknown:
        raise CliError(
            f"unknown named weights {', '.join(map(repr, unknown))}; named weights: {', '.join(IMAGENET_WEIGHT_NAMES)}",
            exit_code=USAGE_EXIT,
        )
    users = paper_weight_users()
    for name in chosen:
        path = imagenet_cache_path(name)
        description = imagenet_weights_description(name)
        if download and not path.is_file():
            path = download_imagenet_weights(name)
            typer.echo(f"downloaded {name} ({description}) to {path} (sha256 {file_sha256(path)})")
            continue
        state = f"cached (sha256 {file_sha256(path)})" if path.is_file() else "missing"
        used_by = ", ".join(users.get(name, [])) or "-"
        typer.echo(f"{name}: {description}, {path}: {state}; paper-profile default of: {used_by}")
    if not download and not all(imagenet_cache_path(name).is_file() for name in chosen):
        typer.echo("fetch the missing files with: carebench models weights --download")
