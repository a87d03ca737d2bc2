"""MEDS predictions in and out: meds-evaluation's prediction files as carebench long predictions.

A MEDS (Medical Event Data Standard) prediction file, the input of meds-evaluation and MEDS-DEV, has one
row per (subject, prediction time): the columns of the MEDS label schema (``subject_id`` int64,
``prediction_time`` timestamp, ``boolean_value`` bool) plus the model's ``predicted_boolean_probability``
(float32) and, optionally, ``predicted_boolean_value`` (bool). `read_predictions` recognizes such a file
by its columns and reads it through `from_meds_predictions`:

| MEDS column | long column |
|---|---|
| ``subject_id`` | ``subject_id`` (the bootstrap cluster) |
| ``subject_id``, ``prediction_time`` | ``sample_id`` = ``"<subject_id>@<prediction_time ISO 8601>"`` |
| ``boolean_value`` | ``y_true`` |
| ``predicted_boolean_probability`` | ``y_score`` |
| (the file name up to its first dot) | ``task`` and ``target`` |

Validation uses the ``meds`` package's label schema, extended by the two prediction columns exactly as
meds-evaluation extends it, so a file carebench accepts is one meds-evaluation accepts, with the same
values (the schema's float32 probabilities). ``meds`` (and pyarrow) come with the optional extra
``carebench-eval[meds]``; `to_meds_predictions` (the way out) needs neither.

Example:
    >>> import datetime as dt
    >>> import polars as pl
    >>> meds = pl.DataFrame({
    ...     "subject_id": [1, 1, 2], "prediction_time": [dt.datetime(2180, 1, 2), dt.datetime(2180, 3, 1),
    ...     dt.datetime(2181, 5, 5)], "boolean_value": [False, True, False],
    ...     "predicted_boolean_probability": [0.2, 0.7, 0.1]})
    >>> is_meds_predictions(meds.columns)
    True
"""

# No `from __future__ import annotations` here: the schema class below is declared through its
# annotations, which flexible_schema reads as objects, not strings.

import functools
from collections.abc import Sequence
from typing import Any

import polars as pl

from carebench_eval.errors import PredictionsError

__all__ = [
    "FRAME_TASK",
    "LABEL_COLUMNS",
    "PREDICTED_COLUMNS",
    "from_meds_predictions",
    "is_meds_predictions",
    "meds_prediction_schema",
    "task_name_of",
    "to_meds_predictions",
]

LABEL_COLUMNS = ("subject_id", "prediction_time", "boolean_value")
"""The MEDS label-schema columns a binary prediction file must have."""

PREDICTED_COLUMNS = ("predicted_boolean_value", "predicted_boolean_probability")
"""meds-evaluation's prediction columns; a file has at least one of them."""

FRAME_TASK = "meds"
"""Task name given to MEDS predictions passed as a frame (files are named after their file name)."""

_LONG_COLUMNS = frozenset({"sample_id", "task", "target", "y_true", "y_score"})
_INSTALL = "pip install 'carebench-eval[meds]'"


def is_meds_predictions(columns: Sequence[str]) -> bool:
    """Whether `columns` are a MEDS prediction file's: the label columns, a prediction column, no long ones."""
    names = set(columns)
    return (
        set(LABEL_COLUMNS) <= names and bool(names & set(PREDICTED_COLUMNS)) and not (names & _LONG_COLUMNS)
    )


def task_name_of(file_name: str) -> str:
    """The task name of a MEDS prediction file: its name up to the first dot (``mortality.parquet`` → ``mortality``)."""
    return file_name.split(".", 1)[0] or FRAME_TASK


@functools.cache
def meds_prediction_schema() -> Any:
    """meds-evaluation's prediction schema: the ``meds`` label schema plus the two prediction columns.

    Returns:
        A ``flexible_schema`` PyArrow schema class with ``align`` (validate and cast) and ``validate``.

    Raises:
        PredictionsError: code ``M001`` when the ``meds`` package is not installed.
    """
    try:
        import pyarrow as pa
        from flexible_schema import Optional, SchemaValidationError, TableValidationError
        from meds import LabelSchema
    except ImportError as error:
        raise PredictionsError(
            "M001",
            f"predictions: reading MEDS predictions needs the meds package ({error.name} is missing); "
            f"install it with {_INSTALL}",
        ) from None

    class PredictionSchema(LabelSchema):  # type: ignore[misc, valid-type]
        """MEDS labels plus ``predicted_boolean_value`` (bool) and ``predicted_boolean_probability`` (float32)."""

        predicted_boolean_value: Optional(pa.bool_())  # type: ignore[valid-type]
        predicted_boolean_probability: Optional(pa.float32())  # type: ignore[valid-type]

        @classmethod
        def _validate_schema(cls, schema: Any) -> None:
            super()._validate_schema(schema)
            if not set(PREDICTED_COLUMNS) & set(schema.names):
                raise SchemaValidationError(f"at least one of {', '.join(PREDICTED_COLUMNS)} must be present")

        @classmethod
        def _validate_table(cls, table: Any) -> None:
            super()._validate_table(table)
            present = [name for name in PREDICTED_COLUMNS if name in table.schema.names]
            if all(cls._all_null(table, name) for name in present):
                raise TableValidationError(f"{' and '.join(present)} hold only nulls")

    return PredictionSchema


