"""Labels (stage S5, spec/data.md §5): mortality, length of stay and the 25 CCS phenotypes."""

from __future__ import annotations

import importlib.resources
import io
import re
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

import polars as pl

from carebench_data.phenotype_tables import COMPAT_FILE, COMPAT_SCHEMA, GEM_CCS_FILE

LOS_EDGES_DAYS = (2, 3, 4, 5, 6, 7, 14)
LOS_CLASS_NAMES = ("2-3d", "3-4d", "4-5d", "5-6d", "6-7d", "7-14d", "14+d")
MAPPING_MODES = ("gem_ccs", "carebench_compat")


@dataclass(frozen=True)
class Phenotype:
    """One of the 25 benchmark labels: its labels.parquet column, CCS title, id and type."""

    column: str
    title: str
    ccs_id: int
    type: str


def _resource_bytes(name: str) -> bytes:
    return importlib.resources.files("carebench_data").joinpath(f"resources/{name}").read_bytes()


@cache
def phenotypes() -> tuple[Phenotype, ...]:
    """The 25 phenotypes in §5.3 order (bundled `resources/phenotypes.toml`)."""
    entries = tomllib.loads(_resource_bytes("phenotypes.toml").decode())["phenotype"]
    return tuple(Phenotype(e["column"], e["title"], int(e["ccs_id"]), e["type"]) for e in entries)


@cache
def gem_ccs_map() -> pl.DataFrame:
    """Bundled (icd_version, icd_code, ccs_id, via) table of the `gem_ccs` mode."""
    return pl.read_csv(
        io.BytesIO(_resource_bytes(GEM_CCS_FILE)),
        schema={"icd_version": pl.Int8, "icd_code": pl.String, "ccs_id": pl.Int16, "via": pl.String},
    )


@cache
def compat_map() -> pl.DataFrame:
    """`carebench_compat`: code → ccs_id with icd_version ignored and the last write (file order) winning."""
    table = pl.read_csv(
        io.BytesIO(_resource_bytes(COMPAT_FILE)),
        schema=COMPAT_SCHEMA,
    )
    return (
        table.sort("file_order")
        .unique(subset=["code"], keep="last")
        .select(pl.col("code").alias("icd_code"), "ccs_id")
    )


def mortality_labels(stays: pl.LazyFrame, *, mode: str = "icu", grace_hours: float = 0.0) -> pl.LazyFrame:
    """Add `mortality` (Int8) per spec/data.md §5.1; also `death_from_dod_only` for the counts.

    ICU mode: prediction_time ≤ t_d ≤ outtime + grace; with no deathtime, dod is compared at day
    resolution. Hospital mode: prediction_time ≤ t_d ≤ dischtime, or hospital_expire_flag = 1.

    >>> from datetime import datetime, date
    >>> stays = pl.LazyFrame({"prediction_time": [datetime(2180, 1, 3)] * 3,
    ...     "outtime": [datetime(2180, 1, 5)] * 3, "dischtime": [datetime(2180, 1, 9)] * 3,
    ...     "t_death": [datetime(2180, 1, 4), datetime(2180, 1, 8), None],
    ...     "dod": [date(2180, 1, 4), date(2180, 1, 8), date(2180, 1, 5)], "hospital_expire_flag": [1, 1, 0]})
    >>> mortality_labels(stays).collect().get_column("mortality").to_list()
    [1, 0, 1]
    """
    end = pl.col("outtime") + timedelta(hours=grace_hours) if mode == "icu" else pl.col("dischtime")
    start = pl.col("prediction_time")
    by_deathtime = (pl.col("t_death") >= start) & (pl.col("t_death") <= end)
    by_dod = (pl.col("dod") >= start.dt.date()) & (pl.col("dod") <= end.dt.date())
    died = pl.when(pl.col("t_death").is_not_null()).then(by_deathtime).otherwise(by_dod).fill_null(False)
    if mode == "hospital":
        died = died | (pl.col("hospital_expire_flag").fill_null(0) == 1)
    return stays.with_columns(
        mortality=died.cast(pl.Int8),
        death_from_dod_only=(died & pl.col("t_death").is_null()),
    )


