"""Flatten the reference phenotype tables into the bundled `resources/` files (maintainer tool, §5.4).

`gem_ccs`: ICD-9 → CCS from the HCUP single-level CCS 2015 definitions, and ICD-10 → every target of
the CMS 2018 GEM backward map → CCS. `carebench_compat`: the CareBench/MedFuse definitions file as a
flat table in file order. No YAML parser is needed: both definition files have a fixed layout.

Regenerate the bundled tables with:

    python -m carebench_data.phenotype_tables /path/to/shared/data
"""

from __future__ import annotations

import gzip
import io
import re
import sys
from pathlib import Path

import polars as pl

RESOURCES = Path(__file__).parent / "resources"
GEM_CCS_FILE = "phenotype_gem_ccs.csv.gz"
COMPAT_FILE = "phenotype_carebench_compat.csv.gz"

DEFINITION_SCHEMA: dict[str, type[pl.DataType]] = {
    "group": pl.String,
    "ccs_id": pl.Int16,
    "type": pl.String,
    "use_in_benchmark": pl.Boolean,
    "code": pl.String,
}
"""Columns of a flattened phenotype definitions file, one row per code."""
COMPAT_SCHEMA = {**DEFINITION_SCHEMA, "file_order": pl.Int32}
"""Columns of the bundled `carebench_compat` table (`COMPAT_FILE`): the definitions in file order."""

_HCUP_BLOCK = re.compile(
    r'^"(?P<title>.+)":\n  use_in_benchmark: (?P<use>\w+)\n  type: "(?P<type>\w+)"\n  id: (?P<id>\d+)\n  codes: \[(?P<codes>.*)\]',
    re.MULTILINE,
)


def parse_hcup_definitions(text: str) -> pl.DataFrame:
    """HCUP CCS 2015 definitions (mimic3-benchmarks layout) → (group, ccs_id, type, use_in_benchmark, code)."""
    rows: list[tuple[str, int, str, bool, str]] = []
    for match in _HCUP_BLOCK.finditer(text):
        codes = re.findall(r'"([^"]+)"', match["codes"])
        rows += [
            (match["title"], int(match["id"]), match["type"], match["use"] == "True", code) for code in codes
        ]
    return pl.DataFrame(
        rows,
        schema=DEFINITION_SCHEMA,
        orient="row",
    )


def parse_carebench_definitions(text: str) -> pl.DataFrame:
    """CareBench/MedFuse `icd_9_10_definitions.yaml` → (group, ccs_id, type, use_in_benchmark, code, file_order).

    `file_order` numbers the code entries in file order, so "last write wins" can be reproduced.
    """
    rows: list[tuple[str, int, str, bool, str, int]] = []
    group = kind = ""
    ccs_id, use, codes = 0, False, []

    def flush() -> None:
        for code in codes:
            rows.append((group, ccs_id, kind, use, code, len(rows)))

    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            if group:
                flush()
            group, codes = line.rstrip(":").strip().strip("'\""), []
        elif line.startswith("  - "):
            codes.append(line[4:].strip().strip("'\""))
        elif line.startswith("  id:"):
            ccs_id = int(line.split(":", 1)[1])
        elif line.startswith("  type:"):
            kind = line.split(":", 1)[1].strip().strip("'\"")
        elif line.startswith("  use_in_benchmark:"):
            use = line.split(":", 1)[1].strip().lower() == "true"
    if group:
        flush()
    return pl.DataFrame(
        rows,
        schema=COMPAT_SCHEMA,
        orient="row",
    )


def parse_gem(text: str) -> pl.DataFrame:
    """CMS GEM fixed-width text → (source, target, flags); `NoDx` targets are kept (no-map rows)."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    return pl.DataFrame(
        rows, schema={"source": pl.String, "target": pl.String, "flags": pl.String}, orient="row"
    )


def gem_ccs_table(*, gem_text: str, hcup_text: str) -> pl.DataFrame:
    """The bundled `gem_ccs` table: (icd_version Int8, icd_code, ccs_id Int16 nullable, via).

    ICD-9 codes map directly (`via = ccs`); every ICD-10 code of the GEM maps through **every** target
    row to CCS (`via = gem`); a code none of whose targets has a CCS group gets one row with null ccs_id.
    """
    icd9 = (
        parse_hcup_definitions(hcup_text)
        .select(
            pl.lit(9, pl.Int8).alias("icd_version"),
            pl.col("code").alias("icd_code"),
            "ccs_id",
            pl.lit("ccs").alias("via"),
        )
        .unique()
    )
    gem = parse_gem(gem_text)
    mapped = gem.join(icd9.select(pl.col("icd_code").alias("target"), "ccs_id"), on="target", how="left")
    icd10 = (
        mapped.group_by("source")
        .agg(pl.col("ccs_id").drop_nulls().unique())
        .explode("ccs_id")
        .select(
            pl.lit(10, pl.Int8).alias("icd_version"),
            pl.col("source").alias("icd_code"),
            "ccs_id",
            pl.lit("gem").alias("via"),
        )
    )
    return pl.concat([icd9, icd10]).unique().sort(["icd_version", "icd_code", "ccs_id"], nulls_last=True)


def compat_table(*, carebench_text: str) -> pl.DataFrame:
    """The bundled `carebench_compat` table (flattened definitions file, file order kept)."""
    return parse_carebench_definitions(carebench_text)


def write_csv_gz(frame: pl.DataFrame, path: Path) -> None:
    """Write a deterministic gzip CSV (mtime 0, no file name), atomically."""
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    temporary = path.with_name(f".{path.name}.tmp")
    with (
        open(temporary, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as handle,
    ):
        handle.write(buffer.getvalue())
    temporary.replace(path)


def regenerate(shared_data: Path, out_dir: Path = RESOURCES) -> None:
    """Rebuild both bundled tables from the reference files in `shared_data`."""
    hcup = (shared_data / "hcup_ccs_2015_definitions.yaml").read_text()
    gem = (shared_data / "cms_2018_I10gem.txt").read_text()
    carebench = (shared_data / "carebench_icd_9_10_definitions.yaml").read_text()
    write_csv_gz(gem_ccs_table(gem_text=gem, hcup_text=hcup), out_dir / GEM_CCS_FILE)
    write_csv_gz(compat_table(carebench_text=carebench), out_dir / COMPAT_FILE)


if __name__ == "__main__":
    regenerate(Path(sys.argv[1]))
