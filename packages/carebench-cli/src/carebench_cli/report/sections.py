"""The report's sections: an overview of the runs and the paper's four questions (eval.md §9).

Each section calls carebench_eval on the finished runs' predictions, keeps the tidy results in
`ReportContext.results`, and turns them into display tables (strings) and figures.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from carebench_cli.models_cmd import group_title
from carebench_cli.report import plots
from carebench_cli.report.context import (
    CXR_ONLY_MODEL,
    EHR_ONLY_MODELS,
    TABLE_METRICS,
    ReportContext,
    Selection,
    metric_label,
    parse_setting,
)
from carebench_cli.report.document import Figure, Section, Table
from carebench_cli.report.formatting import fmt_ci, fmt_p, fmt_rate, fmt_sd, fmt_value
from carebench_cli.report.tidy import (
    SUPPRESSED,
    group_size_text,
    headline,
    ordered,
    small_group,
    summary_target,
    suppress_small_groups,
    value_of,
    where,
)
from carebench_cli.run_store import RunStatus

SIGNIFICANCE = 0.05
SEED_SD_STATEMENT = (
    "With several seeds, every CI and p-value is about the mean of the per-seed scores and reflects "
    "test-set sampling only (all seeds share the bootstrap resamples and permutation flips); the seed "
    "SD (training variability) is reported beside the CIs and p-values (Table 2), not inside them."
)
"""How seed variability relates to the reported intervals and tests (stated wherever they appear)."""
PAPER_PHENOTYPES: tuple[str, ...] = ("chf", "heart failure", "copd", "obstructive", "pneumonia")
"""Substrings of the phenotype labels the paper singles out (CHF, COPD, pneumonia)."""
Q1_LABELS: tuple[str, ...] = (
    "chf_nonhypertensive",
    "pneumonia",
    "pleurisy_pneumothorax_collapse",
    "copd_bronchiectasis",
)
"""Phenotype labels named in CareBench's Q1 finding, always listed in the per-label table when present."""
TOP_LABELS = 3
"""Per fusion model, how many further labels with the largest |Δ| (CXR present) the per-label table lists."""
EHR_ENCODER_REFERENCE = "transformer"
"""The EHR-only model with the Transformer encoder that most fusion models share (a second reference)."""
FAIRNESS_ATTRIBUTES: tuple[str, ...] = ("sex", "age_group", "race", "insurance", "admission_type", "has_cxr")
GAP_METRICS: tuple[str, ...] = ("sensitivity_score", "fpr_error", "auroc_score")


def _row(frame: pl.DataFrame) -> dict[str, object] | None:
    return frame.row(0, named=True) if frame.height else None


def _ci_text(row: dict[str, object] | None, *, signed: bool = False) -> str:
    if row is None:
        return "-"
    return fmt_ci(row["value"], row["ci_low"], row["ci_high"], signed=signed)  # type: ignore[arg-type]


def _float(value: object) -> float:
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


def _table(
    key: str, caption: str, rows: list[dict[str, str]], columns: Sequence[str] | None = None, note: str = ""
) -> Table:
    """A display table; every row must have every column (a missing cell is a bug, not a blank).

    `columns` defaults to the keys of the first row, in their order.
    """
    if columns is None:
        columns = list(rows[0]) if rows else []
    for row in rows:
        missing = [column for column in columns if column not in row]
        if missing:
            raise KeyError(f"table {key!r}: row {row} lacks column(s) {missing}")
    frame = pl.DataFrame(
        {column: [row[column] for row in rows] for column in columns},
        schema=dict.fromkeys(columns, pl.String),
    )
    return Table(key=key, caption=caption, frame=frame, note=note)


# --------------------------------------------------------------------------------------------------
# Overview


def overview_section(context: ReportContext) -> Section:
    """Which runs the report covers, and which run directories were left out."""
    collection = context.collection
    runs = collection.runs_table()
    section = Section("Runs")
    corrupt = sum(status is RunStatus.CORRUPT for status in collection.skipped.values())
    unfinished = len(collection.skipped) - corrupt
    left_out = [
        f"{unfinished} unfinished run director(ies)" if unfinished else "",
        f"{corrupt} run director(ies) whose files no longer match their DONE hashes" if corrupt else "",
    ]
    left_out_text = " and ".join(part for part in left_out if part)
    section.paragraphs.append(
        f"{runs.height} finished runs: {len(collection.models)} models × {len(collection.tasks)} tasks "
        f"({', '.join(collection.tasks)}), cohorts {', '.join(sorted(runs['cohort'].unique().to_list()))}, "
        f"folds {', '.join(map(str, sorted(runs['fold'].unique().to_list())))}, "
        f"seeds {', '.join(map(str, sorted(runs['seed'].unique().to_list())))}, "
        f"profile {', '.join(sorted(runs['profile'].unique().to_list()))}."
        + (f" {left_out_text} were left out (rerun `carebench run` to redo them)." if left_out_text else "")
    )
    settings = sorted(collection.test["setting"].unique().to_list())
    section.paragraphs.append(
        "Test settings (each trained model scored under each, without retraining): "
        + ", ".join(settings)
        + "."
    )
    section.paragraphs.append(_weights_text(runs))
    summary = (
        runs.group_by("model", "task", "variant")
        .agg(
            pl.len().alias("runs"),
            pl.col("epochs").mean().alias("epochs"),
            pl.col("val_metric").mean().alias("val"),
            pl.col("seconds").sum().alias("seconds"),
        )
        .sort("model", "task", "variant")
    )
    rows = [
        {
            "model": row["model"],
            "group": group_title(collection.model_groups.get(row["model"], "unknown")),
            "variant": row["variant"] or "-",
            "task": row["task"],
            "runs": str(row["runs"]),
            "mean epochs": fmt_value(row["epochs"], digits=1),
            "primary metric": metric_label(context.primary(row["task"])),
            "validation score": fmt_value(row["val"]),
            "train + predict time": f"{row['seconds']:.1f} s",
        }
        for row in summary.iter_rows(named=True)
    ]
    section.tables.append(
        _table(
            "runs",
            "Finished runs per model and task",
            rows,
            note="variant: the method variant that ran, for models with a documented option (e.g. DAFT's "
            "direction, MedFuse's training protocol).",
        )
    )
    return section


def _weights_text(runs: pl.DataFrame) -> str:
    """Which initial CXR weights the runs' CNNs started from (name and SHA-256 prefix), with run counts."""
    parts = []
    with_cnn = runs.filter(pl.col("reads_cxr"))
    for (weights, digest), group in sorted(
        with_cnn.group_by("cxr_weights", "cxr_weights_sha256"),
        key=lambda item: (str(item[0][0]), str(item[0][1])),
    ):
        label = "random init (none)" if weights == "none" else f"{weights} (sha256 {str(digest)[:12]}…)"
        models = ", ".join(sorted(group["model"].unique().to_list()))
        parts.append(f"{label}: {group.height} run(s) of {models}")
    if not parts:
        return "No run has a CXR encoder."
    return "CXR encoder initial weights: " + "; ".join(parts) + "."


