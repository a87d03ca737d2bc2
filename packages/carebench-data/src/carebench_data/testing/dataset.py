"""A tiny, complete benchmark dataset directory (DESIGN §1) with planted signal, for tests.

`write_tiny_dataset` writes in well under a second what `carebench data build` writes from raw files:
``stays.parquet``, ``labels.parquet``, ``ehr.npy`` (with NaN), ``cxr.npy``, ``features.json``,
``stats/fold0..4.json`` and ``manifest.json`` (with the ``labels`` block of the task contract). It does
not run the builder: the arrays are drawn directly from a small latent model, so loaders, models and
the command line can be tested without MIMIC and without the raw-file pipeline.

Planted signal: every stay has a latent severity z ~ N(0, 1). Mortality is Bernoulli(sigmoid(2.5 z -
1.5)); z raises heart rate and respiratory rate and lowers blood pressure and SpO2 in every hour, and
paints a bright opacity on the chest X-ray whose intensity grows with z. A model that averages heart
rate over the window, or the image brightness, recovers mortality well above chance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from carebench_data import __version__
from carebench_data.errors import CarebenchDataError
from carebench_data.manifest import sha256_file
from carebench_data.normalization import compute_fold_stats, write_fold_stats
from carebench_data.outputs import use_umask
from carebench_data.registry import load_registry
from carebench_data.splits import N_FOLDS, fold_parts, split_of

__all__ = ["LOS_CLASS_NAMES", "LOS_EDGES_DAYS", "PHENOTYPES", "write_tiny_dataset"]

T_HOURS = 48

LOS_CLASS_NAMES = ("2-3d", "3-4d", "4-5d", "5-6d", "6-7d", "7-14d", "14+d")
"""Multiclass target names of the LoS task (data.md §5.2)."""

LOS_EDGES_DAYS = (2, 3, 4, 5, 6, 7, 14)
"""Left edges of the LoS classes in days."""

PHENOTYPES: tuple[tuple[str, str, int, str, float], ...] = (
    ("acute_renal_failure", "Acute and unspecified renal failure", 157, "acute", 0.21),
    ("acute_cerebrovascular_disease", "Acute cerebrovascular disease", 109, "acute", 0.07),
    ("acute_myocardial_infarction", "Acute myocardial infarction", 100, "acute", 0.10),
    ("cardiac_dysrhythmias", "Cardiac dysrhythmias", 106, "chronic", 0.32),
    ("chronic_kidney_disease", "Chronic kidney disease", 158, "chronic", 0.13),
    ("copd_bronchiectasis", "Chronic obstructive pulmonary disease and bronchiectasis", 127, "chronic", 0.13),
    ("complications_of_care", "Complications of surgical procedures or medical care", 238, "acute", 0.21),
    ("conduction_disorders", "Conduction disorders", 105, "chronic", 0.07),
    ("chf_nonhypertensive", "Congestive heart failure; nonhypertensive", 108, "acute", 0.27),
    ("coronary_atherosclerosis", "Coronary atherosclerosis and other heart disease", 101, "chronic", 0.32),
    ("diabetes_with_complications", "Diabetes mellitus with complications", 50, "chronic", 0.09),
    ("diabetes_without_complication", "Diabetes mellitus without complication", 49, "chronic", 0.19),
    ("lipid_disorders", "Disorders of lipid metabolism", 53, "chronic", 0.29),
    ("essential_hypertension", "Essential hypertension", 98, "chronic", 0.42),
    ("fluid_electrolyte_disorders", "Fluid and electrolyte disorders", 55, "acute", 0.27),
    ("gi_hemorrhage", "Gastrointestinal hemorrhage", 153, "acute", 0.07),
    (
        "hypertension_with_complications",
        "Hypertension with complications and secondary hypertension",
        99,
        "chronic",
        0.13,
    ),
    ("other_liver_diseases", "Other liver diseases", 151, "acute", 0.09),
    ("other_lower_respiratory", "Other lower respiratory disease", 133, "acute", 0.05),
    ("other_upper_respiratory", "Other upper respiratory disease", 134, "acute", 0.04),
    ("pleurisy_pneumothorax_collapse", "Pleurisy; pneumothorax; pulmonary collapse", 130, "acute", 0.09),
    (
        "pneumonia",
        "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)",
        122,
        "acute",
        0.14,
    ),
    ("respiratory_failure", "Respiratory failure; insufficiency; arrest (adult)", 131, "acute", 0.18),
    ("septicemia", "Septicemia (except in labor)", 2, "acute", 0.14),
    ("shock", "Shock", 249, "acute", 0.08),
)
"""(column, CCS title, CCS id, type, synthesis prevalence) of the 25 phenotypes, in §5.3 order."""

# (mean, sd, hourly observation probability, effect of the latent severity z on the mean)
_FEATURE_MODEL: dict[str, tuple[float, float, float, float]] = {
    "capillary_refill": (0.1, 0.3, 0.05, 0.0),
    "dbp": (60.0, 10.0, 0.8, -4.0),
    "fio2": (0.35, 0.1, 0.2, 0.05),
    "gcs_eye": (3.5, 0.6, 0.25, -0.3),
    "gcs_motor": (5.6, 0.6, 0.25, -0.3),
    "gcs_verbal": (4.0, 1.0, 0.25, -0.4),
    "glucose": (130.0, 30.0, 0.15, 10.0),
    "heart_rate": (86.0, 8.0, 0.9, 14.0),
    "height": (170.0, 10.0, 0.02, 0.0),
    "mbp": (78.0, 9.0, 0.8, -7.0),
    "spo2": (97.0, 1.5, 0.85, -1.5),
    "resp_rate": (19.0, 3.0, 0.85, 3.0),
    "sbp": (118.0, 14.0, 0.8, -10.0),
    "temperature": (36.8, 0.4, 0.25, 0.3),
    "weight": (81.0, 15.0, 0.03, 0.0),
    "ph": (7.40, 0.04, 0.1, -0.03),
}
_ORDINAL_ROUNDING = {"capillary_refill", "gcs_eye", "gcs_motor", "gcs_verbal"}
_GCS_PARTS = ("gcs_eye", "gcs_motor", "gcs_verbal")

_RACES = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO", "ASIAN", "OTHER")
_RACE_P = (0.62, 0.14, 0.08, 0.06, 0.10)
_INSURANCE = ("Medicare", "Medicaid", "Private", "Other")
_ADMISSION_TYPES = (
    "EW EMER.",
    "URGENT",
    "ELECTIVE",
    "SURGICAL SAME DAY ADMISSION",
    "OBSERVATION ADMIT",
    "DIRECT EMER.",
)
_CAREUNITS = (
    "Medical Intensive Care Unit (MICU)",
    "Surgical Intensive Care Unit (SICU)",
    "Cardiac Vascular Intensive Care Unit (CVICU)",
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _feature_entries(n_features: int) -> tuple[list[dict[str, Any]], str, str]:
    """The features.json entries of the first ``n_features`` registry features (default, then extended)."""
    registry = load_registry("default" if n_features <= 17 else "extended")
    if not 1 <= n_features <= len(registry.features):
        raise CarebenchDataError(f"n_features must lie in 1..{len(registry.features)}, got {n_features}.")
    return [feature.as_dict() for feature in registry.features[:n_features]], registry.name, registry.sha256


def _draw_ehr(rng: np.random.Generator, severity: np.ndarray, features: list[dict[str, Any]]) -> np.ndarray:
    """float32 [N, 48, F] raw values inside each feature's valid range, NaN where not observed."""
    n_stays = severity.size
    ehr = np.full((n_stays, T_HOURS, len(features)), np.nan, dtype=np.float32)
    names = [feature["name"] for feature in features]
    for index, feature in enumerate(features):
        name, valid = feature["name"], feature["valid"]
        low, high = valid["low"], min(valid["high"], valid["low"] + 1000.0)
        mean, sd, p_observed, effect = _FEATURE_MODEL.get(
            name, (low + 0.3 * (high - low), 0.05 * (high - low), 0.1, 0.0)
        )
        if name == "gcs_total":
            continue
        values = mean + effect * severity[:, None] + sd * rng.standard_normal((n_stays, T_HOURS))
        if name in _ORDINAL_ROUNDING:
            values = np.round(values)
        span = high - low
        values = np.clip(values, low + 1e-3 * span, high - 1e-3 * span)
        if name in _ORDINAL_ROUNDING:
            values = np.clip(values, np.ceil(low), np.floor(high))
        observed = rng.random((n_stays, T_HOURS)) < p_observed
        observed[:, 0] |= name == "heart_rate"  # every stay has EHR (the has_ehr cohort step)
        ehr[:, :, index] = np.where(observed, values, np.nan)
    if "gcs_total" in names and all(part in names for part in _GCS_PARTS):
        parts = ehr[:, :, [names.index(part) for part in _GCS_PARTS]]
        ehr[:, :, names.index("gcs_total")] = parts.sum(axis=-1)  # NaN unless all three are observed
    return ehr


