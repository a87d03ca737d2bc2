import math
import warnings

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from carebench_eval import PredictionsError, UndefinedMetricWarning
from carebench_eval.fairness import (
    age_groups,
    demographic_parity_difference,
    equalized_odds_difference,
    fairness,
)
from carebench_eval.io import from_arrays
from carebench_eval.metrics.threshold import Fixed
from carebench_eval.testing import assert_result_table, select_rows


def _frame(
    y: np.ndarray, s: np.ndarray, attributes: dict[str, np.ndarray], *, subject: np.ndarray | None = None
) -> pl.DataFrame:
    return from_arrays(
        y,
        s,
        task="mortality",
        kind="binary",
        targets=["mortality"],
        sample_id=np.arange(y.size),
        subject_id=subject,
        attributes=attributes,
        model="fusion",
    )


# Array layer against fairlearn


@pytest.mark.parametrize("seed", range(5))
def test_parity_functions_match_fairlearn(seed: int) -> None:
    metrics = pytest.importorskip("fairlearn.metrics")
    rng = np.random.default_rng(seed)
    n = 300
    groups = rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1])
    y = (rng.random(n) < 0.35).astype(int)
    y_pred = (rng.random(n) < np.where(groups == "a", 0.5, 0.3)).astype(int)
    assert demographic_parity_difference(y_pred, groups) == pytest.approx(
        metrics.demographic_parity_difference(y, y_pred, sensitive_features=groups), abs=1e-12
    )
    assert equalized_odds_difference(y, y_pred, groups) == pytest.approx(
        metrics.equalized_odds_difference(y, y_pred, sensitive_features=groups), abs=1e-12
    )


def test_equalized_odds_leaves_a_group_without_positives_out_of_the_tpr_gap() -> None:
    metrics = pytest.importorskip("fairlearn.metrics")
    y = np.array([1, 0, 1, 0, 0, 0])
    y_pred = np.array([1, 0, 1, 0, 1, 0])
    groups = np.array(list("AABBCC"))  # C has no positives, hence no TPR
    with pytest.warns(UndefinedMetricWarning, match=r"group\(s\) \['C'\] have no positives"):
        excluded = equalized_odds_difference(y, y_pred, groups)
    assert excluded == 0.5  # TPR gap over A, B: 0; FPR gap over A, B, C: 0.5
    # fairlearn scores C's missing TPR as 0 (a TPR gap of 1); undefined_rate="zero" reproduces it.
    fairlearn_value = metrics.equalized_odds_difference(y, y_pred, sensitive_features=groups)
    assert fairlearn_value == 1.0
    assert equalized_odds_difference(y, y_pred, groups, undefined_rate="zero") == fairlearn_value
    # Without positives or negatives missing anywhere, the two conventions agree without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert equalized_odds_difference(y[:4], y_pred[:4], groups[:4]) == 0.0
    with pytest.raises(ValueError, match="undefined_rate must be one of"):
        equalized_odds_difference(y, y_pred, groups, undefined_rate="drop")