# --------------------------------------------------------------------------------------------------
# Q1: when does fusion help?


def _forest_rows(
    frame: pl.DataFrame, *, also_highlighted: frozenset[str] = frozenset()
) -> list[plots.Interval]:
    rows = []
    for row in frame.sort("value", descending=True, nulls_last=True).iter_rows(named=True):
        label = str(row["target"])
        rows.append(
            plots.Interval(
                label=label,
                value=_float(row["value"]),
                low=_float(row["ci_low"]),
                high=_float(row["ci_high"]),
                marked=row["p_adjusted"] is not None and row["p_adjusted"] < SIGNIFICANCE,
                highlighted=label in also_highlighted
                or any(key in label.lower().replace("_", " ") for key in PAPER_PHENOTYPES),
            )
        )
    return rows


def _undefined(row: dict[str, object] | None) -> bool:
    """A gain whose estimate or CI is NaN (e.g. a label without positives among the stays)."""
    if row is None:
        return False
    return any(isinstance(row[key], float) and math.isnan(row[key]) for key in ("value", "ci_low", "ci_high"))  # type: ignore[arg-type]


def _gain_text(row: dict[str, object] | None) -> str:
    """`+0.120 [+0.023, +0.253]`, or `undefined at n=101` where the metric or its CI is NaN."""
    if _undefined(row):
        assert row is not None
        return f"undefined at n={row['n']}"
    return _ci_text(row, signed=True)


def _ci_excludes_zero(row: dict[str, object] | None) -> int:
    """+1 when the 95% CI lies above zero, -1 below, 0 when it covers zero or is undefined."""
    if row is None or _undefined(row) or row["ci_low"] is None or row["ci_high"] is None:
        return 0
    low, high = float(row["ci_low"]), float(row["ci_high"])  # type: ignore[arg-type]
    return 1 if low > 0 else -1 if high < 0 else 0


def _label_gains(
    context: ReportContext, cohort: str, task: str, fused: list[str], unimodal: list[str]
) -> pl.DataFrame:
    """Per-label Δ AUROC and Δ AUPRC of every fused model vs the best unimodal one, on CXR-present test stays.

    Returns:
        The headline rows of group `has_cxr == true` (cached in `results`; BH across the labels of each fused model).
    """
    import carebench_eval as ce

    key = f"fusion_gain_per_label_by_cxr_{cohort}_{task}"
    if key not in context.results:
        context.status(f"per-label fusion gain by CXR availability: {cohort} / {task}")
        context.results[key] = ce.fusion_gain(
            context.test(cohort, task=task),
            fused=fused,
            unimodal=unimodal,
            metrics=["auroc_score", "auprc_score"],
            targets="per_label",
            by="has_cxr",
            select_on=context.val(cohort, task=task),
            correction="bh",
            n_perm=context.config.n_perm,
            n_boot=context.config.n_boot,
            random_state=context.config.random_state,
        )
    frame = headline(where(context.results[key], group_attribute="has_cxr", group="true"))
    frame = frame.filter(~small_group(context.config.min_group_n))
    return frame.filter(~pl.col("target").str.starts_with("("))


def _label_gain_table(cohort: str, task: str, gains: pl.DataFrame) -> Table | None:
    """Table 1c: per fusion model, the Q1 labels of the paper and the labels with the largest |Δ AUROC|."""
    rows: list[dict[str, str]] = []
    present = set(gains["target"].to_list())
    for model in sorted(gains["model"].unique().to_list()):
        auroc = where(gains, model=model, metric="auroc_score")
        magnitude = {
            str(row["target"]): abs(_float(row["value"]))
            for row in auroc.iter_rows(named=True)
            if not _undefined(row)
        }
        paper = [label for label in Q1_LABELS if label in present]
        largest = [label for label in ordered(list(magnitude), by=magnitude) if label not in paper][
            :TOP_LABELS
        ]
        for label in [*paper, *largest]:
            cells = {"model": model, "label": label}
            verdicts = []
            for metric in ("auroc_score", "auprc_score"):
                row = _row(where(gains, model=model, metric=metric, target=label))
                name = metric_label(metric)
                cells["best unimodal"] = str(row["baseline"]) if row else "-"
                cells["n"] = str(row["n"]) if row else "-"
                cells[f"Δ {name} [95% CI]"] = _gain_text(row)
                cells[f"p, {name}"] = fmt_p(row["p_value"]) if row else "-"  # type: ignore[arg-type]
                direction = _ci_excludes_zero(row)
                if direction:
                    verdicts.append(f"{name} {'gain' if direction > 0 else 'loss'}")
            cells["95% CI excludes 0"] = ", ".join(verdicts) or "no"
            cells["listed as"] = "paper (Q1)" if label in paper else "largest |Δ|"
            rows.append(cells)
    if not rows:
        return None
    columns = [
        "model",
        "label",
        "listed as",
        "best unimodal",
        "n",
        "Δ AUROC [95% CI]",
        "p, AUROC",
        "Δ AUPRC [95% CI]",
        "p, AUPRC",
        "95% CI excludes 0",
    ]
    return _table(
        f"fusion_gain_labels_{cohort}_{task}",
        f"Table 1c ({cohort} cohort, {task}). Per-label fusion gain on the test stays with a CXR",
        rows,
        columns,
        note=(
            "Gain criterion: the paired cluster-bootstrap 95% CI of Δ excludes zero; p = two-sided paired "
            "permutation p (unadjusted; values BH-adjusted across the labels of each fused model are in results/). "
            f"Labels: the paper's Q1 labels, then the {TOP_LABELS} labels with the largest |Δ AUROC| per model."
        ),
    )


