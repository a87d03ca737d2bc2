"""Calibration slope and intercept (eval.md §2.2): array functions and `score`, against statsmodels GLM."""

from __future__ import annotations

import math
import warnings

import numpy as np
import polars as pl
import pytest

import carebench_eval as ce
from carebench_eval.api import RunScorer
from carebench_eval.resampling import bootstrap_counts, cluster_universe
from carebench_eval.runs import split_runs
from carebench_eval.testing import synthetic_predictions

sm = pytest.importorskip("statsmodels.api")

FITS = ["calibration_slope", "calibration_intercept"]


def _logit(s: np.ndarray) -> np.ndarray:
    clipped = np.clip(s, 1e-15, 1 - 1e-15)
    return np.log(clipped) - np.log1p(-clipped)


def _glm(y: np.ndarray, s: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """(slope, intercept) by statsmodels: slope from ``y ~ 1 + logit(s)``, intercept with offset ``logit(s)``."""
    logit = _logit(s)
    family = sm.families.Binomial()
    slope = sm.GLM(y, sm.add_constant(logit), family=family, freq_weights=weights).fit(tol=1e-13).params[1]
    intercept = (
        sm.GLM(y, np.ones((y.size, 1)), family=family, offset=logit, freq_weights=weights)
        .fit(tol=1e-13)
        .params[0]
    )
    return float(slope), float(intercept)


def test_array_functions_match_statsmodels() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = 1 / (1 + np.exp(-(0.8 * (2 * y - 1) + rng.normal(0, 1.2, y.size) - 0.4)))
    s[:3] = [0.0, 1.0, 0.5]  # clipped before the logit
    weights = rng.integers(0, 4, y.size)
    for sample_weight in (None, weights):
        slope, intercept = _glm(y, s, None if sample_weight is None else sample_weight.astype(float))
        assert ce.calibration_slope(y, s, sample_weight=sample_weight) == pytest.approx(slope, abs=1e-9)
        assert ce.calibration_intercept(y, s, sample_weight=sample_weight) == pytest.approx(
            intercept, abs=1e-9
        )
    # A perfectly calibrated logistic model has slope 1 and intercept 0, up to sampling error.
    p = 1 / (1 + np.exp(-rng.normal(0, 1.5, 40_000)))
    outcome = (rng.random(p.size) < p).astype(int)
    assert ce.calibration_slope(outcome, p) == pytest.approx(1.0, abs=0.05)
    assert ce.calibration_intercept(outcome, p) == pytest.approx(0.0, abs=0.05)


def test_score_point_estimates_and_replicates_match_statsmodels() -> None:
    preds = synthetic_predictions(n_samples=400, tasks=("mortality", "phenotype"), models=("a",), seed=8)
    table = ce.score(preds, metrics=FITS, n_boot=30, aggregate=())
    for run in split_runs(preds):
        for j, target in enumerate(run.targets):
            slope, intercept = _glm(run.y[:, j].astype(float), run.s[:, j])
            rows = table.filter((pl.col("task") == run.task) & (pl.col("target") == target))
            values = dict(zip(rows["metric"], rows["value"], strict=True))
            assert values["calibration_slope"] == pytest.approx(slope, abs=1e-9)
            assert values["calibration_intercept"] == pytest.approx(intercept, abs=1e-9)
    # Each cluster-bootstrap replicate equals statsmodels on the materialized resample.
    (run,) = [run for run in split_runs(preds) if run.task == "mortality"]
    universe, (column_of,) = cluster_universe(run.cluster)
    scorer = RunScorer(run, FITS, None, column_of, universe.size, n_bins=10, averages=())
    counts = bootstrap_counts(universe.size, 0, 5, random_state=0)
    values = scorer.values(counts)
    for replicate in range(5):
        rows = np.repeat(np.arange(run.n), counts[replicate, column_of])
        slope, intercept = _glm(run.y[rows, 0].astype(float), run.s[rows, 0])
        assert values[replicate, 0] == pytest.approx(slope, abs=1e-9)
        assert values[replicate, 1] == pytest.approx(intercept, abs=1e-9)
    # Optional metrics: not part of the defaults.
    assert not set(FITS) & set(ce.score(preds, n_boot=0)["metric"].unique().to_list())


def test_single_class_is_nan_with_a_note() -> None:
    preds = ce.from_arrays(
        np.zeros(20, dtype=int),
        np.linspace(0.1, 0.9, 20),
        task="mortality",
        kind="binary",
        targets=["mortality"],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = ce.score(preds, metrics=FITS, n_boot=0)
    assert table["value"].is_nan().all()
    assert all("single_class" in notes for notes in table["notes"].to_list())
    assert any("calibration_slope is undefined" in str(warning.message) for warning in caught)


# Perfect separation: no finite slope


@pytest.mark.parametrize(
    ("y", "s"),
    [
        ([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]),  # complete separation
        ([1, 1, 1, 0, 0, 0], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]),  # reversed
        ([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]),  # quasi-complete: a tie on the boundary
        ([0, 1, 0, 1], [0.4, 0.4, 0.4, 0.4]),  # constant scores: the slope is not identified
    ],
)
def test_separated_data_has_no_slope(y: list[int], s: list[float]) -> None:
    with pytest.warns(ce.UndefinedMetricWarning, match="the score separates the classes"):
        assert np.isnan(ce.calibration_slope(y, s))
    # The intercept (slope fixed at 1) is defined whenever both classes are present.
    assert np.isfinite(ce.calibration_intercept(y, s))
    # One negative above one positive: the classes overlap and the maximum is finite.
    overlapping = ce.calibration_slope([0, 0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert overlapping == pytest.approx(
        _glm(np.array([0, 0, 1, 0, 1, 1.0]), np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))[0], abs=1e-9
    )


def test_separated_slope_is_nan_with_a_separated_note_in_the_frame_layer() -> None:
    preds = ce.from_arrays(
        np.array([0, 0, 0, 1, 1, 1]),
        np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]),
        task="mortality",
        kind="binary",
        targets=["mortality"],
    )
    with pytest.warns(ce.UndefinedMetricWarning, match="calibration_slope is undefined"):
        table = ce.score(preds, metrics=FITS, n_boot=0)
    values = dict(zip(table["metric"], table["value"], strict=True))
    notes = dict(zip(table["metric"], table["notes"], strict=True))
    assert np.isnan(values["calibration_slope"])
    assert notes["calibration_slope"].split(";") == ["synthetic_sample_id", "separated"]
    assert np.isfinite(values["calibration_intercept"])
    # A comparison with a separated side is undefined for the same reason.
    overlapping = preds.with_columns(
        pl.lit("b").alias("model"), pl.Series("y_score", [0.1, 0.8, 0.3, 0.7, 0.2, 0.9])
    )
    separated = preds.with_columns(pl.lit("a").alias("model"))
    delta = ce.compare(
        (separated, "a"), (overlapping, "b"), metrics=["calibration_slope"], n_perm=64, n_boot=20
    )
    assert np.isnan(delta["value"][0]) and "separated" in delta["notes"][0].split(";")