def _draw_images(rng: np.random.Generator, severity: np.ndarray, size: int) -> np.ndarray:
    """uint8 [M, S, S] chest-film-like images; a lung opacity brightens with severity."""
    grid = np.linspace(-1.0, 1.0, size)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    body = np.exp(-((x / 0.8) ** 2 + (y / 0.9) ** 2))
    lungs = np.exp(-(((np.abs(x) - 0.4) / 0.25) ** 2 + (y / 0.5) ** 2))
    opacity = np.exp(-(((x - 0.35) / 0.2) ** 2 + ((y - 0.2) / 0.2) ** 2))
    weight = _sigmoid(2.0 * severity)[:, None, None]
    images = 90 * body - 50 * lungs + 110 * weight * opacity
    images = images + 8 * rng.standard_normal((severity.size, size, size)) + 60
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def _json_text(content: Any) -> str:
    return json.dumps(content, sort_keys=True, indent=2, allow_nan=False) + "\n"


def _labels_block() -> dict[str, Any]:
    """``manifest.json["labels"]`` (INTERFACES: mortality mode, LoS, phenotypes, task specs)."""
    columns = [name for name, *_ in PHENOTYPES]
    return {
        "mortality_mode": "icu",
        "los": {"class_names": list(LOS_CLASS_NAMES), "edges_days": list(LOS_EDGES_DAYS)},
        "phenotype": {
            "mapping": "gem_ccs",
            "columns": [
                {"name": name, "title": title, "ccs_id": ccs_id, "type": kind}
                for name, title, ccs_id, kind, _ in PHENOTYPES
            ],
        },
        "tasks": {
            "mortality": {"kind": "binary", "columns": ["mortality"], "label_names": ["mortality"]},
            "phenotype": {"kind": "multilabel", "columns": columns, "label_names": columns},
            "los": {"kind": "multiclass", "columns": ["los_class"], "label_names": list(LOS_CLASS_NAMES)},
        },
    }


