"""Calibration slope and intercept (eval.md §2.2): array functions and `score`, against statsmodels GLM."""

from __future__ import annotations

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
