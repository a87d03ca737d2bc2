"""Predictions contract: every P-code with its exact message, readers and converters (eval.md §1)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import carebench_eval as ce
from carebench_eval.io import class_order, frame_info


def base_frame() -> pl.DataFrame:
    """Two samples × two multilabel targets of one run, with a subject and an attribute."""
    return pl.DataFrame(
        {
            "sample_id": [1, 1, 2, 2],
            "subject_id": [10, 10, 11, 11],
            "task": ["phenotype"] * 4,
            "target": ["chf", "copd", "chf", "copd"],
            "y_true": [0, 1, 1, 0],
            "y_score": [0.1, 0.7, 0.6, 0.2],
            "model": ["a"] * 4,
            "sex": ["F", "F", "M", "M"],
        }
    )


def multiclass_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": [1, 1, 1, 2, 2, 2],
            "task": ["los"] * 6,
            "target": ["2-3d", "3-4d", "14+d"] * 2,
            "y_true": [1, 0, 0, 0, 0, 1],
            "y_score": [0.5, 0.3, 0.2, 0.1, 0.1, 0.8],
        }
    )


def raises(frame: pl.DataFrame, code: str, message: str, **kwargs: object) -> None:
    with pytest.raises(ce.PredictionsError) as caught:
        ce.validate(frame, **kwargs)  # type: ignore[arg-type]
    assert caught.value.code == code
    assert str(caught.value) == message


def test_valid_frame_is_normalized() -> None:
    frame = ce.validate(base_frame().with_columns(has_cxr=pl.Series(["true", "true", "0", "0"])))
    assert frame.schema["sample_id"] == pl.String
    assert frame.schema["subject_id"] == pl.String
    assert frame.schema["y_true"] == pl.Int8
    assert frame.schema["y_score"] == pl.Float64
    assert frame.schema["has_cxr"] == pl.Boolean
    assert frame["has_cxr"].to_list() == [True, True, False, False]


def test_p001_missing_columns() -> None:
    raises(
        base_frame().drop("task", "y_score"),
        "P001",
        "predictions: missing required column(s) task, y_score; required: sample_id, task, target, y_true, y_score",
    )


def test_p002_no_rows() -> None:
    raises(base_frame().head(0), "P002", "predictions: no rows")


def test_p003_null_ids() -> None:
    frame = base_frame().with_columns(target=pl.Series(["chf", None, "chf", None]))
    raises(frame, "P003", "predictions: column 'target' has 2 null value(s) (first: row 1)")


def test_p004_labels() -> None:
    frame = base_frame().with_columns(y_true=pl.Series([0, 1, 2, None]))
    raises(frame, "P004", "predictions: y_true must be 0 or 1; 2 row(s) violate this (first: row 2, value 2)")


def test_p005_scores() -> None:
    frame = base_frame().with_columns(y_score=pl.Series([0.1, float("nan"), 1.5, None]))
    raises(
        frame,
        "P005",
        "predictions: y_score must be a probability in [0, 1]; 3 row(s) violate this "
        "(2 NaN or null, 1 outside [0, 1]; first: row 1, value nan)",
    )


def test_p006_reserved_target() -> None:
    frame = base_frame().with_columns(target=pl.Series(["chf", "(macro)", "chf", "(macro)"]))
    raises(
        frame,
        "P006",
        "predictions: target name '(macro)' is reserved (names starting with \"(\" label aggregates)",
    )


def test_p007_duplicates() -> None:
    frame = pl.concat([base_frame(), base_frame().slice(2, 1)])
    raises(
        frame,
        "P007",
        "predictions: 1 duplicate row(s) for key (model, task, sample_id, target); "
        "first: model='a', task='phenotype', sample_id='2', target='chf'",
    )


def test_p008_incomplete_grid() -> None:
    raises(
        base_frame().slice(0, 3),
        "P008",
        "predictions: task 'phenotype', run model='a': 1 (sample_id, target) row(s) missing; "
        "every sample needs one row per target (2 targets); first: sample_id=2, target='copd'",
    )


def test_p009_null_subject() -> None:
    frame = base_frame().with_columns(subject_id=pl.Series([10, 10, None, None]))
    raises(
        frame,
        "P009",
        "predictions: subject_id has 2 null value(s) (first: row 2); fill it or drop the column",
    )


def test_p010_attribute_varies_within_sample() -> None:
    frame = base_frame().with_columns(sex=pl.Series(["F", "M", "M", "M"]))
    raises(
        frame,
        "P010",
        "predictions: column 'sex' must have one value per sample; 1 sample(s) have several (first: sample_id=1)",
    )


def test_p011_binary_with_several_targets() -> None:
    frame = base_frame().with_columns(task=pl.lit("mortality"))
    raises(
        frame,
        "P011",
        "predictions: task 'mortality' is binary but has 2 targets; pass kinds={'mortality': \"multilabel\"}",
    )


def test_p012_multiclass_one_positive() -> None:
    frame = multiclass_frame().with_columns(y_true=pl.Series([1, 1, 0, 0, 0, 1]))
    raises(
        frame,
        "P012",
        "predictions: task 'los' is multiclass but 1 sample(s) do not have exactly one row with y_true = 1; first: sample_id=1",
    )


def test_p013_multiclass_sums() -> None:
    frame = multiclass_frame().with_columns(y_score=pl.Series([0.5, 0.3, 0.2, 0.1, 0.1, 0.7]))
    raises(
        frame,
        "P013",
        "predictions: task 'los' is multiclass but the scores of 1 sample(s) do not sum to 1 within 0.001; "
        "first: sample_id=2, sum=0.9",
    )
    ce.validate(frame.with_columns(pl.col("y_score") + pl.Series([0.0, 0.0, 0.0, 0.0, 0.0, 0.0995])))


def test_p014_class_order_for_weighted_kappa() -> None:
    assert class_order("los", ["14+d", "2-3d", "7-14d"]) == ("2-3d", "7-14d", "14+d")
    with pytest.raises(ce.PredictionsError) as caught:
        class_order("triage", ["low", "high", "mid"], required=True)
    assert caught.value.code == "P014"
    assert str(caught.value) == (
        "predictions: task 'triage': cannot order classes ['high', 'low', 'mid'] for weighted kappa; pass classes=[...]"
    )
    frame = multiclass_frame().with_columns(target=pl.Series(["low", "mid", "high"] * 2))
    with pytest.raises(ce.PredictionsError, match="cannot order classes"):
        ce.score(frame, kinds={"los": "multiclass"}, metrics=["kappa_linear_score"], n_boot=0)
    unweighted = ce.score(frame, kinds={"los": "multiclass"}, metrics=["kappa_score"], n_boot=0)
    assert unweighted.height == 1


def test_p015_labels_differ_between_runs() -> None:
    other = base_frame().with_columns(model=pl.lit("b"), y_true=pl.Series([0, 1, 0, 1]))
    raises(
        pl.concat([base_frame(), other]),
        "P015",
        "predictions: y_true differs between runs for 2 (sample_id, target) pair(s) of task 'phenotype'; "
        "first: sample_id=2, target='chf'",
    )


def test_single_class_is_not_an_error() -> None:
    frame = base_frame().with_columns(y_true=pl.Series([0, 0, 0, 0]))
    assert ce.validate(frame).height == 4


def test_ids_compare_as_strings_across_sources(tmp_path: Path) -> None:
    parquet = tmp_path / "a.parquet"
    csv = tmp_path / "b.csv"
    base_frame().write_parquet(parquet)
    base_frame().with_columns(model=pl.lit("b")).write_csv(csv)
    both = ce.read_predictions([parquet, csv])
    assert both.height == 8
    assert both["sample_id"].unique().sort().to_list() == ["1", "2"]
    inputs = frame_info(both)["inputs"]
    assert [Path(item["path"]).name for item in inputs] == ["a.parquet", "b.csv"]
    assert all(len(item["sha256"]) == 64 for item in inputs)


def test_read_sources(tmp_path: Path) -> None:
    frame = base_frame()
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r2").mkdir(parents=True)
    frame.write_parquet(tmp_path / "runs" / "r1" / "predictions.parquet")
    frame.with_columns(model=pl.lit("b")).write_parquet(tmp_path / "runs" / "r2" / "predictions.parquet")
    assert ce.read_predictions(str(tmp_path / "runs" / "*" / "predictions.parquet")).height == 8
    gz = tmp_path / "p.csv.gz"
    gz.write_bytes(gzip.compress(frame.write_csv().encode()))
    assert ce.read_predictions(gz).equals(ce.read_predictions(frame))
    assert ce.read_predictions(frame.lazy()).equals(ce.validate(frame))
    csv = tmp_path / "nan.csv"
    csv.write_text("sample_id,task,target,y_true,y_score\n1,m,m,1,NaN\n2,m,m,0,0.2\n")
    with pytest.raises(ce.PredictionsError, match="1 NaN or null"):
        ce.read_predictions(csv)
    with pytest.raises(FileNotFoundError, match="no file matches"):
        ce.read_predictions(str(tmp_path / "nothing*.parquet"))


@pytest.mark.parametrize("kind", ["binary", "multilabel", "multiclass"])
def test_to_long_to_wide_round_trip(kind: str) -> None:
    rng = np.random.default_rng(0)
    n = 6
    if kind == "binary":
        targets = ["mortality"]
    elif kind == "multilabel":
        targets = ["chf", "copd", "sepsis"]
    else:
        targets = ["2-3d", "3-4d", "14+d"]
    wide = pl.DataFrame({"sample_id": [str(i) for i in range(n)], "sex": ["F", "M"] * 3})
    if kind == "multiclass":
        probabilities = rng.dirichlet(np.ones(3), n)
        wide = wide.with_columns(y_true=pl.Series(np.asarray(targets)[rng.integers(0, 3, n)]))
        for j, name in enumerate(targets):
            wide = wide.with_columns(pl.Series(f"y_score_{name}", probabilities[:, j]))
    else:
        for name in targets:
            wide = wide.with_columns(
                pl.Series(f"y_true_{name}", rng.integers(0, 2, n)).cast(pl.Int8),
                pl.Series(f"y_score_{name}", rng.random(n)),
            )
    long = ce.to_long(wide, task="t", kind=kind)
    assert long.height == n * len(targets)
    back = ce.to_wide(long, task="t", kind=kind)
    assert back.select(wide.columns).equals(wide.select(back.select(wide.columns).columns))


def test_multiclass_to_long_with_index_labels() -> None:
    wide = pl.DataFrame(
        {
            "sample_id": ["a", "b"],
            "y_true": [0, 2],
            "y_score_x": [0.6, 0.1],
            "y_score_y": [0.3, 0.2],
            "y_score_z": [0.1, 0.7],
        }
    )
    long = ce.to_long(wide, task="t", kind="multiclass")
    assert long.filter(pl.col("y_true") == 1)["target"].to_list() == ["x", "z"]


def test_from_arrays() -> None:
    y = np.array([0, 2, 1])
    p = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    frame = ce.from_arrays(y, p, task="los", kind="multiclass", targets=["2-3d", "3-4d", "14+d"])
    assert frame.height == 9
    assert frame.filter(pl.col("y_true") == 1)["target"].to_list() == ["2-3d", "14+d", "3-4d"]
    assert frame_info(frame)["notes"] == ["synthetic_sample_id"]
    scored = ce.score(frame, metrics=["accuracy_score"], n_boot=0)
    assert scored["value"].to_list() == [1.0]
    assert scored["notes"].to_list() == ["synthetic_sample_id"]
    binary = ce.from_arrays(
        np.array([0, 1]),
        np.array([0.2, 0.9]),
        task="m",
        kind="binary",
        targets=["m"],
        sample_id=[5, 6],
        subject_id=["p", "q"],
        attributes={"sex": ["F", "M"]},
        model="x",
        seed=1,
    )
    assert binary.columns == [
        "sample_id",
        "task",
        "target",
        "y_true",
        "y_score",
        "subject_id",
        "model",
        "seed",
        "sex",
    ]


def test_a_validated_frame_is_not_checked_again_unless_the_overrides_change() -> None:
    checked = ce.read_predictions(base_frame())
    assert ce.read_predictions(checked) is checked
    assert ce.read_predictions(checked, kinds={"phenotype": "multilabel"}) is not checked


def test_a_row_subset_inherits_validation_only_through_same_samples_subset() -> None:
    from carebench_eval.io import same_samples_subset

    checked = ce.read_predictions(base_frame())
    plain = checked.head(2)
    assert ce.read_predictions(plain) is not plain
    marked = same_samples_subset(checked.head(2), checked)
    assert ce.read_predictions(marked) is marked
    unchecked = base_frame()
    assert same_samples_subset(unchecked.head(2), unchecked).equals(unchecked.head(2))
    assert frame_info(same_samples_subset(unchecked.head(2), unchecked)).get("validated") is None


def test_a_bad_frame_that_never_went_through_read_predictions_is_still_rejected() -> None:
    bad = base_frame().with_columns(pl.lit(1.5).alias("y_score"))
    with pytest.raises(ce.PredictionsError):
        ce.read_predictions(bad)
