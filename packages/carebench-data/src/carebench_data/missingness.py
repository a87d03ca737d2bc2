"""Simulated CXR missingness (data.md §8.2-8.3): seeded, pure transforms of ``has_cxr``.

The dataset on disk is never touched; a loader applies these transforms to the ``has_cxr`` flags of
the split it serves and zeroes the image and ``cxr_hours`` of every removed stay.

Setting grammar (the predictions ``setting`` value; protocols compose with ``+``)::

    natural                                  nothing removed
    train_cxr_drop_<r>                       train split, floor(r*M) lowest-ranked CXRs removed
    trainval_cxr_drop_<r>                    the same on train and validation (upstream behaviour)
    test_cxr_mcar_<r>                        test split, floor(r*M) lowest-ranked
    test_cxr_mnar_<r>                        test split, lowest acuity first (§8.3), ties by rank
    test_cxr_subgroup_<predicate>_<r>        test split, floor(r*M_g) lowest-ranked inside the predicate
    train_cxr_subgroup_<predicate>_<r>       the same on the train split

``<r>`` is a decimal in [0, 1] (``0``, ``0.25``, ``1.0``); M counts the CXR-bearing stays of the split
(or of the subgroup). ``<predicate>`` is ``<column>=<value>`` on sex, race, insurance,
admission_type or first_careunit, or ``age<op><number>`` with op in ``<, <=, >, >=``. Ranking uses
``U("carebench:miss:{protocol}:{seed}:{stay_id}")`` with protocol in drop, mcar, mnar, subgroup and
does not depend on r, so removal is nested in r: a stay removed at 0.25 is removed at 0.5.

Example:
    >>> import numpy as np
    >>> protocols = parse_setting("test_cxr_mcar_0.5")
    >>> has_cxr = np.array([True, True, False, True, True])
    >>> after = apply_missingness(has_cxr, protocols, split="test",
    ...                           stay_ids=np.arange(30000001, 30000006), seed=0)
    >>> int(after.sum()), bool(np.all(has_cxr[after]))
    (2, True)
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from carebench_data.errors import CarebenchDataError
from carebench_data.splits import unit_hashes

__all__ = [
    "ACUITY_FEATURES",
    "PREDICATE_COLUMNS",
    "MissingnessError",
    "MissingnessProtocol",
    "Predicate",
    "acuity_proxy",
    "apply_missingness",
    "apply_protocol",
    "parse_setting",
    "rank_scores",
    "setting_name",
]

logger = logging.getLogger(__name__)

PREDICATE_COLUMNS = ("sex", "race", "insurance", "admission_type", "first_careunit")
"""String columns a subgroup predicate may test with ``=`` (``age`` takes comparison operators)."""

ACUITY_FEATURES = (
    "mbp",
    "sbp",
    "heart_rate",
    "resp_rate",
    "spo2",
    "fio2",
    "temperature",
    "gcs_total",
    "gcs_motor",
    "glucose",
    "ph",
)
"""Default-set features read by the MNAR acuity proxy (§8.3)."""

_SCOPES = {"train": ("train",), "trainval": ("train", "val"), "test": ("test",)}
_ALLOWED_SCOPES = {
    "drop": ("train", "trainval"),
    "mcar": ("test",),
    "mnar": ("test",),
    "subgroup": ("test", "train"),
}
_SETTING = re.compile(r"^(?P<scope>train|trainval|test)_cxr_(?P<kind>drop|mcar|mnar|subgroup)_(?P<rest>.+)$")
_RATE = re.compile(r"^\d+(\.\d+)?$")
_AGE_PREDICATE = re.compile(r"^age(?P<op><=|>=|<|>)(?P<number>-?\d+(\.\d+)?)$")
_COMPARISONS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class MissingnessError(CarebenchDataError):
    """A setting string outside the grammar, or inputs a protocol cannot use."""


@dataclass(frozen=True, kw_only=True)
class Predicate:
    """A subgroup predicate: ``<column>=<value>`` or ``age<op><number>``.

    Attributes:
        column: the stays column tested.
        op: ``=`` for string columns; ``<``, ``<=``, ``>``, ``>=`` for age.
        value: the string compared with ``=``, or the age threshold.
    """

    column: str
    op: str
    value: str | float

    def evaluate(self, attributes: Mapping[str, np.ndarray]) -> np.ndarray:
        """Bool [n]: True for the rows inside the subgroup (a null value is never inside)."""
        if self.column not in attributes:
            raise MissingnessError(f"subgroup predicate needs the stays column {self.column!r}.")
        column = np.asarray(attributes[self.column])
        if self.op == "=":
            return np.asarray(column == self.value, dtype=bool)
        numbers = column.astype(np.float64)
        return np.asarray(_COMPARISONS[self.op](numbers, float(self.value)) & ~np.isnan(numbers), dtype=bool)


@dataclass(frozen=True, kw_only=True)
class MissingnessProtocol:
    """One parsed protocol of the setting grammar.

    Attributes:
        name: its setting string, e.g. ``"test_cxr_mnar_0.5"``.
        kind: ``drop``, ``mcar``, ``mnar`` or ``subgroup`` (also the ranking-hash protocol name).
        splits: the split names it applies to.
        rate: r as an exact fraction, so floor(r*M) has no rounding error.
        predicate: the subgroup predicate (``subgroup`` only).
    """

    name: str
    kind: str
    splits: tuple[str, ...]
    rate: Fraction
    predicate: Predicate | None = None


def _parse_rate(text: str, setting: str) -> Fraction:
    if not _RATE.match(text):
        raise MissingnessError(f"setting {setting!r}: rate {text!r} is not a decimal number such as 0.25.")
    rate = Fraction(text)
    if not 0 <= rate <= 1:
        raise MissingnessError(f"setting {setting!r}: rate {text} must lie in [0, 1].")
    return rate


def _parse_predicate(text: str, setting: str) -> Predicate:
    age = _AGE_PREDICATE.match(text)
    if age:
        return Predicate(column="age", op=age["op"], value=float(age["number"]))
    column, separator, value = text.partition("=")
    if not separator or column not in PREDICATE_COLUMNS or not value:
        raise MissingnessError(
            f"setting {setting!r}: predicate {text!r} must be <column>=<value> with column in "
            f"{', '.join(PREDICATE_COLUMNS)}, or age<op><number> with op in <, <=, >, >=."
        )
    return Predicate(column=column, op="=", value=value)


def _parse_one(text: str) -> MissingnessProtocol:
    match = _SETTING.match(text)
    if not match:
        raise MissingnessError(
            f"unknown missingness setting {text!r}; expected natural, train_cxr_drop_<r>, test_cxr_mcar_<r>, "
            "test_cxr_mnar_<r> or test_cxr_subgroup_<predicate>_<r> (joined with '+')."
        )
    scope, kind, rest = match["scope"], match["kind"], match["rest"]
    if scope not in _ALLOWED_SCOPES[kind]:
        allowed = " or ".join(f"{name}_cxr_{kind}" for name in _ALLOWED_SCOPES[kind])
        raise MissingnessError(f"setting {text!r}: protocol {kind!r} applies as {allowed}, not {scope}.")
    predicate = None
    if kind == "subgroup":
        predicate_text, separator, rate_text = rest.rpartition("_")
        if not separator:
            raise MissingnessError(f"setting {text!r}: expected {scope}_cxr_subgroup_<predicate>_<r>.")
        predicate = _parse_predicate(predicate_text, text)
    else:
        rate_text = rest
    return MissingnessProtocol(
        name=text, kind=kind, splits=_SCOPES[scope], rate=_parse_rate(rate_text, text), predicate=predicate
    )


def parse_setting(setting: str | Sequence[str]) -> tuple[MissingnessProtocol, ...]:
    """Parse a setting string (or several) into protocols, applied in the given order.

    Args:
        setting: e.g. ``"natural"``, ``"test_cxr_mcar_0.5"``,
            ``"train_cxr_drop_0.3+test_cxr_subgroup_sex=F_0.5"``, or a sequence of such strings.

    Returns:
        The protocols; empty for ``natural`` (or an empty sequence).
    """
    texts = [setting] if isinstance(setting, str) else list(setting)
    parts = [part.strip() for text in texts for part in text.split("+")]
    if parts == ["natural"]:
        return ()
    if "natural" in parts:
        raise MissingnessError(f"'natural' cannot be combined with other protocols: {'+'.join(parts)!r}.")
    return tuple(_parse_one(part) for part in parts)


def setting_name(protocols: Sequence[MissingnessProtocol]) -> str:
    """The predictions ``setting`` value: ``natural`` or the protocol names joined with ``+``."""
    return "+".join(protocol.name for protocol in protocols) or "natural"


def rank_scores(stay_ids: np.ndarray, *, protocol: str, seed: int) -> np.ndarray:
    """Float64 [n] ``U("carebench:miss:{protocol}:{seed}:{stay_id}")``: lower is removed first."""
    return unit_hashes(f"carebench:miss:{protocol}:{int(seed)}:{int(stay)}" for stay in np.asarray(stay_ids))


def _hourly(raw: np.ndarray, positions: Mapping[str, int], name: str) -> np.ndarray:
    """Float [n, T] values of one feature, all NaN when the feature is absent."""
    return raw[:, :, positions[name]] if name in positions else np.full(raw.shape[:2], np.nan)


def acuity_proxy(
    ehr_raw: np.ndarray, feature_names: Sequence[str], *, chunk_stays: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """The MNAR acuity proxy of §8.3 from raw observed values (never labels).

    Eight flags, each evaluated per hour: hypotension (mbp < 65 or sbp < 90), tachycardia
    (heart_rate > 110), tachypnea (resp_rate > 24), hypoxemia (spo2 < 92 or fio2 >= 0.5), temperature
    (>= 38.3 or < 36.0), altered mentation (gcs_total < 13, or gcs_motor < 6 in an hour without a
    total), dysglycemia (glucose > 250 or < 70), acidemia (ph < 7.30). An unobserved value never fires.

    Args:
        ehr_raw: float [N, T, F] raw values with NaN (may be memory-mapped; read in chunks).
        feature_names: the F names; absent acuity features never fire (logged once).
        chunk_stays: stays read at a time.

    Returns:
        ``(acuity, flagged_hours)``: int16 [N] number of flags (0-8) that fire in at least one hour,
        and int32 [N] the number of (flag, hour) pairs that fire (the tie-break H).
    """
    positions = {name: index for index, name in enumerate(feature_names)}
    absent = [name for name in ACUITY_FEATURES if name not in positions]
    if absent:
        logger.warning("acuity proxy: features %s are absent; their flags never fire", absent)
    n_stays = ehr_raw.shape[0]
    acuity = np.zeros(n_stays, dtype=np.int16)
    flagged_hours = np.zeros(n_stays, dtype=np.int32)
    for start in range(0, n_stays, chunk_stays):
        raw = np.asarray(ehr_raw[start : start + chunk_stays], dtype=np.float64)
        values = {name: _hourly(raw, positions, name) for name in ACUITY_FEATURES}
        with np.errstate(invalid="ignore"):
            flags = [
                (values["mbp"] < 65) | (values["sbp"] < 90),
                values["heart_rate"] > 110,
                values["resp_rate"] > 24,
                (values["spo2"] < 92) | (values["fio2"] >= 0.5),
                (values["temperature"] >= 38.3) | (values["temperature"] < 36.0),
                (values["gcs_total"] < 13) | (np.isnan(values["gcs_total"]) & (values["gcs_motor"] < 6)),
                (values["glucose"] > 250) | (values["glucose"] < 70),
                values["ph"] < 7.30,
            ]
        fired = np.stack(flags, axis=-1)  # [n, T, 8]
        acuity[start : start + chunk_stays] = fired.any(axis=1).sum(axis=-1)
        flagged_hours[start : start + chunk_stays] = fired.sum(axis=(1, 2))
    return acuity, flagged_hours


def apply_protocol(
    has_cxr: np.ndarray,
    protocol: MissingnessProtocol,
    *,
    split: str,
    stay_ids: np.ndarray,
    seed: int,
    acuity: tuple[np.ndarray, np.ndarray] | None = None,
    attributes: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Apply one protocol to the ``has_cxr`` flags of one split.

    Args:
        has_cxr: bool [n] current flags of the split's stays.
        protocol: a parsed protocol; a split it does not apply to is returned unchanged.
        split: ``train``, ``val`` or ``test``.
        stay_ids: int64 [n] stay ids (ranking keys).
        seed: the run seed of the ranking hash.
        acuity: ``(acuity, flagged_hours)`` of `acuity_proxy`, required by ``mnar``.
        attributes: stays columns for a subgroup predicate (e.g. ``{"sex": ..., "age": ...}``).

    Returns:
        bool [n] new flags: the floor(r*M) first-ordered CXR-bearing (in-subgroup) stays set False.
    """
    flags = np.asarray(has_cxr, dtype=bool).copy()
    ids = np.asarray(stay_ids)
    if flags.shape != ids.shape:
        raise MissingnessError(f"has_cxr has shape {flags.shape} but stay_ids {ids.shape}.")
    if split not in protocol.splits:
        return flags
    eligible = flags.copy()
    if protocol.predicate is not None:
        eligible &= protocol.predicate.evaluate(attributes or {})
    candidates = np.flatnonzero(eligible)
    count = int(protocol.rate * candidates.size)  # Fraction * int floors exactly for r >= 0
    if count == 0:
        return flags
    rank = rank_scores(ids[candidates], protocol=protocol.kind, seed=seed)
    if protocol.kind == "mnar":
        if acuity is None:
            raise MissingnessError(
                f"{protocol.name}: MNAR removal needs the acuity proxy of the split's stays."
            )
        scores, flagged_hours = (np.asarray(values)[candidates] for values in acuity)
        order = np.lexsort((rank, flagged_hours, scores))
    else:
        order = np.argsort(rank, kind="stable")
    flags[candidates[order[:count]]] = False
    return flags


def apply_missingness(
    has_cxr: np.ndarray,
    protocols: Sequence[MissingnessProtocol],
    *,
    split: str,
    stay_ids: np.ndarray,
    seed: int,
    acuity: tuple[np.ndarray, np.ndarray] | None = None,
    attributes: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Apply protocols in order (each counts M on the flags left by the previous ones).

    Args and return value as in `apply_protocol`; an empty ``protocols`` is the identity.
    """
    flags = np.asarray(has_cxr, dtype=bool).copy()
    for protocol in protocols:
        flags = apply_protocol(
            flags, protocol, split=split, stay_ids=stay_ids, seed=seed, acuity=acuity, attributes=attributes
        )
    return flags
