"""`verify_dataset` and `verify_raw` (spec/data.md §14): checksums, shapes and internal consistency."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from carebench_data.config import CohortConfig
from carebench_data.cxr import row_image_path
from carebench_data.download import parse_sums
from carebench_data.errors import CarebenchDataError
from carebench_data.labels import LOS_EDGES_DAYS
from carebench_data.manifest import MANIFEST, sha256_file
from carebench_data.raw import (
    CXR_TABLES,
    FORMATS,
    MIMIC_IV_TABLES,
    ResolvedTable,
    TableSpec,
    base_version,
    count_rows,
    detect_version,
    read_small_table,
    resolve_table,
)
from carebench_data.registry import load_registry, validate_against_dictionaries
from carebench_data.splits import fold_parts

logger = logging.getLogger(__name__)

EXPECTED_ROWS: dict[str, dict[str, int]] = {
    "2.2": {
        "patients": 299_712,
        "admissions": 431_231,
        "icustays": 73_181,
        "chartevents": 313_645_063,
        "labevents": 118_171_367,
        "outputevents": 4_234_967,
        "diagnoses_icd": 4_756_326,
        "d_items": 4_014,
        "d_labitems": 1_622,
        "d_icd_diagnoses": 109_775,
    },
    "3.1": {
        "patients": 364_627,
        "admissions": 546_028,
        "icustays": 94_458,
        "chartevents": 432_997_491,
        "labevents": 158_374_764,
        "outputevents": 5_359_395,
        "diagnoses_icd": 6_364_488,
        "d_items": 4_095,
        "d_labitems": 1_650,
        "d_icd_diagnoses": 112_107,
    },
    "2.2-demo": {
        "patients": 100,
        "admissions": 275,
        "icustays": 140,
        "chartevents": 668_862,
        "labevents": 107_727,
        "outputevents": 9_362,
        "diagnoses_icd": 4_506,
        "d_items": 4_014,
        "d_labitems": 1_622,
        "d_icd_diagnoses": 109_775,
    },
}
"""Exact raw row counts of the first-class releases (spec/data.md §10.1)."""

COHORT_RANGES: dict[str, tuple[tuple[int, int], tuple[float, float] | None]] = {
    "2.2": ((29_000, 37_000), (0.22, 0.28)),
    "3.1": ((38_000, 47_000), (0.16, 0.22)),
    "2.2-demo": ((74, 74), None),
}
"""Default-cohort N and has_cxr fraction per fingerprint: outside them, `verify` warns.

v2.2 and v3.1 are estimates; the demo's 74 stays are measured (it has no CXR counterpart, so no
fraction).
"""


class VerificationError(CarebenchDataError):
    """A dataset directory or raw tree failed verification; the message lists every problem."""


@dataclass
class VerifyReport:
    """What `verify_*` checked: `problems` fail verification, `warnings` do not."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def raise_if_failed(self, what: str) -> None:
        """Raise `VerificationError` listing every problem."""
        if self.problems:
            raise VerificationError(f"{what}: {len(self.problems)} problem(s): " + "; ".join(self.problems))


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, checked to be a JSON object whose `files` map each path to its `sha256`.

    Raises:
        VerificationError: the manifest is not UTF-8, not JSON, or lacks the file list.
    """
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise VerificationError(
            f"{path}: not valid JSON ({str(error).splitlines()[0]}); the dataset is damaged, rebuild it"
        ) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in files.values()
    ):
        raise VerificationError(
            f"{path}: no file list with SHA-256 hashes; not a carebench manifest, or a damaged one (rebuild it)"
        )
    return manifest


def verify_dataset(path: Path, *, raise_on_error: bool = True) -> VerifyReport:
    """Check a built dataset directory against its manifest and the schema (spec/data.md §14).

    Returns the report (warnings included); raises `VerificationError` on any problem unless
    `raise_on_error` is False.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise VerificationError(
            f"{path}: no manifest.json; not a carebench dataset (or an interrupted build)"
        )
    manifest = _read_manifest(manifest_path)
    try:
        return _verify_dataset(path, manifest, raise_on_error=raise_on_error)
    except KeyError as error:  # the hashes held, but the manifest was edited (it is not hashed itself)
        raise VerificationError(f"{manifest_path}: lacks the entry {error}; the dataset is damaged") from None


