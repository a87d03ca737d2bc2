"""Random malformed prediction frames: `read_predictions` and `score` either raise a `PredictionsError`
with a rule number or return a valid result, never another exception."""

from __future__ import annotations

import math
import re
import warnings

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import carebench_eval as ce
from carebench_eval.testing import assert_result_table

COLUMNS = ("sample_id", "task", "target", "y_true", "y_score")
OPTIONAL = ("subject_id", "model", "seed", "fold", "setting", "sex", "has_cxr", "age", "age_group")
RULE = re.compile(r"^P0[0-2][0-9]$")

_VALUES = {
    "int": st.integers(min_value=-2, max_value=3),
    "float": st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, -0.5, math.nan, math.inf, 1e300, 18.0, 65.5]),
    "str": st.sampled_from(["a", "b", "mortality", "(macro)", "0", "1", "true", "false", "maybe", "", "x|y"]),
    "bool": st.booleans(),
}
_DTYPES = {"int": pl.Int64, "float": pl.Float64, "str": pl.String, "bool": pl.Boolean}


@st.composite
def columns(draw: st.DrawFn, n_rows: int) -> pl.Series:
    """One column of `n_rows` values of a random dtype, some of them null; sometimes a list column."""
    kind = draw(st.sampled_from([*_VALUES, "null", "list"]))
    if kind == "null":
        return pl.Series([None] * n_rows, dtype=pl.Null)
    if kind == "list":
        cells = draw(st.lists(st.lists(st.integers(0, 1), max_size=2), min_size=n_rows, max_size=n_rows))
        return pl.Series(cells, dtype=pl.List(pl.Int64))
    values = draw(st.lists(st.one_of(_VALUES[kind], st.none()), min_size=n_rows, max_size=n_rows))
    return pl.Series(values, dtype=_DTYPES[kind])


@st.composite
def malformed_frames(draw: st.DrawFn) -> pl.DataFrame:
    """A frame shaped roughly like predictions: some required columns missing, wrong types, odd values."""
    n_rows = draw(st.integers(min_value=0, max_value=8))
    names = [name for name in COLUMNS if draw(st.integers(0, 9)) > 0]
    names += draw(st.lists(st.sampled_from(OPTIONAL), unique=True, max_size=4))
    data = {name: draw(columns(n_rows)) for name in names}
    if n_rows and draw(st.booleans()):
        # Half of the frames start from a well-formed core, so that later rules are reached too.
        samples = [str(i // 2) for i in range(n_rows)]
        data.update(
            sample_id=pl.Series(samples),
            task=pl.Series(["mortality"] * n_rows),
            target=pl.Series(["mortality"] * n_rows),
        )
    return pl.DataFrame(data)


_TARGETS = {
    "mortality": ["mortality"],
    "phenotype": ["chf", "copd", "sepsis"],
    "los": ["2-3d", "3-7d", "7+d"],
}


@st.composite
def near_valid_frames(draw: st.DrawFn) -> pl.DataFrame:
    """Valid predictions (binary, multilabel, multiclass; one or two models) with up to three defects."""
    tasks = draw(st.lists(st.sampled_from(sorted(_TARGETS)), min_size=1, max_size=2, unique=True))
    models = draw(st.sampled_from([[None], ["a"], ["a", "b"]]))
    n_samples = draw(st.integers(min_value=1, max_value=5))
    probability = st.floats(min_value=0.0, max_value=1.0)
    truth: dict[tuple[str, int, str], int] = {}
    rows = []
    for task in tasks:
        targets = _TARGETS[task]
        for sample in range(n_samples):
            positive = draw(st.integers(0, len(targets) - 1))
            for target in targets:
                label = int(target == targets[positive]) if task == "los" else draw(st.integers(0, 1))
                truth[(task, sample, target)] = label
    for model in models:
        for task in tasks:
            targets = _TARGETS[task]
            for sample in range(n_samples):
                scores = [draw(probability) for _ in targets]
                if task == "los":
                    total = sum(scores) or 1.0
                    scores = [score / total if sum(scores) else 1 / len(targets) for score in scores]
                for target, score in zip(targets, scores, strict=True):
                    row = {
                        "sample_id": sample,
                        "subject_id": sample // 2,
                        "task": task,
                        "target": target,
                        "y_true": truth[(task, sample, target)],
                        "y_score": score,
                        "seed": 7,
                        "sex": ["F", "M", None][sample % 3],
                        "has_cxr": sample % 2 == 0,
                    }
                    rows.append(row if model is None else {**row, "model": model})
    frame = pl.DataFrame(rows)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        frame = draw(_mutations(frame))
    return frame


@st.composite
def _mutations(draw: st.DrawFn, frame: pl.DataFrame) -> pl.DataFrame:
    """One defect: a dropped column or row, a duplicated row, a changed cell or a column of another type."""
    if frame.height == 0 or frame.width == 0:
        return frame
    kind = draw(st.sampled_from(["drop_column", "drop_row", "duplicate", "cell", "retype", "reserved"]))
    column = draw(st.sampled_from(frame.columns))
    row = draw(st.integers(0, frame.height - 1))
    if kind == "drop_column":
        return frame.drop(column)
    if kind == "drop_row":
        return frame.filter(pl.int_range(pl.len()) != row)
    if kind == "duplicate":
        return pl.concat([frame, frame.slice(row, 1)])
    if kind == "reserved" and "target" in frame.columns:
        return frame.with_columns(pl.col("target").cast(pl.String).replace({"chf": "(macro)"}))
    if kind == "retype":
        return frame.with_columns(draw(columns(frame.height)).alias(column))
    value = draw(st.one_of(_VALUES["str"], _VALUES["float"], _VALUES["int"], st.none()))
    text = pl.col(column).cast(pl.String)
    cell = pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value))
    if isinstance(value, str):
        return frame.with_columns(cell.otherwise(text).alias(column))
    return frame.with_columns(cell.otherwise(pl.col(column)).alias(column))


def _check(call) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except ce.PredictionsError as error:
        assert RULE.match(error.code), error.code
        assert str(error).startswith(("predictions:", "fairness:", "compare:", "threshold:"))
        assert "\n" not in str(error)
        return
    assert isinstance(result, pl.DataFrame)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(malformed_frames(), near_valid_frames()))
def test_read_predictions_raises_a_numbered_rule_or_returns_a_frame(frame):
    _check(lambda: ce.read_predictions(frame))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(malformed_frames(), near_valid_frames()))
def test_score_raises_a_numbered_rule_or_returns_the_tidy_table(frame):
    def call() -> pl.DataFrame:
        result = ce.score(frame, n_boot=0)
        assert_result_table(result)
        return result

    _check(call)
