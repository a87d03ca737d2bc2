import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from carebench_eval import PredictionsError, auroc_score, paired_permutation_test
from carebench_eval.compare import compare, compare_grid, delong_components, delong_test
from carebench_eval.io import from_arrays
from carebench_eval.multiplicity import holm
from carebench_eval.resampling import bootstrap_counts
from carebench_eval.testing import assert_result_table


def _scores(rng: np.random.Generator, y: np.ndarray, strength: float) -> np.ndarray:
    logits = strength * (2 * y - 1) + rng.normal(0, 1, y.shape)
    return np.round(1 / (1 + np.exp(-logits)), 3)  # rounded: ties exercise the midrank / tie code


def _binary(
    n: int,
    strengths: dict[str, float],
    *,
    seed: int = 0,
    n_subjects: int | None = None,
    setting: str | None = None,
    task: str = "mortality",
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    subject = rng.integers(0, n_subjects, n) if n_subjects else None
    frames = [
        from_arrays(
            y,
            _scores(rng, y, strength),
            task=task,
            kind="binary",
            targets=[task],
            sample_id=np.arange(n),
            subject_id=subject,
            model=model,
            setting=setting,
        )
        for model, strength in strengths.items()
    ]
    return pl.concat(frames, how="diagonal_relaxed")


def _arrays(frame: pl.DataFrame, model: str) -> tuple[np.ndarray, np.ndarray]:
    part = frame.filter(pl.col("model") == model).sort(pl.col("sample_id").cast(pl.Int64))
    return part["y_true"].to_numpy(), part["y_score"].to_numpy()


# DeLong


def test_delong_components_match_the_naive_u_statistic() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(60) < 0.4).astype(int)
    scores = np.vstack([np.round(rng.random(60), 1), np.round(rng.random(60) + 0.3 * y, 1)])
    auroc, v10, v01 = delong_components(y, scores)
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    # psi(x, y) = 1 if x > y, 1/2 if tied, 0 otherwise
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    np.testing.assert_allclose(v10, psi.mean(axis=2), atol=1e-12)
    np.testing.assert_allclose(v01, psi.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(auroc, [roc_auc_score(y, s) for s in scores], atol=1e-12)

    result = delong_test(y, scores[0], scores[1])
    n1, n0 = int(y.sum()), int((1 - y).sum())
    s10 = np.cov(psi.mean(axis=2), ddof=1)
    s01 = np.cov(psi.mean(axis=1), ddof=1)
    covariance = s10 / n1 + s01 / n0
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    assert result.delta == pytest.approx(auroc[0] - auroc[1], abs=1e-12)
    assert result.se == pytest.approx(np.sqrt(variance), abs=1e-12)
    assert result.z == pytest.approx(result.delta / result.se)
    assert result.ci_high - result.ci_low == pytest.approx(2 * 1.959963984540054 * result.se)


def test_delong_identical_scores_and_single_class() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.8, 0.3, 0.3, 0.9, 0.2])
    result = delong_test(y, s, s)
    assert (result.delta, result.se, result.p_value) == (0.0, 0.0, 1.0)
    with pytest.warns(Warning, match="only one class"):
        undefined = delong_test(np.ones(5), s[:5], s[:5])
    assert np.isnan(undefined.p_value)


def test_delong_variance_agrees_with_the_bootstrap() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.4).astype(int)
    a, b = _scores(rng, y, 1.2), _scores(rng, y, 0.8)
    result = delong_test(y, a, b)
    counts = bootstrap_counts(y.size, 0, 400, 0)
    deltas = []
    for row in counts:
        rows = np.repeat(np.arange(y.size), row)
        deltas.append(roc_auc_score(y[rows], a[rows]) - roc_auc_score(y[rows], b[rows]))
    assert np.std(deltas, ddof=1) == pytest.approx(result.se, rel=0.2)


# compare: permutation test and paired bootstrap


def test_identical_models_give_p_one_and_zero_delta() -> None:
    frame = _binary(80, {"a": 1.0}, n_subjects=60)
    twin = frame.with_columns(pl.lit("b").alias("model"))
    out = compare(frame, twin, n_perm=500, n_boot=100)
    assert_result_table(out)
    assert out["value"].to_list() == [0.0, 0.0]
    assert out["p_value"].to_list() == [1.0, 1.0]
    assert out["ci_low"].to_list() == [0.0, 0.0] and out["ci_high"].to_list() == [0.0, 0.0]
    assert set(out["metric"]) == {"auprc_score", "auroc_score"}  # primary + secondary of mortality


