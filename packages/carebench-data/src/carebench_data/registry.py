"""EHR feature registry (spec/data.md §4.1): features are data in a bundled TOML file, not code."""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from carebench_data.errors import CarebenchDataError

BUNDLED_SETS = ("default", "extended")
EVENT_TABLES = ("chartevents", "labevents", "outputevents")


class RegistryError(CarebenchDataError):
    """The feature registry is malformed or disagrees with the MIMIC-IV dictionaries."""


@dataclass(frozen=True)
class Conversion:
    """A unit conversion: `transform` applies where `when` holds and is counted under `counter`.

    Rows where `when` is false are counted under `kept_counter` when it is set (a value already in the
    canonical unit on an itemid that usually charts another unit).
    """

    when: Callable[[pl.Expr], pl.Expr]
    transform: Callable[[pl.Expr], pl.Expr]
    counter: str
    kept_counter: str | None = None


def _always(x: pl.Expr) -> pl.Expr:
    return x.is_not_null()


def _f_to_c(x: pl.Expr) -> pl.Expr:
    return (x - 32.0) / 1.8


CONVERSIONS: dict[str, Conversion] = {
    "fahrenheit_to_celsius": Conversion(_always, _f_to_c, "converted"),
    "fahrenheit_to_celsius_unless_valid": Conversion(
        lambda x: ~x.is_between(26.0, 45.0), _f_to_c, "converted", kept_counter="unit_fixed"
    ),
    "celsius_fix_fahrenheit": Conversion(lambda x: x >= 79.0, _f_to_c, "unit_fixed"),
    "pound_to_kg": Conversion(_always, lambda x: x * 0.453592, "converted"),
    "inch_to_cm": Conversion(_always, lambda x: x * 2.54, "converted"),
    "percent_to_fraction_above_1": Conversion(lambda x: x > 1.0, lambda x: x / 100.0, "converted"),
    "fraction_to_percent_at_most_1": Conversion(lambda x: x <= 1.0, lambda x: x * 100.0, "unit_fixed"),
}
"""Conversion names usable in `convert` (spec/data.md §4.1; the temperature rules of §4.2)."""

_INTERVAL = re.compile(r"^\s*([\[(])\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+|inf)\s*([\])])\s*$")


@dataclass(frozen=True)
class Interval:
    """A valid range such as `(0, 300]`; `closed` is `both`, `left`, `right` or `neither`."""

    low: float
    high: float
    closed: str

    @classmethod
    def parse(cls, text: str) -> Interval:
        """Parse `"[14, 300)"`-style interval strings.

        >>> Interval.parse("(0, 300]")
        Interval(low=0.0, high=300.0, closed='right')
        """
        match = _INTERVAL.match(text.replace("−", "-"))
        if match is None:
            raise RegistryError(f"invalid interval {text!r}: write it like '[14, 300)'")
        left, low, high, right = match.groups()
        closed = {("[", "]"): "both", ("[", ")"): "left", ("(", "]"): "right", ("(", ")"): "neither"}[
            (left, right)
        ]
        return cls(float(low), float(high), closed)

    def contains(self, x: pl.Expr) -> pl.Expr:
        """Boolean expression: x lies inside the interval."""
        return x.is_between(self.low, self.high, closed=self.closed)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        """The features.json form `{low, high, closed}`."""
        return {"low": self.low, "high": self.high, "closed": self.closed}


@dataclass(frozen=True)
class Source:
    """Where a feature's values come from: one table, itemids in priority order, and how to parse them."""

    table: str
    itemids: tuple[int, ...]
    convert: str | None = None
    encode: tuple[tuple[str, float], ...] | None = None
    encode_match: str = "exact"
    fluid: str | None = None
    expect_label: str | None = None
    subtract_itemids: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The features.json form of this source."""
        return {
            "table": self.table,
            "itemids": list(self.itemids),
            "convert": self.convert,
            "encode": None if self.encode is None else dict(self.encode),
            "fluid": self.fluid,
            "subtract_itemids": list(self.subtract_itemids),
        }


@dataclass(frozen=True)
class Feature:
    """One EHR channel: the F axis of ehr.npy in registry order."""

    name: str
    label: str
    unit: str
    kind: str
    sets: tuple[str, ...]
    valid: Interval
    agg: str = "last"
    scale: str = "inherit"
    sources: tuple[Source, ...] = ()
    derived: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The features.json entry."""
        entry: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "unit": self.unit,
            "kind": self.kind,
            "valid": self.valid.as_dict(),
            "agg": self.agg,
            "scale": self.scale,
        }
        if self.derived:
            entry["derived"] = {"op": "sum", "features": list(self.derived)}
        else:
            entry["sources"] = [source.as_dict() for source in self.sources]
        return entry