def _verify_dataset(path: Path, manifest: dict[str, Any], *, raise_on_error: bool) -> VerifyReport:
    report = VerifyReport()
    problems = report.problems

    for relpath, entry in manifest["files"].items():
        file = path / relpath
        if not file.is_file():
            problems.append(f"{relpath} is missing")
        elif sha256_file(file) != entry["sha256"]:
            problems.append(
                f"{relpath}: SHA-256 differs from the manifest (the file changed after the build)"
            )
    extra = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    for relpath in extra:
        if relpath != MANIFEST and relpath not in manifest["files"]:
            problems.append(f"{relpath} is not listed in the manifest")
    report.checked.append("file hashes")
    if problems:
        if raise_on_error:
            report.raise_if_failed(str(path))
        return report

    stays = pl.read_parquet(path / "stays.parquet")
    labels = pl.read_parquet(path / "labels.parquet")
    features = json.loads((path / "features.json").read_text())["features"]
    ehr = np.load(path / "ehr.npy", mmap_mode="r")
    cxr = np.load(path / "cxr.npy", mmap_mode="r")
    n = stays.height
    has_cxr = stays.get_column("has_cxr").to_numpy()
    m = int(has_cxr.sum())

    if ehr.shape != (n, 48, len(features)) or ehr.dtype != np.float32:
        problems.append(
            f"ehr.npy has shape {ehr.shape} {ehr.dtype}, expected ({n}, 48, {len(features)}) float32"
        )
    if cxr.ndim != 3 or cxr.shape[0] != m or cxr.shape[1] != cxr.shape[2] or cxr.dtype != np.uint8:
        problems.append(f"cxr.npy has shape {cxr.shape} {cxr.dtype}, expected ({m}, S, S) uint8")
    report.checked.append("shapes")

    stay_ids = stays.get_column("stay_id")
    if stay_ids.is_duplicated().any():
        problems.append("stays.parquet: stay_id is not unique")
    if not stay_ids.equals(labels.get_column("stay_id")):
        problems.append("labels.parquet: stay_id differs from stays.parquet (values or order)")
    if not stay_ids.is_sorted():
        problems.append("stays.parquet: rows are not in ascending stay_id order")
    index = stays.get_column("cxr_index").to_numpy()
    expected_index = np.where(has_cxr, np.cumsum(has_cxr) - 1, -1)
    if not np.array_equal(index, expected_index):
        problems.append(
            "stays.cxr_index does not run 0 … M−1 in row order with −1 exactly where has_cxr is false"
        )
    if (stays.get_column("prediction_time") != stays.get_column("intime") + timedelta(hours=48)).any():
        problems.append("prediction_time differs from intime + 48 h")
    lookback = float(manifest["config"]["cxr"]["lookback_hours"])
    hours = stays.filter(pl.col("has_cxr")).get_column("cxr_hours")
    if hours.null_count() or ((hours < -lookback) | (hours > 48)).any():
        problems.append(f"cxr_hours outside [−{lookback}, 48] (leakage guard)")
    if stays.filter(~pl.col("has_cxr")).get_column("cxr_dicom_id").null_count() != n - m:
        problems.append("cxr_dicom_id set on a stay without a CXR")
    report.checked.append("stays consistency")

    los = labels.get_column("los_days")
    if (los < 2).any():
        problems.append("los_days below 2 (the cohort requires ICU LoS ≥ 48 h)")
    expected_class = (
        np.searchsorted(np.asarray(LOS_EDGES_DAYS, dtype=float), los.to_numpy(), side="right") - 1
    )
    if not np.array_equal(expected_class, labels.get_column("los_class").to_numpy()):
        problems.append("los_class inconsistent with los_days and the edges")
    binary = [c for c in labels.columns if c not in {"stay_id", "los_days", "los_class"}]
    for column in binary:
        if not labels.get_column(column).is_in([0, 1]).all():
            problems.append(f"labels.{column} has values outside {{0, 1}}")
    report.checked.append("labels")

    values = np.asarray(ehr)
    for f, feature in enumerate(features):
        column = values[:, :, f]
        observed = column[~np.isnan(column)]
        if not observed.size:
            continue
        valid = feature["valid"]
        low_ok = observed >= valid["low"] if valid["closed"] in {"both", "left"} else observed > valid["low"]
        high_ok = (
            observed <= valid["high"] if valid["closed"] in {"both", "right"} else observed < valid["high"]
        )
        bad = int((~(low_ok & high_ok)).sum())
        if bad:
            problems.append(f"ehr.npy: {bad} value(s) of {feature['name']} outside its valid range")
    if n and np.isnan(values).all(axis=(1, 2)).any():
        problems.append("ehr.npy: a stay has no observed value")
    report.checked.append("ehr ranges")

    salt = manifest["config"]["splits"]["salt"]
    if not np.array_equal(
        fold_parts(stays.get_column("subject_id").to_numpy(), salt=salt),
        stays.get_column("fold_part").to_numpy(),
    ):
        problems.append("fold_part differs from the recomputed subject hash")
    report.checked.append("fold parts")

    report.warnings += _cohort_warnings(manifest, n_stays=n, n_with_cxr=m)
    report.info = {
        "stays": n,
        "with_cxr": m,
        "features": len(features),
        "content_hash": manifest["content_hash"],
    }
    if raise_on_error:
        report.raise_if_failed(str(path))
    return report