def fusion_section(context: ReportContext) -> Section:
    """Q1: fusion gain over the best unimodal model, per cohort, split by CXR availability, per phenotype."""
    import carebench_eval as ce

    config = context.config
    section = Section("Q1. When does multimodal fusion help?")
    section.paragraphs.extend(
        [
            "Δ = fused model − best unimodal baseline (chosen per task on validation predictions) on the "
            "task's primary metric, with a paired cluster-bootstrap 95% CI and a paired permutation p, "
            f"Holm-corrected across the fused models of a task. {SEED_SD_STATEMENT} "
            "The paper's finding: fusion helps when both "
            "modalities are present, and the gain shrinks on the base cohort, where most stays lack a CXR.",
            f"Most fusion models use the Transformer EHR encoder, so Table 1 also compares each with "
            f"`{EHR_ENCODER_REFERENCE}`: a fusion model can add image information to its own EHR encoder "
            "(Δ vs transformer > 0) and still trail the best unimodal model when another EHR encoder (e.g. the "
            "LSTM) is stronger on that task.",
            "A macro over every label and every stay dilutes a gain that the image brings to a few labels on the "
            "stays that have one. Table 1c therefore looks at single labels on the test stays with a CXR: the "
            "labels of the paper's Q1 finding (CHF, pneumonia, pleurisy/pneumothorax/collapse, COPD) and the "
            "labels with the largest |Δ| per fusion model.",
        ]
    )
    for cohort in context.cohorts:
        rows: list[dict[str, str]] = []
        split_rows: list[dict[str, str]] = []
        label_tables: list[Table] = []
        cxr_gains: dict[str, pl.DataFrame] = {}
        for task in context.tasks(cohort):
            fused, unimodal = context.fused(cohort, task), context.unimodal(cohort, task)
            if not fused or not unimodal:
                continue
            metric = context.primary(task)
            context.status(f"fusion gain: {cohort} / {task}")
            test, val = context.test(cohort, task=task), context.val(cohort, task=task)
            gain_options: dict[str, Any] = {
                "fused": fused,
                "unimodal": unimodal,
                "metrics": [metric],
                "select_on": val,
                "correction": "holm",
                "n_perm": config.n_perm,
                "n_boot": config.n_boot,
                "random_state": config.random_state,
            }
            gain = ce.fusion_gain(test, **gain_options)
            context.results[f"fusion_gain_{cohort}_{task}"] = gain
            versus = pl.DataFrame()
            if EHR_ENCODER_REFERENCE in unimodal:
                versus = ce.fusion_gain(test, **{**gain_options, "unimodal": [EHR_ENCODER_REFERENCE]})
                context.results[f"fusion_gain_vs_{EHR_ENCODER_REFERENCE}_{cohort}_{task}"] = versus
            scores = context.headline_values(context.score(cohort), task=task, metric=metric)
            target = summary_target(gain, task=task, metric=metric)
            summary = where(gain, task=task, metric=metric, target=target, group_attribute=None)
            for model in fused:
                row = _row(headline(summary.filter(pl.col("model") == model)))
                reference = (
                    _row(
                        headline(
                            where(versus, model=model, metric=metric, target=target, group_attribute=None)
                        )
                    )
                    if versus.height
                    else None
                )
                rows.append(
                    {
                        "task": task,
                        "model": model,
                        "metric": metric_label(metric),
                        "score [95% CI]": _ci_text(_row(scores.get(model, pl.DataFrame()))),
                        "best unimodal": str(row["baseline"]) if row else "-",
                        "Δ [95% CI]": _ci_text(row, signed=True),
                        "p": fmt_p(row["p_value"]) if row else "-",  # type: ignore[arg-type]
                        "p (Holm)": fmt_p(row["p_adjusted"]) if row else "-",  # type: ignore[arg-type]
                        f"Δ vs {EHR_ENCODER_REFERENCE} [95% CI]": _ci_text(reference, signed=True),
                        f"p vs {EHR_ENCODER_REFERENCE}": fmt_p(reference["p_value"]) if reference else "-",  # type: ignore[arg-type]
                    }
                )
            if cohort == "base" and "has_cxr" in test.columns:
                by = ce.fusion_gain(test, by="has_cxr", **gain_options)
                context.results[f"fusion_gain_by_cxr_{cohort}_{task}"] = by
                for model in fused:
                    cells = {"task": task, "model": model, "metric": metric_label(metric)}
                    for group, label in (("true", "CXR present"), ("false", "CXR absent")):
                        row = _row(
                            headline(
                                where(
                                    by,
                                    model=model,
                                    metric=metric,
                                    target=target,
                                    group_attribute="has_cxr",
                                    group=group,
                                )
                            )
                        )
                        minimum = context.config.min_group_n
                        small = row is not None and int(row["n"]) < minimum  # type: ignore[call-overload]
                        cells[f"Δ {label}"] = SUPPRESSED if small else _gain_text(row)
                        cells[f"p (Holm), {label}"] = (
                            SUPPRESSED if small else fmt_p(row["p_adjusted"]) if row else "-"  # type: ignore[arg-type]
                        )
                        cells[f"n, {label}"] = group_size_text(row["n"] if row else None, minimum)  # type: ignore[arg-type]
                    split_rows.append(cells)
            if "has_cxr" in test.columns and context.kinds[task] == "multilabel":
                cxr_gains[task] = _label_gains(context, cohort, task, fused, unimodal)
                label_table = _label_gain_table(cohort, task, cxr_gains[task])
                if label_table is not None:
                    label_tables.append(label_table)
        if not rows:
            section.paragraphs.append(
                f"{cohort} cohort: fusion gain needs at least one unimodal baseline and one fusion model per task."
            )
            continue
        section.tables.append(
            _table(
                f"fusion_gain_{cohort}",
                f"Table 1 ({cohort} cohort). Fused model vs best unimodal baseline, primary metric",
                rows,
            )
        )
        if split_rows:
            section.tables.append(
                _table(
                    f"fusion_gain_by_cxr_{cohort}",
                    f"Table 1b ({cohort} cohort). Fusion gain split by CXR availability at test time",
                    split_rows,
                    note="A cell reads `undefined at n=…` where the metric is undefined on that subset (e.g. a "
                    "label without positives among the stays with a CXR, which leaves the macro NaN).",
                )
            )
        section.tables.extend(label_tables)
        section.figures.extend(_phenotype_forest(context, cohort, cxr_gains))
    return section


