"""`score`: tidy schema, planted signal, determinism, thresholds, seed aggregation (eval.md §4, §8)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn import metrics as skm

import carebench_eval as ce
from carebench_eval.metrics.threshold import choose_threshold
from carebench_eval.testing import assert_result_table, synthetic_predictions

ATOL = 1e-12


@pytest.fixture(scope="module")
def preds() -> pl.DataFrame:
    return synthetic_predictions(
        n_samples=240, models=("lstm", "medfuse"), strength={"lstm": 0.5, "medfuse": 3.0}, seed=3
    )


def estimate(table: pl.DataFrame, **where: object) -> pl.DataFrame:
    selector = pl.col("statistic") == "estimate"
    for column, value in where.items():
        selector = selector & (pl.col(column) == value)
    return table.filter(selector)


def test_schema_exact_and_notes_known(preds: pl.DataFrame) -> None:
    table = ce.score(preds, n_boot=50)
    assert_result_table(table)
    assert table.filter(pl.col("value").is_null()).height == 0
    assert set(table["task"].unique()) == {"mortality", "phenotype", "los"}
    sort_columns = ["model", "baseline", "seed", "fold", "setting", "task", "metric", "statistic", "target"]
    assert table.equals(
        table.sort([*sort_columns, "group_attribute", "group"], nulls_last=False, maintain_order=True)
    )
    phenotype_targets = set(estimate(table, task="phenotype", metric="auroc_score", model="lstm")["target"])
    assert phenotype_targets == {
        "chf",
        "copd",
        "pneumonia",
        "acute_renal_failure",
        "(macro)",
        "(micro)",
        "(weighted)",
    }
    assert set(estimate(table, task="los", metric="accuracy_score")["target"]) == {"(micro)"}


def test_point_estimates_match_sklearn(preds: pl.DataFrame) -> None:
    table = ce.score(preds, n_boot=0)
    part = preds.filter((pl.col("task") == "phenotype") & (pl.col("model") == "medfuse")).sort(
        "sample_id", "target"
    )
    targets = sorted(part["target"].unique())
    y = part["y_true"].to_numpy().reshape(-1, len(targets))
    s = part["y_score"].to_numpy().reshape(-1, len(targets))
    rows = estimate(table, task="phenotype", model="medfuse")
    for average in ("macro", "micro", "weighted"):
        value = rows.filter((pl.col("metric") == "auprc_score") & (pl.col("target") == f"({average})"))[
            "value"
        ].item()
        assert abs(value - skm.average_precision_score(y, s, average=average)) <= ATOL
    mortality = preds.filter((pl.col("task") == "mortality") & (pl.col("model") == "lstm"))
    value = estimate(table, task="mortality", model="lstm", metric="auroc_score")["value"].item()
    assert abs(value - skm.roc_auc_score(mortality["y_true"], mortality["y_score"])) <= ATOL
    assert (
        estimate(table, task="mortality", model="lstm", metric="threshold")["notes"].item()
        == "policy=fixed:0.5"
    )
    assert table.filter(pl.col("ci_low").is_not_null()).height == 0


def test_planted_signal_is_recovered(preds: pl.DataFrame) -> None:
    table = ce.score(preds, metrics=["auroc_score"], n_boot=200)
    for task, target in (("mortality", "mortality"), ("phenotype", "(macro)"), ("los", "(macro)")):
        strong = estimate(table, task=task, target=target, model="medfuse").row(0, named=True)
        weak = estimate(table, task=task, target=target, model="lstm").row(0, named=True)
        assert strong["value"] > weak["value"] + 0.1
        assert strong["ci_low"] > weak["ci_high"]
        assert (
            strong["ci_low"] <= strong["value"] <= strong["ci_high"]
            or abs(strong["value"] - strong["ci_low"]) < 0.05
        )


def test_deterministic_across_row_shuffles(preds: pl.DataFrame) -> None:
    first = ce.score(preds, n_boot=40, random_state=5)
    shuffled = preds.sample(fraction=1.0, shuffle=True, seed=11)
    assert ce.score(shuffled, n_boot=40, random_state=5).equals(first)
    threads = ce.score(preds, n_boot=40, random_state=5, n_jobs=2)
    assert threads.equals(first)


def test_single_class_target_is_nan_with_warning_and_note() -> None:
    frame = synthetic_predictions(n_samples=60, tasks=("phenotype",), models=("a",), seed=2)
    frame = frame.with_columns(
        pl.when(pl.col("target") == "copd").then(0).otherwise(pl.col("y_true")).cast(pl.Int8).alias("y_true")
    )
    with pytest.warns(
        ce.UndefinedMetricWarning,
        match=r"auroc_score is undefined for 1 \(run, task, target, group\) cell\(s\), e.g. task 'phenotype', target 'copd': only one class present in y_true \(n=60\); value is NaN",
    ):
        table = ce.score(frame, metrics=["auroc_score"], n_boot=20)
    copd = estimate(table, target="copd").row(0, named=True)
    assert np.isnan(copd["value"]) and copd["notes"].startswith("single_class")
    macro = estimate(table, target="(macro)").row(0, named=True)
    assert "labels_used=3/4" in macro["notes"]


def test_seed_aggregation_reports_mean_and_sd_separately() -> None:
    frame = synthetic_predictions(n_samples=150, tasks=("mortality",), models=("a",), seeds=(1, 2, 3), seed=4)
    table = ce.score(frame, metrics=["auroc_score"], n_boot=100)
    runs = estimate(table)
    assert runs.height == 3 and runs["n_runs"].to_list() == [1, 1, 1]
    mean = table.filter(pl.col("statistic") == "mean").row(0, named=True)
    assert mean["seed"] is None and mean["n_runs"] == 3
    assert mean["value"] == pytest.approx(float(np.mean(runs["value"].to_numpy())), abs=ATOL)
    assert mean["ci_low"] < mean["value"] < mean["ci_high"]
    seed_sd = table.filter(pl.col("statistic") == "seed_sd").row(0, named=True)
    assert seed_sd["value"] == pytest.approx(float(np.std(runs["value"].to_numpy(), ddof=1)), abs=1e-12)
    assert seed_sd["ci_low"] is None
    single = ce.score(frame.filter(pl.col("seed") == 1), metrics=["auroc_score"], n_boot=10)
    assert single.filter(pl.col("statistic") != "estimate").height == 0
    no_aggregate = ce.score(frame, metrics=["auroc_score"], n_boot=0, aggregate=())
    assert set(no_aggregate["statistic"]) == {"estimate"}


def test_cluster_and_row_bootstrap_coincide_in_score() -> None:
    frame = synthetic_predictions(
        n_samples=120, tasks=("mortality",), models=("a",), stays_per_patient=1.0, seed=6
    )
    clustered = ce.score(frame, metrics=["auroc_score"], n_boot=100)
    rows = ce.score(frame, metrics=["auroc_score"], n_boot=100, cluster=None)
    assert clustered["ci_low"].to_list() == rows["ci_low"].to_list()
    assert rows["notes"].to_list() == ["row_bootstrap"]


def test_threshold_policies_are_recorded() -> None:
    frame = synthetic_predictions(n_samples=200, tasks=("mortality",), models=("a",), seed=8)
    validation = synthetic_predictions(n_samples=200, tasks=("mortality",), models=("a",), seed=9)
    thresholds = {}
    for policy in (ce.Fixed(0.3), ce.TopK(0.1), ce.FromValidation(validation, rule="youden")):
        table = ce.score(frame, metrics=["sensitivity_score", "positive_rate"], threshold=policy, n_boot=0)
        row = estimate(table, metric="threshold").row(0, named=True)
        assert row["notes"] == policy.note
        thresholds[policy.note] = row["value"]
        scores = frame["y_score"].to_numpy()
        rate = estimate(table, metric="positive_rate")["value"].item()
        assert rate == pytest.approx(float(np.mean(scores >= row["value"])), abs=ATOL)
    assert thresholds["policy=fixed:0.3"] == 0.3
    assert len(set(thresholds.values())) == 3
    with pytest.raises(ce.PredictionsError) as caught:
        ce.score(
            frame,
            metrics=["sensitivity_score"],
            threshold=ce.FromValidation(validation.with_columns(model=pl.lit("b"))),
            n_boot=0,
        )
    assert caught.value.code == "P019"
    assert (
        str(caught.value)
        == "threshold: no validation predictions for run model='a', seed=0, task 'mortality'"
    )


def _run(setting: str, seed: int, *, fold: int = 1, shift: float = 0.0, n: int = 120) -> pl.DataFrame:
    """One run of model 'a' on mortality; `shift` moves the scores, and with them the Youden threshold."""
    y = (np.random.default_rng(0).random(n) < 0.3).astype(int)  # the same stays in every run
    s = np.clip(0.3 + 0.3 * y + shift + np.random.default_rng(seed).normal(0, 0.15, n), 0, 1)
    return ce.from_arrays(
        y,
        s,
        task="mortality",
        kind="binary",
        targets=["mortality"],
        sample_id=np.arange(n),
        model="a",
        seed=0,
        fold=fold,
        setting=setting,
    )


def _thresholds(test: pl.DataFrame, validation: pl.DataFrame) -> dict[str, float]:
    table = ce.score(test, metrics=["sensitivity_score"], threshold=ce.FromValidation(validation), n_boot=0)
    rows = estimate(table, metric="threshold")
    return dict(zip(rows["setting"], rows["value"], strict=True))


def test_validation_threshold_comes_from_the_same_cohort_and_drop_rate() -> None:
    base_val = _run("cohort_base", 11, shift=-0.2)
    matched_val = _run("cohort_matched", 12, shift=0.2)
    base_threshold = choose_threshold(
        base_val["y_true"].to_numpy(), base_val["y_score"].to_numpy(), rule="youden"
    )
    matched_threshold = choose_threshold(
        matched_val["y_true"].to_numpy(), matched_val["y_score"].to_numpy(), rule="youden"
    )
    assert base_threshold != matched_threshold
    validation = pl.concat([base_val, matched_val])
    # A test-time setting takes the threshold of the model's own cohort ('cohort_matched' and '' alike).
    test = pl.concat([_run("cohort_matched+test_cxr_mcar_0.5", 1), _run("cohort_base+test_cxr_mnar_0.25", 2)])
    assert _thresholds(test, validation) == {
        "cohort_matched+test_cxr_mcar_0.5": matched_threshold,
        "cohort_base+test_cxr_mnar_0.25": base_threshold,
    }
    # Validation predictions of the very setting win.
    same_setting = _run("cohort_base+test_cxr_mnar_0.25", 13, shift=0.1)
    own = choose_threshold(
        same_setting["y_true"].to_numpy(), same_setting["y_score"].to_numpy(), rule="youden"
    )
    test = _run("cohort_base+test_cxr_mnar_0.25", 2)
    assert _thresholds(test, pl.concat([validation, same_setting])) == {"cohort_base+test_cxr_mnar_0.25": own}
    # Another cohort, drop rate or fold never stands in: P019.
    for setting, fold, available in (
        ("cohort_base", 1, matched_val),
        ("cohort_matched+train_cxr_drop_0.5", 1, validation),
        ("cohort_base+train_cxr_drop_0.5+test_cxr_mcar_1.0", 1, _run("cohort_base+train_cxr_drop_0.3", 14)),
        ("cohort_base", 2, validation),
    ):
        with pytest.raises(ce.PredictionsError) as caught:
            _thresholds(_run(setting, 3, fold=fold), available)
        assert caught.value.code == "P019"
        assert str(caught.value) == (
            f"threshold: no validation predictions for run model='a', seed=0, fold={fold}, "
            f"setting={setting!r}, task 'mortality'"
        )


def test_unknown_arguments_raise() -> None:
    frame = synthetic_predictions(n_samples=30, tasks=("mortality",), models=("a",))
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        ce.score(frame, metrics=["auc"])
    with pytest.raises(ValueError, match="ci must be one of"):
        ce.score(frame, ci="basic")
    with pytest.raises(ValueError, match="aggregate must name"):
        ce.score(frame, aggregate=("model",))


def test_progress_callback() -> None:
    frame = synthetic_predictions(n_samples=30, tasks=("mortality", "los"), models=("a",))
    calls: list[tuple[int, int]] = []
    ce.score(frame, n_boot=5, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (2, 2)


def test_mean_ci_is_the_joint_bootstrap_over_the_union_of_clusters() -> None:
    from carebench_eval.api import RunScorer
    from carebench_eval.resampling import bootstrap_counts, cluster_universe, percentile_interval
    from carebench_eval.runs import split_runs

    frame = synthetic_predictions(n_samples=90, tasks=("mortality",), models=("a",), seeds=(1, 2), seed=12)
    # Second seed scored on a subset of stays: the union universe differs from each run's own.
    frame = frame.filter((pl.col("seed") == 1) | (pl.col("sample_id").cast(pl.Int64) % 3 != 0))
    table = ce.score(frame, metrics=["auroc_score"], n_boot=80)
    runs = split_runs(frame)
    universe, column_ofs = cluster_universe(*(run.cluster for run in runs))
    counts = bootstrap_counts(universe.size, 0, 80, random_state=0)
    per_run = [
        RunScorer(run, ("auroc_score",), None, column_of, universe.size, n_bins=10, averages=()).values(
            counts
        )[:, 0]
        for run, column_of in zip(runs, column_ofs, strict=True)
    ]
    low, high, _ = percentile_interval(np.mean(per_run, axis=0), 0.95)
    mean = table.filter(pl.col("statistic") == "mean").row(0, named=True)
    assert (mean["ci_low"], mean["ci_high"]) == (low, high)
    assert mean["n"] == 90 and mean["n_runs"] == 2
