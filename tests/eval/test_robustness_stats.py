import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from carebench_eval import PredictionsError
from carebench_eval.io import from_arrays
from carebench_eval.robustness import (
    ParsedSetting,
    break_even_rate,
    curve_area,
    fusion_gain,
    modality_contribution,
    parse_setting,
    robustness,
)
from carebench_eval.testing import assert_result_table, select_rows

RATES = (0.0, 0.25, 0.5, 0.75, 1.0)


def test_parse_setting_grammar() -> None:
    assert parse_setting(None) == ParsedSetting((), {})
    assert parse_setting("natural") == parse_setting("cohort_matched") == parse_setting("")
    assert parse_setting("cohort_matched+test_cxr_mcar_0.5") == ParsedSetting((), {"test_cxr_mcar": 0.5})
    assert parse_setting("test_cxr_mnar_0") == ParsedSetting((), {})
    assert parse_setting("cohort_base+train_cxr_drop_0.3+test_cxr_subgroup_sex=F_0.5") == ParsedSetting(
        ("cohort_base",), {"train_cxr_drop": 0.3, "test_cxr_subgroup_sex=F": 0.5}
    )
    with pytest.raises(ValueError, match=r"unknown token 'test_cxr_gone_0\.5'"):
        parse_setting("test_cxr_gone_0.5")
    with pytest.raises(ValueError, match="outside"):
        parse_setting("test_cxr_mcar_1.5")
    with pytest.raises(ValueError, match="twice"):
        parse_setting("test_cxr_mcar_0.2+test_cxr_mcar_0.4")


def test_training_setting_drops_test_time_tokens() -> None:
    from carebench_eval.settings import training_setting

    assert training_setting("cohort_base+train_cxr_drop_0.3+test_cxr_mcar_0.5") == parse_setting(
        "cohort_base+train_cxr_drop_0.3"
    )
    assert training_setting("test_cxr_subgroup_sex=F_0.5") == training_setting(None) == ParsedSetting((), {})
    assert training_setting("cross_base_to_matched") == parse_setting("cohort_base")
    assert training_setting("cross_matched_to_base+test_cxr_mnar_1.0") == parse_setting("cohort_matched")
    assert training_setting("test_ehr_withheld") is None  # outside the grammar: matched by name only


def test_curve_area_and_break_even() -> None:
    rates = np.array([0.0, 0.25, 0.5, 1.0])
    values = np.array([[0.9, 0.8, 0.8, 0.6], [0.5, 0.5, 0.5, 0.5]])
    expected = (0.25 * 0.85 + 0.25 * 0.8 + 0.5 * 0.7) / 1.0
    np.testing.assert_allclose(curve_area(rates, values), [expected, 0.5])
    assert break_even_rate(rates, values[0], 0.7) == pytest.approx(0.75)
    assert break_even_rate(rates, values[0], 0.95) == 0.0
    assert np.isnan(break_even_rate(rates, values[0], 0.5))


