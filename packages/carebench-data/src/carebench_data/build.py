"""`build_dataset`: raw MIMIC-IV + MIMIC-CXR-JPG → the benchmark dataset directory (DESIGN §1).

Stages S0-S8 of spec/data.md §2, composed from the stage modules:
`raw` (S0) → `cohort` (S1) → `events` (S2-S4) → `labels` (S5) → `cxr` (S6) → splits and
statistics (S7) → `manifest` (S8). Everything is written into a partial directory that is renamed
into place at the end, so a failed build leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import resource
import secrets
import shutil
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import polars as pl
from PIL import features as pil_features

import carebench_data
from carebench_data import cohort as cohort_mod
from carebench_data import cxr as cxr_mod
from carebench_data import events as events_mod
from carebench_data import labels as labels_mod
from carebench_data.config import BuildConfig
from carebench_data.errors import CarebenchDataError
from carebench_data.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    atomic_directory,
    content_hash,
    file_hashes,
    is_dataset_dir,
    make_read_only,
    write_json,
    write_npy,
    write_parquet,
)
from carebench_data.normalization import compute_fold_stats
from carebench_data.outputs import DatasetExistsError, check_output_dir
from carebench_data.phenotype_tables import COMPAT_FILE, GEM_CCS_FILE
from carebench_data.raw import (
    CHEXPERT_FINDINGS,
    CXR_TABLES,
    FIRST_CLASS_ICUSTAYS,
    INFLATE_BACKEND,
    MIMIC_IV_TABLES,
    CorruptInputError,
    ResolvedTable,
    TableSpec,
    VersionError,
    base_version,
    detect_version,
    read_small_table,
    resolve_table,
)
from carebench_data.registry import Registry, load_registry, validate_against_dictionaries
from carebench_data.splits import fold_parts, split_of

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
PROGRESS_TOTAL = 1000
_N_FOLDS = 5
_STAGE_SPANS = {
    "S0": (0, 20),
    "S1": (20, 50),
    "S2": (50, 750),
    "S3": (750, 800),
    "S5": (800, 820),
    "S6": (820, 970),
    "S7": (970, 990),
    "S8": (990, 1000),
}


class DiskSpaceError(CarebenchDataError):
    """Not enough free disk space for the dataset."""


class SplitCoverageError(CarebenchDataError):
    """A fold has an empty train, validation or test split."""


@dataclass
class _Tracker:
    """Stage timings, peak RSS and progress reporting (the library only logs)."""

    progress: ProgressCallback | None
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    _current: str = ""
    _started: float = 0.0

    def start(self, stage: str, message: str) -> None:
        self._current, self._started = stage, time.perf_counter()
        logger.info("%s: %s", stage, message)
        self.report(0.0)

    def report(self, fraction: float) -> None:
        if self.progress is None:
            return
        low, high = _STAGE_SPANS[self._current]
        self.progress(int(low + (high - low) * min(max(fraction, 0.0), 1.0)), PROGRESS_TOTAL)

    def finish(self) -> None:
        self.stages[self._current] = {
            "seconds": round(time.perf_counter() - self._started, 3),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        self.report(1.0)


def _mimic_iv_specs(version: str) -> dict[str, tuple[TableSpec, str | None]]:
    """Table specs with v1.0 compatibility (core/ folder, `ethnicity` instead of `race`: G4)."""
    specs: dict[str, tuple[TableSpec, str | None]] = {
        name: (spec, None) for name, spec in MIMIC_IV_TABLES.items()
    }
    if version == "1.0":
        patients, admissions = MIMIC_IV_TABLES["patients"], MIMIC_IV_TABLES["admissions"]
        columns = {("ethnicity" if k == "race" else k): v for k, v in admissions.columns.items()}
        specs["patients"] = (patients, "core")
        specs["admissions"] = (TableSpec("admissions", "core", columns), "core")
    return specs


def _resolve_inputs(
    config: BuildConfig, registry: Registry
) -> tuple[dict[str, ResolvedTable], dict[str, ResolvedTable], str]:
    """S0: resolve every table of both roots and guess the layout version (v1.0 has core/)."""
    root = config.mimic_iv
    if not root.is_dir():
        raise CarebenchDataError(
            f"MIMIC-IV root {root} is not a directory (it should contain hosp/ and icu/)"
        )
    layout = "1.0" if (root / "core").is_dir() or config.mimic_iv_version == "1.0" else "2+"
    wanted = {
        "patients",
        "admissions",
        "icustays",
        "d_items",
        "d_labitems",
        "diagnoses_icd",
        "d_icd_diagnoses",
    }
    wanted |= set(registry.tables())
    mimic: dict[str, ResolvedTable] = {}
    for name, (spec, folder) in _mimic_iv_specs(layout if layout == "1.0" else "2.2").items():
        if name not in wanted:
            continue
        if name in registry.tables():
            spec = TableSpec(spec.name, spec.folder, spec.columns, required=True)
        resolved = resolve_table(root, spec, folder=folder)
        if resolved is not None:
            mimic[name] = resolved
    cxr: dict[str, ResolvedTable] = {}
    if config.cxr.enabled:
        assert config.mimic_cxr is not None
        if not config.mimic_cxr.is_dir():
            raise CarebenchDataError(
                f"MIMIC-CXR-JPG root {config.mimic_cxr} is not a directory; pass --no-cxr for EHR only"
            )
        for name, spec in CXR_TABLES.items():
            resolved = resolve_table(config.mimic_cxr, spec)
            if resolved is not None:
                cxr[name] = resolved
    return mimic, cxr, layout


def _check_version(config: BuildConfig, fingerprint: dict[str, Any], *, icustays_rows: int) -> str:
    detected = base_version(str(fingerprint["version"]))
    declared = config.mimic_iv_version
    synthetic = fingerprint["synthetic"]
    if declared != "auto" and detected not in {declared, "unknown"}:
        raise VersionError(
            f"mimic_iv_version = {declared!r} but the files look like {detected} ({'; '.join(fingerprint['evidence'])})"
        )
    version = detected if declared == "auto" else declared
    first_class = version in {"2.2", "3.1"}
    if synthetic is not None:
        expected = _synthetic_row_count(synthetic, "icustays")
        if expected is not None and expected != icustays_rows:
            raise VersionError(f"icustays has {icustays_rows} rows but SYNTHETIC.json declares {expected}")
    elif first_class and icustays_rows not in FIRST_CLASS_ICUSTAYS and not config.allow_unverified_version:
        raise VersionError(
            f"icustays has {icustays_rows} rows, not a count of a first-class release (v2.2 73,181; v3.1 94,458; demo 140); "
            "set allow_unverified_version = true to build anyway"
        )
    if not first_class and version != "1.0" and not config.allow_unverified_version:
        raise VersionError(
            f"MIMIC-IV version {version!r} is not supported first-class ({'; '.join(fingerprint['evidence'])}); "
            "set allow_unverified_version = true to build anyway"
        )
    return version


def _synthetic_row_count(synthetic: dict[str, Any], table: str) -> int | None:
    for key in ("row_counts", "rows", "counts"):
        counts = synthetic.get(key)
        if isinstance(counts, dict):
            for name, value in counts.items():
                if name.rsplit("/", 1)[-1].split(".")[0] == table and isinstance(value, int):
                    return value
    return None


def check_build_output(config: BuildConfig) -> None:
    """Fail fast when `config.out` may not be written.

    It may not be an input, lie inside or around one, or be a file; with overwrite an existing folder
    must be a carebench dataset, without overwrite it must not exist.

    Raises:
        OutputDirectoryError: one line naming the output and the conflict.
    """
    check_output_dir(
        config.out,
        inputs=(config.mimic_iv, config.mimic_cxr),
        replace=config.build.overwrite,
        is_ours=is_dataset_dir,
        what="dataset",
    )
    if config.out.exists() and not config.build.overwrite:
        raise DatasetExistsError(f"{config.out} already exists; {_EXISTS_HINT}")


_EXISTS_HINT = "pass --overwrite (build.overwrite = true) to replace it"


def build_dataset(config: BuildConfig, *, progress: ProgressCallback | None = None) -> Path:
    """Build the benchmark dataset directory from raw files (spec/data.md §2, stages S0-S8).

    Args:
        config: the resolved build configuration (`BuildConfig.from_toml(...)`).
        progress: optional callback `(done, total)` with total = 1000, called as the build advances.

    Returns:
        The dataset directory (`config.out`), holding manifest.json, stays.parquet, labels.parquet,
        ehr.npy float32 [N, 48, F], cxr.npy uint8 [M, S, S], features.json and stats/fold<k>.json.

    Raises:
        CarebenchDataError: a subclass naming the file, column and fix for every bad input (§12).
    """
    started = time.perf_counter()
    tracker = _Tracker(progress)
    work_root = (
        Path(config.build.work_dir)
        if config.build.work_dir
        else config.out.absolute().parent / ".carebench-work"
    )
    with atomic_directory(
        config.out,
        overwrite=config.build.overwrite,
        is_ours=is_dataset_dir,
        inputs=(config.mimic_iv, config.mimic_cxr),
        what="dataset",
        exists_hint=_EXISTS_HINT,
    ) as partial:
        work_root.mkdir(parents=True, exist_ok=True)
        # Staging folders are named after the target's full path, so a shared work_dir never mixes
        # two targets; the ones a killed build of this target left behind go now (we hold its lock).
        staging_prefix = (
            f".{config.out.name}-{hashlib.sha256(str(config.out.absolute()).encode()).hexdigest()[:8]}"
        )
        for stale in work_root.glob(f"{staging_prefix}.partial-*"):
            logger.warning("removing %s, left by an interrupted build", stale)
            shutil.rmtree(stale, ignore_errors=True)
        staging = work_root / f"{staging_prefix}.partial-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            manifest = _build_into(
                partial, staging=staging, work_root=work_root, config=config, tracker=tracker
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                work_root.rmdir()  # only when empty: other builds may share it
        manifest["build"]["seconds"] = round(time.perf_counter() - started, 3)
        write_json(partial / MANIFEST, manifest)
        make_read_only(partial)
    logger.info("dataset written to %s in %.1f s", config.out, time.perf_counter() - started)
    return config.out


def _build_into(
    out: Path, *, staging: Path, work_root: Path, config: BuildConfig, tracker: _Tracker
) -> dict[str, Any]:
    warnings: list[str] = []

    # S0: resolve inputs, fingerprint, registry validation.
    tracker.start("S0", "resolving inputs")
    registry = load_registry(config.features.registry)
    mimic, cxr_tables, layout = _resolve_inputs(config, registry)
    rows_read: dict[str, int] = {}
    icustays, icu_bad = read_small_table(mimic["icustays"])
    rows_read["icustays"] = icustays.height
    fingerprint = detect_version(
        config.mimic_iv,
        admissions_header=mimic["admissions"].header,
        chartevents_header=mimic["chartevents"].header if "chartevents" in mimic else (),
        icustays_rows=icustays.height,
    )
    version = _check_version(config, fingerprint, icustays_rows=icustays.height)
    d_items, _ = read_small_table(mimic["d_items"])
    d_labitems, _ = read_small_table(mimic["d_labitems"])
    validate_against_dictionaries(registry, d_items=d_items, d_labitems=d_labitems)
    _check_disk_space(out, n_stays=icustays.height, n_features=len(registry.features), config=config)
    tracker.finish()

    # S1: cohort spine.
    tracker.start("S1", "cohort spine")
    patients, patients_bad = read_small_table(mimic["patients"])
    admissions, admissions_bad = read_small_table(mimic["admissions"])
    if "ethnicity" in admissions.columns:
        admissions = admissions.rename({"ethnicity": "race"})
    diagnoses, diagnoses_bad = read_small_table(mimic["diagnoses_icd"])
    for name, frame in (("patients", patients), ("admissions", admissions), ("diagnoses_icd", diagnoses)):
        rows_read[name] = frame.height
    bad_small = {
        "icustays": icu_bad,
        "patients": patients_bad,
        "admissions": admissions_bad,
        "diagnoses_icd": diagnoses_bad,
    }
    for table, bad in bad_small.items():
        if bad:
            warnings.append(f"{table}: unparseable values {bad}")
            if sum(bad.values()) > config.build.max_bad_row_fraction * max(rows_read[table], 1):
                raise CorruptInputError(
                    f"{mimic[table].path}: unparseable values {bad} above build.max_bad_row_fraction"
                )
    spine = cohort_mod.stay_spine(
        icustays.lazy(), admissions=admissions.lazy(), patients=patients.lazy()
    ).collect()
    steps = cohort_mod.cohort_steps(
        config.cohort, diagnosed_hadm_ids=diagnoses.get_column("hadm_id").drop_nulls().unique()
    )
    candidates, cohort_counts = cohort_mod.apply_steps(spine, steps)
    candidates = candidates.with_row_index("row").with_columns(pl.col("row").cast(pl.Int32))
    cohort_checks = {
        "los_mismatch": int(
            spine.filter(
                ((pl.col("los") - pl.col("los_hours") / 24).abs() > 0.001) & pl.col("los").is_not_null()
            ).height
        ),
        "race_unmapped": int(candidates.get_column("race_unmapped").sum()),
    }
    tracker.finish()

    # S2: stage events, one streaming pass per table (or reuse the staging cache).
    tracker.start("S2", "staging events")
    event_tables = [mimic[table] for table in registry.tables()]
    staged_dir, event_counts, cache_state = _stage_events(
        event_tables,
        registry=registry,
        windows=candidates,
        config=config,
        work_root=work_root,
        scratch=staging,
        tracker=tracker,
    )
    for table, counts in event_counts.items():
        rows_read[table] = counts["scanned"]
    tracker.finish()

    # S3-S4: clean, bin, has_ehr.
    tracker.start("S3", "cleaning and binning events")
    cleaned = events_mod.clean_events(
        events_mod.read_staged(staged_dir, tables=registry.tables()),
        registry=registry,
        availability=config.features.availability,
    )
    warnings += cleaned.warnings
    ehr_all = events_mod.scatter_hourly(cleaned.hourly, n_stays=candidates.height, registry=registry)
    has_values: np.ndarray = np.asarray(~np.isnan(ehr_all).all(axis=(1, 2)), dtype=bool)
    before = candidates.height
    stays = (
        candidates.filter(pl.Series("has_values", has_values))
        .drop("row")
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int32))
    )
    ehr = np.ascontiguousarray(ehr_all[has_values])
    del ehr_all
    cohort_counts.append(cohort_mod.step_count("has_ehr", stays, before=before))
    cohort_counts.append(cohort_mod.step_count("cohort", stays, before=stays.height))
    if stays.height == 0:
        raise cohort_mod.CohortError("the cohort is empty: no stay has a registry value in its 48 h window")
    feature_counts = cleaned.feature_counts
    for name, observed in events_mod.observation_counts(ehr, registry=registry).items():
        feature_counts[name].update(observed)
    tracker.finish()

    # S5: labels.
    tracker.start("S5", "labels")
    titles = None
    if "d_icd_diagnoses" in mimic:
        titles, _ = read_small_table(mimic["d_icd_diagnoses"])
    labelled, label_counts = _labels(stays, diagnoses=diagnoses, titles=titles, config=config)
    tracker.finish()

    # S6: CXR.
    tracker.start("S6", "chest X-rays")
    stays, cxr_array, cxr_counts, cxr_failures = _cxr(
        stays, tables=cxr_tables, config=config, scratch=staging, tracker=tracker
    )
    tracker.finish()

    # S7: splits and statistics.
    tracker.start("S7", "splits and normalization statistics")
    subject_ids = stays.get_column("subject_id").to_numpy()
    parts = fold_parts(subject_ids, salt=config.splits.salt)
    stays = stays.with_columns(fold_part=pl.Series(parts, dtype=pl.Int8))
    split_counts, split_warnings = _split_counts(stays, labelled, config=config)
    warnings += split_warnings
    (out / "stats").mkdir()
    stay_ids = stays.get_column("stay_id").to_numpy()
    for fold in range(_N_FOLDS):
        train = np.flatnonzero(split_of(subject_ids, parts, fold=fold, salt=config.splits.salt) == "train")
        stats = compute_fold_stats(ehr, train, feature_names=registry.names, train_stay_ids=stay_ids[train])
        write_json(out / "stats" / f"fold{fold}.json", stats)
    tracker.finish()

    # S8: write files and the manifest.
    tracker.start("S8", "writing the dataset")
    stays_out = _stays_frame(stays)
    write_parquet(stays_out, out / "stays.parquet")
    write_parquet(_labels_frame(labelled, order=stays_out.get_column("stay_id")), out / "labels.parquet")
    write_npy(ehr, out / "ehr.npy")
    write_npy(cxr_array, out / "cxr.npy")
    write_json(out / "features.json", registry.features_json())
    files = file_hashes(out)
    output_config = {
        **config.output_config(),
        "registry_sha256": registry.sha256,
        "mapping_sha256": {
            "gem_ccs": _resource_sha(GEM_CCS_FILE),
            "carebench_compat": _resource_sha(COMPAT_FILE),
        },
    }
    inputs = [
        {**resolved.describe(), "rows_read": rows_read.get(name)}
        for name, resolved in sorted({**mimic, **cxr_tables}.items())
    ]
    if cxr_counts.get("metadata_rows") is not None:
        for entry in inputs:
            if entry["table"] == "mimic-cxr-2.0.0-metadata":
                entry["rows_read"] = cxr_counts["metadata_rows"]
    synthetic = fingerprint["synthetic"]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "carebench_version": carebench_data.__version__,
        "source": {
            "kind": "synthetic" if synthetic is not None else "mimic",
            "mimic_iv_version": version,
            "mimic_cxr_version": _cxr_version(config) if config.cxr.enabled else None,
            "fingerprint": {
                "detected": fingerprint["version"],
                "evidence": fingerprint["evidence"],
                "layout": layout,
            },
            "inputs": inputs,
            "synthetic": synthetic,
        },
        "config": {
            **config.resolved(),
            "registry_sha256": output_config["registry_sha256"],
            "mapping_sha256": output_config["mapping_sha256"],
        },
        "counts": {
            "cohort": cohort_counts,
            "cohort_checks": cohort_checks,
            "events": event_counts,
            "features": feature_counts,
            "labels": label_counts,
            "cxr": {**cxr_counts, "failures": cxr_failures},
            "splits": split_counts,
        },
        "features": registry.names,
        "labels": labels_mod.labels_manifest(
            mortality_mode=config.labels.mortality, mapping=config.labels.phenotype_mapping
        ),
        "shapes": {"ehr": list(ehr.shape), "cxr": list(cxr_array.shape)},
        "files": files,
        "content_hash": content_hash(files, config=output_config),
        "warnings": warnings,
    }
    tracker.finish()
    manifest["build"] = {**_build_info(tracker), "staging_cache": cache_state}
    return manifest


def _fraction(values: pl.Series) -> float:
    """Mean of a 0/1 or boolean column as a float (0.0 for an empty column)."""
    mean = values.cast(pl.Float64).mean()
    return float(mean) if isinstance(mean, int | float) else 0.0


def _stage_events(
    event_tables: list[ResolvedTable],
    *,
    registry: Registry,
    windows: pl.DataFrame,
    config: BuildConfig,
    work_root: Path,
    scratch: Path,
    tracker: _Tracker,
) -> tuple[Path, dict[str, Any], str]:
    """S2 with the staging cache of spec/data.md §9: returns (staged folder, counts, off | hit | miss).

    The cache key hashes the input identity (relpath, bytes, mtime), the registry itemids, the cohort
    windows and the carebench version; the cache lives in the work directory, never in the dataset,
    and keeps only its latest entry.
    """
    if not config.build.cache:
        target = scratch / "events"
        return (
            target,
            _run_staging(
                event_tables,
                registry=registry,
                windows=windows,
                config=config,
                target=target,
                tracker=tracker,
            ),
            "off",
        )
    key = _staging_key(event_tables, registry=registry, windows=windows, config=config)
    cache = work_root / "staging-cache"
    entry = cache / key
    if (entry / "DONE").is_file():
        logger.info("S2: staging cache hit (%s)", key[:12])
        return entry, json.loads((entry / "counts.json").read_text()), "hit"
    partial = cache / f".{key}.partial-{secrets.token_hex(4)}"
    try:
        counts = _run_staging(
            event_tables, registry=registry, windows=windows, config=config, target=partial, tracker=tracker
        )
        write_json(partial / "counts.json", counts)
        (partial / "DONE").touch()
        for old in cache.iterdir():
            if old.name != key and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        if entry.exists():
            shutil.rmtree(partial)
        else:
            os.replace(partial, entry)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return entry, counts, "miss"


def _run_staging(
    event_tables: list[ResolvedTable],
    *,
    registry: Registry,
    windows: pl.DataFrame,
    config: BuildConfig,
    target: Path,
    tracker: _Tracker,
) -> dict[str, Any]:
    total_bytes = max(sum(t.bytes for t in event_tables), 1)
    done_before = 0
    event_counts: dict[str, Any] = {}
    for resolved in event_tables:
        base = done_before

        def on_bytes(position: int, base: int = base) -> None:
            tracker.report((base + position) / total_bytes)

        counts = events_mod.stage_table(
            resolved,
            registry=registry,
            windows=windows,
            staging_dir=target,
            chunk_bytes=config.build.chunk_mib << 20,
            max_bad_row_fraction=config.build.max_bad_row_fraction,
            on_bytes=on_bytes,
        )
        event_counts[resolved.table] = counts.as_dict()
        done_before += resolved.bytes
    return event_counts


def _staging_key(
    event_tables: list[ResolvedTable], *, registry: Registry, windows: pl.DataFrame, config: BuildConfig
) -> str:
    digest = hashlib.sha256()
    identity = {
        "carebench": carebench_data.__version__,
        "staging_revision": events_mod.STAGING_REVISION,
        "inputs": [[t.relpath, t.bytes, t.path.stat().st_mtime_ns] for t in event_tables],
        "itemids": {
            table: sorted(registry.item_map(table)["itemid"].to_list()) for table in registry.tables()
        },
        "max_bad_row_fraction": config.build.max_bad_row_fraction,
    }
    digest.update(json.dumps(identity, sort_keys=True).encode())
    buffer = io.BytesIO()
    windows.select("stay_id", "subject_id", "row", "intime", "prediction_time").write_csv(buffer)
    digest.update(buffer.getvalue())
    return digest.hexdigest()


def _resource_sha(name: str) -> str:
    return hashlib.sha256(labels_mod._resource_bytes(name)).hexdigest()


def _cxr_version(config: BuildConfig) -> str:
    assert config.mimic_cxr is not None
    name = config.mimic_cxr.name
    return name if name[:1].isdigit() else "2.0.0"


def _check_disk_space(out: Path, *, n_stays: int, n_features: int, config: BuildConfig) -> None:
    """Fail before heavy work when the free space cannot hold the dataset (an upper bound from icustays)."""
    estimate = n_stays * 48 * n_features * 4
    if config.cxr.enabled:
        estimate += n_stays * config.cxr.image_size**2
    free = shutil.disk_usage(out.parent).free
    if free < estimate:
        raise DiskSpaceError(
            f"{out.parent} has {free / 1e9:.2f} GB free, the dataset may need up to {estimate / 1e9:.2f} GB"
        )


def _labels(
    stays: pl.DataFrame, *, diagnoses: pl.DataFrame, titles: pl.DataFrame | None, config: BuildConfig
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """S5: mortality, LoS and phenotypes under the chosen mode; counts under both modes (the audit)."""
    cohort_diagnoses = diagnoses.filter(
        pl.col("hadm_id").is_in(stays.get_column("hadm_id").implode())
    ).select("hadm_id", "icd_version", "icd_code")
    chosen = config.labels.phenotype_mapping
    positives: dict[str, dict[str, int]] = {}
    labelled = stays
    unmapped: list[dict[str, Any]] = []
    mapping: dict[str, Any] = {}
    for mode in labels_mod.MAPPING_MODES:
        mapped = labels_mod.map_codes(
            cohort_diagnoses.lazy(), mode=mode, parent_fallback=config.labels.icd10_parent_fallback
        ).collect()
        with_labels = labels_mod.phenotype_labels(stays.lazy(), mapped=mapped.lazy()).collect()
        positives[mode] = {
            p.column: int(with_labels.get_column(p.column).sum()) for p in labels_mod.phenotypes()
        }
        if mode == "gem_ccs":
            mapping = labels_mod.mapping_counts(mapped, titles=titles)
        if mode == chosen:
            labelled = with_labels
            unmapped = labels_mod.unmapped_report(mapped, titles=titles)
    labelled = (
        labelled.lazy()
        .pipe(
            labels_mod.mortality_labels,
            mode=config.labels.mortality,
            grace_hours=config.labels.icu_death_grace_hours,
        )
        .pipe(labels_mod.los_labels)
        .collect()
    )
    after_outtime = labelled.filter(
        (pl.col("t_death") > pl.col("outtime"))
        & (pl.col("t_death") <= pl.col("outtime") + timedelta(hours=24))
    ).height
    counts = {
        "mortality_positive": int(labelled.get_column("mortality").sum()),
        "deaths_from_dod_only": int(labelled.get_column("death_from_dod_only").sum()),
        "deaths_within_24h_after_outtime": after_outtime,
        "los_class": {
            name: int((labelled.get_column("los_class") == i).sum())
            for i, name in enumerate(labels_mod.LOS_CLASS_NAMES)
        },
        "phenotype": {"chosen": chosen, "positives": positives},
        "mapping": mapping,
        "icd_unmapped": unmapped,
    }
    return labelled, counts


def _cxr(
    stays: pl.DataFrame,
    *,
    tables: dict[str, ResolvedTable],
    config: BuildConfig,
    scratch: Path,
    tracker: _Tracker,
) -> tuple[pl.DataFrame, np.ndarray, dict[str, Any], list[dict[str, str]]]:
    """S6: link, select and decode one frontal CXR per stay; adds has_cxr, cxr_index, cxr_dicom_id, cxr_hours."""
    size = config.cxr.image_size
    empty = np.zeros((0, size, size), dtype=np.uint8)
    if not config.cxr.enabled:
        out = stays.with_columns(
            has_cxr=pl.lit(False),
            cxr_index=pl.lit(-1, pl.Int32),
            cxr_dicom_id=pl.lit(None, pl.String),
            cxr_hours=pl.lit(None, pl.Float32),
        )
        return out, empty, {"enabled": False}, []
    assert config.mimic_cxr is not None
    metadata, meta_bad = read_small_table(tables["mimic-cxr-2.0.0-metadata"])
    timed = metadata.lazy().pipe(cxr_mod.parse_study_time).collect()
    bad_time = timed.filter(pl.col("study_datetime").is_null()).height
    frontal = (
        timed.filter(pl.col("study_datetime").is_not_null())
        .lazy()
        .pipe(cxr_mod.frontal_views, views=config.cxr.views, recover_view=config.cxr.recover_view)
        .collect()
    )
    candidates = (
        frontal.lazy()
        .pipe(cxr_mod.window_candidates, stays=stays.lazy(), lookback_hours=config.cxr.lookback_hours)
        .collect()
    )
    n_candidates = max(candidates.get_column("row").n_unique(), 1)
    decoded = 0

    def on_image(count: int) -> None:
        nonlocal decoded
        decoded += count
        tracker.report(decoded / n_candidates)

    selection, buffer = cxr_mod.select_and_decode(
        candidates,
        root=config.mimic_cxr,
        layout=config.cxr.layout,
        size=size,
        workers=config.cxr.workers,
        max_failure_fraction=config.cxr.max_failure_fraction,
        scratch=scratch / "cxr-scratch.npy",
        on_image=on_image,
    )
    selected = selection.selected.join(
        stays.select("row", "intime", "prediction_time"), on="row", how="left", maintain_order="left"
    ).sort("row")
    cxr_mod.check_leakage(selected, lookback_hours=config.cxr.lookback_hours)
    selected = selected.with_columns(
        cxr_index=pl.int_range(pl.len()).cast(pl.Int32),
        cxr_hours=((pl.col("study_datetime") - pl.col("intime")).dt.total_microseconds() / 3.6e9).cast(
            pl.Float32
        ),
    )
    cxr_array = (
        np.ascontiguousarray(buffer[selected.get_column("slot").to_numpy()])
        if selected.height
        else np.zeros((0, size, size), dtype=np.uint8)
    )
    del buffer
    out = (
        stays.join(
            selected.select("row", "cxr_index", pl.col("dicom_id").alias("cxr_dicom_id"), "cxr_hours"),
            on="row",
            how="left",
        )
        .sort("row")
        .with_columns(has_cxr=pl.col("cxr_index").is_not_null(), cxr_index=pl.col("cxr_index").fill_null(-1))
    )
    counts: dict[str, Any] = {
        "enabled": True,
        "metadata_rows": metadata.height,
        "metadata_bad_values": meta_bad,
        "bad_time": bad_time,
        "frontal": frontal.height,
        "candidates": candidates.height,
        "stays_with_candidates": candidates.get_column("row").n_unique(),
        "selected": selected.height,
        **{k: v for k, v in selection.counts.items()},
        "has_cxr": int(out.get_column("has_cxr").sum()),
        "has_cxr_fraction": _fraction(out.get_column("has_cxr")),
        "has_cxr_by_anchor_year_group": {
            str(group): {"stays": int(n), "has_cxr": int(k)}
            for group, n, k in out.group_by("anchor_year_group")
            .agg(pl.len(), pl.col("has_cxr").sum())
            .sort("anchor_year_group", nulls_last=True)
            .iter_rows()
        },
        "views": {str(v): int(n) for v, n in selected.group_by("view").len().sort("view").iter_rows()},
    }
    if "mimic-cxr-2.0.0-split" in tables:
        split, _ = read_small_table(tables["mimic-cxr-2.0.0-split"])
        joined = selected.join(split.select("dicom_id", "split"), on="dicom_id", how="left")
        counts["official_split"] = {
            str(s): int(n)
            for s, n in joined.group_by("split").len().sort("split", nulls_last=True).iter_rows()
        }
    if "mimic-cxr-2.0.0-chexpert" in tables:
        counts["chexpert_prevalence"] = _chexpert_prevalence(tables["mimic-cxr-2.0.0-chexpert"], selected)
    return out, cxr_array, counts, selection.failures


def _chexpert_prevalence(resolved: ResolvedTable, selected: pl.DataFrame) -> dict[str, float | None]:
    present = list(CHEXPERT_FINDINGS)
    findings, _ = read_small_table(resolved, columns=["study_id", *present])
    joined = selected.select("study_id").join(
        findings.unique(subset=["study_id"], keep="first"), on="study_id", how="left"
    )
    if not joined.height:
        return dict.fromkeys(present)
    return {name: _fraction(joined.get_column(name) == 1.0) for name in present}


def _split_counts(
    stays: pl.DataFrame, labelled: pl.DataFrame, *, config: BuildConfig
) -> tuple[dict[str, Any], list[str]]:
    """Per fold and split: stays, subjects, has_cxr fraction, mortality prevalence, LoS classes, phenotypes."""
    frame = stays.select("stay_id", "subject_id", "fold_part", "has_cxr").join(
        labelled.select("stay_id", "mortality", "los_class", *[p.column for p in labels_mod.phenotypes()]),
        on="stay_id",
    )
    subjects = frame.get_column("subject_id").to_numpy()
    parts = frame.get_column("fold_part").to_numpy()
    counts: dict[str, Any] = {}
    warnings: list[str] = []
    for fold in range(_N_FOLDS):
        splits = split_of(subjects, parts, fold=fold, salt=config.splits.salt)
        counts[f"fold{fold}"] = {}
        for split in ("train", "val", "test"):
            part = frame.filter(pl.Series(splits == split))
            if not part.height:
                raise SplitCoverageError(
                    f"fold {fold} has an empty {split} split ({frame.height} stays in all); the cohort is too small"
                )
            phenotype = {p.column: _fraction(part.get_column(p.column)) for p in labels_mod.phenotypes()}
            counts[f"fold{fold}"][split] = {
                "stays": part.height,
                "subjects": part.get_column("subject_id").n_unique(),
                "has_cxr_fraction": _fraction(part.get_column("has_cxr")),
                "mortality_prevalence": _fraction(part.get_column("mortality")),
                "los_class": {
                    name: int((part.get_column("los_class") == i).sum())
                    for i, name in enumerate(labels_mod.LOS_CLASS_NAMES)
                },
                "phenotype_prevalence": phenotype,
            }
            if split == "train":
                zero = [name for name, value in phenotype.items() if value == 0.0]
                if part.get_column("mortality").sum() == 0:
                    zero.insert(0, "mortality")
                if zero:
                    warnings.append(f"fold {fold} train split: no positives for {', '.join(zero)}")
    return counts, warnings


def _stays_frame(stays: pl.DataFrame) -> pl.DataFrame:
    """stays.parquet columns and dtypes of spec/data.md §3.3, row order = array row order."""
    return stays.select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("hadm_id").cast(pl.Int64),
        pl.col("stay_id").cast(pl.Int64),
        pl.col("intime").cast(pl.Datetime("us")),
        pl.col("prediction_time").cast(pl.Datetime("us")),
        pl.col("age").cast(pl.Int16),
        pl.col("sex").cast(pl.String),
        pl.col("race").cast(pl.String),
        pl.col("insurance").cast(pl.String),
        pl.col("admission_type").cast(pl.String),
        pl.col("first_careunit").cast(pl.String),
        pl.col("has_cxr").cast(pl.Boolean),
        pl.col("cxr_index").cast(pl.Int32),
        pl.col("cxr_dicom_id").cast(pl.String),
        pl.col("cxr_hours").cast(pl.Float32),
        pl.col("fold_part").cast(pl.Int8),
    )


def _labels_frame(labelled: pl.DataFrame, *, order: pl.Series) -> pl.DataFrame:
    """labels.parquet: stay_id, mortality, los_days, los_class, 25 phenotypes, in stays order."""
    frame = labelled.select(
        pl.col("stay_id").cast(pl.Int64),
        pl.col("mortality").cast(pl.Int8),
        pl.col("los_days").cast(pl.Float64),
        pl.col("los_class").cast(pl.Int8),
        *[pl.col(p.column).cast(pl.Int8) for p in labels_mod.phenotypes()],
    )
    return pl.DataFrame({"stay_id": order}).join(frame, on="stay_id", how="left", maintain_order="left")


def _build_info(tracker: _Tracker) -> dict[str, Any]:
    return {
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "stages": tracker.stages,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cpu_count": os.cpu_count(),
        "versions": {
            "python": platform.python_version(),
            "polars": pl.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "libjpeg": pil_features.version("jpg"),
            "zlib": zlib.ZLIB_RUNTIME_VERSION,
            "inflate_backend": INFLATE_BACKEND,
        },
        "platform": sys.platform,
    }
