"""Named bundles of evaluation options, splatted into the frame functions (eval.md §9).

    >>> import carebench_eval as ce
    >>> paper = ce.presets.CAREBENCH_PAPER
    >>> sorted(paper.score_kwargs)
    ['metrics', 'n_bins', 'threshold']
    >>> paper.fairness_kwargs["min_group_n"]
    10

``ce.score(preds, **paper.score_kwargs)`` and ``ce.fairness(preds, **paper.fairness_kwargs)`` evaluate
with upstream CareBench's choices (fixed 0.5 threshold, 10 calibration bins, groups of at least 10
stays, its four sensitive attributes) without its defects (eval.md §6.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from carebench_eval.metrics.threshold import Fixed, ThresholdPolicy
from carebench_eval.registry import defaults, primary_metric

__all__ = ["CAREBENCH_PAPER", "Preset"]


@dataclass(frozen=True)
class Preset:
    """A frozen set of evaluation options.

    Attributes:
        name: preset name (recorded nowhere; for display).
        threshold: threshold policy of the label metrics (eval.md §2.3).
        n_bins: calibration bins.
        min_group_n: smallest group that enters across-group statistics (eval.md §6.2).
        attributes: sensitive attributes, in report order.
        intersections: ``"pairs"`` or explicit attribute pairs (eval.md §6.1).
        primary_metrics: task -> (metric, aggregate target or None), read-only (eval.md §5.5).
    """

    name: str
    threshold: ThresholdPolicy
    n_bins: int
    min_group_n: int
    attributes: tuple[str, ...]
    intersections: str | tuple[tuple[str, str], ...]
    primary_metrics: MappingProxyType[str, tuple[str, str | None]]

    @property
    def metrics(self) -> tuple[str, ...]:
        """The distinct primary metric names, in task order (``metrics=`` of `score`)."""
        return tuple(dict.fromkeys(metric for metric, _ in self.primary_metrics.values()))

    @property
    def score_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `carebench_eval.score`: ``threshold``, ``n_bins``, ``metrics``."""
        return {"threshold": self.threshold, "n_bins": self.n_bins, "metrics": list(self.metrics)}

    @property
    def fairness_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `carebench_eval.fairness`: threshold, bins, group size, attributes."""
        return {
            "threshold": self.threshold,
            "n_bins": self.n_bins,
            "min_group_n": self.min_group_n,
            "attributes": list(self.attributes),
            "intersections": self.intersections,
        }


def _bundled_primary_metrics() -> MappingProxyType[str, tuple[str, str | None]]:
    return MappingProxyType({task: primary_metric(task) for task in defaults()["tasks"]})


CAREBENCH_PAPER = Preset(
    name="carebench_paper",
    threshold=Fixed(0.5),
    n_bins=10,
    min_group_n=10,
    attributes=("admission_type", "age_group", "sex", "race"),
    intersections="pairs",
    primary_metrics=_bundled_primary_metrics(),
)
"""Upstream-parity preset (eval.md §9): ``Fixed(0.5)``, 10 bins, groups of ≥ 10 stays, attributes
``admission_type``, ``age_group``, ``sex``, ``race`` with ``age_group|race`` first among the pairwise
intersections, and the bundled primary metrics (mortality AUPRC, phenotype macro AUPRC, LoS accuracy)."""