def _degradation(
    n: int = 400, seed: int = 0
) -> tuple[pl.DataFrame, dict[tuple[str, float], np.ndarray], np.ndarray]:
    """'fusion' loses signal on the stays whose CXR is withheld; 'lstm' never sees the CXR."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    subject = rng.integers(0, n * 3 // 4, n)
    signal = 2 * y - 1
    ehr_noise, cxr_noise = rng.normal(0, 1, n), rng.normal(0, 1, n)
    order = rng.permutation(n)
    frames, scores = [], {}
    for rate in RATES:
        has_cxr = np.ones(n, dtype=bool)
        has_cxr[order[: round(rate * n)]] = False
        setting = "natural" if rate == 0 else f"test_cxr_mcar_{rate:g}"
        fused = 0.8 * signal + ehr_noise + np.where(has_cxr, 1.6 * signal + cxr_noise, 0.0)
        for model, logits in (("fusion", fused), ("lstm", 0.8 * signal + ehr_noise)):
            s = 1 / (1 + np.exp(-logits))
            scores[model, rate] = s
            frames.append(
                from_arrays(
                    y,
                    s,
                    task="mortality",
                    kind="binary",
                    targets=["mortality"],
                    sample_id=np.arange(n),
                    subject_id=subject,
                    attributes={"has_cxr": has_cxr},
                    model=model,
                    setting=setting,
                    seed=42,
                    fold=1,
                )
            )
    return pl.concat(frames), scores, y


def test_robustness_recovers_a_planted_degradation() -> None:
    frame, scores, y = _degradation()
    out = robustness(frame, metrics=["auroc_score"], n_boot=200)
    assert_result_table(out)
    fusion_points = [roc_auc_score(y, scores["fusion", rate]) for rate in RATES]
    assert fusion_points[0] - fusion_points[-1] > 0.1  # the plant works
    points = select_rows(out, model="fusion", metric="auroc_score", statistic="estimate").sort("setting")
    assert points.height == len(RATES)  # the rate-0 point is reported once
    by_setting = dict(zip(points["setting"], points["value"], strict=True))
    assert by_setting["natural"] == pytest.approx(fusion_points[0], abs=1e-12)
    assert by_setting["test_cxr_mcar_0.5"] == pytest.approx(fusion_points[2], abs=1e-12)
    curve = select_rows(out, model="fusion", setting="test_cxr_mcar")
    stats = dict(zip(curve["statistic"], curve["value"], strict=True))
    area = curve_area(np.array(RATES), np.array([fusion_points]))[0]
    assert stats["area"] == pytest.approx(area, abs=1e-12)
    assert stats["relative_area"] == pytest.approx(area / fusion_points[0], abs=1e-12)
    assert stats["retention"] == pytest.approx(fusion_points[-1] / fusion_points[0], abs=1e-12)
    lstm_auroc = roc_auc_score(y, scores["lstm", 0.0])
    assert stats["break_even_rate"] == pytest.approx(
        break_even_rate(np.array(RATES), np.array(fusion_points), lstm_auroc), abs=1e-12
    )
    area_row = select_rows(curve, statistic="area")
    assert area_row["ci_low"][0] < area < area_row["ci_high"][0]
    assert select_rows(curve, statistic="relative_area")["ci_high"][0] < 1.0  # significant degradation
    lstm = select_rows(out, model="lstm", setting="test_cxr_mcar")
    lstm_stats = dict(zip(lstm["statistic"], lstm["value"], strict=True))
    assert lstm_stats["retention"] == pytest.approx(1.0) and lstm_stats["relative_area"] == pytest.approx(1.0)
    missing = select_rows(out, model="fusion", metric="cxr_missing_rate").sort("setting")
    assert missing["value"].to_list() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert missing["notes"].null_count() == missing.height  # observed = nominal: no rate_mismatch


def test_robustness_requires_identical_samples_across_rates() -> None:
    frame, _, _ = _degradation(n=60)
    broken = frame.filter(~((pl.col("setting") == "test_cxr_mcar_0.5") & (pl.col("sample_id") == "0")))
    with pytest.raises(PredictionsError) as error:
        robustness(broken, n_boot=0)
    assert error.value.code == "P018"
    with pytest.raises(ValueError, match="no train-time missing-rate curve"):
        robustness(frame, axis="train", n_boot=0)


def test_curve_areas_compare_between_models() -> None:
    from carebench_eval.compare import compare

    frame, scores, y = _degradation(n=200, seed=1)
    out = compare(
        (frame, "fusion"), (frame, "lstm"), statistic="area", metric="auroc_score", n_perm=200, n_boot=100
    )
    assert_result_table(out)
    fusion_area = curve_area(
        np.array(RATES), np.array([[roc_auc_score(y, scores["fusion", r]) for r in RATES]])
    )[0]
    lstm_area = roc_auc_score(y, scores["lstm", 0.0])
    assert out["setting"].to_list() == ["test_cxr_mcar"]
    assert out["value"][0] == pytest.approx(fusion_area - lstm_area, abs=1e-12)
    assert out["p_value"][0] < 0.05


def _gain(n: int = 300, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    labels = ["chf", "copd", "pneumonia"]
    y = (rng.random((n, 3)) < 0.35).astype(int)
    strengths = {
        "drfuse": [2.0, 2.0, 0.5],
        "latefusion": [1.2, 1.2, 0.5],
        "lstm": [1.0, 1.0, 0.5],
        "resnet": [0.5, 0.5, 0.5],
    }
    has_cxr = rng.random(n) < 0.5
    frames = []
    for model, strength in strengths.items():
        logits = np.array(strength)[None, :] * (2 * y - 1) + rng.normal(0, 1, (n, 3))
        frames.append(
            from_arrays(
                y,
                1 / (1 + np.exp(-logits)),
                task="phenotype",
                kind="multilabel",
                targets=labels,
                subject_id=np.arange(n) // 2,
                attributes={"has_cxr": has_cxr},
                model=model,
            )
        )
    return pl.concat(frames)


def test_fusion_gain_recovers_a_planted_gain() -> None:
    frame = _gain()
    out = fusion_gain(frame, metrics=["auroc_score"], n_perm=500, n_boot=200)
    assert_result_table(out)
    assert set(out["baseline"]) == {"lstm"}
    assert set(out["notes"]) == {"best_unimodal;selected_on_test"}
    drfuse = select_rows(out, model="drfuse")
    assert drfuse["target"].to_list() == ["(macro)"]
    assert drfuse["value"][0] > 0.05 and drfuse["ci_low"][0] > 0
    assert drfuse["p_adjusted"][0] <= 2 * drfuse["p_value"][0] + 1e-12  # Holm over 2 fused models
    per_label = fusion_gain(
        frame,
        fused=["drfuse"],
        metrics=["auroc_score"],
        targets="per_label",
        correction="bh",
        n_perm=500,
        n_boot=100,
    )
    values = dict(zip(per_label["target"], per_label["value"], strict=True))
    adjusted = dict(zip(per_label["target"], per_label["p_adjusted"], strict=True))
    assert values["chf"] > 0.05 and values["copd"] > 0.05
    assert adjusted["chf"] < 0.05 and adjusted["pneumonia"] > adjusted["chf"]
    split = fusion_gain(frame, fused=["drfuse"], metrics=["auroc_score"], by="has_cxr", n_perm=100, n_boot=0)
    assert split["group_attribute"].to_list() == ["has_cxr", "has_cxr"]
    assert split["group"].to_list() == ["false", "true"]
    assert sum(split["n"].to_list()) == 300


def _bh_by_hand(p: list[float]) -> list[float]:
    """Benjamini-Hochberg: p~_(i) = min over j >= i of min(1, m p_(j) / j), written out."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, m * p[i] / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


