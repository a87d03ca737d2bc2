"""`carebench eval`: score a predictions file (metrics with bootstrap CIs, fairness, a paired comparison)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from carebench_cli.errors import USAGE_EXIT, CliError, error_line, handle_errors

FORMATS = ("table", "json", "csv", "parquet")
TABLE_METRICS = (
    "auroc_score",
    "auprc_score",
    "accuracy_score",
    "f1_score",
    "kappa_linear_score",
    "sensitivity_score",
    "fpr_error",
    "brier_loss",
    "expected_calibration_error",
)
"""Metrics the readable table shows; `--format csv|json|parquet` gives every row."""

_SUFFIX_FORMATS = {".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _output_format(output_format: str | None, out: Path | None) -> str:
    if output_format is not None and output_format not in FORMATS:
        raise CliError(f"--format must be one of {', '.join(FORMATS)}; got {output_format!r}", exit_code=2)
    if out is None:
        if output_format == "parquet":
            raise CliError("--format parquet needs --out FILE", exit_code=2)
        return output_format or "table"
    suffix_format = _SUFFIX_FORMATS.get(out.suffix.lower())
    if suffix_format is None:
        raise CliError(f"--out {out}: use a .json, .csv or .parquet file", exit_code=2)
    if out.is_dir():
        raise CliError(
            f"--out {out} is a directory; give the path of a .json, .csv or .parquet file", exit_code=2
        )
    if output_format not in (None, suffix_format):
        raise CliError(f"--format {output_format} does not match --out {out.name}", exit_code=2)
    return suffix_format


def _attributes(by: str | None) -> list[str]:
    if by is None:
        return []
    names = [name.strip() for name in by.split(",") if name.strip()]
    if not names:
        raise CliError("--by needs attribute names, e.g. --by sex,race", exit_code=2)
    return names


def _ci_text(row: dict[str, Any]) -> str:
    value, low, high = row["value"], row["ci_low"], row["ci_high"]
    text = "NaN" if value != value else f"{value:.3f}"
    if low is not None and high is not None and low == low and high == high:
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def _display_rows(results: pl.DataFrame) -> pl.DataFrame:
    """The rows worth reading on a terminal: main metrics, whole-task targets, no per-label rows."""
    single_target = (
        results.filter(~pl.col("target").str.starts_with("("))
        .group_by("task")
        .agg(pl.col("target").n_unique().alias("targets"))
        .filter(pl.col("targets") == 1)["task"]
        .to_list()
    )
    return results.filter(
        pl.col("metric").is_in(TABLE_METRICS)
        & (pl.col("statistic") != "association")
        & (pl.col("target").is_in(["(macro)", "(micro)"]) | pl.col("task").is_in(single_target))
        & (
            (pl.col("group").is_null())
            | pl.col("metric").is_in(["sensitivity_score", "fpr_error", "auroc_score"])
        )
    )


KEY_COLUMNS = ("model", "baseline", "seed", "fold", "setting", "group_attribute", "group", "statistic")
"""Row keys shown as columns when they vary between the shown rows, else once in the caption."""


def _target_text(task: str, target: str) -> str:
    """``mortality`` for a single-target task, ``phenotype (macro)`` for an aggregate, else task/target."""
    if target == task:
        return task
    return f"{task} {target}" if target.startswith("(") else f"{task}/{target}"


def _caption(shown: pl.DataFrame, constant: list[str]) -> str:
    """``seed=0 · n=200``: the keys (and sample count) shared by every shown row; the title names the rest."""
    shared = [f"{name}={shown[name][0]}" for name in constant if name not in ("statistic", "group_attribute")]
    if shown.height > 1 and shown["n"].n_unique() == 1:
        shared.append(f"n={shown['n'][0]}")
    return " · ".join(shared)


def _sections(shown: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """Scores, fairness rows per attribute and task, and comparisons, each its own (narrower) table."""
    comparison = pl.col("baseline").is_not_null()
    grouped = pl.col("group_attribute").is_not_null()
    parts = [("Scores", shown.filter(~comparison & ~grouped))]
    fairness = shown.filter(~comparison & grouped)
    cells = fairness.select("group_attribute", "task", "target").unique(maintain_order=True)
    for attribute, task, target in cells.iter_rows():
        part = fairness.filter(
            (pl.col("group_attribute") == attribute) & (pl.col("task") == task) & (pl.col("target") == target)
        )
        parts.append((f"Fairness by {attribute}: {_target_text(task, target)}", part))
    parts.append(("Comparisons (value = model − baseline)", shown.filter(comparison)))
    return [(title, part) for title, part in parts if part.height]


STATISTIC_ORDER = {
    name: position
    for position, name in enumerate(
        ("estimate", "mean", "seed_sd", "fold_sd", "delong", "gap", "ratio", "worst_group", "best_group")
    )
}


def _group_text(row: dict[str, Any]) -> str:
    """One cell for a fairness row: the group of an estimate, else the statistic (``worst F``, ``gap``)."""
    statistic = str(row["statistic"]).removesuffix("_group")
    if row["statistic"] == "estimate":
        return row["group"] or ""
    return f"{statistic} {row['group']}" if row["group"] is not None else statistic


def _print_section(title: str | None, shown: pl.DataFrame, display: dict[str, str], console: Console) -> None:
    """One table: varying keys as columns, shared ones in the caption, notes as numbered footnotes."""
    from rich import box

    present = [name for name in KEY_COLUMNS if shown[name].null_count() < shown.height]
    constant = [name for name in present if shown[name].n_unique() == 1 and shown.height > 1]
    columns = [name for name in present if name not in constant]
    show_task = shown.select("task", "target").n_unique() > 1
    merged = "group" in columns and "statistic" in columns
    if merged:
        columns = [name for name in columns if name != "statistic"]
    show_n = shown.height <= 1 or shown["n"].n_unique() > 1
    show_p = shown["p_value"].null_count() < shown.height
    # Notes become short keys explained under the table, so they never squeeze the values.
    keys: dict[str, str] = {}
    for notes in shown["notes"].drop_nulls().unique(maintain_order=True).to_list():
        keys[notes] = str(len(keys) + 1)
    rows = []
    for row in shown.iter_rows(named=True):
        p_value = row["p_adjusted"] if row["p_adjusted"] is not None else row["p_value"]
        cells = [
            _group_text(row) if name == "group" and merged else "" if row[name] is None else str(row[name])
            for name in columns
        ]
        cells += [_target_text(row["task"], row["target"])] * show_task + [
            display.get(row["metric"], row["metric"])
        ]
        cells += [_ci_text(row)] + [str(row["n"])] * show_n
        cells += ["" if p_value is None else f"{p_value:.3g}"] * show_p
        rows.append(cells + [keys.get(row["notes"], "")] * bool(keys))
    headers = list(columns)
    headers += (
        ["task"] * show_task
        + ["metric", "value [95% CI]"]
        + ["n"] * show_n
        + ["p"] * show_p
        + ["notes"] * bool(keys)
    )
    caption = [_caption(shown, constant)] + [
        f"{key}: {notes.replace(';', ', ')}" for notes, key in keys.items()
    ]
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        header_style="bold",
        caption="\n".join(line for line in caption if line) or None,
        caption_justify="left",
    )
    for position, header in enumerate(headers):
        if header in ("value [95% CI]", "n", "p", "notes"):
            # Numbers keep their full width; on a narrow terminal the label columns fold instead.
            width = max([len(header), *(len(cells[position]) for cells in rows)])
            table.add_column(
                header, justify="left" if header == "notes" else "right", no_wrap=True, min_width=width
            )
        else:
            table.add_column(header, overflow="fold")
    for cells in rows:
        table.add_row(*cells)
    console.print(table)


def _print_table(results: pl.DataFrame, console: Console) -> None:
    """Readable tables of the main rows: constant keys go to the caption, metrics get short names (AUROC, TPR)."""
    from carebench_eval import metric_info

    shown = _display_rows(results)
    order = {name: position for position, name in enumerate(TABLE_METRICS)}
    shown = shown.sort(
        [
            "model",
            "baseline",
            "seed",
            "fold",
            "setting",
            "group_attribute",
            "task",
            "target",
            pl.col("metric").replace_strict(order, default=len(order)),
            pl.col("statistic").replace_strict(STATISTIC_ORDER, default=len(STATISTIC_ORDER)),
            "group",
        ],
        nulls_last=False,
    )
    display = dict(zip(*metric_info().select("name", "display").get_columns(), strict=True))
    sections = _sections(shown)
    for title, part in sections:
        _print_section(title if len(sections) > 1 else None, part, display, console)
    console.print(
        f"[dim]{shown.height} of {results.height} rows shown; "
        "--format csv|json or --out FILE for every row (per label, thresholds, rates).[/]"
    )


def _evaluate(
    predictions: list[str],
    attributes: list[str],
    *,
    bootstrap: int,
    compare: tuple[str, str] | None,
    seed: int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read the predictions and compute the rows `carebench eval` shows: (results, predictions)."""
    import carebench_eval as ce
    from carebench_eval.schema import sort_results

    preds = ce.read_predictions(predictions)
    parts = [ce.score(preds, n_boot=bootstrap, random_state=seed)]
    if attributes:
        from carebench_eval.fairness import fairness

        parts.append(fairness(preds, attributes=attributes, n_boot=bootstrap, random_state=seed))
    if compare is not None:
        from carebench_eval.compare import compare as compare_models

        model_a, model_b = compare
        if "model" not in preds.columns:
            raise CliError("--compare needs a 'model' column in the predictions", exit_code=2)
        models = set(preds["model"].unique().to_list())
        missing = [name for name in compare if name not in models]
        if missing:
            raise CliError(
                f"--compare: model(s) {missing} not in predictions; available: {sorted(models)}", exit_code=2
            )
        parts.append(compare_models((preds, model_a), (preds, model_b), n_boot=bootstrap, random_state=seed))
    return sort_results(pl.concat(parts, how="vertical")), preds


