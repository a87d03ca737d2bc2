"""Threshold policies for label metrics (eval.md §2.3).

A policy turns scores into 0/1 predictions ``ŷ = 1[s ≥ t]``. The threshold is chosen once on the whole
evaluated population (never per group) and held fixed inside bootstrap and permutation replicates.

- `Fixed(0.5)`: the given value (API default, upstream parity).
- `FromValidation(val_predictions, rule=...)`: chosen on validation predictions of the same run, task and
  target, then applied unchanged to every test setting of that run.
- `TopK(0.10)`: the ``ceil(k n)``-th largest score of the evaluated set; ties at ``t`` are all flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "Fixed",
    "FromValidation",
    "ThresholdPolicy",
    "TopK",
    "choose_threshold",
    "top_k_threshold",
]

Rule = Literal["youden", "max_f1", "sensitivity"]
RULES = ("youden", "max_f1", "sensitivity")


@dataclass(frozen=True)
class Fixed:
    """A fixed threshold.

    Attributes:
        threshold: predictions are ``1[s ≥ threshold]``.
    """

    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Fixed threshold must be in [0, 1], got {self.threshold}")

    @property
    def note(self) -> str:
        """Note token recorded with every threshold row, e.g. ``policy=fixed:0.5``."""
        return f"policy=fixed:{self.threshold:g}"


@dataclass(frozen=True, eq=False)
class FromValidation:
    """A threshold chosen on validation predictions of the same (model, seed, fold, task, target).

    Attributes:
        predictions: validation predictions (anything `read_predictions` accepts).
        rule: ``"youden"`` (max TPR − FPR), ``"max_f1"`` or ``"sensitivity"`` (largest threshold with
            TPR ≥ `target`); ties go to the larger threshold.
        target: sensitivity target of the ``"sensitivity"`` rule.
    """

    predictions: Any
    rule: Rule = "youden"
    target: float = 0.8

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}; got {self.rule!r}")
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target must be in (0, 1], got {self.target}")

    @property
    def note(self) -> str:
        """Note token, e.g. ``policy=validation:youden``."""
        return f"policy=validation:{self.rule}"


@dataclass(frozen=True)
class TopK:
    """Flag the top share ``k`` of scores.

    Attributes:
        fraction: ``k`` in (0, 1].
    """

    fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"TopK fraction must be in (0, 1], got {self.fraction}")

    @property
    def note(self) -> str:
        """Note token, e.g. ``policy=top_k:0.1``."""
        return f"policy=top_k:{self.fraction:g}"


ThresholdPolicy = Fixed | FromValidation | TopK


def top_k_threshold(y_score: np.ndarray, fraction: float) -> float:
    """The ``ceil(k n)``-th largest score.

    Args:
        y_score: ``[n]`` scores.
        fraction: ``k`` in (0, 1].

    Returns:
        The threshold (NaN for an empty array).

    Example:
        >>> top_k_threshold(np.array([0.1, 0.9, 0.5, 0.7]), 0.5)
        0.7
    """
    scores = np.sort(np.asarray(y_score, dtype=np.float64))[::-1]
    if scores.size == 0:
        return float("nan")
    rank = max(1, math.ceil(fraction * scores.size - 1e-9))
    return float(scores[min(rank, scores.size) - 1])


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, *, rule: Rule, target: float = 0.8) -> float:
    """Scan the distinct validation scores and pick the threshold of `rule`.

    Args:
        y_true: ``[n]`` 0/1 validation labels.
        y_score: ``[n]`` validation scores.
        rule: ``"youden"``, ``"max_f1"`` or ``"sensitivity"``.
        target: TPR target of ``"sensitivity"``.

    Returns:
        The threshold; NaN when the rule is undefined (no positives, or no negatives for Youden).

    Example:
        >>> choose_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), rule="youden")
        0.8
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    labels = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(y_score, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    last_of_group = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp = np.cumsum(sorted_labels)[last_of_group]
    fp = np.cumsum(1 - sorted_labels)[last_of_group]
    candidates = sorted_scores[last_of_group]
    positives, negatives = int(labels.sum()), int(labels.size - labels.sum())
    if positives == 0 or (rule == "youden" and negatives == 0):
        return float("nan")
    tpr = tp / positives
    if rule == "youden":
        objective = tpr - fp / negatives
    elif rule == "max_f1":
        objective = 2 * tp / (2 * tp + fp + (positives - tp))
    else:
        reached = np.flatnonzero(tpr >= target - 1e-12)
        return float(candidates[reached[0]])
    # Candidates are in decreasing order, so the first maximum is the larger threshold.
    return float(candidates[int(np.argmax(objective))])