def test_per_label_fusion_gain_adjusts_across_the_labels_of_each_model() -> None:
    frame = _gain(seed=4)
    out = fusion_gain(
        frame,
        fused=["drfuse", "latefusion"],
        metrics=["auroc_score"],
        targets="all",
        correction="bh",
        n_perm=400,
        n_boot=0,
    )
    labels = out.filter(~pl.col("target").str.starts_with("("))
    for model in ("drfuse", "latefusion"):
        rows = labels.filter(pl.col("model") == model).sort("target")
        assert rows["target"].to_list() == ["chf", "copd", "pneumonia"]
        raw = rows["p_value"].to_list()
        # One family per fused model: its three labels (was: one test per label and model).
        assert rows["p_adjusted"].to_list() == pytest.approx(_bh_by_hand(raw), abs=1e-15)
    assert (labels["p_adjusted"] > labels["p_value"]).any()
    # The macro rows still form a family across the fused models.
    macro = out.filter(pl.col("target") == "(macro)").sort("model")
    assert macro["p_adjusted"].to_list() == pytest.approx(_bh_by_hand(macro["p_value"].to_list()), abs=1e-15)
    # Hand-computed: p = (0.01, 0.04, 0.03) -> m p_(j) / j = (0.03, 0.045, 0.04) -> (0.03, 0.04, 0.04).
    assert _bh_by_hand([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.04, 0.04], abs=1e-15)


def test_fusion_gain_selects_on_validation() -> None:
    test = _gain(seed=1)
    validation = _gain(seed=2).with_columns(
        pl.when(pl.col("model") == "lstm")
        .then(pl.lit("resnet"))
        .when(pl.col("model") == "resnet")
        .then(pl.lit("lstm"))
        .otherwise(pl.col("model"))
        .alias("model")
    )
    out = fusion_gain(test, metrics=["auroc_score"], select_on=validation, n_perm=100, n_boot=0)
    assert set(out["baseline"]) == {"resnet"}
    assert set(out["notes"]) == {"best_unimodal"}


