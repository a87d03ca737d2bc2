"""carebench-eval against independent oracles, on randomized inputs with ties, tiny groups and one class.

Each oracle is either an independent implementation written here from the published algorithm (fast
DeLong, Sun & Xu 2014; the exact permutation distribution by enumeration) or a reference library that
is a test dependency (statsmodels, scipy, fairlearn). Tolerances are absolute unless stated:

| quantity | oracle | tolerance |
|---|---|---|
| DeLong Δ, SE, CI bounds | fast DeLong written here (midranks, Sun & Xu 2014) | 1e-12 |
| DeLong z, p | the same, p by `scipy.stats.norm.sf` | 1e-9 relative (z), 1e-12 (p) |
| Holm, BH adjusted p | statsmodels `multipletests` | 1e-15 |
| BCa interval bounds | `scipy.stats.bootstrap(method="BCa")` on carebench's replicates | 1e-12 |
| exact permutation p | every flip pattern enumerated here | exact (1e-15) |
| group base rate, selection rate, TPR, FPR | fairlearn `MetricFrame` | 1e-12 |
| demographic parity difference | fairlearn `demographic_parity_difference` | 1e-12 |
| equalized odds difference | fairlearn (`undefined_rate="zero"`, and the default where every group has both classes) | 1e-12 |
| calibration slope, intercept | statsmodels binomial GLM (freq weights) | 1e-9 relative (1e-9 absolute below 1) |

Hypothesis example counts stay small so that each test runs in a few seconds.
"""

from __future__ import annotations

import itertools
import math
import types
import warnings
from unittest import mock

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from fairlearn import metrics as fairlearn_metrics
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.multitest import multipletests

import carebench_eval as ce
from carebench_eval.testing import select_rows

ORACLE_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

seeds = st.integers(min_value=0, max_value=2**32 - 1)


# --------------------------------------------------------------------------------------------------
# DeLong: an independent fast DeLong (Sun & Xu 2014)


def _midranks(values: np.ndarray) -> np.ndarray:
    """Midranks (1-based; a run of ties shares the mean of its ranks), Sun & Xu's Algorithm 1."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    ranks = np.empty(values.size)
    i = 0
    while i < values.size:
        j = i
        while j < values.size and ordered[j] == ordered[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1.0
        i = j
    out = np.empty(values.size)
    out[order] = ranks
    return out


def _fast_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs ``[k]`` and their DeLong covariance ``[k, k]`` for ``scores [k, n]``."""
    positives, negatives = scores[:, y == 1], scores[:, y == 0]
    m, n = positives.shape[1], negatives.shape[1]
    tx = np.array([_midranks(row) for row in positives])
    ty = np.array([_midranks(row) for row in negatives])
    tz = np.array([_midranks(row) for row in np.hstack([positives, negatives])])
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, np.cov(v01) / m + np.cov(v10) / n


@st.composite
def paired_scores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two correlated models' scores; ties from rounding to 1 or 2 decimals."""
    n = draw(st.integers(min_value=4, max_value=80))
    prevalence = draw(st.floats(min_value=0.05, max_value=0.6))
    decimals = draw(st.sampled_from([1, 2, 8]))
    correlation = draw(st.floats(min_value=0.0, max_value=0.95))
    rng = np.random.default_rng(draw(seeds))
    y = (rng.random(n) < prevalence).astype(int)
    shared = rng.normal(size=n)
    a = shared + rng.normal(size=n) * math.sqrt(1 - correlation**2) + 1.2 * y
    b = correlation * shared + rng.normal(size=n) + 0.8 * y
    return y, np.round(1 / (1 + np.exp(-a)), decimals), np.round(1 / (1 + np.exp(-b)), decimals)


@ORACLE_SETTINGS
@given(paired_scores(), st.sampled_from([0.8, 0.9, 0.95]))
def test_delong_matches_an_independent_fast_delong(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], level: float
) -> None:
    y, a, b = data
    n_positive = int(y.sum())
    if min(n_positive, y.size - n_positive) < 2:
        with pytest.warns(ce.UndefinedMetricWarning):
            result = ce.delong_test(y, a, b, level=level)
        assert math.isnan(result.delta) and math.isnan(result.p_value)
        return
    result = ce.delong_test(y, a, b, level=level)
    aucs, covariance = _fast_delong(y, np.vstack([a, b]))
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    delta = aucs[0] - aucs[1]
    assert result.delta == pytest.approx(delta, abs=1e-12)
    assert result.se == pytest.approx(math.sqrt(max(variance, 0.0)), abs=1e-12)
    assume(variance > 1e-20)  # a zero variance (identical rankings) has its own convention
    z = delta / math.sqrt(variance)
    half_width = stats.norm.ppf(0.5 + level / 2) * math.sqrt(variance)
    assert result.z == pytest.approx(z, rel=1e-9, abs=1e-12)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), abs=1e-12)
    assert result.ci_low == pytest.approx(delta - half_width, abs=1e-12)
    assert result.ci_high == pytest.approx(delta + half_width, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Multiplicity: statsmodels multipletests

p_values = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=1.0),
        st.sampled_from([0.0, 0.001, 0.01, 0.04, 0.05, 1.0]),  # ties and edges
        st.just(math.nan),  # a test left out of the family
    ),
    min_size=1,
    max_size=40,
)