def _phenotype_forest(
    context: ReportContext, cohort: str, cxr_gains: dict[str, pl.DataFrame] | None = None
) -> list[Figure]:
    """Figure 1: per-label Δ AUPRC of the best fusion model vs the best unimodal model (BH-corrected).

    In colour: the paper's CHF, COPD and pneumonia, and every label whose Δ (AUROC or AUPRC) on the
    CXR-present test stays (`cxr_gains`, task -> `_label_gains` rows) has a 95% CI excluding zero.
    """
    import carebench_eval as ce

    figures = []
    for task in context.tasks(cohort):
        if context.kinds[task] != "multilabel":
            continue
        fused, unimodal = context.fused(cohort, task), context.unimodal(cohort, task)
        best = context.best(cohort, task, fused)
        if best is None or not unimodal:
            continue
        context.status(f"per-label fusion gain: {cohort} / {task}")
        per_label = ce.fusion_gain(
            context.test(cohort, task=task),
            fused=[best],
            unimodal=unimodal,
            metrics=["auprc_score"],
            targets="per_label",
            select_on=context.val(cohort, task=task),
            correction="bh",
            n_perm=context.config.n_perm,
            n_boot=context.config.n_boot,
            random_state=context.config.random_state,
        )
        context.results[f"fusion_gain_per_label_{cohort}_{task}"] = per_label
        labels = headline(where(per_label, model=best, metric="auprc_score", group_attribute=None)).filter(
            ~pl.col("target").str.starts_with("(")
        )
        if labels.height == 0:
            continue
        baseline = str(labels["baseline"][0])
        present = (cxr_gains or {}).get(task, pl.DataFrame())
        clear = frozenset(
            str(row["target"])
            for row in (where(present, model=best).iter_rows(named=True) if present.height else [])
            if _ci_excludes_zero(row)
        )
        figures.append(
            Figure(
                key=f"fig1_phenotype_gain_{cohort}",
                caption=(
                    f"Figure 1 ({cohort} cohort). Per-phenotype Δ AUPRC, {best} − {baseline} (best unimodal), "
                    "all test stays, 95% CI; filled = p < 0.05 after BH across the labels. In colour: CHF, COPD and pneumonia "
                    "(the paper's labels) and labels whose Δ on the CXR-present test stays has a 95% CI "
                    f"excluding zero (Table 1c){': ' + ', '.join(sorted(clear)) if clear else ': none'}."
                ),
                png=plots.forest_plot(
                    _forest_rows(labels, also_highlighted=clear),
                    title=f"{task}: {best} − {baseline}",
                    xlabel="Δ AUPRC",
                ),
            )
        )
    return figures


# --------------------------------------------------------------------------------------------------
# Q2: how do fusion strategies compare?


def _leaderboard(
    context: ReportContext, cohort: str, task: str
) -> tuple[list[dict[str, str]], list[str], Selection | None]:
    """Table 2 rows, their columns, and the reference model of the • marks (chosen on validation)."""
    import carebench_eval as ce

    scores = context.score(cohort)
    kind = context.kinds[task]
    metric = context.primary(task)
    primary = context.headline_values(scores, task=task, metric=metric)
    models = ordered(list(primary), by={model: value_of(rows) for model, rows in primary.items()})
    if not models:
        return [], [], None
    reference = context.select(cohort, task, models)
    tied: set[str] = {reference.model} if reference else set()
    if reference is not None and len(models) > 1:
        context.status(f"comparisons with the reference model: {cohort} / {task}")
        versus = ce.compare_grid(
            context.test(cohort, task=task),
            reference=reference.model,
            metrics=[metric],
            correction="holm",
            n_perm=context.config.n_perm,
            n_boot=context.config.n_boot,
            random_state=context.config.random_state,
        )
        context.results[f"compare_best_{cohort}_{task}"] = versus
        target = summary_target(versus, task=task, metric=metric)
        for row in headline(where(versus, metric=metric, target=target, group_attribute=None)).iter_rows(
            named=True
        ):
            if row["p_adjusted"] is None or not row["p_adjusted"] < SIGNIFICANCE:
                tied.add(str(row["model"]))
    columns = ["rank", "model", "group"]
    rows = []
    for rank, model in enumerate(models, start=1):
        mark = " •" if model in tied else ""
        if reference is not None and model == reference.model:
            mark += f" (reference{', ' + reference.note if reference.note else ''})"
        cells = {
            "rank": str(rank),
            "model": model + mark,
            "group": group_title(context.collection.model_groups.get(model, "unknown")),
        }
        for name in TABLE_METRICS[kind]:
            row = _row(context.headline_values(scores, task=task, metric=name).get(model, pl.DataFrame()))
            label = metric_label(name) + (" (macro)" if kind != "binary" and name != "accuracy_score" else "")
            cells[label] = _ci_text(row)
            if label not in columns:
                columns.append(label)
        sd = where(scores, model=model, task=task, metric=metric, statistic="seed_sd")
        sd = sd.filter(
            pl.col("target") == summary_target(scores, task=task, metric=metric),
            pl.col("group_attribute").is_null(),
        )
        n_runs = value_of(primary[model], "n_runs")
        cells[f"seed SD ({metric_label(metric)})"] = fmt_sd(value_of(sd), int(n_runs) if n_runs else None)
        rows.append(cells)
    columns.append(f"seed SD ({metric_label(metric)})")
    return rows, columns, reference


def _pairwise_heatmap(context: ReportContext, cohort: str, task: str) -> Figure | None:
    import carebench_eval as ce

    models = context.models(cohort, task)
    if len(models) < 2:
        return None
    metric = context.primary(task)
    context.status(f"all pairwise comparisons: {cohort} / {task}")
    pairs = ce.compare_grid(
        context.test(cohort, task=task),
        pairs="all",
        metrics=[metric],
        correction="bh",
        n_perm=context.config.n_perm,
        n_boot=context.config.n_boot,
        random_state=context.config.random_state,
    )
    context.results[f"compare_all_{cohort}_{task}"] = pairs
    target = summary_target(pairs, task=task, metric=metric)
    rows = headline(where(pairs, metric=metric, target=target, group_attribute=None))
    matrix = np.full((len(models), len(models)), np.nan)
    notes = [["" for _ in models] for _ in models]
    for row in rows.iter_rows(named=True):
        if row["model"] not in models or row["baseline"] not in models:
            continue
        i, j = models.index(row["model"]), models.index(row["baseline"])
        delta = _float(row["value"])
        star = "*" if row["p_adjusted"] is not None and row["p_adjusted"] < SIGNIFICANCE else ""
        matrix[i, j], matrix[j, i] = delta, -delta
        notes[i][j], notes[j][i] = f"{delta:+.3f}{star}", f"{-delta:+.3f}{star}"
    return Figure(
        key=f"fig2_pairwise_{cohort}_{task}",
        caption=(
            f"Figure 2 ({cohort} cohort, {task}). Pairwise Δ {metric_label(metric)} (row − column); "
            "* = BH-adjusted permutation p < 0.05."
        ),
        png=plots.heatmap(
            matrix,
            row_labels=models,
            column_labels=models,
            title=f"{task}: Δ {metric_label(metric)}",
            colorbar_label=f"Δ {metric_label(metric)}",
            annotations=notes,
        ),
    )