def test_modality_contribution_and_utilization() -> None:
    frame, scores, y = _degradation(n=300, seed=2)
    cxr_only = from_arrays(
        y,
        1 / (1 + np.exp(-(1.6 * (2 * y - 1) + np.random.default_rng(9).normal(0, 1, y.size)))),
        task="mortality",
        kind="binary",
        targets=["mortality"],
        sample_id=np.arange(y.size),
        subject_id=frame.filter((pl.col("model") == "fusion") & (pl.col("setting") == "natural"))[
            "subject_id"
        ],
        attributes={"has_cxr": np.ones(y.size, dtype=bool)},
        model="resnet",
        setting="natural",
        seed=42,
        fold=1,
    )
    preds = pl.concat([frame, cxr_only])
    # unimodal_cxr defaults to the registry's CXR-only baseline, "resnet".
    out = modality_contribution(preds, metrics=["auroc_score"], n_perm=300, n_boot=200)
    assert_result_table(out)
    drop = select_rows(out, model="fusion", statistic="modality_drop")
    expected = roc_auc_score(y, scores["fusion", 0.0]) - roc_auc_score(y, scores["fusion", 1.0])
    assert drop["value"][0] == pytest.approx(expected, abs=1e-12)
    assert drop["setting"][0] == "test_cxr_mcar_1.0" and drop["baseline"][0] is None
    assert drop["ci_low"][0] > 0 and drop["p_value"][0] < 0.01
    lstm = select_rows(out, model="lstm", statistic="modality_drop")
    assert lstm["value"][0] == 0.0 and lstm["p_value"][0] == 1.0
    utilization = select_rows(out, model="fusion", statistic="cxr_utilization")
    cxr_auroc = roc_auc_score(y, cxr_only.sort(pl.col("sample_id").cast(pl.Int64))["y_score"].to_numpy())
    assert utilization["value"][0] == pytest.approx(expected / (cxr_auroc - 0.5), abs=1e-12)
    assert utilization["ci_low"][0] < utilization["value"][0] < utilization["ci_high"][0]


def test_cxr_share_needs_both_drops() -> None:
    frame, _, _ = _degradation(n=200, seed=3)
    full = frame.filter(pl.col("setting") == "natural")
    no_cxr = frame.filter(pl.col("setting") == "test_cxr_mcar_1")
    rng = np.random.default_rng(4)
    no_ehr = full.with_columns(
        pl.lit("test_ehr_withheld").alias("setting"),
        pl.Series("y_score", np.clip(full["y_score"].to_numpy() + rng.normal(0, 0.3, full.height), 0, 1)),
    )
    out = modality_contribution(
        pl.concat([full, no_cxr, no_ehr]),
        full="natural",
        withheld={"cxr": "test_cxr_mcar_1", "ehr": "test_ehr_withheld"},
        models=["fusion"],
        metrics=["auroc_score"],
        n_perm=0,
        n_boot=100,
    )
    drops = dict(
        zip(
            select_rows(out, statistic="modality_drop")["setting"],
            select_rows(out, statistic="modality_drop")["value"],
            strict=True,
        )
    )
    share = select_rows(out, statistic="cxr_share")
    assert share["value"][0] == pytest.approx(
        drops["test_cxr_mcar_1"] / (drops["test_cxr_mcar_1"] + drops["test_ehr_withheld"])
    )
    assert select_rows(out, statistic="modality_drop")["p_value"].null_count() == 2


def test_fusion_gain_on_library_synthetic_predictions_with_seeds() -> None:
    from carebench_eval.testing import synthetic_predictions

    preds = synthetic_predictions(
        n_samples=300,
        tasks=("mortality", "phenotype", "los"),
        models=("lstm", "transformer", "resnet", "drfuse", "latefusion"),
        strength={"lstm": 1.0, "transformer": 1.5, "resnet": 0.5, "drfuse": 4.0, "latefusion": 1.5},
        seeds=(0, 1),
        seed=3,
    )
    out = fusion_gain(preds, n_perm=300, n_boot=100)
    assert_result_table(out)
    assert set(out["baseline"]) == {"transformer"}
    assert (out["n_runs"] == 2).all() and out["seed"].null_count() == out.height  # averaged over 2 seeds
    primary = out.filter(
        pl.col("metric").is_in(["auprc_score", "accuracy_score"]) & (pl.col("model") == "drfuse")
    )
    assert primary.height == 3  # one primary metric per task
    assert (primary["value"] > 0).all() and (primary["ci_low"] > 0).all()
    # AUPRC on ~55 mortality positives is too noisy for the permutation test at this size; the rest is clear
    clear = out.filter(
        (pl.col("model") == "drfuse")
        & ~((pl.col("task") == "mortality") & (pl.col("metric") == "auprc_score"))
    )
    assert (clear["p_adjusted"] < 0.05).all()
    # latefusion has the baseline's strength: no planted gain, the CI covers 0 for the primary metrics
    null = out.filter(
        pl.col("metric").is_in(["auprc_score", "accuracy_score"]) & (pl.col("model") == "latefusion")
    )
    assert ((null["ci_low"] < 0) & (null["ci_high"] > 0)).sum() >= 2
