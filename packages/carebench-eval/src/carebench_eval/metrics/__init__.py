"""Per-metric functions on numpy arrays (the array layer of eval.md §8.4)."""

from carebench_eval.metrics.binary import (
    auprc_score,
    auroc_score,
    base_rate,
    f1_score,
    fpr_error,
    npv_score,
    positive_rate,
    ppv_score,
    sensitivity_score,
    specificity_score,
)
from carebench_eval.metrics.calibration import (
    brier_loss,
    calibration_intercept,
    calibration_slope,
    calibration_table,
    expected_calibration_error,
)
from carebench_eval.metrics.multiclass import (
    accuracy_score,
    kappa_linear_score,
    kappa_quadratic_score,
    kappa_score,
)
from carebench_eval.metrics.threshold import Fixed, FromValidation, TopK, choose_threshold, top_k_threshold

__all__ = [
    "Fixed",
    "FromValidation",
    "TopK",
    "accuracy_score",
    "auprc_score",
    "auroc_score",
    "base_rate",
    "brier_loss",
    "calibration_intercept",
    "calibration_slope",
    "calibration_table",
    "choose_threshold",
    "expected_calibration_error",
    "f1_score",
    "fpr_error",
    "kappa_linear_score",
    "kappa_quadratic_score",
    "kappa_score",
    "npv_score",
    "positive_rate",
    "ppv_score",
    "sensitivity_score",
    "specificity_score",
    "top_k_threshold",
]
