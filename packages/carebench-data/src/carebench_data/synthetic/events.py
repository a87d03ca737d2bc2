"""A columnar accumulator of events (stay row, time, itemid, number or text) and its value formatting."""

from __future__ import annotations

import numpy as np
import polars as pl

TEXT_VALUES: tuple[str, ...] = (
    # GCS eye (data.md §4.3)
    "Spontaneously",
    "To Speech",
    "To Pain",
    "None",
    # GCS verbal
    "Oriented",
    "Confused",
    "Inappropriate Words",
    "Incomprehensible sounds",
    "No Response",
    "No Response-ETT",
    # GCS motor
    "Obeys Commands",
    "Localizes Pain",
    "Flex-withdraws",
    "Abnormal Flexion",
    "Abnormal extension",
    "No response",
    # capillary refill
    "Normal <3 Seconds",
    "Abnormal >3 Seconds",
    # rhythm
    "SR (Sinus Rhythm)",
    "ST (Sinus Tachycardia)",
    "AF (Atrial Fibrillation)",
    # RASS
    "+1 Restless",
    " 0  Alert and calm",
    "-1 Drowsy",
    "-2 Light sedation",
    "-3 Moderate sedation",
    "-4 Deep sedation",
    # temperature site
    "Oral",
    "Axillary",
    "Blood",
    "Temporal",
    # nursing distractors
    "No Impairment",
    "Slightly Limited",
    "30 Degrees",
    "Side to Side",
    "Supine",
    "Left Side",
    "Bed locked / low position",
    "1",
    # dirt
    "ERROR",
    # labs
    "ART.",
    "NEG",
    "___",
)
TEXT_CODE = {text: i for i, text in enumerate(TEXT_VALUES)}
GCS_EYE_TEXT = np.array([TEXT_CODE[t] for t in ("None", "To Pain", "To Speech", "Spontaneously")])
GCS_VERBAL_TEXT = np.array(
    [
        TEXT_CODE[t]
        for t in ("No Response", "Incomprehensible sounds", "Inappropriate Words", "Confused", "Oriented")
    ]
)
GCS_MOTOR_TEXT = np.array(
    [
        TEXT_CODE[t]
        for t in (
            "No response",
            "Abnormal extension",
            "Abnormal Flexion",
            "Flex-withdraws",
            "Localizes Pain",
            "Obeys Commands",
        )
    ]
)
RASS_TEXT = {
    1: TEXT_CODE["+1 Restless"],
    0: TEXT_CODE[" 0  Alert and calm"],
    -1: TEXT_CODE["-1 Drowsy"],
    -2: TEXT_CODE["-2 Light sedation"],
    -3: TEXT_CODE["-3 Moderate sedation"],
    -4: TEXT_CODE["-4 Deep sedation"],
}


class EventBuffer:
    """Columns of events collected item by item, then concatenated once.

    `text` is a TEXT_VALUES index or -1 (numeric value); `decimals` is the number of decimals the
    value string gets (ignored for text).
    """

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(
        self,
        rows: np.ndarray,
        times: np.ndarray,
        itemid: int | np.ndarray,
        valuenum: np.ndarray,
        *,
        text: np.ndarray | int = -1,
        decimals: int = 0,
    ) -> None:
        """Append events (all arrays [E]; scalars broadcast); valuenum is rounded to `decimals`."""
        n = rows.size
        if n == 0:
            return
        self._parts.append(
            (
                rows.astype(np.int64),
                times.astype(np.int64),
                np.broadcast_to(np.asarray(itemid, dtype=np.int32), (n,)).copy(),
                np.round(np.asarray(valuenum, dtype=np.float64), decimals),
                np.broadcast_to(np.asarray(text, dtype=np.int16), (n,)).copy(),
                np.full(n, decimals, dtype=np.int8),
            )
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The concatenated columns: rows, times, itemid, valuenum, text, decimals."""
        names = ("rows", "times", "itemid", "valuenum", "text", "decimals")
        if not self._parts:
            empty = (np.int64, np.int64, np.int32, np.float64, np.int16, np.int8)
            return {name: np.zeros(0, dtype=dtype) for name, dtype in zip(names, empty, strict=True)}
        return {name: np.concatenate([part[i] for part in self._parts]) for i, name in enumerate(names)}


def value_expressions() -> tuple[pl.Expr, pl.Expr]:
    """Polars expressions for `value` (text) and `valuenum` from columns valuenum, text, decimals."""
    number = pl.col("valuenum")
    text = pl.col("text").replace_strict(
        list(range(len(TEXT_VALUES))), list(TEXT_VALUES), default=None, return_dtype=pl.String
    )
    formatted = (
        pl.when(pl.col("decimals") == 0)
        .then(number.round(0).cast(pl.Int64).cast(pl.String))
        .when(pl.col("decimals") == 1)
        .then(number.round(1).cast(pl.String))
        .otherwise(number.round(2).cast(pl.String))
    )
    value = pl.when(pl.col("text") >= 0).then(text).otherwise(formatted).alias("value")
    valuenum = pl.when(number.is_nan()).then(None).otherwise(number).alias("valuenum")
    return value, valuenum