@handle_errors
def eval_command(
    predictions: Annotated[
        list[str], typer.Argument(help="Predictions: .parquet, .csv or .csv.gz files or glob patterns.")
    ],
    by: Annotated[
        str | None, typer.Option("--by", help="Fairness attributes, comma-separated, e.g. sex,race.")
    ] = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=0, help="Bootstrap replicates for CIs (0 = no CI).")
    ] = 1000,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option("--compare", help="Paired comparison of two models: --compare MODEL_A MODEL_B."),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option("--format", help="table, json, csv or parquet (default: table, or --out's suffix)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the results to this .json/.csv/.parquet file.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random state of bootstrap and permutations.")] = 0,
) -> None:
    """Score predictions: metrics with patient-clustered bootstrap CIs, optional fairness and comparison."""
    import carebench_eval as ce
    from carebench_eval.io import frame_info
    from carebench_eval.schema import results_json

    chosen_format = _output_format(output_format, out)
    attributes = _attributes(by)
    try:
        results, preds = _evaluate(predictions, attributes, bootstrap=bootstrap, compare=compare, seed=seed)
    except (ce.PredictionsError, ce.PredictionsFileError):
        raise
    except ValueError as error:  # carebench_eval names the bad argument or value in one line
        raise CliError(error_line(error), exit_code=USAGE_EXIT) from error
    provenance = {
        "function": "carebench eval",
        "arguments": {
            "predictions": predictions,
            "by": attributes,
            "bootstrap": bootstrap,
            "compare": list(compare) if compare else None,
            "seed": seed,
        },
        "inputs": frame_info(preds).get("inputs", []),
    }
    if out is not None:
        ce.write_results(results, out, provenance=provenance)
        Console(stderr=True).print(f"wrote {results.height} rows to {out}")
    elif chosen_format == "json":
        sys.stdout.write(results_json(results, provenance=provenance))
    elif chosen_format == "csv":
        sys.stdout.write(results.write_csv(null_value=""))
    else:
        _print_table(results, Console())