def test_frame_parity_metrics_exclude_a_group_only_from_the_gap_it_lacks() -> None:
    metrics = pytest.importorskip("fairlearn.metrics")
    ward = np.array(list("AAAABBBBCCCC"))
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0])  # ward C has no positives
    y_pred = np.array([1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    s = np.where(y_pred == 1, 0.8, 0.2)
    out = fairness(
        _frame(y, s, {"ward": ward}), attributes=["ward"], intersections=None, n_boot=0, include_small=True
    )
    value = {
        row["metric"]: row for row in select_rows(out, statistic="estimate", group=None).iter_rows(named=True)
    }
    # Selection rates 0.25, 0.75, 1.0 over all three wards (C used to be dropped from every parity metric).
    dpd = value["demographic_parity_difference"]
    assert dpd["value"] == pytest.approx(
        metrics.demographic_parity_difference(y, y_pred, sensitive_features=ward)
    )
    assert dpd["value"] == pytest.approx(0.75) and dpd["n"] == 12
    # TPR over A, B (0.5, 1.0); FPR over A, B, C (0, 0.5, 1.0): EOD = 1.0 from the FPR gap, as the array layer.
    eod = value["equalized_odds_difference"]
    with pytest.warns(UndefinedMetricWarning):
        assert eod["value"] == equalized_odds_difference(y, y_pred, ward) == 1.0
    assert eod["n"] == 12
    assert {"groups_without_positives=1", "eod_from=fpr"} <= set(eod["notes"].split(";"))
    opportunity = value["equal_opportunity_difference"]
    assert opportunity["value"] == 0.5 and opportunity["n"] == 8
    assert "groups_without_positives=1" in opportunity["notes"].split(";")
    assert "groups_without_positives=1" not in dpd["notes"].split(";")
    assert_result_table(out)


def test_equalized_odds_replicates_keep_the_point_estimate_gaps() -> None:
    # Ward B has one positive: resamples without it have no TPR gap. Such a replicate is dropped from the
    # EOD interval (as from the TPR gap's), not replaced by the FPR gap, which is another quantity.
    rng = np.random.default_rng(5)
    ward = np.array(["A"] * 60 + ["B"] * 40)
    y = np.r_[(rng.random(60) < 0.4).astype(int), [1] + [0] * 39]
    s = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.2, 100), 0, 1)
    out = fairness(_frame(y, s, {"ward": ward}), attributes=["ward"], intersections=None, n_boot=200)
    rows = {
        row["metric"]: row
        for row in select_rows(out, group=None, group_attribute="ward").iter_rows(named=True)
    }
    opportunity = rows["equal_opportunity_difference"]["notes"].split(";")
    odds = rows["equalized_odds_difference"]["notes"].split(";")
    dropped = [note for note in opportunity if note.startswith("ci_dropped=")]
    assert dropped and dropped[0] in odds  # the same undefined replicates, counted alike


def test_age_groups_are_left_closed_with_missing() -> None:
    names = age_groups([np.nan, 17.99, 18, 39.999, 40, 79, 80, 120])
    assert names.tolist() == [
        "(missing)",
        "(missing)",
        "[18,40)",
        "[18,40)",
        "[40,60)",
        "[60,80)",
        "[80,inf)",
        "[80,inf)",
    ]
    assert age_groups([30, 70], edges=(0, 65, math.inf)).tolist() == ["[0,65)", "[65,inf)"]
    with pytest.raises(ValueError, match="increasing"):
        age_groups([30], edges=(40, 18))


# Frame layer


