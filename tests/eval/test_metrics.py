"""Every array-layer metric against its scikit-learn reference (eval.md §2.7), plus edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.preprocessing import label_binarize

import carebench_eval as ce

ATOL = 1e-12


def binary_case(n: int, prevalence: float, style: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[0], y[-1] = 1, 0  # both classes present
    s = rng.random(n)
    if style == "ties":
        s = np.round(s, 2)
    elif style == "float32":
        s = s.astype(np.float32).astype(np.float64)
    return y, s


CASES = [
    (n, prevalence, style, seed)
    for seed, (n, prevalence) in enumerate([(2, 0.5), (7, 0.3), (100, 0.01), (100, 0.5), (10_000, 0.05)])
    for style in ("ties", "continuous", "float32")
]


@pytest.mark.parametrize(("n", "prevalence", "style", "seed"), CASES)
def test_binary_score_metrics_match_sklearn(n: int, prevalence: float, style: str, seed: int) -> None:
    y, s = binary_case(n, prevalence, style, seed)
    assert abs(ce.auroc_score(y, s) - skm.roc_auc_score(y, s)) <= ATOL
    assert abs(ce.auprc_score(y, s) - skm.average_precision_score(y, s)) <= ATOL
    assert abs(ce.brier_loss(y, s) - skm.brier_score_loss(y, s)) <= ATOL


@pytest.mark.parametrize(("n", "prevalence", "style", "seed"), CASES)
def test_binary_label_metrics_match_sklearn(n: int, prevalence: float, style: str, seed: int) -> None:
    y, s = binary_case(n, prevalence, style, seed)
    pred = (s >= 0.5).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        references = {
            ce.sensitivity_score: skm.recall_score(y, pred, zero_division=np.nan),
            ce.specificity_score: skm.recall_score(y, pred, pos_label=0, zero_division=np.nan),
            ce.fpr_error: 1 - skm.recall_score(y, pred, pos_label=0, zero_division=np.nan),
            ce.ppv_score: skm.precision_score(y, pred, zero_division=np.nan),
            ce.npv_score: skm.precision_score(y, pred, pos_label=0, zero_division=np.nan),
            ce.f1_score: skm.f1_score(y, pred, zero_division=np.nan),
            ce.positive_rate: pred.mean(),
            ce.base_rate: y.mean(),
        }
        for function, reference in references.items():
            value = function(y, pred)
            if np.isnan(reference):
                assert np.isnan(value), function.__name__
            else:
                assert abs(value - reference) <= ATOL, function.__name__


def test_sample_weight_equals_repeated_rows() -> None:
    y, s = binary_case(200, 0.3, "ties", 11)
    weight = np.random.default_rng(3).integers(0, 4, y.size)
    rows = np.repeat(np.arange(y.size), weight)
    assert abs(ce.auroc_score(y, s, sample_weight=weight) - skm.roc_auc_score(y[rows], s[rows])) <= ATOL
    assert (
        abs(ce.auprc_score(y, s, sample_weight=weight) - skm.average_precision_score(y[rows], s[rows]))
        <= ATOL
    )
    float_weight = weight * 0.37
    assert (
        abs(
            ce.auroc_score(y, s, sample_weight=float_weight)
            - skm.roc_auc_score(y, s, sample_weight=float_weight)
        )
        <= ATOL
    )


def multilabel_case(seed: int, n: int = 300, labels: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < np.linspace(0.05, 0.5, labels)).astype(int)
    s = np.round(np.clip(0.3 * y + rng.random((n, labels)) * 0.7, 0, 1), 2)
    return y, s


@pytest.mark.parametrize("average", ["macro", "weighted", "micro", None])
def test_multilabel_averages_match_sklearn(average: str | None) -> None:
    y, s = multilabel_case(5)
    for ours, reference in (
        (ce.auroc_score, skm.roc_auc_score),
        (ce.auprc_score, skm.average_precision_score),
    ):
        np.testing.assert_allclose(
            ours(y, s, average=average), reference(y, s, average=average), rtol=0, atol=ATOL
        )
    pred = (s >= 0.5).astype(int)
    np.testing.assert_allclose(
        ce.f1_score(y, pred, average=average),
        skm.f1_score(y, pred, average=average, zero_division=np.nan),
        rtol=0,
        atol=ATOL,
    )
    np.testing.assert_allclose(
        ce.sensitivity_score(y, pred, average=average),
        skm.recall_score(y, pred, average=average, zero_division=np.nan),
        rtol=0,
        atol=ATOL,
    )


def test_multilabel_macro_excludes_undefined_label_with_warning() -> None:
    y, s = multilabel_case(6)
    y[:, 2] = 0
    with pytest.warns(
        ce.UndefinedMetricWarning, match=r"auroc_score is undefined for 1 \(run, task, target, group\) cell"
    ):
        value = ce.auroc_score(y, s)
    defined = [0, 1, 3, 4, 5]
    assert abs(value - skm.roc_auc_score(y[:, defined], s[:, defined])) <= ATOL
    with pytest.warns(ce.UndefinedMetricWarning):
        per_label = ce.auprc_score(y, s, average=None)
    assert np.isnan(per_label[2]) and np.isfinite(per_label[defined]).all()


def multiclass_case(seed: int, n: int = 400, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def test_multiclass_metrics_match_sklearn() -> None:
    y, p = multiclass_case(1)
    pred = p.argmax(axis=1)
    k = p.shape[1]
    assert abs(ce.auroc_score(y, p) - skm.roc_auc_score(y, p, multi_class="ovr", average="macro")) <= ATOL
    assert (
        abs(
            ce.auprc_score(y, p)
            - skm.average_precision_score(label_binarize(y, classes=range(k)), p, average="macro")
        )
        <= ATOL
    )
    assert abs(ce.brier_loss(y, p) - skm.brier_score_loss(y, p, labels=list(range(k)))) <= ATOL
    assert abs(ce.accuracy_score(y, pred) - skm.accuracy_score(y, pred)) <= ATOL
    assert abs(ce.f1_score(y, pred, labels=list(range(k))) - skm.f1_score(y, pred, average="macro")) <= ATOL
    for weights, ours in (
        (None, ce.kappa_score),
        ("linear", ce.kappa_linear_score),
        ("quadratic", ce.kappa_quadratic_score),
    ):
        reference = skm.cohen_kappa_score(y, pred, labels=list(range(k)), weights=weights)
        assert abs(ours(y, pred, labels=list(range(k))) - reference) <= ATOL
    np.testing.assert_allclose(
        ce.sensitivity_score(y, pred, labels=list(range(k)), average=None),
        skm.recall_score(y, pred, average=None),
        rtol=0,
        atol=ATOL,
    )


def test_multiclass_class_labels_not_indices() -> None:
    """Ordinal κ uses the given class order, not the sorted names (LoS bins)."""
    order = ["2-3d", "3-4d", "14+d"]
    y = np.array(["2-3d", "3-4d", "14+d", "14+d", "2-3d", "3-4d"])
    pred = np.array(["2-3d", "14+d", "14+d", "3-4d", "3-4d", "3-4d"])
    reference = skm.cohen_kappa_score(y, pred, labels=order, weights="linear")
    assert abs(ce.kappa_linear_score(y, pred, labels=order) - reference) <= ATOL


def test_multiclass_top_label_ece() -> None:
    y, p = multiclass_case(2)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    assert (
        abs(ce.expected_calibration_error(y, p) - ce.expected_calibration_error(correct, confidence)) <= ATOL
    )


@pytest.mark.parametrize("metric", [ce.auroc_score, ce.auprc_score])
@pytest.mark.parametrize("y", [np.zeros(5, dtype=int), np.ones(5, dtype=int)])
def test_rank_metrics_nan_for_single_class(metric: object, y: np.ndarray) -> None:
    with pytest.warns(ce.UndefinedMetricWarning, match="only one class present in y_true"):
        assert np.isnan(metric(y, np.linspace(0, 1, 5)))  # type: ignore[operator]


def test_auprc_differs_from_sklearn_on_single_class() -> None:
    """scikit-learn gives 0.0 (no positives, with a warning) and 1.0 (no negatives, silently)."""
    scores = np.linspace(0.1, 0.9, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert skm.average_precision_score(np.zeros(5), scores) == 0.0
        assert skm.average_precision_score(np.ones(5), scores) == 1.0
        assert np.isnan(ce.auprc_score(np.zeros(5), scores))
        assert np.isnan(ce.auprc_score(np.ones(5), scores))


def test_undefined_warning_is_sklearn_subclass() -> None:
    from sklearn.exceptions import UndefinedMetricWarning

    assert issubclass(ce.UndefinedMetricWarning, UndefinedMetricWarning)
    with pytest.warns(UndefinedMetricWarning):
        ce.ppv_score(np.array([0, 1, 1]), np.array([0, 0, 0]))


def test_kappa_degenerate_agreement_is_nan() -> None:
    with pytest.warns(ce.UndefinedMetricWarning, match="expected agreement is 1"):
        assert np.isnan(ce.kappa_score(np.array([1, 1, 1]), np.array([1, 1, 1])))


# ECE (eval.md §2.4)


def test_ece_matches_calibration_curve_on_continuous_scores() -> None:
    rng = np.random.default_rng(4)
    s = rng.random(5000)
    y = (rng.random(5000) < s**1.3).astype(int)
    prob_true, prob_pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
    counts = np.histogram(s, bins=np.linspace(0, 1, 11))[0]
    reference = np.sum(counts[counts > 0] / s.size * np.abs(prob_true - prob_pred))
    assert abs(ce.expected_calibration_error(y, s) - reference) <= ATOL


def test_ece_edge_scores() -> None:
    # 0.0 falls in bin 0; k/M opens bin k (calibration_curve would put it in bin k-1); 1.0 is in the closed last bin.
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.0, 0.2, 0.2, 0.5, 1.0])
    # bins (M=10): 0 -> {0.0}; 2 -> {0.2, 0.2}; 5 -> {0.5}; 9 -> {1.0}
    expected = (abs(0 - 0.0) * 1 + abs(1 - 0.2) * 2 + abs(0 - 0.5) * 1 + abs(1 - 1.0) * 1) / 5
    assert abs(ce.expected_calibration_error(y, s) - expected) <= ATOL
    table = ce.calibration_table(y, s)
    assert table["n"].sum() == 5
    assert table.filter(table["bin"] == 9)["n"].item() == 1


def test_ece_all_scores_one_counts_every_sample() -> None:
    y = np.array([1, 1, 0, 1])
    s = np.ones(4)
    assert abs(ce.expected_calibration_error(y, s) - 0.25) <= ATOL
    assert ce.calibration_table(y, s)["n"].sum() == 4


def test_ece_zero_when_bins_are_calibrated() -> None:
    y = np.array([0, 1, 0, 1, 1, 1, 1, 0])
    s = np.array([0.5, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75])
    assert ce.expected_calibration_error(y, s) == 0.0


def test_ece_quantile_strategy_never_splits_ties() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.3, 0.3, 0.3, 0.3, 0.9, 0.9])
    # Two groups of tied scores -> at most two occupied bins whatever n_bins is.
    expected = (4 * abs(0.5 - 0.3) + 2 * abs(0.5 - 0.9)) / 6
    assert abs(ce.expected_calibration_error(y, s, n_bins=3, strategy="quantile") - expected) <= ATOL


def test_calibration_slope_and_intercept_match_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(9)
    s = rng.uniform(0.05, 0.95, 400)
    y = (rng.random(400) < s**0.8).astype(int)
    logit = np.log(s / (1 - s))
    fit = sm.GLM(y, sm.add_constant(logit), family=sm.families.Binomial()).fit()
    assert abs(ce.calibration_slope(y, s) - fit.params[1]) < 1e-8
    offset_fit = sm.GLM(y, np.ones((400, 1)), family=sm.families.Binomial(), offset=logit).fit()
    assert abs(ce.calibration_intercept(y, s) - offset_fit.params[0]) < 1e-8


# Property tests (hypothesis)

labels_and_scores = st.integers(min_value=2, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 20).map(lambda k: k / 20), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None)
@given(labels_and_scores)
def test_rank_metric_properties(data: tuple[list[int], list[float]]) -> None:
    y = np.array(data[0])
    s = np.array(data[1])
    if y.min() == y.max():
        return
    auroc = ce.auroc_score(y, s)
    auprc = ce.auprc_score(y, s)
    assert abs(auroc - skm.roc_auc_score(y, s)) <= ATOL
    assert abs(auprc - skm.average_precision_score(y, s)) <= ATOL
    order = np.random.default_rng(len(y)).permutation(len(y))
    assert ce.auroc_score(y[order], s[order]) == pytest.approx(auroc, abs=ATOL)
    assert ce.auprc_score(y[order], s[order]) == pytest.approx(auprc, abs=ATOL)
    assert ce.auroc_score(y, np.sqrt(s) * 0.5 + 0.1) == pytest.approx(auroc, abs=ATOL)
    assert ce.auprc_score(y, np.sqrt(s) * 0.5 + 0.1) == pytest.approx(auprc, abs=ATOL)
    assert ce.auroc_score(y, 1 - s) == pytest.approx(1 - auroc, abs=ATOL)


def test_perfect_and_constant_scores() -> None:
    y = np.array([0, 0, 1, 0, 1, 1, 0])
    assert ce.auroc_score(y, y * 0.8 + 0.1) == 1.0
    assert ce.auprc_score(y, y * 0.8 + 0.1) == 1.0
    constant = np.full(y.size, 0.3)
    assert ce.auroc_score(y, constant) == 0.5
    assert abs(ce.auprc_score(y, constant) - y.mean()) <= ATOL


def test_threshold_policies_and_rules() -> None:
    from carebench_eval.metrics.threshold import choose_threshold, top_k_threshold

    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.7])
    assert top_k_threshold(s, 0.5) == 0.6
    assert choose_threshold(y, s, rule="sensitivity", target=0.6) == 0.7
    assert choose_threshold(y, s, rule="sensitivity", target=1.0) == 0.35
    f1_at = {t: skm.f1_score(y, (s >= t).astype(int)) for t in np.unique(s)}
    best = max(f1_at.values())
    assert choose_threshold(y, s, rule="max_f1") == max(t for t, v in f1_at.items() if v == best)
    youden_at = {}
    for t in np.unique(s):
        pred = s >= t
        youden_at[t] = pred[y == 1].mean() - pred[y == 0].mean()
    best = max(youden_at.values())
    assert choose_threshold(y, s, rule="youden") == max(t for t, v in youden_at.items() if v == best)
    with pytest.raises(ValueError, match="Fixed threshold must be in"):
        ce.Fixed(1.5)
    assert ce.TopK(0.1).note == "policy=top_k:0.1"