def _modality_contribution(
    context: ReportContext, cohort: str, task: str
) -> tuple[list[dict[str, str]], Figure | None]:
    import carebench_eval as ce

    natural = context.natural_setting(cohort)
    withheld = f"{natural}+test_cxr_mcar_1.0"
    frame = context.test(cohort, task=task, natural=False).filter(
        pl.col("setting").is_in([natural, withheld])
    )
    fused = context.fused(cohort, task)
    if withheld not in frame["setting"].unique().to_list() or not fused:
        return [], None
    metric = context.primary(task)
    context.status(f"modality contribution: {cohort} / {task}")
    unimodal_cxr = CXR_ONLY_MODEL if CXR_ONLY_MODEL in context.models(cohort, task) else None
    contribution = ce.modality_contribution(
        frame.filter(pl.col("model").is_in(fused + ([unimodal_cxr] if unimodal_cxr else []))),
        full=natural,
        withheld={"cxr": withheld},
        unimodal_cxr=unimodal_cxr,
        metrics=[metric],
        n_perm=context.config.n_perm,
        n_boot=context.config.n_boot,
        random_state=context.config.random_state,
    )
    context.results[f"modality_contribution_{cohort}_{task}"] = contribution
    target = summary_target(contribution, task=task, metric=metric)
    rows, intervals = [], []
    for model in fused:
        drop = _row(
            headline(
                where(contribution, model=model, metric=metric, target=target, statistic="modality_drop")
            )
        )
        drop = drop or _row(
            where(contribution, model=model, metric=metric, target=target, statistic="modality_drop")
        )
        use = _row(
            where(contribution, model=model, metric=metric, target=target, statistic="cxr_utilization")
        )
        rows.append(
            {
                "task": task,
                "model": model,
                "metric": metric_label(metric),
                "D_CXR [95% CI]": _ci_text(drop, signed=True),
                "p": fmt_p(drop["p_value"]) if drop else "-",  # type: ignore[arg-type]
                "CXR utilization": _ci_text(use),
            }
        )
        if drop is not None:
            intervals.append(
                plots.Interval(
                    label=model,
                    value=_float(drop["value"]),
                    low=_float(drop["ci_low"]),
                    high=_float(drop["ci_high"]),
                    marked=drop["p_value"] is not None and drop["p_value"] < SIGNIFICANCE,
                )
            )
    figure = None
    if intervals:
        figure = Figure(
            key=f"fig3_modality_drop_{cohort}_{task}",
            caption=(
                f"Figure 3 ({cohort} cohort, {task}). D_CXR: drop in {metric_label(metric)} when every test "
                "CXR is withheld (test_cxr_mcar_1.0), 95% CI; filled = permutation p < 0.05."
            ),
            png=plots.bar_chart(
                intervals, title=f"{task}: CXR contribution", ylabel=f"Δ {metric_label(metric)}"
            ),
        )
    return rows, figure


def strategies_section(context: ReportContext) -> Section:
    """Q2: leaderboard, pairwise comparisons, and how much each fusion model uses the CXR."""
    section = Section("Q2. How do fusion strategies compare?")
    section.paragraphs.append(
        "Leaderboard: mean over seeds and folds with a patient-clustered bootstrap 95% CI (test-set "
        f"sampling uncertainty); {SEED_SD_STATEMENT} • = not significantly different from the "
        "reference model, the one with the best validation score (paired permutation test, Holm); a "
        "reference chosen on test because no validation score exists is marked selected_on_test. "
        "D_CXR = metric drop when the CXR is withheld from every test stay; a small D_CXR while the "
        "CXR-only model is informative means the fused model under-uses the image (modality imbalance)."
    )
    for cohort in context.cohorts:
        contribution_rows: list[dict[str, str]] = []
        for task in context.tasks(cohort):
            rows, columns, reference = _leaderboard(context, cohort, task)
            if rows:
                metric = metric_label(context.primary(task))
                chosen = (
                    f"{reference.model}, best validation {metric}"
                    if reference and reference.on == "validation"
                    else f"{reference.model}, best test {metric}: selected_on_test, no validation score"
                    if reference
                    else "none: no model has a finite score"
                )
                section.tables.append(
                    _table(
                        f"leaderboard_{cohort}_{task}",
                        f"Table 2 ({cohort} cohort, {task}). Leaderboard, ranked by test {metric}",
                        rows,
                        columns,
                        note=f"Reference of the • marks: {chosen}.",
                    )
                )
            heat = _pairwise_heatmap(context, cohort, task)
            if heat is not None:
                section.figures.append(heat)
            rows_c, figure = _modality_contribution(context, cohort, task)
            contribution_rows.extend(rows_c)
            if figure is not None:
                section.figures.append(figure)
        if contribution_rows:
            section.tables.append(
                _table(
                    f"modality_contribution_{cohort}",
                    f"Table 2b ({cohort} cohort). CXR contribution of each fusion model",
                    contribution_rows,
                )
            )
    return section


# --------------------------------------------------------------------------------------------------
# Q3: robustness to a missing CXR


