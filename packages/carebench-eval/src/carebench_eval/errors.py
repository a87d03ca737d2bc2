"""Typed errors and the undefined-metric warning (eval.md §1.3, §1.4).

`UndefinedMetricWarning` subclasses scikit-learn's warning of the same name so that existing warning
filters catch it. Importing scikit-learn also imports pandas and scipy, so the class is created on first
use (module `__getattr__`), which keeps `import carebench_eval` light.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable

__all__ = [
    "PredictionsError",
    "PredictionsFileError",
    "join_notes",
    "undefined_metric_warning",
    "warn_undefined",
]


class PredictionsError(ValueError):
    """A predictions table violates the contract of eval.md §1.3.

    Attributes:
        code: the rule that failed, ``"P001"`` … ``"P020"`` (P020: a column holds values of the wrong
            type: non-scalar ids or attributes, non-integer ``seed``/``fold``, a ``has_cxr`` that is
            not a boolean).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PredictionsFileError(ValueError):
    """A predictions file cannot be read: unknown suffix, empty, not UTF-8, corrupt Parquet or gzip."""


@functools.cache
def undefined_metric_warning() -> type[Warning]:
    """The `UndefinedMetricWarning` class (a subclass of scikit-learn's), created once on first use."""
    from sklearn.exceptions import UndefinedMetricWarning as SklearnUndefinedMetricWarning

    return type(
        "UndefinedMetricWarning",
        (SklearnUndefinedMetricWarning,),
        {
            "__module__": "carebench_eval",
            "__doc__": "A metric is undefined for some cells (one class present, no predicted positive, ...); "
            "the value is NaN and the row carries a note.",
        },
    )


def __getattr__(name: str) -> object:
    if name == "UndefinedMetricWarning":
        return undefined_metric_warning()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


REASONS: dict[str, str] = {
    "single_class": "only one class present in y_true (n={n})",
    "no_predicted_positive": "no predicted positive (n={n})",
    "no_predicted_negative": "no predicted negative (n={n})",
    "degenerate_agreement": "expected agreement is 1 (n={n})",
    "separated": (
        "the score separates the classes (no positive scores below a negative, or none above), "
        "so the slope has no finite maximum-likelihood estimate (n={n})"
    ),
    "no_convergence": "the logistic fit did not converge (n={n})",
}
"""Note token -> human reason of eval.md §1.4."""


def warn_undefined(
    metric: str,
    note: str,
    *,
    cells: int,
    example: str = "",
    n: int | None = None,
    stacklevel: int = 3,
) -> None:
    """Emit one aggregated `UndefinedMetricWarning` for `cells` undefined values of `metric`.

    Args:
        metric: registry name of the metric.
        note: note token (a key of `REASONS`).
        cells: how many (run, task, target, group) cells are undefined.
        example: where the first one is, e.g. ``", e.g. task 'mortality', target 'mortality'"``.
        n: sample count of the first undefined cell (printed in the reason).
        stacklevel: passed to `warnings.warn`.
    """
    reason = REASONS[note].format(n="?" if n is None else n)
    warnings.warn(
        f"{metric} is undefined for {cells} (run, task, target, group) cell(s){example}: {reason}; value is NaN",
        undefined_metric_warning(),
        stacklevel=stacklevel,
    )


def join_notes(tokens: Iterable[str]) -> str | None:
    """Join note tokens with ``;`` (deduplicated, in first-seen order); None when there are none."""
    unique = list(dict.fromkeys(token for token in tokens if token))
    return ";".join(unique) if unique else None
