import numpy as np
import polars as pl
import pytest

from carebench_eval.multiplicity import adjust_pvalues, benjamini_hochberg, holm
from carebench_eval.schema import RESULT_SCHEMA, make_rows


def _random_pvalues(rng: np.random.Generator, m: int) -> np.ndarray:
    p = np.concatenate([rng.uniform(0, 1, m // 2), rng.uniform(0, 0.01, m - m // 2)])
    p[rng.integers(0, m, 2)] = p[0]  # ties
    return rng.permutation(p)


@pytest.mark.parametrize("m", [1, 2, 5, 14, 25, 100])
def test_holm_and_bh_match_statsmodels(m: int) -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(m)
    for _ in range(5):
        p = _random_pvalues(rng, m)
        np.testing.assert_allclose(holm(p), multitest.multipletests(p, method="holm")[1], rtol=0, atol=1e-15)
        np.testing.assert_allclose(
            benjamini_hochberg(p), multitest.multipletests(p, method="fdr_bh")[1], rtol=0, atol=1e-15
        )


def test_hand_computed_values() -> None:
    p = [0.01, 0.04, 0.03, 0.2]
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_nan_is_left_out_of_the_family() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.array([0.01, np.nan, 0.04, 0.03])
    defined = ~np.isnan(p)
    for ours, method in ((holm, "holm"), (benjamini_hochberg, "fdr_bh")):
        adjusted = ours(p)
        assert np.isnan(adjusted[1])
        np.testing.assert_allclose(adjusted[defined], multitest.multipletests(p[defined], method=method)[1])
    assert np.isnan(holm([np.nan, np.nan])).all()
    assert holm([]).shape == (0,)


def test_invalid_pvalues_raise() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])
    with pytest.raises(ValueError, match="one-dimensional"):
        benjamini_hochberg([[0.1, 0.2]])


def _frame(p_values: list[float | None], metrics: list[str]) -> pl.DataFrame:
    rows = [
        {
            "model": f"fusion{i}",
            "baseline": "lstm",
            "task": "mortality",
            "metric": metric,
            "statistic": "estimate",
            "target": "mortality",
            "value": 0.01,
            "n": 100,
            "p_value": p,
        }
        for i, (p, metric) in enumerate(zip(p_values, metrics, strict=True))
    ]
    return make_rows(rows)


def test_adjust_pvalues_per_family() -> None:
    frame = _frame(
        [0.01, 0.04, 0.03, 0.2, float("nan"), None],
        ["auroc_score"] * 3 + ["auprc_score"] * 3,
    )
    out = adjust_pvalues(frame, method="holm")
    assert dict(out.schema) == RESULT_SCHEMA
    adjusted = out["p_adjusted"].to_list()
    np.testing.assert_allclose(adjusted[:3], holm([0.01, 0.04, 0.03]))
    assert adjusted[3] == pytest.approx(0.2)  # a family of one defined test (NaN excluded)
    assert np.isnan(adjusted[4])
    assert adjusted[5] is None  # not a test
    assert out["notes"].to_list() == [None, None, None, None, "excluded_from_family", None]

    pooled = adjust_pvalues(frame, family=("task",), method="bh")
    np.testing.assert_allclose(
        pooled["p_adjusted"].to_list()[:4], benjamini_hochberg([0.01, 0.04, 0.03, 0.2])
    )
    assert adjust_pvalues(frame, method="none")["p_adjusted"].null_count() == frame.height


def test_adjust_pvalues_rejects_bad_arguments() -> None:
    frame = _frame([0.1], ["auroc_score"])
    with pytest.raises(ValueError, match="unknown correction 'bonferroni'"):
        adjust_pvalues(frame, method="bonferroni")
    with pytest.raises(ValueError, match=r"family column\(s\) \['cohort'\]"):
        adjust_pvalues(frame, family=("task", "cohort"))