def _undefined_slope(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> bool:
    """One class, or no positive below a negative (or none above), among the samples drawn."""
    drawn = weights > 0
    positives, negatives = s[drawn & (y == 1)], s[drawn & (y == 0)]
    if positives.size == 0 or negatives.size == 0:
        return True
    return bool(positives.min() >= negatives.max() or positives.max() <= negatives.min())


def test_separated_bootstrap_replicates_are_dropped_and_counted() -> None:
    # A small group whose classes overlap in one pair only: many resamples separate them.
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    s = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.6, 0.7, 0.8, 0.9])
    preds = ce.from_arrays(y, s, task="mortality", kind="binary", targets=["mortality"])
    n_boot = 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = ce.score(preds, metrics=["calibration_slope"], n_boot=n_boot)
    counts = bootstrap_counts(y.size, 0, n_boot, random_state=0)
    undefined = sum(_undefined_slope(y, s, row) for row in counts)
    assert 0.05 * n_boot < undefined < n_boot  # the planted case: many, not all
    (notes,) = table["notes"].to_list()
    assert f"ci_dropped={undefined}" in notes.split(";")
    assert "ci_unstable" in notes.split(";")  # more than 5 % undefined: no CI rather than a made-up one
    # Every defined replicate is the statsmodels fit of the materialized resample; no replicate is a
    # large finite number standing in for an undefined slope.
    (run,) = split_runs(preds)
    universe, (column_of,) = cluster_universe(run.cluster)
    scorer = RunScorer(run, ["calibration_slope"], None, column_of, universe.size, n_bins=10, averages=())
    replicates = scorer.values(counts)[:, 0]
    for row, value in zip(counts, replicates, strict=True):
        if _undefined_slope(y, s, row[column_of]):
            assert np.isnan(value)
        else:
            drawn = np.repeat(np.arange(y.size), row[column_of])
            assert value == pytest.approx(_glm(y[drawn].astype(float), s[drawn])[0], abs=1e-7)


def test_intercept_with_saturated_scores_is_fitted() -> None:
    # Scores of exactly 0 or 1 (float32 sigmoids saturate) clip to logits of ±34.5: a Newton start at
    # α = 0 sees no curvature there. Every logit equal: α = logit(ȳ) − logit(s) in closed form.
    y = np.array([0, 1, 1, 1])
    s = np.array([0.0, 0.0, 1e-17, 0.0])
    expected = math.log(0.75 / 0.25) - (math.log(1e-15) - math.log1p(-1e-15))
    assert ce.calibration_intercept(y, s) == pytest.approx(expected, abs=1e-9)
    # Saturated scores on both sides with one positive in between.
    y = np.array([0, 0, 1, 1, 0, 0, 1, 0])
    s = np.array([1.0, 1.0, 1e-17, 0.5, 1e-17, 1e-17, 0.0, 0.5])
    weight = np.array([2, 1, 2, 0, 2, 1, 1, 1])
    alpha = ce.calibration_intercept(y, s, sample_weight=weight)
    logit = _logit(s)
    fitted = 1 / (1 + np.exp(-(alpha + logit)))
    assert np.sum(weight * (y - fitted)) == pytest.approx(0.0, abs=1e-12)  # the score equation holds


def test_a_fit_that_does_not_converge_is_nan_with_its_own_note(monkeypatch: pytest.MonkeyPatch) -> None:
    from carebench_eval.metrics import core

    monkeypatch.setattr(core, "_NEWTON_ITERATIONS", 1)
    preds = synthetic_predictions(n_samples=80, tasks=("mortality",), models=("a",), seed=3)
    with pytest.warns(ce.UndefinedMetricWarning, match="did not converge"):
        table = ce.score(preds, metrics=["calibration_slope"], n_boot=0)
    assert np.isnan(table["value"][0])
    assert "no_convergence" in table["notes"][0].split(";")