def test_delta_is_antisymmetric_with_equal_p() -> None:
    frame = _binary(120, {"a": 1.2, "b": 0.7}, n_subjects=90)
    ab = compare((frame, "a"), (frame, "b"), n_perm=999, n_boot=200)
    ba = compare((frame, "b"), (frame, "a"), n_perm=999, n_boot=200)
    assert ab["model"].to_list() == ["a", "a"] and ab["baseline"].to_list() == ["b", "b"]
    np.testing.assert_allclose(ab["value"], -ba["value"].to_numpy(), atol=1e-15)
    np.testing.assert_allclose(ab["p_value"], ba["p_value"], atol=0)
    np.testing.assert_allclose(ab["ci_low"], -ba["ci_high"].to_numpy(), atol=1e-12)
    y, a = _arrays(frame, "a")
    _, b = _arrays(frame, "b")
    auroc_row = ab.filter(pl.col("metric") == "auroc_score")
    assert auroc_row["value"][0] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    assert auroc_row["n"][0] == 120 and auroc_row["n_runs"][0] == 1


def test_permutation_p_equals_the_array_layer_test() -> None:
    frame = _binary(150, {"a": 1.0, "b": 0.8}, n_subjects=100)
    subjects = (
        frame.filter(pl.col("model") == "a").sort(pl.col("sample_id").cast(pl.Int64))["subject_id"].to_numpy()
    )
    y, a = _arrays(frame, "a")
    _, b = _arrays(frame, "b")
    reference = paired_permutation_test(auroc_score, y, a, b, clusters=subjects, n_perm=2000, random_state=7)
    out = compare((frame, "a"), (frame, "b"), metric="auroc_score", n_perm=2000, n_boot=0, random_state=7)
    assert out["p_value"][0] == pytest.approx(reference.p_value, abs=0)
    assert out["value"][0] == pytest.approx(reference.delta, abs=1e-12)
    assert out["ci_low"].null_count() == 1


def test_exact_enumeration_and_materialized_bootstrap() -> None:
    # 8 clusters -> 256 flip patterns <= n_perm: exact p by enumeration
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    a = np.array([0.2, 0.9, 0.1, 0.7, 0.8, 0.4, 0.6, 0.3, 0.5, 0.95, 0.85, 0.15])
    b = np.array([0.5, 0.6, 0.4, 0.5, 0.3, 0.6, 0.45, 0.55, 0.4, 0.5, 0.6, 0.5])
    subjects = np.array([0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 7])
    frames = [
        from_arrays(
            y, s, task="mortality", kind="binary", targets=["mortality"], subject_id=subjects, model=m
        )
        for m, s in (("a", a), ("b", b))
    ]
    frame = pl.concat(frames)
    out = compare((frame, "a"), (frame, "b"), metric="auprc_score", n_perm=10_000, n_boot=50, random_state=3)
    observed = average_precision_score(y, a) - average_precision_score(y, b)
    permuted = []
    for pattern in range(2**8):
        flip = ((pattern >> subjects) & 1).astype(bool)
        permuted.append(
            average_precision_score(y, np.where(flip, b, a))
            - average_precision_score(y, np.where(flip, a, b))
        )
    expected_p = np.mean(np.abs(permuted) >= abs(observed) - 1e-12)
    assert out["value"][0] == pytest.approx(observed, abs=1e-12)
    assert out["p_value"][0] == pytest.approx(expected_p, abs=1e-15)
    counts = bootstrap_counts(8, 0, 50, 3)
    deltas = []
    for row in counts:
        rows = np.repeat(np.arange(y.size), row[subjects])
        if y[rows].min() == y[rows].max():
            continue
        deltas.append(average_precision_score(y[rows], a[rows]) - average_precision_score(y[rows], b[rows]))
    assert out["ci_low"][0] == pytest.approx(np.quantile(deltas, 0.025), abs=1e-12)
    assert out["ci_high"][0] == pytest.approx(np.quantile(deltas, 0.975), abs=1e-12)


def test_delong_row_and_cluster_note() -> None:
    frame = _binary(100, {"a": 1.0, "b": 0.5}, n_subjects=70)
    out = compare((frame, "a"), (frame, "b"), metric="auroc_score", delong=True, n_perm=200, n_boot=50)
    assert_result_table(out)
    row = out.filter(pl.col("statistic") == "delong")
    y, a = _arrays(frame, "a")
    _, b = _arrays(frame, "b")
    expected = delong_test(y, a, b)
    assert row["value"][0] == pytest.approx(expected.delta)
    assert row["p_value"][0] == pytest.approx(expected.p_value)
    assert row["notes"][0] == "delong_ignores_clusters"