def _planted(n: int = 600, seed: int = 0) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """Group 'high_fpr' gets inflated scores on negatives; group 'low_tpr' deflated scores on positives."""
    rng = np.random.default_rng(seed)
    site = rng.choice(["base", "high_fpr", "low_tpr"], n, p=[0.5, 0.25, 0.25])
    y = (rng.random(n) < 0.4).astype(int)
    logits = 1.5 * (2 * y - 1) + rng.normal(0, 1, n)
    logits += np.where((site == "high_fpr") & (y == 0), 2.0, 0.0)
    logits -= np.where((site == "low_tpr") & (y == 1), 2.0, 0.0)
    s = 1 / (1 + np.exp(-logits))
    subject = rng.integers(0, n // 2, n)
    age = rng.uniform(18, 95, n)
    sex = rng.choice(["F", "M"], n)
    attributes = {"site": site, "age": age, "sex": sex}
    return _frame(y, s, attributes, subject=subject), {"y": y, "s": s, "site": site, "age": age, "sex": sex}


def test_worst_group_follows_the_metric_direction() -> None:
    frame, _ = _planted()
    out = fairness(frame, attributes=["site"], intersections=None, n_boot=100)
    assert_result_table(out)
    worst = select_rows(out, group_attribute="site", statistic="worst_group")
    best = select_rows(out, group_attribute="site", statistic="best_group")
    by_metric = dict(zip(worst["metric"], worst["group"], strict=True))
    assert by_metric["fpr_error"] == "high_fpr"  # lower is better: the argmax
    assert by_metric["sensitivity_score"] == "low_tpr"  # higher is better: the argmin
    assert by_metric["expected_calibration_error"] in ("high_fpr", "low_tpr")
    assert dict(zip(best["metric"], best["group"], strict=True))["fpr_error"] != "high_fpr"
    assert not ({"base_rate", "positive_rate"} & set(worst["metric"]))  # descriptive: no worst group
    fpr = select_rows(out, group_attribute="site", metric="fpr_error", statistic="estimate")
    fpr_by_group = dict(zip(fpr["group"], fpr["value"], strict=True))
    worst_fpr = select_rows(worst, metric="fpr_error")
    assert worst_fpr["value"][0] == max(fpr_by_group.values())
    gap = select_rows(out, group_attribute="site", metric="fpr_error", statistic="gap")
    assert gap["value"][0] == pytest.approx(max(fpr_by_group.values()) - min(fpr_by_group.values()))
    assert gap["ci_low"][0] > 0  # a large planted gap


def test_group_metrics_match_sklearn_and_parity_matches_fairlearn() -> None:
    metrics = pytest.importorskip("fairlearn.metrics")
    frame, data = _planted(seed=1)
    out = fairness(frame, attributes=["site"], intersections=None, n_boot=0, include_small=True)
    auroc = select_rows(out, metric="auroc_score", statistic="estimate")
    for group, value, n in zip(auroc["group"], auroc["value"], auroc["n"], strict=True):
        mask = data["site"] == group
        assert value == pytest.approx(roc_auc_score(data["y"][mask], data["s"][mask]), abs=1e-12)
        assert n == mask.sum()
    assert auroc["ci_low"].null_count() == auroc.height  # n_boot=0: no CI
    y_pred = (data["s"] >= 0.5).astype(int)
    dpd = select_rows(out, metric="demographic_parity_difference")
    eod = select_rows(out, metric="equalized_odds_difference")
    assert dpd["value"][0] == pytest.approx(
        metrics.demographic_parity_difference(data["y"], y_pred, sensitive_features=data["site"]), abs=1e-12
    )
    assert eod["value"][0] == pytest.approx(
        metrics.equalized_odds_difference(data["y"], y_pred, sensitive_features=data["site"]), abs=1e-12
    )
    assert dpd["group"][0] is None and dpd["group_attribute"][0] == "site"
    tpr = [y_pred[(data["site"] == g) & (data["y"] == 1)].mean() for g in np.unique(data["site"])]
    fpr = [y_pred[(data["site"] == g) & (data["y"] == 0)].mean() for g in np.unique(data["site"])]
    larger = "tpr" if np.ptp(tpr) >= np.ptp(fpr) else "fpr"
    assert f"eod_from={larger}" in eod["notes"][0].split(";")
    assert "policy=fixed:0.5" in eod["notes"][0].split(";")


def test_small_groups_are_reported_and_flagged_not_dropped() -> None:
    rng = np.random.default_rng(2)
    n = 200
    race = np.array(["WHITE"] * 120 + ["BLACK/AFRICAN AMERICAN"] * 77 + ["ASIAN"] * 3)
    y = np.tile([0, 1], n // 2)
    s = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1)
    s[-3:] = [0.99, 0.01, 0.99]  # the tiny group looks terrible
    frame = _frame(y, s, {"race": race})
    out = fairness(frame, attributes=["race"], intersections=None, n_boot=50, min_group_n=30)
    tiny = select_rows(out, group="ASIAN", metric="auroc_score")
    assert tiny.height == 1 and tiny["n"][0] == 3
    assert "small_group" in tiny["notes"][0].split(";")
    assert not np.isnan(tiny["value"][0])
    gap = select_rows(out, metric="auroc_score", statistic="gap")
    groups = select_rows(out, metric="auroc_score", statistic="estimate")
    large = groups.filter(pl.col("n") >= 30)["value"].to_numpy()
    assert gap["value"][0] == pytest.approx(large.max() - large.min())
    assert "small_group" in gap["notes"][0].split(";")
    included = fairness(frame, attributes=["race"], intersections=None, n_boot=0, include_small=True)
    all_gap = select_rows(included, metric="auroc_score", statistic="gap")["value"][0]
    assert all_gap == pytest.approx(groups["value"].max() - groups["value"].min())


def test_too_few_groups_and_single_class_group() -> None:
    y = np.array([0, 1] * 20 + [1] * 40)
    s = np.linspace(0.01, 0.99, 80)
    frame = _frame(y, s, {"unit": np.array(["MICU"] * 40 + ["SICU"] * 40)})
    out = fairness(frame, attributes=["unit"], intersections=None, n_boot=20)
    sicu = select_rows(out, group="SICU", metric="auroc_score")
    assert np.isnan(sicu["value"][0]) and "single_class" in sicu["notes"][0].split(";")
    gap = select_rows(out, metric="auroc_score", statistic="gap")
    assert np.isnan(gap["value"][0]) and "too_few_groups" in gap["notes"][0].split(";")


def test_age_group_derivation_intersections_and_has_cxr() -> None:
    frame, data = _planted(seed=3)
    frame = frame.with_columns(
        pl.Series("race", np.tile(np.where(np.arange(600) % 2 == 0, "WHITE", "OTHER"), 1)),
        pl.Series("has_cxr", np.arange(600) % 3 != 0),
    )
    out = fairness(frame, attributes=["age_group", "race", "has_cxr", "sex"], n_boot=0, min_group_n=5)
    assert_result_table(out)
    attributes = out["group_attribute"].drop_nulls().unique().to_list()
    assert {"age_group", "race", "has_cxr", "sex", "age_group|race", "age_group|sex", "race|sex"} == set(
        attributes
    )
    age = select_rows(out, group_attribute="age_group", metric="base_rate", statistic="estimate")
    expected = dict(zip(*np.unique(age_groups(data["age"]), return_counts=True), strict=True))
    assert dict(zip(age["group"], age["n"], strict=True)) == expected
    cxr = select_rows(out, group_attribute="has_cxr", metric="base_rate", statistic="estimate")
    assert dict(zip(cxr["group"], cxr["n"], strict=True)) == {"false": 200, "true": 400}
    pair = select_rows(out, group_attribute="age_group|race", metric="base_rate", statistic="estimate")
    assert all("|" in group for group in pair["group"])


def test_missing_attribute_and_pipe_in_values() -> None:
    frame, _ = _planted(n=60)
    message = "fairness: attribute(s) ['insurance'] not in predictions; available: ['age', 'sex', 'site']"
    with pytest.raises(
        PredictionsError,
        match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]"),
    ) as error:
        fairness(frame, attributes=["insurance"], n_boot=0)
    assert error.value.code == "P016"
    piped = frame.with_columns(pl.lit("A|B").alias("site"))
    with pytest.raises(PredictionsError, match='contains "\\|"') as error:
        fairness(piped, attributes=["site", "sex"], intersections=[("site", "sex")], n_boot=0)
    assert error.value.code == "P017"


