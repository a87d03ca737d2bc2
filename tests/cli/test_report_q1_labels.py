import math

import polars as pl

from carebench_cli.report.sections import (
    Q1_LABELS,
    TOP_LABELS,
    _ci_excludes_zero,
    _gain_text,
    _label_gain_table,
)


def _gain(model, target, metric, value, low, high, *, p=0.04, n=101):
    return {
        "model": model,
        "baseline": "transformer",
        "metric": metric,
        "target": target,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "p_value": p,
        "p_adjusted": p,
    }


def test_gain_cells_name_undefined_values_and_the_ci_criterion():
    assert _gain_text(_gain("m", "x", "auroc_score", 0.12, 0.023, 0.253)) == "+0.120 [+0.023, +0.253]"
    assert _gain_text(_gain("m", "(macro)", "auprc_score", math.nan, math.nan, math.nan, n=48)) == (
        "undefined at n=48"
    )
    assert _gain_text(None) == "-"
    assert _ci_excludes_zero(_gain("m", "x", "auroc_score", 0.1, 0.01, 0.2)) == 1
    assert _ci_excludes_zero(_gain("m", "x", "auroc_score", -0.1, -0.2, -0.01)) == -1
    assert _ci_excludes_zero(_gain("m", "x", "auroc_score", 0.1, -0.01, 0.2)) == 0
    assert _ci_excludes_zero(_gain("m", "x", "auroc_score", math.nan, math.nan, math.nan)) == 0


def test_label_table_lists_the_paper_labels_then_the_largest_gains():
    others = {f"label_{i}": (i - 4) / 20 for i in range(8)}  # |Δ|: label_0 0.20, label_1 = label_7 0.15
    rows = []
    for metric in ("auroc_score", "auprc_score"):
        for label in Q1_LABELS:
            rows.append(
                _gain("latefusion", label, metric, 0.12, 0.023, 0.253)
                if label == "pneumonia"
                else _gain("latefusion", label, metric, 0.0, -0.05, 0.05)
            )
        for label, value in others.items():
            rows.append(_gain("latefusion", label, metric, value, value - 0.01, value + 0.01))
    rows.append(_gain("latefusion", "label_9", "auroc_score", math.nan, math.nan, math.nan))
    rows.append(_gain("latefusion", "label_9", "auprc_score", math.nan, math.nan, math.nan))
    table = _label_gain_table("base", "phenotype", pl.DataFrame(rows))
    assert table is not None
    frame = table.frame
    assert TOP_LABELS == 3
    assert frame["label"].to_list() == [*Q1_LABELS, "label_0", "label_1", "label_7"]  # tie: by name
    assert frame["listed as"].to_list() == ["paper (Q1)"] * len(Q1_LABELS) + ["largest |Δ|"] * TOP_LABELS
    pneumonia = frame.row(Q1_LABELS.index("pneumonia"), named=True)
    assert pneumonia["Δ AUROC [95% CI]"] == "+0.120 [+0.023, +0.253]"
    assert pneumonia["p, AUROC"] == "0.040"
    assert pneumonia["95% CI excludes 0"] == "AUROC gain, AUPRC gain"
    assert frame.row(0, named=True)["95% CI excludes 0"] == "no"
    assert frame.row(len(Q1_LABELS), named=True)["95% CI excludes 0"] == "AUROC loss, AUPRC loss"
    assert "95% CI of Δ excludes zero" in table.note
