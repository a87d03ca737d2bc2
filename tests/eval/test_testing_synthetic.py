"""`carebench_eval.testing`: deterministic synthetic predictions with planted effects, and the bundled example."""

from __future__ import annotations

import polars as pl

import carebench_eval as ce
from carebench_eval.testing import synthetic_predictions


def test_bundled_example_is_the_deterministic_generator_output() -> None:
    regenerated = synthetic_predictions(n_samples=200, seed=7).with_columns(pl.col("y_score").round(4))
    bundled = ce.read_predictions(ce.example_predictions_path())
    assert bundled.equals(ce.validate(regenerated))


def test_same_arguments_same_frame() -> None:
    assert synthetic_predictions(n_samples=50, seed=3).equals(synthetic_predictions(n_samples=50, seed=3))
    assert not synthetic_predictions(n_samples=50, seed=3).equals(synthetic_predictions(n_samples=50, seed=4))


def test_planted_weak_group_has_lower_auroc() -> None:
    frame = synthetic_predictions(
        n_samples=1500,
        tasks=("phenotype",),
        models=("a",),
        strength={"a": 4.0},
        weak_group=("sex", "F"),
        seed=5,
    )
    by_sex = {
        sex: ce.auroc_score(
            part.sort("sample_id", "target")["y_true"].to_numpy().reshape(-1, 4),
            part.sort("sample_id", "target")["y_score"].to_numpy().reshape(-1, 4),
        )
        for (sex,), part in frame.group_by("sex")
    }
    assert by_sex["M"] > 0.75
    assert abs(by_sex["F"] - 0.5) < 0.06


def test_patients_have_several_stays_and_constant_attributes() -> None:
    frame = synthetic_predictions(
        n_samples=300, tasks=("mortality",), models=("a",), stays_per_patient=1.5, seed=1
    )
    stays = frame.group_by("subject_id").agg(
        pl.len().alias("stays"), pl.col("race").n_unique().alias("races")
    )
    assert stays["stays"].max() > 1
    assert stays["races"].max() == 1
