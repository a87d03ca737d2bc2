"""Score any model's predictions: metrics, clustered bootstrap CIs, paired tests, fairness, robustness.

Two layers (eval.md §0.3): pure per-metric functions on numpy arrays (``auroc_score(y_true, y_score)``)
and frame functions on long predictions that return one fixed tidy polars schema (``score(preds)``).
Importing this package imports numpy and polars only: never torch, pandas or scikit-learn.
"""

from __future__ import annotations

from typing import Any

from carebench_eval.api import score
from carebench_eval.errors import PredictionsError
from carebench_eval.io import from_arrays, read_predictions, to_long, to_wide, validate
from carebench_eval.metrics import (
    Fixed,
    FromValidation,
    TopK,
    accuracy_score,
    auprc_score,
    auroc_score,
    base_rate,
    brier_loss,
    calibration_intercept,
    calibration_slope,
    calibration_table,
    expected_calibration_error,
    f1_score,
    fpr_error,
    kappa_linear_score,
    kappa_quadratic_score,
    kappa_score,
    npv_score,
    positive_rate,
    ppv_score,
    sensitivity_score,
    specificity_score,
)
from carebench_eval.registry import MetricSpec, metric_info
from carebench_eval.resampling import (
    BootstrapResult,
    PermutationResult,
    bootstrap_ci,
    paired_permutation_test,
)
from carebench_eval.schema import RESULT_SCHEMA, empty_results, make_rows, read_results, write_results
from carebench_eval.testing import example_predictions_path

__version__ = "0.1.0"

__all__ = [
    "RESULT_SCHEMA",
    "BootstrapResult",
    "Fixed",
    "FromValidation",
    "MetricSpec",
    "PermutationResult",
    "PredictionsError",
    "TopK",
    "UndefinedMetricWarning",
    "__version__",
    "accuracy_score",
    "auprc_score",
    "auroc_score",
    "base_rate",
    "bootstrap_ci",
    "brier_loss",
    "calibration_intercept",
    "calibration_slope",
    "calibration_table",
    "empty_results",
    "example_predictions_path",
    "expected_calibration_error",
    "f1_score",
    "fpr_error",
    "from_arrays",
    "kappa_linear_score",
    "kappa_quadratic_score",
    "kappa_score",
    "make_rows",
    "metric_info",
    "npv_score",
    "paired_permutation_test",
    "positive_rate",
    "ppv_score",
    "read_predictions",
    "read_results",
    "score",
    "sensitivity_score",
    "specificity_score",
    "to_long",
    "to_wide",
    "validate",
    "write_results",
]


def __getattr__(name: str) -> Any:
    # Created on first use: its base class lives in scikit-learn, whose import pulls in pandas and scipy.
    if name == "UndefinedMetricWarning":
        from carebench_eval.errors import undefined_metric_warning

        return undefined_metric_warning()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
