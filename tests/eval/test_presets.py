"""The upstream-parity preset (eval.md §9) and what splatting it into score/fairness does."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import carebench_eval as ce
from carebench_eval.testing import synthetic_predictions

PAPER = ce.presets.CAREBENCH_PAPER


def test_paper_preset_fields_follow_the_spec() -> None:
    assert PAPER.threshold == ce.Fixed(0.5)
    assert (PAPER.n_bins, PAPER.min_group_n) == (10, 10)
    assert PAPER.attributes == ("admission_type", "age_group", "sex", "race")
    assert dict(PAPER.primary_metrics) == {
        "mortality": ("auprc_score", None),
        "phenotype": ("auprc_score", "(macro)"),
        "los": ("accuracy_score", None),
    }
    assert PAPER.metrics == ("auprc_score", "accuracy_score")
    with pytest.raises(dataclasses.FrozenInstanceError):
        PAPER.min_group_n = 30  # type: ignore[misc]
    with pytest.raises(TypeError):
        PAPER.primary_metrics["mortality"] = ("auroc_score", None)  # type: ignore[index]


def test_paper_preset_splats_into_score() -> None:
    preds = synthetic_predictions(n_samples=80, tasks=("mortality", "los"), models=("a",), seed=4)
    table = ce.score(preds, n_boot=20, **PAPER.score_kwargs)
    expected = ce.score(
        preds, n_boot=20, threshold=ce.Fixed(0.5), n_bins=10, metrics=["auprc_score", "accuracy_score"]
    )
    assert_frame_equal(table, expected)
    estimates = table.filter(pl.col("statistic") == "estimate")
    assert set(zip(estimates["task"], estimates["metric"], strict=True)) == {
        ("mortality", "auprc_score"),
        ("los", "auprc_score"),
        ("los", "accuracy_score"),
    }


def test_paper_preset_splats_into_fairness_with_age_race_first() -> None:
    preds = synthetic_predictions(n_samples=240, tasks=("mortality",), models=("a",), seed=5)
    admission = pl.when(pl.col("sample_id").cast(pl.Int64) % 3 == 0).then(pl.lit("URGENT"))
    preds = preds.with_columns(admission.otherwise(pl.lit("EW EMER.")).alias("admission_type"))
    table = ce.fairness(preds, n_boot=0, **PAPER.fairness_kwargs)
    order = list(dict.fromkeys(table["group_attribute"].drop_nulls().to_list()))
    singles = [name for name in order if "|" not in name]
    pairs = [name for name in order if "|" in name]
    assert set(singles) == {"admission_type", "age_group", "sex", "race"}
    assert "age_group|race" in pairs and len(pairs) == 6
    # min_group_n=10: a group of 10-29 stays enters the gap (it would be small under the default 30).
    sizes = table.filter(
        (pl.col("statistic") == "estimate")
        & (pl.col("metric") == "base_rate")
        & pl.col("group").is_not_null()
    )
    small = sizes.filter(pl.col("notes").str.contains("small_group").fill_null(False))
    assert (small["n"] < 10).all() and not small.is_empty()
    assert sizes.filter((pl.col("n") >= 10) & (pl.col("n") < 30)).height > 0
    explicit = ce.fairness(
        preds,
        n_boot=0,
        threshold=ce.Fixed(0.5),
        n_bins=10,
        min_group_n=10,
        attributes=["admission_type", "age_group", "sex", "race"],
        intersections="pairs",
    )
    assert_frame_equal(table, explicit)