def _aligned(frame: pl.DataFrame, where: str) -> pl.DataFrame:
    """`frame` validated and cast by the MEDS prediction schema (CSV timestamps parsed first)."""
    schema = meds_prediction_schema()
    from flexible_schema import SchemaValidationError, TableValidationError

    if frame.schema["prediction_time"] == pl.String:
        frame = frame.with_columns(pl.col("prediction_time").str.to_datetime(time_unit="us", strict=False))
    try:
        table = schema.align(frame.to_arrow())
    except (SchemaValidationError, TableValidationError) as error:
        message = " ".join(str(error).split())
        raise PredictionsError(
            "M002", f"predictions: {where} is not a valid MEDS prediction table: {message}"
        ) from None
    return pl.DataFrame(table)


def from_meds_predictions(
    frame: pl.DataFrame,
    *,
    task: str = FRAME_TASK,
    model: str | None = None,
    setting: str | None = None,
    where: str = "frame",
) -> pl.DataFrame:
    """Long predictions (not yet contract-checked) from a MEDS prediction table.

    Args:
        frame: MEDS predictions, one row per (subject_id, prediction_time).
        task: task and target name of the rows (binary: one target).
        model: optional run key.
        setting: optional run key.
        where: the file name, for messages.

    Returns:
        Columns ``sample_id, subject_id, task, target, y_true, y_score`` (+ ``model``, ``setting``), one
        row per input row, in input order; `read_predictions` / `validate` check the contract next.

    Raises:
        PredictionsError: ``M001`` without the ``meds`` package, ``M002`` when the MEDS schema rejects the
            table, ``M003`` when it has no ``predicted_boolean_probability`` values (carebench scores
            probabilities).
    """
    aligned = _aligned(frame, where)
    probability = aligned.get_column("predicted_boolean_probability", default=None)
    if probability is None or probability.null_count() == aligned.height:
        raise PredictionsError(
            "M003",
            f"predictions: {where} has predicted_boolean_value but no predicted_boolean_probability values; "
            "carebench scores probabilities (AUROC, AUPRC, calibration), so add the model's probability column",
        )
    stamp = pl.col("prediction_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6f")
    columns = [
        pl.format("{}@{}", pl.col("subject_id"), stamp).alias("sample_id"),
        pl.col("subject_id").cast(pl.String),
        pl.lit(task).alias("task"),
        pl.lit(task).alias("target"),
        pl.col("boolean_value").cast(pl.Int8).alias("y_true"),
        pl.col("predicted_boolean_probability").cast(pl.Float64).alias("y_score"),
    ]
    columns += [pl.lit(value).alias(key) for key, value in (("model", model), ("setting", setting)) if value]
    return aligned.select(columns)


def to_meds_predictions(
    long: pl.DataFrame,
    prediction_times: pl.DataFrame,
    *,
    threshold: float = 0.5,
) -> pl.DataFrame:
    """meds-evaluation predictions of one binary task of one run (the way out of carebench).

    Args:
        long: long predictions of one binary task and one run (one target; no repeated ``sample_id``),
            with a ``subject_id`` column of integer ids.
        prediction_times: ``sample_id`` and ``prediction_time`` (datetime) of every sample in `long`.
        threshold: ``predicted_boolean_value`` is ``y_score >= threshold``.

    Returns:
        ``subject_id`` Int64, ``prediction_time`` Datetime(us), ``boolean_value`` Boolean,
        ``predicted_boolean_value`` Boolean, ``predicted_boolean_probability`` Float32, sorted by subject
        and time: the dtypes of meds-evaluation's schema, so the file needs no casting to be read.

    Raises:
        ValueError: several targets or runs, repeated samples, missing subject ids or prediction times.
    """
    if "subject_id" not in long.columns:
        raise ValueError("to_meds_predictions: the predictions need a subject_id column")
    targets = long.select("task", "target").unique()
    if targets.height != 1:
        raise ValueError(f"to_meds_predictions: one binary task and target at a time; got {targets.height}")
    if long["sample_id"].n_unique() != long.height:
        raise ValueError("to_meds_predictions: every sample once (one run, one setting); sample_id repeats")
    times = prediction_times.select(
        pl.col("sample_id").cast(pl.String), pl.col("prediction_time").cast(pl.Datetime("us"))
    )
    joined = long.with_columns(pl.col("sample_id").cast(pl.String)).join(times, on="sample_id", how="left")
    if joined["prediction_time"].null_count():
        first = joined.filter(pl.col("prediction_time").is_null())["sample_id"][0]
        raise ValueError(f"to_meds_predictions: no prediction_time for sample_id {first!r}")
    subject = joined["subject_id"].cast(pl.Int64, strict=False)
    if subject.null_count():
        raise ValueError("to_meds_predictions: subject_id must hold integer ids (the MEDS schema's int64)")
    return (
        joined.with_columns(subject.alias("subject_id"))
        .select(
            pl.col("subject_id"),
            pl.col("prediction_time"),
            (pl.col("y_true") == 1).alias("boolean_value"),
            (pl.col("y_score") >= threshold).alias("predicted_boolean_value"),
            pl.col("y_score").cast(pl.Float32).alias("predicted_boolean_probability"),
        )
        .sort("subject_id", "prediction_time", maintain_order=True)
    )