@dataclass(frozen=True)
class Registry:
    """An ordered feature set loaded from a TOML registry, with the file's SHA-256."""

    name: str
    features: tuple[Feature, ...]
    sha256: str
    path: str

    @property
    def names(self) -> list[str]:
        """Feature names in F order."""
        return [feature.name for feature in self.features]

    def tables(self) -> list[str]:
        """Event tables that at least one feature reads."""
        used = {source.table for feature in self.features for source in feature.sources}
        return [table for table in EVENT_TABLES if table in used]

    def item_map(self, table: str) -> pl.DataFrame:
        """One row per itemid of `table`: feature index, priority (lower wins ties), sign, source index.

        Columns: itemid Int32, feature Int16, priority Int16, sign Float64 (−1 for subtract_itemids),
        source Int16 (index into `sources_flat()`).
        """
        rows: dict[str, list[Any]] = {"itemid": [], "feature": [], "priority": [], "sign": [], "source": []}
        flat = self.sources_flat()
        for source_index, (feature_index, source_rank, source) in enumerate(flat):
            if source.table != table:
                continue
            ids = [(itemid, 1.0) for itemid in source.itemids] + [(i, -1.0) for i in source.subtract_itemids]
            for rank, (itemid, sign) in enumerate(ids):
                rows["itemid"].append(itemid)
                rows["feature"].append(feature_index)
                rows["priority"].append(source_rank * 100 + rank)
                rows["sign"].append(sign)
                rows["source"].append(source_index)
        return pl.DataFrame(
            rows,
            schema={
                "itemid": pl.Int32,
                "feature": pl.Int16,
                "priority": pl.Int16,
                "sign": pl.Float64,
                "source": pl.Int16,
            },
        )

    def sources_flat(self) -> list[tuple[int, int, Source]]:
        """(feature index, source rank within the feature, source) for every source, in file order."""
        return [
            (feature_index, rank, source)
            for feature_index, feature in enumerate(self.features)
            for rank, source in enumerate(feature.sources)
        ]

    def features_json(self) -> dict[str, Any]:
        """The content of features.json."""
        return {
            "registry": self.name,
            "registry_sha256": self.sha256,
            "features": [feature.as_dict() for feature in self.features],
        }


def _bundled_path() -> Path:
    return Path(str(importlib.resources.files("carebench_data").joinpath("resources/features.toml")))