def los_labels(stays: pl.LazyFrame) -> pl.LazyFrame:
    """Add `los_days` (Float64) and `los_class` (Int8, left-closed bins [2,3) … [7,14) [14,∞)).

    >>> stays = pl.LazyFrame({"los_hours": [48.0, 71.99, 72.0, 168.0, 336.0]})
    >>> los_labels(stays).collect().get_column("los_class").to_list()
    [0, 0, 1, 5, 6]
    """
    days = pl.col("los_hours") / 24.0
    klass = pl.lit(-1, pl.Int8)
    for index, edge in enumerate(LOS_EDGES_DAYS):
        klass = pl.when(days >= edge).then(pl.lit(index, pl.Int8)).otherwise(klass)
    return stays.with_columns(los_days=days, los_class=klass.cast(pl.Int8))


MAPPING_VIAS = ("ccs", "gem", "child_fallback", "parent_fallback", "unmapped")
"""How a diagnosis code found its groups under `gem_ccs`, in the order the routes are tried."""


def map_codes(
    diagnoses: pl.LazyFrame, *, mode: str, parent_fallback: bool = True, child_fallback: bool = True
) -> pl.LazyFrame:
    """(hadm_id, icd_version, icd_code) → the same rows with ccs_id (null if unmapped) and via.

    `gem_ccs` keys on (icd_version, icd_code): an ICD-9 code maps through the CCS grouper (`via` =
    `ccs`), an ICD-10 code through every GEM target (`gem`). An ICD-10 code absent from the GEM first
    takes the groups of its GEM extensions when they all share the same groups (`child_fallback`:
    codes in use before FY2018 and then split, e.g. E780 → E7800, E7801), then retries its parent
    codes down to 3 characters (`parent_fallback`); otherwise it is `unmapped` (ccs_id and via null).
    A code may map to several groups (one row each). `carebench_compat` ignores icd_version (one of the
    published definitions' defects) and sets via = `compat` on mapped codes.
    """
    if mode == "carebench_compat":
        codes = diagnoses.select("icd_version", "icd_code").unique()
        mapped = codes.join(compat_map().lazy(), on="icd_code", how="left").with_columns(
            via=pl.when(pl.col("ccs_id").is_not_null()).then(pl.lit("compat"))
        )
    elif mode == "gem_ccs":
        codes = diagnoses.select("icd_version", "icd_code").unique().collect()
        mapped = _gem_ccs_codes(codes, parent_fallback=parent_fallback, child_fallback=child_fallback).lazy()
    else:
        raise ValueError(f"unknown phenotype mapping {mode!r}; use one of {MAPPING_MODES}")
    return diagnoses.join(mapped, on=["icd_version", "icd_code"], how="left")


_CODE_SCHEMA = {"icd_version": pl.Int8, "icd_code": pl.String, "ccs_id": pl.Int16, "via": pl.String}


def _gem_ccs_codes(codes: pl.DataFrame, *, parent_fallback: bool, child_fallback: bool) -> pl.DataFrame:
    """Distinct (icd_version, icd_code) → (icd_version, icd_code, ccs_id, via) under `gem_ccs`."""
    table = gem_ccs_map()
    codes = codes.cast({"icd_version": pl.Int8, "icd_code": pl.String})
    direct = codes.join(table, on=["icd_version", "icd_code"], how="inner")
    missing = codes.join(table, on=["icd_version", "icd_code"], how="anti")
    routes = [direct]
    if child_fallback:
        via_children = _child_fallback(missing)
        routes.append(via_children)
        missing = missing.join(via_children, on=["icd_version", "icd_code"], how="anti")
    if parent_fallback:
        via_parent = _parent_fallback(missing)
        routes.append(via_parent)
        missing = missing.join(via_parent, on=["icd_version", "icd_code"], how="anti")
    routes.append(missing.with_columns(ccs_id=pl.lit(None, pl.Int16), via=pl.lit(None, pl.String)))
    return pl.concat([route.select(list(_CODE_SCHEMA)).cast(_CODE_SCHEMA) for route in routes])