def _multipletests(p: np.ndarray, method: str) -> np.ndarray:
    """statsmodels' adjusted p-values. Its Holm branch runs ``gc.collect()`` on every call (about 0.1 s in a
    test process with a large heap); skipping that changes no number."""
    with mock.patch("gc.collect", return_value=0):
        return multipletests(p, method=method)[1]


@ORACLE_SETTINGS
@given(p_values)
def test_holm_and_bh_match_multipletests(values: list[float]) -> None:
    p = np.array(values)
    defined = ~np.isnan(p)
    for ours, method in ((ce.holm, "holm"), (ce.benjamini_hochberg, "fdr_bh")):
        adjusted = ours(p)
        assert np.isnan(adjusted[~defined]).all()
        if defined.any():
            reference = _multipletests(p[defined], method)
            np.testing.assert_allclose(adjusted[defined], reference, rtol=0, atol=1e-15)


@ORACLE_SETTINGS
@given(p_values, seeds, st.sampled_from(["holm", "bh"]))
def test_adjust_pvalues_adjusts_each_family_like_multipletests(
    values: list[float], seed: int, method: str
) -> None:
    rng = np.random.default_rng(seed)
    frame = ce.make_rows(
        [
            {
                "task": "phenotype",
                "metric": str(rng.choice(["auroc_score", "auprc_score"])),
                "statistic": "estimate",
                "target": f"label{k}",
                "model": str(rng.choice(["a", "b", "c"])),
                "value": 0.0,
                "n": 10,
                "n_runs": 1,
                "p_value": p,
            }
            for k, p in enumerate(values)
        ]
    )
    adjusted = ce.adjust_pvalues(frame, family=("model", "metric"), method=method)
    for (_model, _metric), members in adjusted.group_by(["model", "metric"]):
        raw = members["p_value"].to_numpy()
        defined = ~np.isnan(raw)
        if defined.any():
            reference = _multipletests(raw[defined], "holm" if method == "holm" else "fdr_bh")
            np.testing.assert_allclose(
                members["p_adjusted"].to_numpy()[defined], reference, rtol=0, atol=1e-15
            )
        for notes in members.filter(pl.col("p_value").is_nan())["notes"].to_list():
            assert "excluded_from_family" in notes.split(";")


# --------------------------------------------------------------------------------------------------
# BCa: scipy.stats.bootstrap on an iid case, given carebench's replicates


def _mean_residual(y: np.ndarray, s: np.ndarray) -> float:
    """Calibration-in-the-large residual: an unregistered statistic (materialized-resample path)."""
    return float(np.mean(s) - np.mean(y))


def _brier(y: np.ndarray, s: np.ndarray) -> float:
    return float(np.mean((s - y) ** 2))