def load_registry(name_or_path: str | Path = "default", *, feature_set: str | None = None) -> Registry:
    """Load the bundled registry set (`default`: F = 17, `extended`: F = 47) or a user TOML file.

    Args:
        name_or_path: `default`, `extended`, or a path to a registry TOML file.
        feature_set: the set to select from a user file; None keeps every feature in file order.

    Returns:
        The validated `Registry` (unique names, known conversions, derived features after their parts).
    """
    if str(name_or_path) in BUNDLED_SETS:
        path, selected = _bundled_path(), str(name_or_path)
    else:
        path, selected = Path(name_or_path), feature_set
        if not path.is_file():
            raise RegistryError(
                f"feature registry {path} not found; use 'default', 'extended' or a TOML file"
            )
    content = path.read_bytes()
    try:
        document = tomllib.loads(content.decode("utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise RegistryError(f"{path}: invalid TOML ({error})") from None
    features = [_parse_feature(entry, path=path) for entry in document.get("feature", [])]
    if selected is not None:
        features = [feature for feature in features if selected in feature.sets]
    if not features:
        raise RegistryError(f"{path}: no features in set {selected!r}")
    _check(features, path=path)
    return Registry(
        name=selected or path.stem,
        features=tuple(features),
        sha256=hashlib.sha256(content).hexdigest(),
        path=str(path),
    )


_FEATURE_KEYS = {"name", "label", "unit", "kind", "sets", "valid", "agg", "scale", "source", "derived"}
_SOURCE_KEYS = {
    "table",
    "itemids",
    "convert",
    "encode",
    "encode_match",
    "fluid",
    "expect_label",
    "subtract_itemids",
}


def _parse_feature(entry: dict[str, Any], *, path: Path) -> Feature:
    name = entry.get("name", "?")
    unknown = set(entry) - _FEATURE_KEYS
    if unknown:
        raise RegistryError(f"{path}: feature {name!r} has unknown key(s) {sorted(unknown)}")
    sources = []
    for raw in entry.get("source", []):
        bad = set(raw) - _SOURCE_KEYS
        if bad:
            raise RegistryError(f"{path}: a source of {name!r} has unknown key(s) {sorted(bad)}")
        encode = raw.get("encode")
        sources.append(
            Source(
                table=raw["table"],
                itemids=tuple(int(i) for i in raw["itemids"]),
                convert=raw.get("convert"),
                encode=None
                if encode is None
                else tuple((str(k).lower(), float(v)) for k, v in encode.items()),
                encode_match=raw.get("encode_match", "exact"),
                fluid=raw.get("fluid"),
                expect_label=raw.get("expect_label"),
                subtract_itemids=tuple(int(i) for i in raw.get("subtract_itemids", [])),
            )
        )
    derived = entry.get("derived")
    try:
        return Feature(
            name=entry["name"],
            label=entry.get("label", entry["name"]),
            unit=entry["unit"],
            kind=entry["kind"],
            sets=tuple(entry.get("sets", [])),
            valid=Interval.parse(entry["valid"]),
            agg=entry.get("agg", "last"),
            scale=entry.get("scale", "inherit"),
            sources=tuple(sources),
            derived=tuple(derived["features"]) if derived else (),
        )
    except KeyError as error:
        raise RegistryError(f"{path}: feature {name!r} lacks the key {error.args[0]!r}") from None


def _check(features: list[Feature], *, path: Path) -> None:
    names = [feature.name for feature in features]
    problems = [f"duplicate name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]
    seen: dict[tuple[str, int], str] = {}
    for feature in features:
        if feature.kind not in {"continuous", "ordinal"}:
            problems.append(f"{feature.name}: kind must be continuous or ordinal")
        if feature.agg not in {"last", "sum"}:
            problems.append(f"{feature.name}: agg must be last or sum")
        if feature.scale not in {"inherit", "robust", "standard", "none"}:
            problems.append(f"{feature.name}: scale must be inherit, robust, standard or none")
        if bool(feature.sources) == bool(feature.derived):
            problems.append(f"{feature.name}: give either sources or derived")
        for part in feature.derived:
            if part not in names or part == feature.name:
                problems.append(f"{feature.name}: derived part {part!r} is not a feature of this set")
        for source in feature.sources:
            if source.table not in EVENT_TABLES:
                problems.append(f"{feature.name}: unknown table {source.table!r}")
            if source.convert is not None and source.convert not in CONVERSIONS:
                problems.append(f"{feature.name}: unknown conversion {source.convert!r}")
            if source.encode_match not in {"exact", "prefix"}:
                problems.append(f"{feature.name}: encode_match must be exact or prefix")
            for itemid in (*source.itemids, *source.subtract_itemids):
                key = (source.table, itemid)
                if key in seen:
                    problems.append(f"itemid {itemid} used by both {seen[key]} and {feature.name}")
                seen[key] = feature.name
    if problems:
        raise RegistryError(f"{path}: " + "; ".join(problems))


def validate_against_dictionaries(
    registry: Registry, *, d_items: pl.DataFrame, d_labitems: pl.DataFrame
) -> None:
    """Check every registry itemid against d_items (linksto) and d_labitems (fluid, label) (spec §12).

    Raises `RegistryError` listing every offending itemid.
    """
    items = {row["itemid"]: row for row in d_items.iter_rows(named=True)}
    labs = {row["itemid"]: row for row in d_labitems.iter_rows(named=True)}
    problems: list[str] = []
    for feature in registry.features:
        for source in feature.sources:
            for itemid in (*source.itemids, *source.subtract_itemids):
                if source.table == "labevents":
                    row = labs.get(itemid)
                    if row is None:
                        problems.append(f"{itemid} ({feature.name}) not in d_labitems")
                        continue
                    if source.fluid is not None and (row["fluid"] or "").lower() != source.fluid.lower():
                        problems.append(
                            f"{itemid} ({feature.name}) has fluid {row['fluid']!r}, expected {source.fluid!r}"
                        )
                else:
                    row = items.get(itemid)
                    if row is None:
                        problems.append(f"{itemid} ({feature.name}) not in d_items")
                        continue
                    if (row["linksto"] or "").lower() != source.table:
                        problems.append(
                            f"{itemid} ({feature.name}) links to {row['linksto']!r}, not {source.table}"
                        )
                if (
                    source.expect_label is not None
                    and (row["label"] or "").lower() != source.expect_label.lower()
                ):
                    problems.append(
                        f"{itemid} ({feature.name}) is labelled {row['label']!r}, expected {source.expect_label!r}"
                    )
    if problems:
        raise RegistryError(
            f"feature registry {registry.name!r} disagrees with the MIMIC-IV dictionaries: "
            + "; ".join(problems)
        )