def _cohort_warnings(manifest: dict[str, Any], *, n_stays: int, n_with_cxr: int) -> list[str]:
    """Cohort size and has_cxr fraction against the expectations of the release the build fingerprinted.

    The expectations describe the default cohort rules, so other rules are not compared; the CXR
    fraction is not compared for an EHR-only build.
    """
    source = manifest["source"]
    release = str(source.get("fingerprint", {}).get("detected") or source.get("mimic_iv_version"))
    if source.get("kind") != "mimic" or release not in COHORT_RANGES:
        return []
    if manifest["config"].get("cohort") != dataclasses.asdict(CohortConfig()):
        return []
    (low_n, high_n), cxr_range = COHORT_RANGES[release]
    warnings = []
    if not low_n <= n_stays <= high_n:
        expected = f"{low_n}" if low_n == high_n else f"{low_n}–{high_n}"
        warnings.append(f"cohort N = {n_stays}, expected {expected} for MIMIC-IV {release}")
    if cxr_range is not None and manifest["config"]["cxr"]["enabled"]:
        low_f, high_f = cxr_range
        fraction = n_with_cxr / max(n_stays, 1)
        if not low_f <= fraction <= high_f:
            warnings.append(
                f"has_cxr fraction {fraction:.3f} outside the expected {low_f}–{high_f} for MIMIC-IV {release}"
            )
    return warnings


def verify_raw(
    root: Path,
    version: str = "auto",
    *,
    mimic_cxr: Path | None = None,
    counts: bool = False,
    checksums: bool = False,
    registry: str = "default",
    raise_on_error: bool = True,
) -> VerifyReport:
    """Check a raw MIMIC-IV (and optionally MIMIC-CXR-JPG) tree before a build (spec/data.md §14).

    Args:
        root: MIMIC-IV root (holds hosp/ and icu/).
        version: `auto`, `2.2`, `3.1` or `1.0`; a contradiction with the fingerprint is a problem.
        mimic_cxr: MIMIC-CXR-JPG root; probes the image layout on the first 100 metadata rows.
        counts: compare exact row counts (§10.1, or SYNTHETIC.json) for every table (streams them).
        checksums: check `SHA256SUMS.txt` in each root on the files carebench reads; the other listed
            files are skipped and named in `info["checksums"]["skipped"]`.
        registry: feature registry validated against the dictionaries.
        raise_on_error: raise `VerificationError` when a problem is found (else only report it).
    """
    root = Path(root)
    report = VerifyReport()
    resolved = {}
    for name, spec in MIMIC_IV_TABLES.items():
        try:
            table = resolve_table(
                root,
                spec,
                folder="core" if (root / "core").is_dir() and name in {"patients", "admissions"} else None,
            )
        except CarebenchDataError as error:
            report.problems.append(str(error))
            continue
        if table is not None:
            resolved[name] = table
    report.checked.append("files and headers")
    if "icustays" in resolved and "admissions" in resolved:
        icustays_rows = count_rows(resolved["icustays"])
        fingerprint = detect_version(
            root,
            admissions_header=resolved["admissions"].header,
            chartevents_header=resolved["chartevents"].header if "chartevents" in resolved else (),
            icustays_rows=icustays_rows,
        )
        detected = str(fingerprint["version"])
        report.info["fingerprint"] = fingerprint
        if version != "auto" and base_version(detected) not in {version, "unknown"}:
            report.problems.append(f"declared version {version} but the files look like {detected}")
        report.checked.append("version fingerprint")
        if counts:
            expected = _expected_counts(fingerprint)
            if expected is None:
                report.warnings.append(
                    f"no exact row counts known for version {detected}; counts not checked"
                )
            else:
                for name, table in resolved.items():
                    if name in expected:
                        actual = icustays_rows if name == "icustays" else count_rows(table)
                        if actual != expected[name]:
                            report.problems.append(
                                f"{table.relpath}: {actual} rows, expected {expected[name]}"
                            )
                report.checked.append("row counts")
    if checksums:
        roots = [(root, MIMIC_IV_TABLES, resolved)]
        if mimic_cxr is not None:
            cxr_root = Path(mimic_cxr)
            cxr_tables = {}
            for name, spec in CXR_TABLES.items():
                with contextlib.suppress(CarebenchDataError):  # a missing table is reported by the probe
                    table = resolve_table(cxr_root, spec)
                    if table is not None:
                        cxr_tables[name] = table
            roots.append((cxr_root, CXR_TABLES, cxr_tables))
        checked: list[str] = []
        skipped: list[str] = []
        for base, specs, tables in roots:
            sums = check_sums(base, specs=specs, tables=tables)
            report.problems += sums.problems
            report.warnings += sums.warnings
            checked += [f"{base / relpath}" for relpath in sums.checked]
            skipped += [f"{base / relpath}" for relpath in sums.skipped]
        report.info["checksums"] = {"checked": checked, "skipped": skipped}
        report.checked.append("checksums")
    if "d_items" in resolved and "d_labitems" in resolved:
        try:
            validate_against_dictionaries(
                load_registry(registry),
                d_items=read_small_table(resolved["d_items"])[0],
                d_labitems=read_small_table(resolved["d_labitems"])[0],
            )
        except CarebenchDataError as error:
            report.problems.append(str(error))
        report.checked.append("registry")
    if mimic_cxr is not None:
        report.problems += _probe_images(Path(mimic_cxr))
        report.checked.append("image layout")
    if raise_on_error:
        report.raise_if_failed(str(root))
    return report