def test_gap_permutation_test_detects_a_planted_disparity() -> None:
    frame, _ = _planted(n=400, seed=4)
    out = fairness(
        frame,
        attributes=["site", "sex"],
        intersections=None,
        metrics=["fpr_error"],
        n_boot=0,
        test_gaps=True,
        n_perm=199,
    )
    site = select_rows(out, group_attribute="site", statistic="gap")
    sex = select_rows(out, group_attribute="sex", statistic="gap")
    assert site["p_value"][0] == pytest.approx(1 / 200)
    assert sex["p_value"][0] > 0.05
    assert select_rows(out, statistic="estimate", group="base")["p_value"].null_count() == 1


def test_threshold_policy_is_recorded() -> None:
    frame, _ = _planted(n=200, seed=5)
    out = fairness(
        frame,
        attributes=["sex"],
        intersections=None,
        metrics=["sensitivity_score"],
        threshold=Fixed(0.3),
        n_boot=0,
    )
    notes = select_rows(out, metric="sensitivity_score", statistic="estimate")["notes"].to_list()
    assert all("policy=fixed:0.3" in note.split(";") for note in notes)


def test_planted_weak_group_from_the_library_generator_is_the_worst() -> None:
    from carebench_eval.testing import synthetic_predictions

    preds = synthetic_predictions(
        n_samples=800,
        tasks=("mortality",),
        models=("drfuse",),
        strength={"drfuse": 4.0},
        weak_group=("sex", "F"),
        weak_factor=0.0,
        seed=11,
    )
    out = fairness(
        preds, attributes=["sex"], intersections=None, metrics=["auroc_score", "brier_loss"], n_boot=200
    )
    assert_result_table(out)
    worst = select_rows(out, statistic="worst_group", metric="auroc_score")
    assert worst["group"][0] == "F"
    assert select_rows(out, statistic="gap", metric="auroc_score")["ci_low"][0] > 0.1
    assert select_rows(out, statistic="estimate", group="F", metric="auroc_score")["value"][
        0
    ] == pytest.approx(0.5, abs=0.1)


