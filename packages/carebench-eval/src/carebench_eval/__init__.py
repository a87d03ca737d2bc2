"""Score any model's predictions: metrics, clustered bootstrap CIs, paired tests, fairness, robustness.

Two layers (eval.md §0.3): pure per-metric functions on numpy arrays (``auroc_score(y_true, y_score)``)
and frame functions on long predictions that return one fixed tidy polars schema (``score(preds)``).
Importing this package imports numpy and polars only: never torch, pandas or scikit-learn.
"""

from __future__ import annotations

from typing import Any

from carebench_eval import presets
from carebench_eval.api import score
from carebench_eval.compare import DeLongResult, compare, compare_grid, delong_test
from carebench_eval.errors import PredictionsError, PredictionsFileError
from carebench_eval.fairness import demographic_parity_difference, equalized_odds_difference, fairness
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
from carebench_eval.multiplicity import adjust_pvalues, benjamini_hochberg, holm
from carebench_eval.registry import MetricSpec, metric_info
from carebench_eval.resampling import (
    BootstrapResult,
    PermutationResult,
    bootstrap_ci,
    paired_permutation_test,
)
from carebench_eval.robustness import fusion_gain, modality_contribution, robustness
from carebench_eval.schema import RESULT_SCHEMA, empty_results, make_rows, read_results, write_results
from carebench_eval.testing import example_predictions_path

__version__ = "0.1.0"

__all__ = [
    "RESULT_SCHEMA",
    "BootstrapResult",
    "DeLongResult",
    "Fixed",
    "FromValidation",
    "MetricSpec",
    "PermutationResult",
    "PredictionsError",
    "PredictionsFileError",
    "TopK",
    "UndefinedMetricWarning",
    "__version__",
    "accuracy_score",
    "adjust_pvalues",
    "auprc_score",
    "auroc_score",
    "base_rate",
    "benjamini_hochberg",
    "bootstrap_ci",
    "brier_loss",
    "calibration_intercept",
    "calibration_slope",
    "calibration_table",
    "compare",
    "compare_grid",
    "delong_test",
    "demographic_parity_difference",
    "empty_results",
    "equalized_odds_difference",
    "example_predictions_path",
    "expected_calibration_error",
    "f1_score",
    "fairness",
    "fpr_error",
    "from_arrays",
    "fusion_gain",
    "holm",
    "kappa_linear_score",
    "kappa_quadratic_score",
    "kappa_score",
    "make_rows",
    "metric_info",
    "modality_contribution",
    "npv_score",
    "paired_permutation_test",
    "positive_rate",
    "ppv_score",
    "presets",
    "read_predictions",
    "read_results",
    "robustness",
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
