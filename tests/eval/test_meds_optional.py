"""Reading MEDS predictions without the optional meds package: one line that says how to install it."""

from __future__ import annotations

import datetime as dt
import sys

import polars as pl
import pytest

import carebench_eval as ce
from carebench_eval import meds as meds_io


def meds_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subject_id": [1, 2, 3],
            "prediction_time": [dt.datetime(2180, 1, 2)] * 3,
            "boolean_value": [True, False, False],
            "predicted_boolean_probability": [0.8, 0.3, 0.1],
        }
    )


def test_without_the_meds_package_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "meds", None)  # as if it were not installed (a no-op where it is not)
    meds_io.meds_prediction_schema.cache_clear()
    try:
        with pytest.raises(ce.PredictionsError) as caught:
            ce.read_predictions(meds_frame())
    finally:
        meds_io.meds_prediction_schema.cache_clear()
    assert caught.value.code == "M001"
    assert "pip install 'carebench-eval[meds]'" in str(caught.value)


def test_import_does_not_load_meds_or_pyarrow() -> None:
    import subprocess

    code = (
        "import sys, carebench_eval; print(sorted({'meds', 'pyarrow', 'flexible_schema'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