def robustness_section(context: ReportContext) -> Section:
    """Q3: degradation curves under test-time MCAR/MNAR CXR removal, areas, break-even rates."""
    import carebench_eval as ce

    section = Section("Q3. How robust are models to a missing CXR?")
    section.paragraphs.append(
        "Each trained model is scored again with the CXR removed from a share of test stays (MCAR: at "
        "random; MNAR: lowest-acuity stays first), without retraining. area = mean metric over the "
        "missing-rate range; relative area = area / complete-CXR metric; break-even = the missing rate "
        "at which the curve meets the test score of the EHR-only model chosen on validation (dashed line)."
    )
    for cohort in context.cohorts:
        summary_rows: list[dict[str, str]] = []
        area_rows: list[dict[str, str]] = []
        for task in context.tasks(cohort):
            frame = context.test(cohort, task=task, natural=False)
            mechanisms = sorted(
                {str(parse_setting(s)["mechanism"]) for s in frame["setting"].unique().to_list()}
                & {"mcar", "mnar"}
            )
            if not mechanisms:
                continue
            metric = context.primary(task)
            context.status(f"robustness: {cohort} / {task}")
            ehr_only = context.select(
                cohort, task, [model for model in context.models(cohort, task) if model in EHR_ONLY_MODELS]
            )
            curves = ce.robustness(
                frame,
                axis="test",
                mechanisms=tuple(mechanisms),
                metrics=[metric],
                reference=ehr_only.model if ehr_only else None,
                n_boot=context.config.n_boot,
                random_state=context.config.random_state,
            )
            context.results[f"robustness_{cohort}_{task}"] = curves
            target = summary_target(curves, task=task, metric=metric)
            points = headline(where(curves, metric=metric, target=target, group_attribute=None))
            reference = _ehr_reference(context, cohort, task, ehr_only)
            panels: dict[str, list[plots.Curve]] = {}
            for mechanism in mechanisms:
                panel: list[plots.Curve] = []
                for model in context.models(cohort, task):
                    if model in EHR_ONLY_MODELS:
                        continue
                    series = []
                    for row in points.filter(pl.col("model") == model).iter_rows(named=True):
                        parsed = parse_setting(str(row["setting"]))
                        if parsed["mechanism"] in ("natural", mechanism) and parsed["cohort"] == cohort:
                            series.append((float(parsed["rate"]), row))
                    series.sort(key=lambda item: item[0])
                    if len(series) >= 2:
                        panel.append(
                            plots.Curve(
                                label=model,
                                rates=[rate for rate, _ in series],
                                values=[_float(row["value"]) for _, row in series],
                                low=[_float(row["ci_low"]) for _, row in series],
                                high=[_float(row["ci_high"]) for _, row in series],
                            )
                        )
                    family = f"test_cxr_{mechanism}"
                    stats = {
                        name: _row(
                            curves.filter(
                                (pl.col("model") == model)
                                & (pl.col("metric") == metric)
                                & (pl.col("statistic") == name)
                                & (pl.col("target") == target)
                                & pl.col("setting").str.contains(family)
                                & pl.col("group_attribute").is_null()
                            )
                        )
                        for name in ("area", "relative_area", "retention", "break_even_rate")
                    }
                    if any(stats.values()):
                        summary_rows.append(
                            {
                                "task": task,
                                "model": model,
                                "mechanism": mechanism.upper(),
                                "metric": metric_label(metric),
                                "area": _ci_text(stats["area"]),
                                "relative area": _ci_text(stats["relative_area"]),
                                "retention": _ci_text(stats["retention"]),
                                "break-even rate": fmt_value(
                                    _float(stats["break_even_rate"]["value"]), digits=2
                                )
                                if stats["break_even_rate"]
                                else "-",
                                "break-even vs": _selection_text(ehr_only),
                            }
                        )
                panels[mechanism.upper()] = panel
            if any(panels.values()):
                section.figures.append(
                    Figure(
                        key=f"fig4_degradation_{cohort}_{task}",
                        caption=(
                            f"Figure 4 ({cohort} cohort, {task}). {metric_label(metric)} vs test-time missing-CXR "
                            "rate, 95% CI bands; dashed: the EHR-only model with the best validation "
                            f"score ({_selection_text(ehr_only)}), at its test score."
                        ),
                        png=plots.degradation_curves(
                            panels,
                            title=f"{task}: robustness to a missing CXR",
                            ylabel=metric_label(metric),
                            reference=reference,
                        ),
                    )
                )
            area_rows.extend(_area_versus_reference(context, frame, cohort, task, tuple(mechanisms)))
        if summary_rows:
            section.tables.append(
                _table(
                    f"robustness_{cohort}",
                    f"Table 3 ({cohort} cohort). Degradation-curve summaries per model and mechanism",
                    summary_rows,
                    note="Rates tested: "
                    + ", ".join(
                        fmt_rate(rate)
                        for rate in sorted(
                            {
                                float(parse_setting(s)["rate"])
                                for s in context.test(cohort, natural=False)["setting"].unique().to_list()
                            }
                        )
                    ),
                )
            )
        if area_rows:
            section.tables.append(
                _table(
                    f"robustness_area_{cohort}",
                    f"Table 3b ({cohort} cohort). Δ relative area vs {AREA_REFERENCE} (paired bootstrap CI, "
                    "permutation p, Holm across models per task and mechanism)",
                    area_rows,
                )
            )
    section.tables.extend(_train_drop_tables(context))
    if not section.figures and not section.tables:
        section.paragraphs.append(
            "No degradation curve: the grid needs a model that reads the CXR and at least one test-time "
            "MCAR or MNAR setting (test_settings)."
        )
    return section


AREA_REFERENCE = "latefusion"
"""Simple concatenation: the complete-modality reference that robustness areas are compared with."""


def _area_versus_reference(
    context: ReportContext, frame: pl.DataFrame, cohort: str, task: str, mechanisms: tuple[str, ...]
) -> list[dict[str, str]]:
    """Δ relative area (model − LateFusion) of every other fusion model, per mechanism (eval.md §9 Q3)."""
    import carebench_eval as ce

    models = [model for model in context.fused(cohort, task) if model != AREA_REFERENCE]
    if AREA_REFERENCE not in context.models(cohort, task) or not models:
        return []
    metric = context.primary(task)
    context.status(f"robustness areas vs {AREA_REFERENCE}: {cohort} / {task}")
    parts = [
        ce.compare(
            (frame, model),
            (frame, AREA_REFERENCE),
            statistic="relative_area",
            metrics=[metric],
            mechanisms=mechanisms,
            n_perm=context.config.n_perm,
            n_boot=context.config.n_boot,
            random_state=context.config.random_state,
        )
        for model in models
    ]
    deltas = ce.adjust_pvalues(pl.concat(parts, how="vertical"), method="holm")
    context.results[f"robustness_area_{cohort}_{task}"] = deltas
    return [
        {
            "task": task,
            "model": str(row["model"]),
            "group": group_title(context.collection.model_groups.get(str(row["model"]), "unknown")),
            "mechanism": str(row["setting"]).rsplit("_", 1)[-1].upper(),
            "metric": metric_label(metric),
            "Δ relative area [95% CI]": fmt_ci(row["value"], row["ci_low"], row["ci_high"], signed=True),
            "p": fmt_p(row["p_value"]),
            "p (Holm)": fmt_p(row["p_adjusted"]),
        }
        for row in deltas.sort("setting", "model").iter_rows(named=True)
    ]


def _selection_text(selection: Selection | None) -> str:
    """`lstm`, or `lstm (selected_on_test)` when the choice could not use validation; `-` for none."""
    if selection is None:
        return "-"
    return selection.model + (f" ({selection.note})" if selection.note else "")


def _ehr_reference(
    context: ReportContext, cohort: str, task: str, selection: Selection | None
) -> tuple[str, float] | None:
    """The dashed line of Figure 4: the test score of the EHR-only model chosen on validation."""
    if selection is None:
        return None
    metric = context.primary(task)
    values = context.headline_values(context.score(cohort), task=task, metric=metric)
    value = value_of(values[selection.model]) if selection.model in values else None
    if value is None or math.isnan(value):
        return None
    return (f"EHR-only ({_selection_text(selection)})", value)


DROP_PROTOCOL_LABELS: dict[str, str] = {
    "upstream": "upstream protocol: the CXR is removed from the same share of training and validation "
    "stays, as CareBench does, test set untouched",
    "train_only": "train-only protocol: the CXR is removed from a share of training stays, validation "
    "and test sets untouched",
}