def test_samples_must_match_unless_inner() -> None:
    frame = _binary(50, {"a": 1.0, "b": 0.5})
    fewer = frame.filter(~((pl.col("model") == "b") & (pl.col("sample_id").cast(pl.Int64) < 5)))
    message = (
        "compare: 'a' and 'b' are not scored on the same samples (5 sample_id(s) in only one); "
        'pass align="inner" to use the intersection'
    )
    with pytest.raises(PredictionsError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        compare((fewer, "a"), (fewer, "b"), n_perm=10, n_boot=0)
    assert error.value.code == "P018"
    out = compare((fewer, "a"), (fewer, "b"), align="inner", n_perm=10, n_boot=0)
    assert out["n"].to_list() == [45, 45]
    assert out["notes"].to_list() == ["row_bootstrap", "row_bootstrap"]


def test_unknown_options_raise() -> None:
    frame = _binary(30, {"a": 1.0, "b": 0.5})
    with pytest.raises(ValueError, match="unknown statistic 'mean'"):
        compare((frame, "a"), (frame, "b"), statistic="mean")
    with pytest.raises(ValueError, match="several models"):
        compare(frame, (frame, "b"))
    with pytest.raises(ValueError, match="unknown metric"):
        compare((frame, "a"), (frame, "b"), metric="auc")


def test_multilabel_and_multiclass_comparisons() -> None:
    rng = np.random.default_rng(5)
    n, labels = 90, ["chf", "copd", "pneumonia"]
    y = (rng.random((n, 3)) < 0.4).astype(int)
    frames = [
        from_arrays(
            y, _scores(rng, y, strength), task="phenotype", kind="multilabel", targets=labels, model=m
        )
        for m, strength in (("a", 1.5), ("b", 0.5))
    ]
    classes = ["2-3d", "3-4d", "14+d"]
    y_class = rng.integers(0, 3, n)
    for m, strength in (("a", 2.0), ("b", 0.3)):
        logits = strength * np.eye(3)[y_class] + rng.normal(0, 1, (n, 3))
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frames.append(from_arrays(y_class, proba, task="los", kind="multiclass", targets=classes, model=m))
    frame = pl.concat(frames, how="diagonal_relaxed")
    out = compare((frame, "a"), (frame, "b"), n_perm=200, n_boot=100, targets="all")
    assert_result_table(out)
    phenotype = out.filter(pl.col("task") == "phenotype")
    assert set(phenotype["target"]) == {"(macro)", *labels}

    def wide(model: str) -> np.ndarray:
        part = frame.filter((pl.col("model") == model) & (pl.col("task") == "phenotype"))
        part = part.sort(pl.col("sample_id").cast(pl.Int64), "target")
        return part["y_score"].to_numpy().reshape(n, 3)

    expected = roc_auc_score(y, wide("a"), average="macro") - roc_auc_score(y, wide("b"), average="macro")
    macro = phenotype.filter((pl.col("metric") == "auroc_score") & (pl.col("target") == "(macro)"))
    assert macro["value"][0] == pytest.approx(expected, abs=1e-12)
    los = out.filter(pl.col("task") == "los")
    assert set(zip(los["metric"], los["target"], strict=True)) >= {
        ("accuracy_score", "(micro)"),
        ("kappa_linear_score", "(micro)"),
        ("auroc_score", "(macro)"),
    }
    assert (out["value"] > 0).all()
    assert (out["p_value"] < 0.05).all()


def test_gap_comparison_is_antisymmetric() -> None:
    frame = _binary(200, {"a": 1.2, "b": 0.6}, n_subjects=150)
    sex = np.where(np.arange(200) % 3 == 0, "F", "M")
    frame = frame.with_columns(pl.Series("sex", np.tile(sex, 2)))
    ab = compare(
        (frame, "a"),
        (frame, "b"),
        statistic="gap",
        attribute="sex",
        metric="sensitivity_score",
        n_perm=300,
        n_boot=100,
    )
    ba = compare(
        (frame, "b"),
        (frame, "a"),
        statistic="gap",
        attribute="sex",
        metric="sensitivity_score",
        n_perm=300,
        n_boot=100,
    )
    assert_result_table(ab)
    assert ab["group_attribute"][0] == "sex" and ab["statistic"][0] == "gap"
    assert ab["value"][0] == pytest.approx(-ba["value"][0], abs=1e-15)
    assert ab["p_value"][0] == ba["p_value"][0]


# compare_grid


def test_compare_grid_vs_best_unimodal_with_holm() -> None:
    test = _binary(150, {"fused1": 1.6, "fused2": 1.4, "fused3": 0.9, "lstm": 1.0, "resnet": 0.4}, seed=2)
    # The default unimodal candidates are the registry's lstm, transformer and resnet.
    out = compare_grid(test, metrics=["auroc_score"], n_perm=500, n_boot=50)
    assert_result_table(out)
    assert out["model"].to_list() == ["fused1", "fused2", "fused3"]
    assert set(out["baseline"]) == {"lstm"}
    assert set(out["notes"]) == {"row_bootstrap;best_unimodal;selected_on_test"}
    np.testing.assert_allclose(out["p_adjusted"], holm(out["p_value"].to_numpy()))

    # Selection on validation predictions where resnet is the better unimodal model.
    validation = _binary(150, {"lstm": 0.2, "resnet": 1.5}, seed=9)
    selected = compare_grid(
        test, metrics=["auroc_score"], select_on=validation, correction="bh", n_perm=200, n_boot=0
    )
    assert set(selected["baseline"]) == {"resnet"}
    assert set(selected["notes"]) == {"row_bootstrap;best_unimodal"}


def test_compare_grid_all_pairs_and_named_reference() -> None:
    frame = _binary(80, {"a": 1.0, "b": 0.8, "c": 0.5}, seed=4)
    calls: list[tuple[int, int]] = []
    pairs = compare_grid(
        frame,
        pairs="all",
        metrics=["auroc_score"],
        n_perm=100,
        n_boot=0,
        correction="bh",
        progress=lambda *done: calls.append(done),
    )
    assert calls == [(1, 1)]
    assert list(zip(pairs["model"], pairs["baseline"], strict=True)) == [("a", "b"), ("a", "c"), ("b", "c")]
    reference = compare_grid(frame, reference="c", metrics=["auroc_score"], n_perm=100, n_boot=0)
    assert reference["baseline"].to_list() == ["c", "c"]
    with pytest.raises(ValueError, match="reference model 'x'"):
        compare_grid(frame, reference="x")


@pytest.mark.slow
def test_permutation_p_has_nominal_size_under_a_planted_null() -> None:
    p_values = []
    for seed in range(300):
        rng = np.random.default_rng(1000 + seed)
        y = (rng.random(40) < 0.5).astype(int)
        # exchangeable models: both scores are draws from the same conditional distribution
        a = 1 / (1 + np.exp(-(0.8 * (2 * y - 1) + rng.normal(0, 1, 40))))
        b = 1 / (1 + np.exp(-(0.8 * (2 * y - 1) + rng.normal(0, 1, 40))))
        frame = pl.concat(
            [
                from_arrays(y, s, task="mortality", kind="binary", targets=["mortality"], model=m)
                for m, s in (("a", a), ("b", b))
            ]
        )
        out = compare(
            (frame, "a"), (frame, "b"), metric="auroc_score", n_perm=199, n_boot=0, random_state=seed
        )
        p_values.append(out["p_value"][0])
    p = np.sort(p_values)
    ks = np.max(np.abs(np.arange(1, p.size + 1) / p.size - p))
    assert ks < 1.63 / np.sqrt(p.size) + 1 / 200  # KS 1% critical value plus the p-value grid step
    assert 0.02 <= np.mean(p <= 0.05) <= 0.09


def test_macro_over_defined_labels_is_noted() -> None:
    rng = np.random.default_rng(8)
    n = 60
    y = (rng.random((n, 3)) < 0.4).astype(int)
    y[:, 2] = 0  # a label without positives: undefined AUROC, left out of the macro average
    frames = [
        from_arrays(
            y,
            _scores(rng, y, strength),
            task="phenotype",
            kind="multilabel",
            targets=["a", "b", "c"],
            model=m,
        )
        for m, strength in (("x", 1.5), ("y", 0.5))
    ]
    frame = pl.concat(frames)
    out = compare((frame, "x"), (frame, "y"), metric="auroc_score", n_perm=100, n_boot=50)
    assert out["target"].to_list() == ["(macro)"]
    assert out["notes"][0] == "row_bootstrap;labels_used=2/3"
    assert np.isfinite(out["value"][0])


def test_output_does_not_depend_on_row_order() -> None:
    from carebench_eval.fairness import fairness

    frame = _binary(90, {"a": 1.0, "b": 0.6}, n_subjects=70).with_columns(
        pl.Series("sex", np.tile(np.where(np.arange(90) % 2 == 0, "F", "M"), 2))
    )
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    kwargs = {"n_perm": 200, "n_boot": 100, "delong": True}
    assert compare((frame, "a"), (frame, "b"), **kwargs).equals(
        compare((shuffled, "a"), (shuffled, "b"), **kwargs)
    )
    one = frame.filter(pl.col("model") == "a")
    assert fairness(one, n_boot=50, min_group_n=5).equals(fairness(one.reverse(), n_boot=50, min_group_n=5))