@cache
def _gem_prefixes() -> pl.DataFrame:
    """(prefix, child): every prefix of at least 3 characters of every ICD-10 GEM code, the code itself excluded."""
    icd10 = gem_ccs_map().filter(pl.col("icd_version") == 10).get_column("icd_code").unique()
    lengths = icd10.str.len_chars()
    return pl.concat(
        [
            pl.DataFrame({"prefix": icd10.str.slice(0, length), "child": icd10}).filter(lengths > length)
            for length in range(3, int(lengths.max() or 3))
        ]
    )


def _extension_pattern(code: str) -> tuple[str, re.Pattern[str]]:
    """(stem, pattern) of the GEM codes that extend `code`.

    Codes that start with it (E780 → E7800, E7801), or, when the code holds placeholder X
    characters after the category (T8359XA: the X stood for a sixth character added later), the
    codes of the same length that fill each X and agree everywhere else (T83590A … T83598A).
    """
    positions = [i for i, character in enumerate(code) if character == "X" and 3 <= i < len(code) - 1]
    if not positions or len(code) != 7:
        return code, re.compile(re.escape(code) + ".+")
    pattern = "".join("." if i in positions else re.escape(c) for i, c in enumerate(code))
    return code[: positions[0]], re.compile(pattern)


def _child_fallback(missing: pl.DataFrame) -> pl.DataFrame:
    """ICD-10 codes absent from the GEM whose GEM extensions all map to the same non-empty CCS groups."""
    icd10 = missing.filter(pl.col("icd_version") == 10).get_column("icd_code").to_list()
    stems = {code: _extension_pattern(code) for code in icd10}
    candidates = pl.DataFrame(
        {"icd_code": list(stems), "prefix": [stem for stem, _ in stems.values()]},
        schema={"icd_code": pl.String, "prefix": pl.String},
    ).join(_gem_prefixes(), on="prefix", how="inner")
    children = candidates.filter(
        pl.Series(
            [
                bool(stems[code][1].fullmatch(child))
                for code, child in candidates.select("icd_code", "child").iter_rows()
            ],
            dtype=pl.Boolean,
        )
    )
    groups = (
        gem_ccs_map()
        .filter(pl.col("icd_version") == 10)
        .group_by("icd_code")
        .agg(pl.col("ccs_id").drop_nulls().unique().sort().alias("groups"))
    )
    agreed = (
        children.join(groups.rename({"icd_code": "child"}), on="child", how="inner")
        .group_by("icd_code")
        .agg(pl.col("groups").first(), pl.col("groups").n_unique().alias("variants"))
        .filter((pl.col("variants") == 1) & (pl.col("groups").list.len() > 0))
    )
    return agreed.select(
        pl.lit(10, pl.Int8).alias("icd_version"),
        "icd_code",
        pl.col("groups").alias("ccs_id"),
        pl.lit("child_fallback").alias("via"),
    ).explode("ccs_id")


def _parent_fallback(missing: pl.DataFrame) -> pl.DataFrame:
    """ICD-10 codes absent from the GEM that take the groups of their longest parent code in it."""
    table = gem_ccs_map()
    icd10 = missing.filter(pl.col("icd_version") == 10)
    parents = pl.concat(
        [
            icd10.filter(pl.col("icd_code").str.len_chars() > length).with_columns(
                parent=pl.col("icd_code").str.slice(0, length), length=pl.lit(length)
            )
            for length in range(3, 8)
        ]
    )
    best = (
        parents.join(
            table.select("icd_version", pl.col("icd_code").alias("parent")).unique(),
            on=["icd_version", "parent"],
            how="semi",
        )
        .sort("length", descending=True)
        .unique(subset=["icd_version", "icd_code"], keep="first")
    )
    return best.join(
        table.select("icd_version", pl.col("icd_code").alias("parent"), "ccs_id"),
        on=["icd_version", "parent"],
        how="left",
    ).select("icd_version", "icd_code", "ccs_id", pl.lit("parent_fallback").alias("via"))