def _train_drop_tables(context: ReportContext) -> list[Table]:
    """Table 4: models trained with the CXR dropped from a share of stays, labelled with the protocol that ran."""
    import carebench_eval as ce

    runs = context.collection.runs_table()
    drops = sorted(runs["train_cxr_drop"].unique().to_list())
    if len(drops) < 2:
        return []
    dropped = runs.filter(pl.col("train_cxr_drop") > 0)
    protocols = sorted(dropped["train_cxr_drop_protocol"].unique().to_list())
    rows = []
    for cohort in sorted(runs["cohort"].unique().to_list()):
        for protocol in protocols:
            settings = [
                setting
                for setting in context.collection.test["setting"].unique().to_list()
                if (parsed := parse_setting(setting))["cohort"] == cohort
                and parsed["mechanism"] == "natural"
                and parsed["drop_protocol"] in ("", protocol)
            ]
            frame = context.collection.test.filter(pl.col("setting").is_in(settings))
            for task in context.collection.tasks:
                metric = context.primary(task)
                part = frame.filter(pl.col("task") == task)
                if part.height == 0:
                    continue
                context.status(f"train-time drop curves ({protocol}): {cohort} / {task}")
                scores = ce.score(
                    part,
                    metrics=[metric],
                    n_boot=context.config.n_boot,
                    random_state=context.config.random_state,
                )
                context.results[f"train_drop_{protocol}_{cohort}_{task}"] = scores
                target = summary_target(scores, task=task, metric=metric)
                for model in sorted(part["model"].unique().to_list()):
                    cells = {"protocol": protocol, "cohort": cohort, "task": task, "model": model}
                    for row in headline(
                        where(scores, model=model, metric=metric, target=target, group_attribute=None)
                    ).iter_rows(named=True):
                        rate = float(parse_setting(str(row["setting"]))["train_drop"])
                        cells[f"drop {fmt_rate(rate)}"] = _ci_text(row)
                    rows.append(cells)
    if not rows:
        return []
    columns = (["protocol"] if len(protocols) > 1 else []) + ["cohort", "task", "model"]
    columns += [f"drop {fmt_rate(rate)}" for rate in drops]
    label = "; ".join(DROP_PROTOCOL_LABELS.get(protocol, protocol) for protocol in protocols)
    return [
        _table(
            "train_drop",
            f"Table 4. Train-time CXR dropout ({label}), primary metric",
            [{column: row.get(column, "-") for column in columns} for row in rows],
            columns,
        )
    ]


# --------------------------------------------------------------------------------------------------
# Q4: fairness


def fairness_section(context: ReportContext) -> Section:
    """Q4: per-group metrics at a validation-chosen threshold, gaps with CIs, fusion vs unimodal Δgap."""
    import carebench_eval as ce

    config = context.config
    section = Section("Q4. Is fusion fair?")
    section.paragraphs.append(
        f"Thresholds are chosen on validation predictions (Youden's J) per run. Groups with fewer than "
        f"{config.min_group_n} stays are shown as suppressed (no number, figure or results row) and left "
        "out of gaps. A gap CI above 0 does not by "
        "itself prove a disparity (the plug-in gap is biased upward in small groups); the gap p comes from "
        "a permutation test that shuffles the attribute among patients. Δgap = gap of the "
        "best fusion model − gap of the best unimodal model, paired bootstrap CI and permutation p, "
        "Holm-corrected per task."
    )
    for cohort in context.cohorts:
        gap_rows: list[dict[str, str]] = []
        delta_rows: list[dict[str, str]] = []
        for task in context.tasks(cohort):
            test, val = context.test(cohort, task=task), context.val(cohort, task=task)
            attributes = tuple(
                a
                for a in FAIRNESS_ATTRIBUTES
                if a in test.columns or (a == "age_group" and "age" in test.columns)
            )
            if not attributes:
                continue
            intersections = [("age_group", "race")] if {"age_group", "race"} <= set(attributes) else []
            threshold = ce.FromValidation(val, rule="youden")
            context.status(f"fairness: {cohort} / {task}")
            fair = ce.fairness(
                test,
                attributes=attributes,
                intersections=intersections,
                threshold=threshold,
                targets="aggregate",
                n_boot=config.n_boot,
                test_gaps=True,
                n_perm=gap_permutations(config.n_perm),
                min_group_n=config.min_group_n,
                random_state=config.random_state,
            )
            context.results[f"fairness_{cohort}_{task}"] = fair
            best_fused = context.best(cohort, task, context.fused(cohort, task))
            best_unimodal = context.best(cohort, task, context.unimodal(cohort, task))
            target = summary_target(
                fair.filter(pl.col("group").is_not_null()), task=task, metric="sensitivity_score"
            )
            for model in context.models(cohort, task):
                for attribute in attributes:
                    pick = functools.partial(_pick, fair, model=model, attribute=attribute, target=target)
                    gap = pick(metric="sensitivity_score", statistic="gap")
                    worst = pick(metric="sensitivity_score", statistic="worst_group")
                    eod = pick(metric="equalized_odds_difference", statistic="estimate")
                    gap_rows.append(
                        {
                            "task": task,
                            "model": model,
                            "attribute": attribute,
                            "TPR gap": _ci_text(gap),
                            "gap p": fmt_p(gap["p_value"]) if gap else "-",  # type: ignore[arg-type]
                            "worst group (TPR)": f"{worst['group']} ({fmt_value(_float(worst['value']))})"
                            if worst and worst["group"] is not None
                            else "-",
                            "FPR gap": _ci_text(pick(metric="fpr_error", statistic="gap")),
                            "EOD": _ci_text(eod),
                            "EOD from": _note_value(eod, "eod_from"),
                            "DPD": _ci_text(
                                pick(metric="demographic_parity_difference", statistic="estimate")
                            ),
                        }
                    )
            group_rows = [
                row
                for model in (best_fused, best_unimodal)
                if model is not None
                for row in _group_rows(
                    fair,
                    model=model,
                    task=task,
                    target=target,
                    attributes=attributes,
                    min_group_n=config.min_group_n,
                )
            ]
            if group_rows:
                section.tables.append(
                    _table(
                        f"fairness_groups_{cohort}_{task}",
                        f"Table 5 ({cohort} cohort, {task}). Per-group metrics of the best fusion and best "
                        "unimodal models",
                        group_rows,
                    )
                )
            section.figures.extend(
                _fairness_figures(
                    context,
                    suppress_small_groups(fair, config.min_group_n),
                    cohort,
                    task,
                    [m for m in (best_fused, best_unimodal) if m],
                    target,
                )
            )
            if best_fused and best_unimodal:
                delta_rows.extend(
                    _delta_gaps(context, cohort, task, best_fused, best_unimodal, attributes, threshold)
                )
        if gap_rows:
            section.tables.append(
                _table(
                    f"fairness_gaps_{cohort}",
                    f"Table 6 ({cohort} cohort). Across-group gaps per model and attribute",
                    gap_rows,
                )
            )
        if delta_rows:
            section.tables.append(
                _table(
                    f"fairness_delta_{cohort}",
                    f"Table 6b ({cohort} cohort). Δgap, best fusion − best unimodal",
                    delta_rows,
                )
            )
    return section