def write_tiny_dataset(
    path: str | os.PathLike[str],
    *,
    n_stays: int = 64,
    n_features: int = 17,
    image_size: int = 32,
    seed: int = 0,
    paired_fraction: float = 0.3,
) -> Path:
    """Write a complete, valid benchmark dataset directory with planted signal.

    Args:
        path: the directory to create; it must not exist. Written atomically (temporary sibling
            directory, then rename).
        n_stays: N, rows of stays.parquet / ehr.npy (about 0.8 stays per subject: some subjects have
            two stays, so patient-level splitting is exercised).
        n_features: F, the first F features of the bundled registry (default set up to 17, then the
            extended set up to 47).
        image_size: S, the side of the square uint8 images in cxr.npy [M, S, S].
        seed: seed of every random draw; the same arguments give byte-identical data files.
        paired_fraction: probability that a stay has a CXR (M is about N times this).

    Returns:
        The path of the written directory.
    """
    target = Path(path)
    if target.exists():
        raise CarebenchDataError(f"{target} already exists; choose a new directory for the tiny dataset.")
    if n_stays < 10:
        raise CarebenchDataError(f"n_stays must be at least 10 (five folds need train stays), got {n_stays}.")
    if not 0.0 <= paired_fraction <= 1.0:
        raise CarebenchDataError(f"paired_fraction must lie in [0, 1], got {paired_fraction}.")
    if image_size < 8:
        raise CarebenchDataError(f"image_size must be at least 8 pixels, got {image_size}.")
    rng = np.random.default_rng(seed)
    features, registry_name, registry_sha = _feature_entries(n_features)
    feature_names = [feature["name"] for feature in features]

    n_subjects = max(1, round(n_stays * 0.8))
    subject_pool = 10_000_000 + rng.choice(9_000_000, size=n_subjects, replace=False)
    subject_ids = np.sort(np.concatenate([subject_pool, rng.choice(subject_pool, n_stays - n_subjects)]))
    stay_ids = 30_000_000 + np.sort(rng.choice(9_000_000, size=n_stays, replace=False))
    hadm_ids = 20_000_000 + rng.choice(9_000_000, size=n_stays, replace=False)
    severity = rng.standard_normal(n_stays)

    start = dt.datetime(2150, 1, 1)
    intime = [start + dt.timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 3650, n_stays)]
    has_cxr = rng.random(n_stays) < paired_fraction
    cxr_index = np.where(has_cxr, np.cumsum(has_cxr) - 1, -1).astype(np.int32)
    n_images = int(has_cxr.sum())
    cxr_hours = np.where(has_cxr, rng.uniform(0.0, 48.0, n_stays), np.nan).astype(np.float32)
    dicom_ids = [
        hashlib.sha1(f"{seed}:{stay}".encode()).hexdigest()[:32] if paired else None
        for stay, paired in zip(stay_ids, has_cxr, strict=True)
    ]
    stays = pl.DataFrame(
        {
            "subject_id": subject_ids,
            "hadm_id": hadm_ids,
            "stay_id": stay_ids,
            "intime": intime,
            "prediction_time": [t + dt.timedelta(hours=48) for t in intime],
            "age": np.clip(np.round(64 + 16 * rng.standard_normal(n_stays)), 18, 91),
            "sex": rng.choice(["M", "F"], size=n_stays, p=[0.56, 0.44]),
            "race": rng.choice(_RACES, size=n_stays, p=_RACE_P),
            "insurance": rng.choice(_INSURANCE, size=n_stays),
            "admission_type": rng.choice(_ADMISSION_TYPES, size=n_stays),
            "first_careunit": rng.choice(_CAREUNITS, size=n_stays),
            "has_cxr": has_cxr,
            "cxr_index": cxr_index,
            "cxr_dicom_id": dicom_ids,
            "cxr_hours": cxr_hours,
            "fold_part": fold_parts(subject_ids),
        }
    ).with_columns(
        pl.col("subject_id", "hadm_id", "stay_id").cast(pl.Int64),
        pl.col("intime", "prediction_time").cast(pl.Datetime("us")),
        pl.col("age").cast(pl.Int16),
        pl.col("cxr_dicom_id").cast(pl.Utf8),
        pl.col("cxr_hours").fill_nan(None).cast(pl.Float32),
        pl.col("fold_part").cast(pl.Int8),
    )

    mortality = rng.random(n_stays) < _sigmoid(2.5 * severity - 1.5)
    los_days = 2.0 + rng.exponential(2.0 + 2.0 * _sigmoid(severity) * 4.0, n_stays)
    los_class = np.searchsorted(np.asarray(LOS_EDGES_DAYS), los_days, side="right") - 1
    phenotype_columns = {
        name: (rng.random(n_stays) < _sigmoid(np.log(p / (1 - p)) + 0.8 * severity)).astype(np.int8)
        for name, _, _, _, p in PHENOTYPES
    }
    labels = pl.DataFrame(
        {
            "stay_id": stay_ids,
            "mortality": mortality.astype(np.int8),
            "los_days": los_days,
            "los_class": los_class.astype(np.int8),
            **phenotype_columns,
        }
    ).with_columns(pl.col("stay_id").cast(pl.Int64), pl.col("los_days").cast(pl.Float64))

    ehr = _draw_ehr(rng, severity, features)
    images = _draw_images(rng, severity[has_cxr], image_size)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    use_umask(staging, directory=True)  # mkdtemp makes 0700
    try:
        stays.write_parquet(staging / "stays.parquet", compression="zstd", compression_level=3)
        labels.write_parquet(staging / "labels.parquet", compression="zstd", compression_level=3)
        np.save(staging / "ehr.npy", ehr)
        np.save(staging / "cxr.npy", images)
        features_json = {"registry": registry_name, "registry_sha256": registry_sha, "features": features}
        (staging / "features.json").write_text(_json_text(features_json), encoding="utf-8")
        (staging / "stats").mkdir()
        parts = stays["fold_part"].to_numpy()
        for fold in range(N_FOLDS):
            train_rows = np.flatnonzero(split_of(subject_ids, parts, fold=fold) == "train")
            stats = compute_fold_stats(
                ehr, train_rows, feature_names=feature_names, train_stay_ids=stay_ids[train_rows]
            )
            write_fold_stats(stats, staging / "stats" / f"fold{fold}.json")
        config = {
            "generator": "carebench_data.testing.write_tiny_dataset",
            "n_stays": n_stays,
            "n_features": n_features,
            "image_size": image_size,
            "seed": seed,
            "paired_fraction": paired_fraction,
            "splits": {"salt": "v1"},
        }
        files = {
            file.relative_to(staging).as_posix(): {"sha256": sha256_file(file), "bytes": file.stat().st_size}
            for file in sorted(staging.rglob("*"))
            if file.is_file()
        }
        hash_lines = "".join(f"{relpath} {entry['sha256']}\n" for relpath, entry in sorted(files.items()))
        canonical_config = json.dumps(config, sort_keys=True, separators=(",", ":"))
        manifest = {
            "schema_version": 1,
            "carebench_version": __version__,
            "source": {"kind": "synthetic", "generator": "tiny", "seed": seed},
            "config": config,
            "counts": {
                "cohort": {"cohort": {"stays": n_stays, "subjects": int(np.unique(subject_ids).size)}},
                "cxr": {"has_cxr": n_images},
            },
            "features": feature_names,
            "labels": _labels_block(),
            "files": files,
            "content_hash": hashlib.sha256((hash_lines + canonical_config).encode("utf-8")).hexdigest(),
            "build": {"built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
            "warnings": [],
        }
        (staging / "manifest.json").write_text(_json_text(manifest), encoding="utf-8")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