def mapping_counts(mapped: pl.DataFrame, *, titles: pl.DataFrame | None, top: int = 20) -> dict[str, Any]:
    """How the diagnosis codes of `map_codes(..., mode="gem_ccs")` found their groups (the audit).

    Returns distinct codes and diagnosis rows per route (`MAPPING_VIAS`), codes that reach no CCS
    group at all (`no_ccs_group`, the unmapped included), and the `top` most frequent codes of each
    fallback with the groups they took.
    """
    routes = mapped.with_columns(via=pl.col("via").fill_null("unmapped"))
    per_code = (
        routes.unique(subset=["hadm_id", "icd_version", "icd_code"])
        .group_by("icd_version", "icd_code", "via")
        .len()
    )
    groups = routes.group_by("icd_version", "icd_code").agg(pl.col("ccs_id").drop_nulls().unique().sort())
    counts: dict[str, Any] = {
        "codes": {via: int((per_code.get_column("via") == via).sum()) for via in MAPPING_VIAS},
        "diagnoses": {
            via: int(per_code.filter(pl.col("via") == via).get_column("len").sum()) for via in MAPPING_VIAS
        },
        "no_ccs_group": int(groups.filter(pl.col("ccs_id").list.len() == 0).height),
    }
    for via in ("child_fallback", "parent_fallback"):
        frequent = (
            per_code.filter(pl.col("via") == via)
            .join(groups, on=["icd_version", "icd_code"], how="left")
            .sort(["len", "icd_version", "icd_code"], descending=[True, False, False])
            .head(top)
        )
        if titles is not None:
            frequent = frequent.join(titles, on=["icd_version", "icd_code"], how="left")
        counts[f"{via}_codes"] = [
            {
                "icd_version": int(row["icd_version"]),
                "icd_code": row["icd_code"],
                "count": int(row["len"]),
                "ccs_ids": [int(group) for group in row["ccs_id"]],
                "title": row.get("long_title"),
            }
            for row in frequent.iter_rows(named=True)
        ]
    return counts


def phenotype_labels(stays: pl.LazyFrame, *, mapped: pl.LazyFrame) -> pl.LazyFrame:
    """Add the 25 Int8 phenotype columns: 1 when any diagnosis of the admission maps to the group."""
    groups = [p.ccs_id for p in phenotypes()]
    per_admission = (
        mapped.filter(pl.col("ccs_id").is_in(groups))
        .group_by("hadm_id")
        .agg([(pl.col("ccs_id") == p.ccs_id).any().cast(pl.Int8).alias(p.column) for p in phenotypes()])
    )
    return stays.join(per_admission, on="hadm_id", how="left").with_columns(
        [pl.col(p.column).fill_null(0).cast(pl.Int8) for p in phenotypes()]
    )


def unmapped_report(
    mapped: pl.DataFrame, *, titles: pl.DataFrame | None, top: int = 20
) -> list[dict[str, Any]]:
    """The `top` most frequent unmapped (icd_version, icd_code) pairs, with titles when available."""
    frequent = (
        mapped.filter(pl.col("ccs_id").is_null())
        .group_by("icd_version", "icd_code")
        .len()
        .sort(["len", "icd_version", "icd_code"], descending=[True, False, False])
        .head(top)
    )
    if titles is not None:
        frequent = frequent.join(titles, on=["icd_version", "icd_code"], how="left")
    return [
        {
            "icd_version": int(row["icd_version"]),
            "icd_code": row["icd_code"],
            "count": int(row["len"]),
            "title": row.get("long_title"),
        }
        for row in frequent.iter_rows(named=True)
    ]


def labels_manifest(*, mortality_mode: str, mapping: str) -> dict[str, Any]:
    """`manifest.json["labels"]`, exactly the shape agreed in INTERFACES.md."""
    columns = [p.column for p in phenotypes()]
    return {
        "mortality_mode": mortality_mode,
        "los": {"class_names": list(LOS_CLASS_NAMES), "edges_days": list(LOS_EDGES_DAYS)},
        "phenotype": {
            "mapping": mapping,
            "columns": [
                {"name": p.column, "title": p.title, "ccs_id": p.ccs_id, "type": p.type} for p in phenotypes()
            ],
        },
        "tasks": {
            "mortality": {"kind": "binary", "columns": ["mortality"], "label_names": ["mortality"]},
            "phenotype": {"kind": "multilabel", "columns": columns, "label_names": columns},
            "los": {"kind": "multiclass", "columns": ["los_class"], "label_names": list(LOS_CLASS_NAMES)},
        },
    }