def gap_permutations(n_perm: int) -> int:
    """Permutations of the gap test: a tenth of the paired-test count (paper profile: 1000, eval.md §6.4)."""
    return max(1, n_perm // 10)


def _pick(
    fair: pl.DataFrame, *, model: str, attribute: str, metric: str, statistic: str, target: str | None
) -> dict[str, object] | None:
    """The one fairness row of (model, attribute, metric, statistic) for the task's summary target."""
    rows = where(fair, model=model, metric=metric, statistic=statistic, target=target)
    return _row(rows.filter(pl.col("group_attribute") == attribute))


def _note_value(row: dict[str, object] | None, token: str) -> str:
    if row is None or not row.get("notes"):
        return "-"
    for note in str(row["notes"]).split(";"):
        if note.startswith(f"{token}="):
            return note.split("=", 1)[1]
    return "-"


def _group_rows(
    fair: pl.DataFrame,
    *,
    model: str,
    task: str,
    target: str | None,
    attributes: Sequence[str],
    min_group_n: int,
) -> list[dict[str, str]]:
    rows = []
    per_group = where(fair, model=model, task=task, statistic="estimate").filter(
        pl.col("group").is_not_null() & pl.col("group_attribute").is_in(list(attributes))
    )
    if target is not None:
        per_group = per_group.filter(pl.col("target") == target)
    metrics = (
        "base_rate",
        "sensitivity_score",
        "fpr_error",
        "auroc_score",
        "auprc_score",
        "expected_calibration_error",
        "accuracy_score",
        "f1_score",
    )
    present = [m for m in metrics if m in per_group["metric"].unique().to_list()]
    for (attribute, group), part in sorted(
        per_group.group_by("group_attribute", "group"), key=lambda item: (str(item[0][0]), str(item[0][1]))
    ):
        cells = {"task": task, "model": model, "attribute": str(attribute), "group": str(group)}
        n = part["n"].max()
        cells["n"] = group_size_text(n, min_group_n)  # type: ignore[arg-type]
        notes = ";".join(sorted({str(note) for note in part["notes"].drop_nulls().to_list()}))
        for metric in present:
            row = _row(part.filter(pl.col("metric") == metric))
            cells[metric_label(metric)] = (
                SUPPRESSED
                if n < min_group_n  # type: ignore[operator]
                else fmt_value(_float(row["value"]))
                if metric == "base_rate" and row
                else _ci_text(row)
            )
        cells["notes"] = "small_group" if "small_group" in notes and n >= min_group_n else ""  # type: ignore[operator]
        rows.append(cells)
    return rows


def _fairness_figures(
    context: ReportContext, fair: pl.DataFrame, cohort: str, task: str, models: list[str], target: str | None
) -> list[Figure]:
    figures = []
    panels: dict[str, list[plots.GroupPoint]] = {}
    for metric in ("sensitivity_score", "fpr_error"):
        points = []
        for model in models:
            part = where(fair, model=model, task=task, metric=metric, statistic="estimate").filter(
                pl.col("group").is_not_null() & ~pl.col("group_attribute").str.contains("|", literal=True)
            )
            if target is not None:
                part = part.filter(pl.col("target") == target)
            for row in part.iter_rows(named=True):
                points.append(
                    plots.GroupPoint(
                        model=model,
                        group=f"{row['group_attribute']}={row['group']}",
                        value=_float(row["value"]),
                        low=_float(row["ci_low"]),
                        high=_float(row["ci_high"]),
                    )
                )
        if points:
            panels[metric_label(metric)] = points
    if panels:
        figures.append(
            Figure(
                key=f"fig5_groups_{cohort}_{task}",
                caption=f"Figure 5 ({cohort} cohort, {task}). TPR and FPR per group (validation-chosen threshold), 95% CI.",
                png=plots.group_dot_plot(panels, title=f"{task}: per-group TPR / FPR"),
            )
        )
    if models:
        part = where(
            fair,
            model=models[0],
            task=task,
            metric="sensitivity_score",
            statistic="estimate",
            group_attribute="age_group|race",
        )
        if target is not None:
            part = part.filter(pl.col("target") == target)
        if part.height:
            split = part.with_columns(
                pl.col("group")
                .str.split_exact("|", 1)
                .struct.rename_fields(["age_group", "race"])
                .alias("parts")
            ).unnest("parts")
            ages = sorted(split["age_group"].unique().to_list())
            races = sorted(split["race"].unique().to_list())
            matrix = np.full((len(ages), len(races)), np.nan)
            notes = [["" for _ in races] for _ in ages]
            for row in split.iter_rows(named=True):
                i, j = ages.index(row["age_group"]), races.index(row["race"])
                matrix[i, j] = _float(row["value"])
                notes[i][j] = f"{fmt_value(_float(row['value']), digits=2)}\nn={row['n']}"
            figures.append(
                Figure(
                    key=f"fig6_age_race_{cohort}_{task}",
                    caption=f"Figure 6 ({cohort} cohort, {task}). TPR of {models[0]} per age group × race, annotated with n; "
                    f"cells with fewer than {context.config.min_group_n} stays are left blank.",
                    png=plots.heatmap(
                        matrix,
                        row_labels=ages,
                        column_labels=races,
                        title=f"{task}: TPR, {models[0]}",
                        colorbar_label="TPR",
                        annotations=notes,
                        diverging=False,
                    ),
                )
            )
    return figures


def _delta_gaps(
    context: ReportContext,
    cohort: str,
    task: str,
    fused: str,
    unimodal: str,
    attributes: Sequence[str],
    threshold: object,
) -> list[dict[str, str]]:
    import carebench_eval as ce

    test = context.test(cohort, task=task)
    frames = []
    context.status(f"fusion vs unimodal gaps: {cohort} / {task}")
    for attribute in attributes:
        for metric in GAP_METRICS:
            frames.append(
                ce.compare(
                    (test, fused),
                    (test, unimodal),
                    statistic="gap",
                    attribute=attribute,
                    metrics=[metric],
                    threshold=threshold,
                    n_perm=context.config.n_perm,
                    n_boot=context.config.n_boot,
                    min_group_n=context.config.min_group_n,
                    random_state=context.config.random_state,
                )
            )
    if not frames:
        return []
    deltas = ce.adjust_pvalues(pl.concat(frames, how="vertical"), family=("task",), method="holm")
    context.results[f"fairness_delta_{cohort}_{task}"] = deltas
    rows = []
    for row in deltas.iter_rows(named=True):
        rows.append(
            {
                "task": task,
                "fused − unimodal": f"{fused} − {unimodal}",
                "attribute": str(row["group_attribute"]),
                "metric": metric_label(str(row["metric"])),
                "target": str(row["target"]),
                "Δgap [95% CI]": fmt_ci(row["value"], row["ci_low"], row["ci_high"], signed=True),
                "p": fmt_p(row["p_value"]),
                "p (Holm)": fmt_p(row["p_adjusted"]),
            }
        )
    return rows
