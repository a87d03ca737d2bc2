"""The ``setting`` run key: tokens joined by ``+`` that name a cohort and its simulated missingness.

``cohort_matched`` (the default) or ``cohort_base``; ``train_cxr_drop_<r>`` (CXRs removed from a share of
the training and validation stays, a property of the trained model); test-time ``test_cxr_mcar_<r>``,
``test_cxr_mnar_<r>`` and ``test_cxr_subgroup_<attribute>=<value>_<r>``; cross-evaluation
``cross_matched_to_base`` / ``cross_base_to_matched`` (a model trained on one cohort, tested on the other).
Absent tokens take their default, so ``""``, ``"natural"``, ``"cohort_matched"`` and None are one setting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_TOKENS",
    "ParsedSetting",
    "parse_setting",
    "parsed_setting",
    "same_setting",
    "training_setting",
]

DEFAULT_TOKENS = frozenset({"cohort_matched", "natural", ""})
"""Tokens that mean the default setting (matched cohort, no simulated missingness)."""

_RATE_TOKEN = re.compile(
    r"^(train_cxr_drop|test_cxr_mcar|test_cxr_mnar|test_cxr_subgroup_[^_].*)_([0-9]*\.?[0-9]+)$"
)
_FIXED_TOKENS = frozenset({"cohort_base", "cross_matched_to_base", "cross_base_to_matched"})
_TRAINING_COHORT = {"cross_matched_to_base": (), "cross_base_to_matched": ("cohort_base",)}
"""Cross-evaluation token -> context tokens of the cohort the model was trained (and validated) on."""


@dataclass(frozen=True)
class ParsedSetting:
    """A ``setting`` split into its context tokens and its missing-rate tokens (eval.md §7.1).

    Attributes:
        context: non-default tokens without a rate (``cohort_base``, ``cross_matched_to_base``, ...).
        rates: mechanism -> rate, e.g. ``{"test_cxr_mcar": 0.5}``; mechanisms are ``train_cxr_drop``,
            ``test_cxr_mcar``, ``test_cxr_mnar`` and ``test_cxr_subgroup_<attribute>=<value>``.
    """

    context: tuple[str, ...]
    rates: Mapping[str, float] = field(default_factory=dict)


def parse_setting(setting: str | None) -> ParsedSetting:
    """Parse a ``setting`` value (tokens joined by ``+``; absent tokens take their default).

    Args:
        setting: e.g. ``"cohort_matched+test_cxr_mcar_0.5"``, ``"test_cxr_mnar_1.0"``, ``"natural"`` or
            None (the default setting).

    Returns:
        The :class:`ParsedSetting`; a rate of 0 is dropped (it is the default).

    Raises:
        ValueError: an unknown token, a rate outside [0, 1], or a mechanism given twice.

    Examples:
        >>> parse_setting("cohort_base+test_cxr_mcar_0.5")
        ParsedSetting(context=('cohort_base',), rates={'test_cxr_mcar': 0.5})
    """
    context: list[str] = []
    rates: dict[str, float] = {}
    for token in (setting or "").split("+"):
        token = token.strip()
        if token in DEFAULT_TOKENS:
            continue
        if token in _FIXED_TOKENS:
            context.append(token)
            continue
        match = _RATE_TOKEN.match(token)
        if match is None:
            raise ValueError(
                f"setting {setting!r}: unknown token {token!r}; expected cohort_matched, cohort_base, "
                "train_cxr_drop_<r>, test_cxr_mcar_<r>, test_cxr_mnar_<r>, test_cxr_subgroup_<attr>=<value>_<r>, "
                "cross_matched_to_base or cross_base_to_matched joined by '+'"
            )
        mechanism, rate = match.group(1), float(match.group(2))
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"setting {setting!r}: rate {rate} of {mechanism} is outside [0, 1]")
        if mechanism in rates:
            raise ValueError(f"setting {setting!r}: {mechanism} is given twice")
        if rate > 0.0:
            rates[mechanism] = rate
    return ParsedSetting(tuple(sorted(context)), rates)


def parsed_setting(setting: str | None, settings: Mapping[str, Any] | None = None) -> ParsedSetting:
    """`parse_setting` of `setting`, or of its tokens in `settings` (a mapping setting -> tokens) when listed."""
    if settings is not None and setting in settings:
        tokens = settings[setting]
        return parse_setting(tokens if isinstance(tokens, str) else "+".join(tokens))
    return parse_setting(setting)


def same_setting(setting: str | None, wanted: str | None, settings: Mapping[str, Any] | None = None) -> bool:
    """Whether two settings name the same condition (``""``, None and ``"natural"`` are all the default).

    Settings outside the grammar (e.g. a user's ``test_ehr_withheld``) match by name only.
    """
    if (setting or "") == (wanted or ""):
        return True
    try:
        return parsed_setting(setting, settings) == parsed_setting(wanted, settings)
    except ValueError:
        return False


def training_setting(setting: str | None) -> ParsedSetting | None:
    """The part of a setting that names the trained model: its cohort and train-time drop.

    Test-time tokens (``test_cxr_*``) describe only how the test stays were perturbed, and a
    cross-evaluation token names the training cohort before ``_to_``, so the validation predictions of
    the model behind ``cohort_base+train_cxr_drop_0.3+test_cxr_mcar_0.5`` are those of
    ``cohort_base+train_cxr_drop_0.3``.

    Returns:
        The training part, or None for a setting outside the grammar (it has no known training part).

    Examples:
        >>> training_setting("cohort_base+train_cxr_drop_0.3+test_cxr_mcar_0.5")
        ParsedSetting(context=('cohort_base',), rates={'train_cxr_drop': 0.3})
        >>> training_setting("cross_base_to_matched")
        ParsedSetting(context=('cohort_base',), rates={})
    """
    try:
        parsed = parse_setting(setting)
    except ValueError:
        return None
    context: list[str] = []
    for token in parsed.context:
        context.extend(_TRAINING_COHORT.get(token, (token,)))
    rates = {name: rate for name, rate in parsed.rates.items() if not name.startswith("test_cxr_")}
    return ParsedSetting(tuple(sorted(set(context))), rates)
