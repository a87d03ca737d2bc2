"""Labels (stage S5, spec/data.md §5): mortality, length of stay and the 25 CCS phenotypes."""

from __future__ import annotations

import importlib.resources
import io
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


def map_codes(diagnoses: pl.LazyFrame, *, mode: str, parent_fallback: bool = True) -> pl.LazyFrame:
    """(hadm_id, icd_version, icd_code) → (hadm_id, icd_version, icd_code, ccs_id); ccs_id null if unmapped.

    `gem_ccs` keys on (icd_version, icd_code) and, for ICD-10 codes absent from the GEM, retries the
    parent codes down to 3 characters. `carebench_compat` ignores icd_version (its defect, §5.5).
    """
    codes = diagnoses.select("icd_version", "icd_code").unique()
    if mode == "carebench_compat":
        mapped = codes.join(compat_map().lazy(), on="icd_code", how="left")
    elif mode == "gem_ccs":
        table = gem_ccs_map().lazy().select("icd_version", "icd_code", "ccs_id")
        known = codes.join(
            table.select("icd_version", "icd_code").unique(), on=["icd_version", "icd_code"], how="semi"
        )
        mapped = known.join(table, on=["icd_version", "icd_code"], how="left")
        missing = codes.join(known, on=["icd_version", "icd_code"], how="anti")
        if parent_fallback:
            parents = pl.concat(
                [
                    missing.filter(
                        (pl.col("icd_version") == 10) & (pl.col("icd_code").str.len_chars() > length)
                    ).with_columns(parent=pl.col("icd_code").str.slice(0, length), length=pl.lit(length))
                    for length in range(3, 8)
                ]
            )
            best = (
                parents.join(
                    table.rename({"icd_code": "parent"}).select("icd_version", "parent").unique(),
                    on=["icd_version", "parent"],
                    how="semi",
                )
                .sort("length", descending=True)
                .unique(subset=["icd_version", "icd_code"], keep="first")
            )
            via_parent = best.join(
                table.rename({"icd_code": "parent"}), on=["icd_version", "parent"], how="left"
            ).select("icd_version", "icd_code", "ccs_id")
            missing = missing.join(best, on=["icd_version", "icd_code"], how="anti").with_columns(
                ccs_id=pl.lit(None, pl.Int16)
            )
            mapped = pl.concat([mapped, via_parent, missing.select("icd_version", "icd_code", "ccs_id")])
        else:
            mapped = pl.concat([mapped, missing.with_columns(ccs_id=pl.lit(None, pl.Int16))])
    else:
        raise ValueError(f"unknown phenotype mapping {mode!r}; use one of {MAPPING_MODES}")
    return diagnoses.join(mapped, on=["icd_version", "icd_code"], how="left")


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