def _expected_counts(fingerprint: dict[str, Any]) -> dict[str, int] | None:
    synthetic = fingerprint.get("synthetic")
    if synthetic is not None:
        rows = synthetic.get("row_counts") or synthetic.get("rows") or {}
        return {name.rsplit("/", 1)[-1].split(".")[0]: int(value) for name, value in rows.items()}
    return EXPECTED_ROWS.get(str(fingerprint["version"]))


@dataclass
class SumsCheck:
    """The outcome of `check_sums` on one root: relpaths checked and skipped, problems and warnings."""

    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_sums(base: Path, *, specs: dict[str, TableSpec], tables: dict[str, ResolvedTable]) -> SumsCheck:
    """Judge `base/SHA256SUMS.txt` (`sha256sum` format) on the files carebench reads, and only those.

    A release lists every file it ships; carebench reads a few tables (`tables`, resolved from
    `specs`). Those are hashed and must match. A listed table file that is absent, while no other
    format of the table is present, is a problem. A read file that is not listed is a warning.
    Everything else that is listed (other tables, images, README) is skipped, not judged missing.
    """
    result = SumsCheck()
    sums = base / "SHA256SUMS.txt"
    if not sums.is_file():
        result.problems.append(f"{sums} not found")
        return result
    listed = parse_sums(sums.read_text())
    read = {table.relpath: table for table in tables.values()}
    candidates = {
        f"{folder}/{spec.name}{suffix}".lstrip("/"): name
        for name, spec in specs.items()
        for folder in {spec.folder, "core"}
        for suffix in FORMATS
    }
    for relpath, digest in sorted(listed.items()):
        if relpath in read:
            result.checked.append(relpath)
            if sha256_file(base / relpath) != digest:
                result.problems.append(f"{base / relpath}: SHA-256 mismatch with SHA256SUMS.txt")
        elif candidates.get(relpath) is not None and candidates[relpath] not in tables:
            if not (base / relpath).is_file():
                result.problems.append(f"{base / relpath} listed in SHA256SUMS.txt is missing")
            else:
                result.skipped.append(relpath)
        else:
            result.skipped.append(relpath)
    for relpath in sorted(set(read) - set(listed)):
        result.warnings.append(f"{base / relpath} is not listed in SHA256SUMS.txt (not checked)")
    return result


def _probe_images(root: Path) -> list[str]:
    try:
        metadata = resolve_table(root, CXR_TABLES["mimic-cxr-2.0.0-metadata"])
    except CarebenchDataError as error:
        return [str(error)]
    assert metadata is not None
    frame, _ = read_small_table(metadata, columns=["dicom_id", "subject_id", "study_id"])
    probe = frame.head(100)
    found = sum(row_image_path(root, row, layout="mimic").is_file() for row in probe.iter_rows(named=True))
    if probe.height and not found:
        return [f"none of the first {probe.height} metadata images exists under {root / 'files'}"]
    return []
