"""`carebench run` on a reduced grid, end to end on CPU, and the report checked against carebench_eval."""

import json
import re

import polars as pl
import pytest
from typer.testing import CliRunner

import carebench_eval as ce
from carebench_cli.main import app
from carebench_cli.report.formatting import fmt_ci
from carebench_cli.run_store import RunStatus, RunStore

from .conftest import MODELS


def test_every_run_is_done_with_valid_predictions(finished_store):
    runs, output = finished_store
    store = RunStore(runs)
    assert len(store.run_ids()) == 4
    assert all(store.status(run_id, verify_hashes=True) is RunStatus.DONE for run_id in store.run_ids())
    preds = ce.read_predictions(sorted(str(p) for p in runs.glob("*/predictions.parquet")))
    assert set(preds["model"].unique()) == set(MODELS)
    assert set(preds["setting"].unique()) == {
        "cohort_base",
        "cohort_base+test_cxr_mcar_0.5",
        "cohort_base+test_cxr_mcar_1.0",
        "cohort_base+test_cxr_mnar_0.5",
    }
    # Sensitive attributes travel with every row; test-time removal shows in has_cxr, never on disk.
    for column in ("subject_id", "sex", "age_group", "race", "insurance", "admission_type", "has_cxr"):
        assert column in preds.columns
    natural = preds.filter(pl.col("setting") == "cohort_base", pl.col("task") == "mortality")
    withheld = preds.filter(
        pl.col("setting") == "cohort_base+test_cxr_mcar_1.0", pl.col("task") == "mortality"
    )
    assert natural["has_cxr"].any() and not withheld["has_cxr"].any()
    val = ce.read_predictions(sorted(str(p) for p in runs.glob("*/val_predictions.parquet")))
    assert set(val["setting"].unique()) == {"cohort_base"}
    assert set(val["sample_id"].unique()).isdisjoint(set(preds["sample_id"].unique()))
    # metrics.json's quick point estimate is carebench_eval's number.
    run_dir = next(runs.glob("lstm-mortality-*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    own = pl.read_parquet(run_dir / "predictions.parquet").filter(pl.col("setting") == "cohort_base")
    expected = ce.auprc_score(own["y_true"].to_numpy(), own["y_score"].to_numpy())
    assert metrics["test"]["cohort_base"]["auprc_score"] == pytest.approx(expected, abs=1e-12)
    assert "report: " in output


def test_report_numbers_match_carebench_eval(finished_store):
    runs, _ = finished_store
    report_dir = runs / "report"
    markdown = (report_dir / "report.md").read_text()
    html = (report_dir / "index.html").read_text()
    for question in ("Q1.", "Q2.", "Q3.", "Q4."):
        assert question in markdown and question in html
    # Self-contained page: every image is a data URI; no external assets at all.
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)
    assert "<script" not in html and "<link" not in html
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    assert pngs and all(f"({name})" in markdown for name in pngs)
    assert html.count("data:image/png;base64,") == len(pngs)

    test = ce.read_predictions(sorted(str(p) for p in runs.glob("*/predictions.parquet")))
    natural = test.filter(pl.col("setting") == "cohort_base")
    direct = ce.score(natural, n_boot=60, random_state=0)
    for model in MODELS:
        row = direct.filter(
            pl.col("model") == model, pl.col("task") == "mortality", pl.col("metric") == "auprc_score"
        ).row(0, named=True)
        cell = fmt_ci(row["value"], row["ci_low"], row["ci_high"])
        leaderboard = markdown.split("Table 2 (base cohort, mortality)")[1].split("**Table")[0]
        assert re.search(
            rf"\| {model}( •)?( \(reference\))? \| [^|]+ \| [^|]+ \| {re.escape(cell)} \|", leaderboard
        ), leaderboard
    # The saved tidy table is the same computation.
    saved = ce.read_results(report_dir / "results" / "score_base.csv")
    assert saved.equals(direct)

    # Table 1: Δ is the difference of the two point estimates (lstm is the only unimodal model).
    values = {
        model: direct.filter(
            pl.col("model") == model, pl.col("task") == "mortality", pl.col("metric") == "auprc_score"
        )["value"][0]
        for model in MODELS
    }
    table1 = markdown.split("Table 1 (base cohort)")[1].split("**Table")[0]
    delta = f"{values['latefusion'] - values['lstm']:+.3f}"
    assert re.search(
        rf"\| mortality \| latefusion \| AUPRC \| [^|]+ \| lstm \| {re.escape(delta)} \[", table1
    ), table1


def test_rerun_skips_everything_and_report_can_be_rebuilt(finished_store, tmp_path):
    runs, _ = finished_store
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*/DONE")}
    config = next(runs.parent.glob("run.toml"))
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--no-report"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "4 finished, 0 to run" in " ".join(result.output.split())
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/DONE")} == before
    out = tmp_path / "report2"
    result = CliRunner().invoke(
        app, ["report", str(runs), "--out", str(out), "--n-boot", "60", "--n-perm", "99"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text() == (runs / "report" / "report.md").read_text()


def test_binary_runs_write_meds_evaluation_predictions(finished_store):
    """Each binary run's test predictions in meds-evaluation's layout: valid, same scores, in DONE."""
    pytest.importorskip("meds", reason="needs the meds package: pip install 'carebench-eval[meds]'")
    evaluate = pytest.importorskip(
        "meds_evaluation.evaluate", reason="needs meds-evaluation (test dependency)"
    )
    import pyarrow.parquet as pq
    from meds_evaluation.schema import PredictionSchema

    runs, _ = finished_store
    for run_dir in sorted(runs.glob("*-los-*")):
        assert not (run_dir / "meds_predictions").exists()
    for run_dir in sorted(runs.glob("*-mortality-*")):
        own = pl.read_parquet(run_dir / "predictions.parquet")
        done = json.loads((run_dir / "DONE").read_text())["files"]
        for setting in own["setting"].unique().to_list():
            relative = f"meds_predictions/{setting}/mortality.parquet"
            path = run_dir / relative
            assert relative in done and done[relative]["bytes"] == path.stat().st_size
            PredictionSchema.validate(pq.read_table(path))  # meds-evaluation's own schema, no casting
            part = own.filter(pl.col("setting") == setting)
            theirs = evaluate.evaluate_binary_classification(pl.read_parquet(path))[
                "samples_equally_weighted"
            ]
            # float32 probabilities in the MEDS file; ranks (and so AUROC) survive unless two scores collide.
            assert theirs["roc_auc_score"] == pytest.approx(
                ce.auroc_score(part["y_true"].to_numpy(), part["y_score"].to_numpy()), abs=1e-6
            )
            back = ce.read_predictions(path)
            assert set(back["task"].unique()) == {"mortality"} and back.height == part.height
            assert sorted(back["subject_id"].to_list()) == sorted(
                part["subject_id"].cast(pl.String).to_list()
            )


def _markdown_tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every table of a Markdown document as rows of {header: cell}."""
    tables, lines = [], markdown.splitlines()
    for index, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.match(r"^\|( ?:?-+:? ?\|)+$", lines[index + 1]):
            header = [cell.strip() for cell in line.strip("|").split("|")]
            rows = []
            for row_line in lines[index + 2 :]:
                if not row_line.startswith("|"):
                    break
                rows.append(
                    dict(zip(header, (cell.strip() for cell in row_line.strip("|").split("|")), strict=True))
                )
            tables.append(rows)
    return tables


def test_no_output_holds_a_group_smaller_than_min_group_n(finished_store):
    """The 240-stay dataset has test groups of one patient (age × race cells, rare admission types)."""
    runs, _ = finished_store
    report_dir = runs / "report"
    minimum = 10
    # Results files: no row of a group below the threshold, whatever its kind of statistic.
    checked = 0
    for path in sorted((report_dir / "results").glob("*.csv")):
        frame = ce.read_results(path)
        grouped = frame.filter(pl.col("group").is_not_null())
        checked += grouped.height
        assert grouped.filter(pl.col("n") < minimum).height == 0, path.name
    assert checked
    # Report tables: a group's size column reads "< 10" and then every number of the row is suppressed.
    markdown = (report_dir / "report.md").read_text()
    suppressed = 0
    for table in _markdown_tables(markdown):
        for row in table:
            for header, cell in row.items():
                if header == "n" or header.startswith("n, "):
                    assert cell in ("-", f"< {minimum}") or int(cell) >= minimum, (header, row)
            if row.get("n") == f"< {minimum}":
                suppressed += 1
                shown = {
                    h: c
                    for h, c in row.items()
                    if h not in ("task", "model", "attribute", "group", "n", "notes")
                }
                assert set(shown.values()) == {"suppressed"}, row
    assert suppressed  # the tiny test split does have such groups
    html = (report_dir / "index.html").read_text()
    assert html.count(">suppressed<") >= suppressed