def test_association_with_missing_cxr_share() -> None:
    rng = np.random.default_rng(6)
    n = 900
    unit = rng.choice(["A", "B", "C", "D"], n)
    missing_share = {"A": 0.1, "B": 0.3, "C": 0.5, "D": 0.7}
    has_cxr = rng.random(n) >= np.vectorize(missing_share.get)(unit)
    y = (rng.random(n) < 0.4).astype(int)
    logits = (2 * y - 1) * np.where(has_cxr, 2.0, 0.3) + rng.normal(0, 1, n)
    s = 1 / (1 + np.exp(-logits))
    frame = _frame(y, s, {"unit": unit, "has_cxr": has_cxr})
    out = fairness(
        frame, attributes=["unit", "has_cxr"], intersections=None, metrics=["auroc_score"], n_boot=100
    )
    association = select_rows(out, statistic="association")
    assert association["group_attribute"].to_list() == ["unit"]  # never for has_cxr itself
    auroc = (
        select_rows(out, group_attribute="unit", metric="auroc_score", statistic="estimate")
        .sort("group")["value"]
        .to_numpy()
    )
    shares = [1 - has_cxr[unit == g].mean() for g in "ABCD"]
    assert association["value"][0] == pytest.approx(np.corrcoef(auroc, shares)[0, 1], abs=1e-12)
    assert association["value"][0] < -0.8 and association["ci_high"][0] < 0
    complete = fairness(
        frame.with_columns(pl.lit(True).alias("has_cxr")),
        attributes=["unit"],
        intersections=None,
        metrics=["auroc_score"],
        n_boot=0,
    )
    row = select_rows(complete, statistic="association")
    assert np.isnan(row["value"][0]) and "no_missing_modality" in row["notes"][0].split(";")


def test_validation_threshold_policy_and_threshold_rows() -> None:
    from carebench_eval.metrics.threshold import FromValidation, choose_threshold

    frame, data = _planted(n=300, seed=7)
    validation, val_data = _planted(n=300, seed=8)
    out = fairness(
        frame,
        attributes=["sex"],
        intersections=None,
        metrics=["sensitivity_score"],
        threshold=FromValidation(validation, rule="youden"),
        n_boot=0,
    )
    threshold = select_rows(out, metric="threshold")
    expected = choose_threshold(val_data["y"], val_data["s"], rule="youden")
    assert threshold["value"][0] == pytest.approx(expected)
    assert threshold["notes"][0] == "policy=validation:youden" and threshold["group_attribute"][0] is None
    sensitivity = select_rows(out, metric="sensitivity_score", statistic="estimate", group="F")
    positives = (data["sex"] == "F") & (data["y"] == 1)
    assert sensitivity["value"][0] == pytest.approx((data["s"][positives] >= expected).mean())
    other_model = validation.with_columns(pl.lit("other").alias("model"))
    with pytest.raises(
        PredictionsError, match="threshold: no validation predictions for run model='fusion'"
    ) as error:
        fairness(frame, attributes=["sex"], threshold=FromValidation(other_model), n_boot=0)
    assert error.value.code == "P019"


def test_worst_group_is_the_argmax_for_calibration_losses() -> None:
    rng = np.random.default_rng(12)
    n = 900
    ward = rng.choice(["a", "b", "miscalibrated"], n)
    y = (rng.random(n) < 0.3).astype(int)
    risk = np.clip(0.3 + 0.4 * (2 * y - 1) * 0.5 + rng.normal(0, 0.1, n), 0.01, 0.99)
    s = np.where(ward == "miscalibrated", np.clip(risk + 0.35, 0, 1), risk)  # same ranking, worse calibration
    out = fairness(
        _frame(y, s, {"ward": ward}),
        attributes=["ward"],
        intersections=None,
        metrics=["expected_calibration_error", "brier_loss", "auroc_score"],
        n_boot=0,
    )
    worst = dict(
        zip(
            select_rows(out, statistic="worst_group")["metric"],
            select_rows(out, statistic="worst_group")["group"],
            strict=True,
        )
    )
    best = dict(
        zip(
            select_rows(out, statistic="best_group")["metric"],
            select_rows(out, statistic="best_group")["group"],
            strict=True,
        )
    )
    assert worst["expected_calibration_error"] == "miscalibrated"
    assert worst["brier_loss"] == "miscalibrated"
    assert best["brier_loss"] != "miscalibrated"
    ece = select_rows(out, metric="expected_calibration_error", statistic="estimate")
    assert (
        select_rows(out, metric="expected_calibration_error", statistic="worst_group")["value"][0]
        == ece["value"].max()
    )
