"""The metric registry and the bundled task defaults (eval.md §2.1, §0.7).

Names follow scikit-learn's rule: ``*_score`` higher is better, ``*_loss`` / ``*_error`` lower is better,
``*_difference`` lower is better (≥ 0), ``*_ratio`` higher is better (≤ 1); anything else is descriptive.
Direction drives worst/best group, best-unimodal choice and report formatting.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import polars as pl

from carebench_eval.metrics import binary, calibration, multiclass

__all__ = [
    "KINDS",
    "REGISTRY",
    "MetricSpec",
    "default_metrics",
    "defaults",
    "metric_info",
    "metric_spec",
    "primary_metric",
    "task_kind",
]

KINDS = ("binary", "multilabel", "multiclass")
_ALL = KINDS
_LABELWISE = ("binary", "multilabel")


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    Attributes:
        name: registry name (also the ``metric`` column of result tables).
        kinds: task kinds it applies to.
        input: ``"score"`` (probabilities) or ``"label"`` (predictions at a threshold policy).
        higher_is_better: direction; None for descriptive quantities.
        needs_threshold: True when binary/multilabel values depend on the threshold policy.
        fn: the array-layer function, or None for quantities only the frame layer computes (parity
            metrics across groups, ``threshold`` rows, ``cxr_missing_rate``).
        display: the name reports show (AUROC, AUPRC, TPR, FPR, ...).
    """

    name: str
    kinds: tuple[str, ...]
    input: Literal["score", "label"]
    higher_is_better: bool | None
    needs_threshold: bool
    fn: Callable[..., Any] | None
    display: str


def _spec(
    name: str,
    kinds: tuple[str, ...],
    input: Literal["score", "label"],
    higher_is_better: bool | None,
    fn: Callable[..., Any] | None,
    display: str,
) -> MetricSpec:
    return MetricSpec(name, kinds, input, higher_is_better, input == "label", fn, display)


REGISTRY: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        _spec("auroc_score", _ALL, "score", True, binary.auroc_score, "AUROC"),
        _spec("auprc_score", _ALL, "score", True, binary.auprc_score, "AUPRC"),
        _spec("brier_loss", _ALL, "score", False, calibration.brier_loss, "Brier"),
        _spec(
            "expected_calibration_error", _ALL, "score", False, calibration.expected_calibration_error, "ECE"
        ),
        _spec(
            "calibration_slope", _LABELWISE, "score", None, calibration.calibration_slope, "Calibration slope"
        ),
        _spec(
            "calibration_intercept",
            _LABELWISE,
            "score",
            None,
            calibration.calibration_intercept,
            "Calibration intercept",
        ),
        _spec("sensitivity_score", _ALL, "label", True, binary.sensitivity_score, "TPR"),
        _spec("specificity_score", _LABELWISE, "label", True, binary.specificity_score, "TNR"),
        _spec("fpr_error", _ALL, "label", False, binary.fpr_error, "FPR"),
        _spec("ppv_score", _LABELWISE, "label", True, binary.ppv_score, "PPV"),
        _spec("npv_score", _LABELWISE, "label", True, binary.npv_score, "NPV"),
        _spec("f1_score", _ALL, "label", True, binary.f1_score, "F1"),
        _spec("base_rate", _ALL, "label", None, binary.base_rate, "Base rate"),
        _spec("positive_rate", _ALL, "label", None, binary.positive_rate, "Positive rate"),
        _spec("accuracy_score", ("multiclass",), "label", True, multiclass.accuracy_score, "Accuracy"),
        _spec("kappa_score", ("multiclass",), "label", True, multiclass.kappa_score, "Kappa"),
        _spec(
            "kappa_linear_score",
            ("multiclass",),
            "label",
            True,
            multiclass.kappa_linear_score,
            "Linear kappa",
        ),
        _spec(
            "kappa_quadratic_score",
            ("multiclass",),
            "label",
            True,
            multiclass.kappa_quadratic_score,
            "Quadratic kappa",
        ),
        _spec("threshold", _LABELWISE, "label", None, None, "Threshold"),
        _spec("demographic_parity_difference", _ALL, "label", False, None, "DPD"),
        _spec("demographic_parity_ratio", _ALL, "label", True, None, "DPR"),
        _spec("equalized_odds_difference", _ALL, "label", False, None, "EOD"),
        _spec("equalized_odds_ratio", _ALL, "label", True, None, "EOR"),
        _spec("equal_opportunity_difference", _ALL, "label", False, None, "EOpD"),
        _spec("cxr_missing_rate", _ALL, "score", None, None, "CXR missing rate"),
    )
}
"""Every metric name that may appear in a result table."""


def metric_spec(name: str) -> MetricSpec:
    """The registered spec of `name`; an unknown name raises `ValueError` listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(REGISTRY)}") from None


def metric_info() -> pl.DataFrame:
    """The registry as a frame: ``name, kinds, input, higher_is_better, needs_threshold, display``.

    Reports read metric direction and display names from it.
    """
    specs = list(REGISTRY.values())
    return pl.DataFrame(
        {
            "name": [spec.name for spec in specs],
            "kinds": [list(spec.kinds) for spec in specs],
            "input": [spec.input for spec in specs],
            "higher_is_better": [spec.higher_is_better for spec in specs],
            "needs_threshold": [spec.needs_threshold for spec in specs],
            "display": [spec.display for spec in specs],
        },
        schema={
            "name": pl.String,
            "kinds": pl.List(pl.String),
            "input": pl.String,
            "higher_is_better": pl.Boolean,
            "needs_threshold": pl.Boolean,
            "display": pl.String,
        },
    )


@functools.cache
def defaults() -> dict[str, Any]:
    """The bundled `defaults.toml` (task kinds, primary metrics, fairness and robustness defaults)."""
    text = resources.files("carebench_eval").joinpath("defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def task_kind(task: str, *, n_targets: int, kinds: Mapping[str, str] | None = None) -> str:
    """Kind of `task` (eval.md §1.2): `kinds` > bundled defaults > inference.

    Inference: one target → binary, several → multilabel; multiclass is never inferred.

    Args:
        task: task name.
        n_targets: distinct targets of the task in the predictions.
        kinds: task -> kind overrides.

    Returns:
        ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
    """
    if kinds and task in kinds:
        kind = kinds[task]
        if kind not in KINDS:
            raise ValueError(f"kind of task {task!r} must be one of {', '.join(KINDS)}; got {kind!r}")
        return kind
    bundled = defaults()["tasks"].get(task)
    if bundled is not None:
        return str(bundled["kind"])
    return "binary" if n_targets == 1 else "multilabel"


def primary_metric(task: str) -> tuple[str, str | None]:
    """Bundled primary metric of `task` and its aggregate target (e.g. ``("auprc_score", "(macro)")``).

    Unknown tasks get ``("auroc_score", None)``.
    """
    bundled = defaults()["tasks"].get(task)
    if bundled is None:
        return "auroc_score", None
    return str(bundled["primary"]), bundled.get("primary_target")


def default_metrics(kind: str) -> tuple[str, ...]:
    """Metrics `score` computes for a kind when ``metrics=None`` (eval.md §2.2, §2.6)."""
    from carebench_eval.metrics.core import BINARY_METRICS, CALIBRATION_FIT_METRICS, MULTICLASS_METRICS

    if kind == "multiclass":
        return MULTICLASS_METRICS
    if kind in _LABELWISE:
        return tuple(name for name in BINARY_METRICS if name not in CALIBRATION_FIT_METRICS)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
