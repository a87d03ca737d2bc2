"""Unreadable files and mistyped columns: a typed one-line error, never a silent coercion or a traceback."""

from __future__ import annotations

import gzip
import os
import stat

import polars as pl
import pytest

import carebench_eval as ce


def _frame(**extra) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": ["1", "2", "3", "4"],
            "task": ["mortality"] * 4,
            "target": ["mortality"] * 4,
            "y_true": [0, 1, 0, 1],
            "y_score": [0.1, 0.8, 0.3, 0.6],
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        (
            "has_cxr",
            ["true", "maybe", None, "0"],
            'predictions: column \'has_cxr\' must hold true or false (a boolean, 0/1 or "true"/"false"); '
            "1 row(s) violate this (first: row 1, value 'maybe')",
        ),
        ("has_cxr", [0, 1, 2, 1], "column 'has_cxr' must hold true or false"),
        (
            "seed",
            ["42", "forty-two", "42", "42"],
            "predictions: column 'seed' must hold integers; 1 row(s) violate this (first: row 1, value 'forty-two')",
        ),
        ("fold", [0.0, 0.5, 0.0, 0.0], "column 'fold' must hold integers; 1 row(s)"),
        ("sample_id", [[1], [2], [3], [4]], "column 'sample_id' must hold scalar values, not List(Int64)"),
        ("sex", [{"a": 1}] * 4, "column 'sex' must hold scalar values"),
    ],
)
def test_a_mistyped_column_is_rule_p020(column, values, message):
    with pytest.raises(ce.PredictionsError) as info:
        ce.read_predictions(_frame(**{column: values}))
    assert info.value.code == "P020"
    assert message in str(info.value) and "\n" not in str(info.value)


def test_has_cxr_null_is_still_the_missing_group():
    frame = ce.read_predictions(_frame(has_cxr=[True, None, False, True]))
    assert frame["has_cxr"].to_list() == [True, None, False, True]


def test_a_list_cell_is_shown_on_one_line():
    frame = _frame().with_columns(pl.Series("y_true", [[0], [1], [0], [1]]))
    with pytest.raises(ce.PredictionsError, match=r"value \[0\]\)$") as info:
        ce.read_predictions(frame)
    assert info.value.code == "P004"


def test_integer_targets_are_names():
    frame = ce.read_predictions(_frame().with_columns(pl.lit(1).alias("target")))
    assert frame["target"].to_list() == ["1"] * 4


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "cannot read"),
        ("latin1.csv", "sample_id,task\n1,mortalité\n".encode("latin-1"), "invalid utf-8"),
        ("broken.parquet", b"PAR1" + b"\x00" * 40 + b"PAR1", "as Parquet"),
        ("truncated.csv.gz", gzip.compress(b"sample_id,task\n" * 2000)[:100], "cannot read"),
        ("predictions.txt", b"sample_id\n1\n", "unknown file type"),
    ],
)
def test_an_unreadable_file_is_a_predictions_file_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ce.PredictionsFileError, match=message) as info:
        ce.read_predictions(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_results_go_to_a_file_with_the_umask_never_into_a_directory(tmp_path):
    results = ce.score(ce.read_predictions(_frame()), n_boot=0)
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        ce.write_results(results, tmp_path / "out.csv")
    with pytest.raises(ValueError, match="unknown result format"):
        ce.write_results(results, tmp_path / "out.txt")
    previous = os.umask(0o027)
    try:
        for name in ("r.csv", "r.parquet", "r.json"):
            ce.write_results(results, tmp_path / name)
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640
        assert stat.S_IMODE((tmp_path / "r.meta.json").stat().st_mode) == 0o640
    finally:
        os.umask(previous)
