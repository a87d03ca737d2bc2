import math

import numpy as np
import polars as pl
import pytest

from carebench_cli.report import plots
from carebench_cli.report.document import (
    Figure,
    Report,
    Section,
    Table,
    markdown_table,
    render_html,
    render_markdown,
)
from carebench_cli.report.formatting import fmt_ci, fmt_p, fmt_sd, fmt_value
from carebench_cli.report.tidy import headline, ordered, summary_target, value_of, where

PNG = b"\x89PNG\r\n\x1a\n"


def test_formatting():
    assert fmt_ci(0.84213, 0.8261, 0.857) == "0.842 [0.826, 0.857]"
    assert fmt_ci(0.012, -0.003, 0.027, signed=True) == "+0.012 [-0.003, +0.027]"
    assert fmt_ci(0.5, None, None) == "0.500"
    assert fmt_value(math.nan) == "NaN"
    assert fmt_p(0.0312) == "0.031"
    assert fmt_p(4.2e-5) == "4.2e-05"
    assert fmt_p(None) == "-"
    assert fmt_sd(0.0041, 3) == "0.004 (3 runs)"
    assert fmt_sd(0.0, 1) == "-"


def _results():
    base = {
        "baseline": None,
        "setting": "cohort_base",
        "group_attribute": None,
        "group": None,
        "ci_low": None,
        "ci_high": None,
    }
    rows = [
        {
            **base,
            "model": "a",
            "seed": 1,
            "task": "t",
            "metric": "m",
            "statistic": "estimate",
            "target": "(macro)",
            "value": 0.6,
            "n_runs": 1,
        },
        {
            **base,
            "model": "a",
            "seed": 2,
            "task": "t",
            "metric": "m",
            "statistic": "estimate",
            "target": "(macro)",
            "value": 0.8,
            "n_runs": 1,
        },
        {
            **base,
            "model": "a",
            "seed": None,
            "task": "t",
            "metric": "m",
            "statistic": "mean",
            "target": "(macro)",
            "value": 0.7,
            "n_runs": 2,
        },
        {
            **base,
            "model": "b",
            "seed": 1,
            "task": "t",
            "metric": "m",
            "statistic": "estimate",
            "target": "(macro)",
            "value": 0.9,
            "n_runs": 1,
        },
        {
            **base,
            "model": "b",
            "seed": 1,
            "task": "t",
            "metric": "m",
            "statistic": "estimate",
            "target": "x",
            "value": 0.1,
            "n_runs": 1,
        },
    ]
    return pl.DataFrame(rows)


def test_headline_prefers_seed_means_and_keeps_single_runs():
    frame = _results()
    rows = headline(where(frame, target="(macro)")).sort("model")
    assert rows["model"].to_list() == ["a", "b"]
    assert rows["value"].to_list() == [0.7, 0.9]
    assert summary_target(frame, task="t", metric="m") == "(macro)"
    assert value_of(where(frame, model="b", target="x")) == 0.1
    assert value_of(where(frame, model="c")) is None
    with pytest.raises(ValueError, match="expected one result row"):
        value_of(where(frame, model="a", statistic="estimate"))
    with pytest.raises(KeyError, match="no column"):
        where(frame, colour="red")
    assert ordered(["a", "b", "c"], by={"a": 0.7, "b": 0.9, "c": None}) == ["b", "a", "c"]


def test_markdown_and_html_render_tables_and_embed_figures():
    table = Table(
        key="t1",
        caption="Caption <1>",
        frame=pl.DataFrame({"model": ["a|b", "<x>"], "AUROC": ["0.8", "0.7"]}),
    )
    figure = Figure(key="fig", caption="A figure", png=PNG + b"rest")
    report = Report(
        title="T",
        summary=["s"],
        sections=[Section("Q1", paragraphs=["p & q"], tables=[table], figures=[figure])],
    )
    markdown = render_markdown(report)
    assert "| a\\|b | 0.8 |" in markdown
    assert "![A figure](fig.png)" in markdown
    assert markdown_table(table.frame).splitlines()[1] == "|---|---|"
    html = render_html(report)
    assert "&lt;x&gt;" in html and "<x>" not in html
    assert "Caption &lt;1&gt;" in html and "p &amp; q" in html
    assert 'src="data:image/png;base64,iVBORw0KGgpyZXN0"' in html
    assert "http" not in html
    # Narrow windows: laid out at the device width, and a table's caption sits above (outside) the box
    # that scrolls the table sideways, so it is never cut at the window's edge.
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert (
        '<p class="caption" id="t1-caption">Caption &lt;1&gt;</p>'
        '<div class="scroll"><table id="t1" aria-labelledby="t1-caption">'
    ) in html


def test_plots_are_png_and_tolerate_nan():
    forest = plots.forest_plot(
        [
            plots.Interval("chf", 0.05, 0.01, 0.09, marked=True, highlighted=True),
            plots.Interval("x", math.nan, math.nan, math.nan),
        ],
        title="t",
        xlabel="Δ",
    )
    heat = plots.heatmap(
        np.array([[np.nan, 0.1], [-0.1, np.nan]]),
        row_labels=["a", "b"],
        column_labels=["a", "b"],
        title="t",
        colorbar_label="Δ",
        annotations=[["", "+0.1*"], ["-0.1*", ""]],
    )
    curves = plots.degradation_curves(
        {
            "MCAR": [plots.Curve("m", [0.0, 0.5, 1.0], [0.8, 0.7, 0.6], [0.7, 0.6, 0.5], [0.9, 0.8, 0.7])],
            "MNAR": [],
        },
        title="t",
        ylabel="AUPRC",
        reference=("best EHR-only", 0.65),
    )
    dots = plots.group_dot_plot({"TPR": [plots.GroupPoint("m", "sex=F", 0.7, 0.6, 0.8)]}, title="t")
    bars = plots.bar_chart([plots.Interval("m", 0.02, -0.01, 0.05)], title="t", ylabel="Δ")
    for png in (forest, heat, curves, dots, bars):
        assert png.startswith(PNG) and len(png) > 1000
