"""Every reference model of the report is chosen on validation predictions (or marked selected_on_test).

Planted: on validation `lstm` is the best model, on test `transformer` is. A reference chosen on test
would be `transformer`; the report must take `lstm`.
"""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import carebench_eval as ce
from carebench_cli.config import ReportConfig
from carebench_cli.grid import RunSpec
from carebench_cli.report.collect import RunCollection
from carebench_cli.report.context import ReportContext, Selection
from carebench_cli.report.sections import _leaderboard, robustness_section
from carebench_cli.report.tidy import where
from carebench_cli.run_store import FinishedRun

GROUPS = {"lstm": "unimodal", "transformer": "unimodal", "latefusion": "complete"}
VAL_STRENGTH = {"lstm": 2.5, "transformer": 0.3, "latefusion": 1.0}
TEST_STRENGTH = {"lstm": 0.6, "transformer": 2.5, "latefusion": 6.0}
FUSION_DECAY = {"": 1.0, "+test_cxr_mcar_0.5": 0.4, "+test_cxr_mcar_1.0": 0.05}


def _frame(split: str, *, n: int = 400, constant_labels: bool = False) -> pl.DataFrame:
    rng = np.random.default_rng(0 if split == "test" else 1)
    latent = rng.standard_normal(n)
    y = (latent + 0.5 * rng.standard_normal(n) > 0.8).astype(np.int64)
    if constant_labels:
        y[:] = 0
    offset = 0 if split == "test" else 10_000
    strengths = TEST_STRENGTH if split == "test" else VAL_STRENGTH
    parts = []
    for model, strength in strengths.items():
        settings = FUSION_DECAY if (model == "latefusion" and split == "test") else {"": 1.0}
        noise = rng.standard_normal(n)
        for suffix, factor in settings.items():
            score = 1 / (1 + np.exp(-(strength * factor * latent + noise)))
            parts.append(
                pl.DataFrame(
                    {
                        "sample_id": np.arange(n) + offset,
                        "subject_id": np.arange(n) + offset,
                        "task": "mortality",
                        "target": "mortality",
                        "y_true": y,
                        "y_score": score,
                        "model": model,
                        "seed": 42,
                        "fold": 0,
                        "setting": f"cohort_base{suffix}",
                        "has_cxr": np.arange(n) % 2 == 0 if not suffix else np.zeros(n, dtype=bool),
                    }
                )
            )
    return pl.concat(parts)


def _context(*, constant_val_labels: bool = False) -> ReportContext:
    runs = [
        FinishedRun(
            run_id=f"{model}-mortality-000000000000",
            path=Path("."),
            spec=RunSpec(
                model=model,
                task="mortality",
                cohort="base",
                fold=0,
                seed=42,
                train_cxr_drop=0.0,
                profile="quick",
                test_settings=("natural",),
                dataset_hash="h",
            ),
            metrics={
                "task_kind": "binary",
                "primary_metric": "auprc_score",
                "model_info": {"group": group},
                "epochs": 1,
                "seconds": 1.0,
            },
        )
        for model, group in GROUPS.items()
    ]
    collection = RunCollection(
        root=Path("."),
        runs=runs,
        skipped={},
        test=_frame("test"),
        val=_frame("val", constant_labels=constant_val_labels),
        model_groups=GROUPS,
    )
    return ReportContext(collection=collection, config=ReportConfig(n_boot=40, n_perm=99, random_state=0))


def test_the_planted_validation_and_test_winners_differ():
    context = _context()
    val = context.headline_values(context.val_score("base"), task="mortality", metric="auprc_score")
    test = context.headline_values(context.score("base"), task="mortality", metric="auprc_score")
    assert max(val, key=lambda model: val[model]["value"][0]) == "lstm"
    assert max(test, key=lambda model: test[model]["value"][0]) == "latefusion"
    assert test["transformer"]["value"][0] > test["lstm"]["value"][0]


def test_leaderboard_reference_is_the_best_model_on_validation():
    context = _context()
    rows, _, reference = _leaderboard(context, "base", "mortality")
    assert reference == Selection("lstm", on="validation")
    # Ranked by test, the reference is not first; the comparisons are against it.
    assert rows[0]["model"].startswith("latefusion")
    lstm_row = next(row for row in rows if row["model"].startswith("lstm"))
    assert lstm_row["model"] == "lstm • (reference)"
    versus = context.results["compare_best_base_mortality"]
    assert set(versus["baseline"].drop_nulls().unique().to_list()) == {"lstm"}


def test_leaderboard_marks_a_reference_chosen_on_test_when_validation_scores_are_undefined():
    with pytest.warns(ce.UndefinedMetricWarning):
        context = _context(constant_val_labels=True)
        selection = context.select("base", "mortality", ["lstm", "transformer", "latefusion"])
    assert selection == Selection("latefusion", on="test")
    assert selection.note == "selected_on_test"
    rows, _, _ = _leaderboard(context, "base", "mortality")
    assert rows[0]["model"] == "latefusion • (reference, selected_on_test)"


def test_break_even_line_is_the_ehr_only_model_chosen_on_validation():
    context = _context()
    section = robustness_section(context)
    curves = context.results["robustness_base_mortality"]
    expected = {
        reference: ce.robustness(
            context.test("base", task="mortality", natural=False),
            axis="test",
            mechanisms=("mcar",),
            metrics=["auprc_score"],
            reference=reference,
            n_boot=40,
            random_state=0,
        )
        for reference in ("lstm", "transformer")
    }

    def break_even(frame: pl.DataFrame) -> float:
        rows = where(frame, model="latefusion", metric="auprc_score", statistic="break_even_rate")
        return float(rows.filter(pl.col("group_attribute").is_null())["value"][0])

    assert break_even(curves) == break_even(expected["lstm"])
    assert break_even(expected["lstm"]) != break_even(expected["transformer"])
    table = next(table for table in section.tables if table.key == "robustness_base")
    assert table.frame["break-even vs"].unique().to_list() == ["lstm"]
    figure = next(figure for figure in section.figures if figure.key == "fig4_degradation_base_mortality")
    assert "best validation score (lstm)" in figure.caption


def test_report_states_that_seed_sd_is_beside_not_inside_the_cis_and_p_values():
    from carebench_cli.report import build_report

    context = _context()
    report, _ = build_report(context.collection, config=context.config)
    sections = {section.title: " ".join(section.paragraphs) for section in report.sections}
    statement = "the seed SD (training variability) is reported beside the CIs and p-values (Table 2), not inside them"
    for title in (
        "Methods",
        "Q1. When does multimodal fusion help?",
        "Q2. How do fusion strategies compare?",
    ):
        assert statement in sections[title], title
    assert "test-set sampling only" in sections["Methods"]
    assert "selected_on_test" in sections["Methods"]
