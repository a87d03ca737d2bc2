"""`carebench models`: the registered models, their group and paper."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from carebench_cli.errors import handle_errors

GROUP_ORDER: tuple[str, ...] = ("unimodal", "complete", "imbalance", "missing")
GROUP_TITLES: dict[str, str] = {
    "unimodal": "unimodal",
    "complete": "complete-modality",
    "imbalance": "imbalance-aware",
    "missing": "missing-modality",
}


def group_title(group: str) -> str:
    """Display name of a registry group (`complete` -> `complete-modality`)."""
    return GROUP_TITLES.get(group, group)


@handle_errors
def models_command(
    plain: Annotated[bool, typer.Option("--plain", help="One model name per line (for scripts).")] = False,
) -> None:
    """List the registered models with their group and paper."""
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