@ORACLE_SETTINGS
@given(
    st.integers(min_value=8, max_value=40),
    seeds,
    st.sampled_from([0.8, 0.9, 0.95]),
    st.sampled_from([(ce.brier_loss, _brier), (_mean_residual, _mean_residual)]),
)
def test_bca_matches_scipy_bootstrap(n: int, seed: int, level: float, statistics: tuple) -> None:
    ours, reference = statistics
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    # Scores on a 1/8 grid: many tied replicates, and sums that are exact in float64, so both sides
    # count replicates equal to the estimate alike.
    s = rng.integers(0, 9, n) / 8
    result = ce.bootstrap_ci(ours, y, s, n_boot=300, ci="bca", level=level, random_state=seed % 1000)
    assume("bca_fallback" not in result.notes)  # z0 infinite or no acceleration: percentile by design
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's DegenerateDataWarning on constant jackknife values
        scipy_result = stats.bootstrap(
            (y, s),
            reference,
            paired=True,
            vectorized=False,
            method="BCa",
            confidence_level=level,
            n_resamples=0,
            bootstrap_result=types.SimpleNamespace(bootstrap_distribution=result.replicates),
        )
    assert result.ci_low == pytest.approx(scipy_result.confidence_interval.low, abs=1e-12)
    assert result.ci_high == pytest.approx(scipy_result.confidence_interval.high, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Exact permutation test: every flip pattern enumerated here


def _auroc_by_pairs(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC as the share of (positive, negative) pairs ranked right, ties counting half."""
    positives, negatives = s[y == 1][:, None], s[y == 0][None, :]
    return float(((positives > negatives) + 0.5 * (positives == negatives)).mean())


@ORACLE_SETTINGS
@given(paired_scores(), st.integers(min_value=2, max_value=7))
def test_exact_permutation_p_matches_full_enumeration(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], n_patients: int
) -> None:
    y, a, b = data
    assume(0 < y.sum() < y.size)
    patients = np.arange(y.size) % n_patients
    result = ce.paired_permutation_test(ce.auroc_score, y, a, b, clusters=patients, n_perm=2**n_patients)
    assert result.exact
    observed = _auroc_by_pairs(y, a) - _auroc_by_pairs(y, b)
    extreme = 0
    for flips in itertools.product([False, True], repeat=n_patients):
        swap = np.array(flips)[patients]
        delta = _auroc_by_pairs(y, np.where(swap, b, a)) - _auroc_by_pairs(y, np.where(swap, a, b))
        extreme += abs(delta) >= abs(observed) - 1e-12
    assert result.delta == pytest.approx(observed, abs=1e-12)
    assert result.p_value == pytest.approx(extreme / 2**n_patients, abs=1e-15)


# --------------------------------------------------------------------------------------------------
# Fairness: fairlearn, with tiny groups and groups holding one class


@st.composite
def grouped_predictions(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, 0/1 predictions and groups; groups may hold one sample or one class."""
    n = draw(st.integers(min_value=2, max_value=50))
    rng = np.random.default_rng(draw(seeds))
    shares = rng.dirichlet(np.ones(draw(st.integers(min_value=2, max_value=5))))
    groups = rng.choice(list("abcde")[: shares.size], n, p=shares)
    assume(np.unique(groups).size >= 2)
    y = (rng.random(n) < draw(st.floats(min_value=0.05, max_value=0.7))).astype(int)
    y_pred = (rng.random(n) < draw(st.floats(min_value=0.1, max_value=0.9))).astype(int)
    return y, y_pred, groups


def _fairlearn_rates(y: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> pl.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = fairlearn_metrics.MetricFrame(
            metrics={
                "base_rate": lambda y_true, y_hat: float(np.mean(y_true)),
                "positive_rate": fairlearn_metrics.selection_rate,
                "sensitivity_score": fairlearn_metrics.true_positive_rate,
                "fpr_error": fairlearn_metrics.false_positive_rate,
            },
            y_true=y,
            y_pred=y_pred,
            sensitive_features=groups,
        )
    by_group = frame.by_group
    return pl.DataFrame(
        {"group": [str(name) for name in by_group.index]}
        | {column: by_group[column].to_numpy(dtype=float) for column in by_group.columns}
    )


@settings(ORACLE_SETTINGS, max_examples=25)
@given(grouped_predictions())
def test_group_rates_and_parity_match_fairlearn(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, y_pred, groups = data
    dpd = fairlearn_metrics.demographic_parity_difference(y, y_pred, sensitive_features=groups)
    assert ce.demographic_parity_difference(y_pred, groups) == pytest.approx(dpd, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fairlearn_eod = fairlearn_metrics.equalized_odds_difference(y, y_pred, sensitive_features=groups)
        ours_eod = ce.equalized_odds_difference(y, y_pred, groups)
    assert ce.equalized_odds_difference(y, y_pred, groups, undefined_rate="zero") == pytest.approx(
        fairlearn_eod, abs=1e-12
    )
    both_classes = all(0 < y[groups == g].sum() < np.sum(groups == g) for g in np.unique(groups))
    if both_classes:
        assert ours_eod == pytest.approx(fairlearn_eod, abs=1e-12)

    preds = ce.from_arrays(
        y,
        np.where(y_pred == 1, 0.8, 0.2),
        task="mortality",
        kind="binary",
        targets=["mortality"],
        attributes={"ward": groups},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = ce.fairness(
            preds,
            attributes=["ward"],
            intersections=None,
            metrics=["base_rate", "positive_rate", "sensitivity_score", "fpr_error"],
            n_boot=0,
            include_small=True,
        )
    reference = _fairlearn_rates(y, y_pred, groups)
    per_group = select_rows(table, statistic="estimate").filter(pl.col("group").is_not_null())
    for row in per_group.iter_rows(named=True):
        in_group = groups == row["group"]
        assert row["n"] == int(in_group.sum())
        expected = reference.filter(pl.col("group") == row["group"])[row["metric"]][0]
        lacking = {"sensitivity_score": y[in_group].sum() == 0, "fpr_error": y[in_group].min() == 1}
        if lacking.get(row["metric"], False):
            # fairlearn scores a rate without its denominator as 0; carebench leaves it undefined.
            assert math.isnan(row["value"]) and "single_class" in row["notes"].split(";")
        else:
            assert row["value"] == pytest.approx(expected, abs=1e-12)
    parity = {
        row["metric"]: row["value"]
        for row in select_rows(table, statistic="estimate", group=None).iter_rows(named=True)
    }
    assert parity["demographic_parity_difference"] == pytest.approx(dpd, abs=1e-12)
    assert parity["equalized_odds_difference"] == pytest.approx(ours_eod, abs=1e-12, nan_ok=True)


# --------------------------------------------------------------------------------------------------
# Calibration slope and intercept: statsmodels binomial GLM


def _logit(s: np.ndarray) -> np.ndarray:
    return np.log(s) - np.log1p(-s)


def _separated(y: np.ndarray, x: np.ndarray) -> bool:
    """No positive strictly below a negative, or none strictly above (1-D separation, constant x included)."""
    positives, negatives = x[y == 1], x[y == 0]
    return bool(positives.min() >= negatives.max() or positives.max() <= negatives.min())


def _log_likelihood(y: np.ndarray, x: np.ndarray, weights: np.ndarray, alpha: float, beta: float) -> float:
    eta = alpha + beta * x
    return float(np.sum(weights * (y * eta - np.logaddexp(0.0, eta))))


@st.composite
def calibration_data(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores on a 1/50 grid in [0.02, 0.98] (ties) and resampling multiplicities (0-3)."""
    n = draw(st.integers(min_value=3, max_value=60))
    rng = np.random.default_rng(draw(seeds))
    s = rng.integers(1, 50, n) / 50
    signal = draw(st.floats(min_value=0.0, max_value=3.0))
    y = (rng.random(n) < 1 / (1 + np.exp(-signal * _logit(s)))).astype(float)
    weights = rng.integers(0, 4, n).astype(float) if draw(st.booleans()) else np.ones(n)
    assume(weights.sum() > 0)
    return y, s, weights


@ORACLE_SETTINGS
@given(calibration_data())
def test_calibration_fits_match_a_statsmodels_glm(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, s, weights = data
    drawn = weights > 0
    x = _logit(s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ce.UndefinedMetricWarning)
        slope = ce.calibration_slope(y, s, sample_weight=weights)
        intercept = ce.calibration_intercept(y, s, sample_weight=weights)
    if y[drawn].min() == y[drawn].max():  # one class among the drawn samples
        assert math.isnan(slope) and math.isnan(intercept)
        return
    family = sm.families.Binomial()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' own separation and convergence warnings
        offset_fit = sm.GLM(y, np.ones((y.size, 1)), family=family, offset=x, freq_weights=weights).fit(
            tol=1e-14
        )
        fit = sm.GLM(y, sm.add_constant(x, has_constant="add"), family=family, freq_weights=weights).fit(
            tol=1e-14, maxiter=200
        )
    assert intercept == pytest.approx(offset_fit.params[0], rel=1e-9, abs=1e-9)
    if _separated(y[drawn], x[drawn]):
        assert math.isnan(slope)
        # Whatever finite slope a solver stops at is no maximum: moving along the separating direction
        # never lowers the likelihood.
        alpha, beta = fit.params
        positives, negatives = x[drawn & (y == 1)], x[drawn & (y == 0)]
        upward = positives.min() >= negatives.max()
        cut = (positives.min() + negatives.max()) / 2 if upward else (positives.max() + negatives.min()) / 2
        direction = (-cut, 1.0) if upward else (cut, -1.0)
        before = _log_likelihood(y, x, weights, alpha, beta)
        after = _log_likelihood(y, x, weights, alpha + 10 * direction[0], beta + 10 * direction[1])
        assert after >= before - 1e-9
        return
    assert slope == pytest.approx(fit.params[1], rel=1e-9, abs=1e-9)
