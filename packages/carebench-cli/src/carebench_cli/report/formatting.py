"""Number formatting shared by the report's tables: estimates with CIs, differences, p values."""

from __future__ import annotations

import math


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_value(value: float | None, *, digits: int = 3, signed: bool = False) -> str:
    """`0.842`; `NaN` for an undefined value (never a blank that could be mistaken for zero)."""
    if _missing(value):
        return "NaN"
    assert value is not None
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_ci(
    value: float | None, low: float | None, high: float | None, *, digits: int = 3, signed: bool = False
) -> str:
    """`0.842 [0.826, 0.857]`; the interval is left out when it was not computed (null bounds)."""
    text = fmt_value(value, digits=digits, signed=signed)
    if low is None and high is None:
        return text
    return f"{text} [{fmt_value(low, digits=digits, signed=signed)}, {fmt_value(high, digits=digits, signed=signed)}]"


def fmt_p(p: float | None) -> str:
    """`0.031`, `4.2e-04` below 0.001, `-` when no test was run."""
    if p is None:
        return "-"
    if math.isnan(p):
        return "NaN"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def fmt_sd(sd: float | None, n_runs: int | None) -> str:
    """`0.004 (3 seeds)`, or `-` with one seed (an SD is never shown as a CI)."""
    if _missing(sd) or n_runs is None or n_runs < 2:
        return "-"
    assert sd is not None
    return f"{sd:.3f} ({n_runs} runs)"


def fmt_rate(rate: float) -> str:
    """A missing-CXR rate as a percentage: 0.5 -> `50%`."""
    return f"{100 * rate:.0f}%"
