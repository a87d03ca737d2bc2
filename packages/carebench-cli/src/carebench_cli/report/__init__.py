"""`carebench report`: aggregate the finished runs of a run store with carebench_eval.

It writes `report.md`, a self-contained `index.html`, PNG figures and the tidy result tables (no
row-level data).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import polars as pl

from carebench_cli.config import ReportConfig
from carebench_cli.report.collect import RunCollection, collect_runs
from carebench_cli.report.compute import compute_section
from carebench_cli.report.context import ReportContext, metric_label
from carebench_cli.report.document import Report, Section, render_html, render_markdown
from carebench_cli.report.formatting import fmt_ci
from carebench_cli.report.sections import (
    SEED_SD_STATEMENT,
    fairness_section,
    fusion_section,
    overview_section,
    robustness_section,
    strategies_section,
)
from carebench_cli.report.tidy import ordered, suppress_small_groups, value_of

__all__ = ["build_report", "write_report_dir"]

logger = logging.getLogger(__name__)

RESULTS_DIR = "results"
REPORT_TITLE = "carebench report"


def _summary(context: ReportContext) -> list[str]:
    lines = []
    for cohort in context.cohorts:
        for task in context.tasks(cohort):
            metric = context.primary(task)
            values = context.headline_values(context.score(cohort), task=task, metric=metric)
            best = ordered(list(values), by={model: value_of(rows) for model, rows in values.items()})
            if not best:
                continue
            row = values[best[0]].row(0, named=True)
            lines.append(
                f"{cohort} cohort, {task}: highest test {metric_label(metric)}: {best[0]} "
                f"{fmt_ci(row['value'], row['ci_low'], row['ci_high'])}."
            )
    return lines


def _methods(context: ReportContext) -> Section:
    import carebench_eval

    config = context.config
    return Section(
        "Methods",
        paragraphs=[
            f"Statistics by carebench_eval {carebench_eval.__version__}: patient-clustered percentile "
            f"bootstrap ({config.n_boot} replicates, 95% level), paired permutation tests ({config.n_perm} "
            f"permutations, two-sided, +1 correction), random_state {config.random_state}. Holm for headline "
            "claims, Benjamini-Hochberg for screens (pairwise grid, per-label gains).",
            SEED_SD_STATEMENT,
            "Primary metrics: AUPRC for mortality, macro AUPRC for phenotype, accuracy for length of stay "
            "(eval.md §5.5). Every reference model (best unimodal, best fusion, the reference of the "
            "leaderboard's • marks, the EHR-only model behind the break-even rate) is chosen on "
            "validation predictions; where no validation score exists the choice falls back to test and "
            "is marked selected_on_test.",
            f"Tidy result tables (aggregates only, never row-level predictions) are in `{RESULTS_DIR}/`. "
            f"Numbers of groups with fewer than {config.min_group_n} stays are suppressed everywhere: in the "
            "tables they read `suppressed`, and no figure or results file holds them.",
        ],
    )


def build_report(
    collection: RunCollection, *, config: ReportConfig, status: Callable[[str], None] | None = None
) -> tuple[Report, dict[str, pl.DataFrame]]:
    """Compute every section of the report.

    Returns:
        The report and the tidy result tables behind it (name -> eval.md §8.1 frame).
    """
    import carebench_eval as ce

    context = ReportContext(collection=collection, config=config, status=status or (lambda message: None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ce.UndefinedMetricWarning)
        sections = [
            overview_section(context),
            fusion_section(context),
            strategies_section(context),
            robustness_section(context),
            fairness_section(context),
            compute_section(collection),
        ]
        summary = _summary(context)
    undefined = sorted({str(w.message) for w in caught if issubclass(w.category, ce.UndefinedMetricWarning)})
    for message in {str(w.message) for w in caught} - set(undefined):
        logger.warning("%s", message)
    methods = _methods(context)
    if undefined:
        methods.paragraphs.append(
            f"{len(undefined)} kind(s) of undefined metric (value NaN, with a note in results/): "
            + " | ".join(undefined)
        )
    report = Report(
        title=REPORT_TITLE,
        summary=[f"Run store: {collection.root}.", *summary],
        sections=[*sections, methods],
    )
    # Groups smaller than min_group_n never leave the process: no results file holds them.
    results = {
        name: suppress_small_groups(frame, config.min_group_n)
        for name, frame in context.results.items()
        if not name.startswith("_")
    }
    return report, results


def is_report_dir(path: Path) -> bool:
    """Whether `path` holds a report that `carebench report` wrote (so it may be replaced)."""
    try:
        with (path / "report.md").open(encoding="utf-8") as handle:
            first = handle.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return False
    return first == f"# {REPORT_TITLE}" and (path / "index.html").is_file()


def write_report_dir(
    runs_dir: Path,
    *,
    config: ReportConfig,
    out_dir: Path | None = None,
    status: Callable[[str], None] | None = None,
) -> Path:
    """Build the report of `runs_dir` and write it to `out_dir` (default `<runs_dir>/report`), atomically.

    An existing `out_dir` is replaced only when it is empty or a carebench report; two writers of one
    report take turns under its lock.

    Returns:
        The report directory (holding `index.html`, `report.md`, `*.png`, `results/*.csv`).

    Raises:
        OutputDirectoryError: `out_dir` is a file, or a folder that is not a carebench report.
    """
    import carebench_eval as ce
    from carebench_data.outputs import atomic_directory, check_output_dir

    target = out_dir or runs_dir / "report"
    check_output_dir(target, replace=True, is_ours=is_report_dir, what="report")
    collection = collect_runs(runs_dir)
    report, results = build_report(collection, config=config, status=status)
    with atomic_directory(target, overwrite=True, is_ours=is_report_dir, what="report", wait=True) as staging:
        (staging / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (staging / "index.html").write_text(render_html(report), encoding="utf-8")
        for figure in report.figures:
            (staging / figure.filename).write_bytes(figure.png)
        (staging / RESULTS_DIR).mkdir()
        for name, frame in sorted(results.items()):
            ce.write_results(frame, staging / RESULTS_DIR / f"{name}.csv", provenance={"runs": str(runs_dir)})
    return target
