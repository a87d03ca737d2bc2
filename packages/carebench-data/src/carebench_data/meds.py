"""Export a benchmark dataset as MEDS (Medical Event Data Standard), for MEDS tools and models.

`export_meds` writes the cohort of a dataset directory in the MEDS layout, every file checked with the
``meds`` package's schemas before the directory is renamed into place (extra ``carebench-data[meds]``):

```
<out>/
  data/{train,tuning,held_out}/0.parquet   events: subject_id, time, code, numeric_value, stay_id, image_path
  labels/<task>.parquet                    binary task: boolean_value; multiclass task: integer_value
  labels/<task>/<label>.parquet            multilabel task: one binary label file per label
  images/<cxr_dicom_id>.png                the dataset's chest X-ray of each stay that has one
  metadata/dataset.json                    MEDS dataset metadata
  metadata/codes.parquet                   every code with a description (and MIMIC itemids as parents)
  metadata/subject_splits.parquet          subject_id, split (train / tuning / held_out of one fold)
  metadata/carebench.json                  tasks, label files, class names, fold, the rules below
```

Events of one stay (``stay_id`` links them back to ``stays.parquet``):

| code | time | value |
|---|---|---|
| ``SEX//<sex>`` | null (static) | |
| ``ICU_ADMISSION//<first care unit>`` | ``intime`` | |
| ``EHR//<feature>`` | ``intime + (h + 1) h``, the end of hour bin h | ``numeric_value``: the dataset's hourly value (raw units) |
| ``CXR`` | ``intime + cxr_hours`` | ``image_path``: ``images/<cxr_dicom_id>.png`` (relative to ``<out>``) |

An hourly EHR value is stamped at the end of its hour, when it is known, so no event of the 48 h window
lies after the prediction time. Images are stored as files and referenced by path from an extra value
column, the convention proposed for images in MEDS; ``metadata/dataset.json`` lists ``image_path`` under
``additional_value_modality_columns``. Labels have ``prediction_time`` = ``stays.prediction_time``
(``intime`` + 48 h). Every stay of the dataset is exported (the base cohort); the matched cohort is
the stays with a ``CXR`` event.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from carebench_data import __version__
from carebench_data.errors import CarebenchDataError
from carebench_data.manifest import atomic_directory, canonical_json
from carebench_data.splits import N_FOLDS, split_of
from carebench_data.tasks import read_manifest, task_specs

__all__ = ["MEDS_SPLITS", "MedsExportError", "export_meds", "validate_meds"]

logger = logging.getLogger(__name__)

MEDS_SPLITS = {"train": "train", "val": "tuning", "test": "held_out"}
"""carebench split -> MEDS split name."""

IMAGE_COLUMN = "image_path"
_INSTALL = "pip install 'carebench-data[meds]'"
_LICENSES = {
    "demo": "Open Data Commons Open Database License v1.0 (MIMIC-IV Clinical Database Demo)",
    "mimic": "PhysioNet Credentialed Health Data License 1.5.0",
}

ProgressCallback = Callable[[int, int], None]


class MedsExportError(CarebenchDataError):
    """The MEDS export cannot run (missing package, bad fold) or its output fails the MEDS schemas."""


def _meds() -> Any:
    try:
        import meds
        import pyarrow  # noqa: F401
    except ImportError as error:
        raise MedsExportError(
            f"exporting MEDS needs the meds package ({error.name} is missing); install it with {_INSTALL}"
        ) from None
    return meds


def _read_dataset(
    dataset_dir: Path,
) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame, list[dict[str, Any]]]:
    manifest = read_manifest(dataset_dir)
    for name in ("stays.parquet", "labels.parquet", "ehr.npy", "features.json"):
        if not (dataset_dir / name).is_file():
            raise MedsExportError(
                f"{dataset_dir / name}: missing; is {dataset_dir} a complete dataset directory?"
            )
    stays = pl.read_parquet(dataset_dir / "stays.parquet")
    labels = pl.read_parquet(dataset_dir / "labels.parquet")
    features = json.loads((dataset_dir / "features.json").read_text(encoding="utf-8"))["features"]
    return manifest, stays, labels, features


def _ehr_events(ehr: np.ndarray, stays: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """One event per observed (stay, hour, feature) of ``ehr`` [N, 48, F]."""
    rows, hours, features = np.nonzero(~np.isnan(ehr))
    intime = stays["intime"].cast(pl.Datetime("us")).to_numpy()
    return pl.DataFrame(
        {
            "subject_id": stays["subject_id"].to_numpy()[rows],
            "time": intime[rows] + (hours.astype(np.int64) + 1) * np.timedelta64(1, "h"),
            "code": pl.Series(
                np.asarray([f"EHR//{name}" for name in names], dtype=object)[features], dtype=pl.String
            ),
            "numeric_value": ehr[rows, hours, features].astype(np.float32),
            "stay_id": stays["stay_id"].to_numpy()[rows],
        }
    ).with_columns(pl.col("time").cast(pl.Datetime("us")))


def _stay_events(stays: pl.DataFrame) -> pl.DataFrame:
    """``SEX//`` (static, once per subject), ``ICU_ADMISSION//`` and ``CXR`` events."""
    sex = (
        stays.sort("intime")
        .group_by("subject_id", maintain_order=True)
        .agg(pl.col("sex").first())
        .filter(pl.col("sex").is_not_null())
        .select(
            "subject_id",
            pl.lit(None, dtype=pl.Datetime("us")).alias("time"),
            pl.format("SEX//{}", "sex").alias("code"),
            pl.lit(None, dtype=pl.Int64).alias("stay_id"),
        )
    )
    admission = stays.select(
        "subject_id",
        pl.col("intime").cast(pl.Datetime("us")).alias("time"),
        pl.format("ICU_ADMISSION//{}", pl.col("first_careunit").fill_null("UNKNOWN")).alias("code"),
        "stay_id",
    )
    cxr = stays.filter(pl.col("has_cxr")).select(
        "subject_id",
        # cxr_hours is float32 (about 0.01 s off at 48 h): the film's time to the second.
        (
            pl.col("intime").cast(pl.Datetime("us"))
            + pl.duration(seconds=(pl.col("cxr_hours") * 3600.0).round())
        )
        .cast(pl.Datetime("us"))
        .alias("time"),
        pl.lit("CXR").alias("code"),
        "stay_id",
        pl.format("images/{}.png", "cxr_dicom_id").alias(IMAGE_COLUMN),
    )
    return pl.concat([sex, admission, cxr], how="diagonal_relaxed")


def _write_images(
    dataset_dir: Path, stays: pl.DataFrame, out: Path, progress: ProgressCallback | None
) -> int:
    """``images/<cxr_dicom_id>.png`` from ``cxr.npy`` for every stay with a CXR; returns the count."""
    from PIL import Image

    paired = stays.filter(pl.col("has_cxr")).select("cxr_index", "cxr_dicom_id")
    if paired.is_empty():
        return 0
    images = np.load(dataset_dir / "cxr.npy", mmap_mode="r")
    (out / "images").mkdir()
    for done, (index, dicom_id) in enumerate(paired.iter_rows(), start=1):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(images[index])).save(buffer, format="PNG", optimize=False)
        (out / "images" / f"{dicom_id}.png").write_bytes(buffer.getvalue())
        if progress is not None:
            progress(done, paired.height)
    return paired.height


def _write_table(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def _label_tables(
    stays: pl.DataFrame, labels: pl.DataFrame, dataset_dir: Path
) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
    """{relative path: MEDS label frame} and the ``tasks`` block of ``carebench.json``."""
    joined = stays.select("stay_id", "subject_id", pl.col("prediction_time").cast(pl.Datetime("us"))).join(
        labels, on="stay_id", how="left"
    )
    spine = [pl.col("subject_id"), pl.col("prediction_time")]
    tables: dict[str, pl.DataFrame] = {}
    described: dict[str, Any] = {}
    for info in task_specs(dataset_dir).values():
        missing = [column for column in info.columns if column not in labels.columns]
        if missing:
            raise MedsExportError(f"labels.parquet lacks column(s) {missing} of task {info.name!r}")
        if info.kind == "multiclass":
            path = f"labels/{info.name}.parquet"
            column = pl.col(info.columns[0])
            tables[path] = joined.filter(column.is_not_null()).select(
                *spine, column.cast(pl.Int64).alias("integer_value")
            )
            described[info.name] = {
                "kind": info.kind,
                "value": "integer_value",
                "file": path,
                "classes": list(info.label_names),
            }
            continue
        files = {}
        for name, column in zip(info.label_names, info.columns, strict=True):
            path = (
                f"labels/{info.name}.parquet"
                if info.kind == "binary"
                else f"labels/{info.name}/{name}.parquet"
            )
            tables[path] = joined.filter(pl.col(column).is_not_null()).select(
                *spine, (pl.col(column) == 1).alias("boolean_value")
            )
            files[name] = path
        described[info.name] = {"kind": info.kind, "value": "boolean_value", "files": files}
    return {path: frame.sort("subject_id", "prediction_time") for path, frame in tables.items()}, described


def _codes(features: list[dict[str, Any]], events: pl.DataFrame) -> pl.DataFrame:
    """``metadata/codes.parquet``: every code of the events, described; EHR codes list their MIMIC itemids."""
    described: dict[str, tuple[str, list[str]]] = {}
    for feature in features:
        itemids = sorted(
            {
                f"{source['table']}//{itemid}"
                for source in feature.get("sources", [])
                for itemid in source["itemids"]
            }
        )
        text = f"{feature.get('label', feature['name'])} [{feature.get('unit', '')}], last value of each hour"
        described[f"EHR//{feature['name']}"] = (text, [f"MIMIC_IV//{item}" for item in itemids])
    rows = []
    for code in events["code"].unique().sort().to_list():
        if code in described:
            text, parents = described[code]
        elif code == "CXR":
            text, parents = "Chest X-ray (frontal), the image of the stay; pixels in image_path", []
        elif code.startswith("ICU_ADMISSION//"):
            text, parents = f"ICU admission to {code.split('//', 1)[1]}", []
        else:
            text, parents = f"Sex recorded as {code.split('//', 1)[1]}", []
        rows.append({"code": code, "description": text, "parent_codes": parents})
    return pl.DataFrame(
        rows, schema={"code": pl.String, "description": pl.String, "parent_codes": pl.List(pl.String)}
    )


def _license(manifest: dict[str, Any]) -> str | None:
    source = manifest.get("source") or {}
    if source.get("kind") != "mimic":
        return None
    detected = str(((source.get("fingerprint") or {}).get("detected")) or "")
    return _LICENSES["demo" if detected.endswith("-demo") else "mimic"]


def export_meds(
    dataset_dir: str | Path,
    out: str | Path,
    *,
    fold: int = 0,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write the dataset's cohort as a MEDS dataset directory, validated with the meds schemas.

    Args:
        dataset_dir: a benchmark dataset directory (``carebench data build`` output).
        out: the MEDS directory to create (written next to it, renamed into place when valid).
        fold: whose train / validation / test subjects become MEDS ``train`` / ``tuning`` / ``held_out``.
        overwrite: replace an existing ``out``.
        progress: called with (images written, images to write).

    Returns:
        The MEDS directory.

    Raises:
        MedsExportError: no ``meds`` package, a bad fold, an incomplete dataset, or output that fails
            the MEDS schemas (nothing is left behind then).
    """
    meds = _meds()
    dataset_dir, out = Path(dataset_dir), Path(out)
    if not 0 <= fold < N_FOLDS:
        raise MedsExportError(f"fold must lie in 0..{N_FOLDS - 1}, got {fold}")
    if out.exists() and not overwrite:
        raise MedsExportError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    manifest, stays, labels, features = _read_dataset(dataset_dir)
    ehr = np.load(dataset_dir / "ehr.npy", mmap_mode="r")
    if ehr.shape[0] != stays.height or ehr.shape[2] != len(features):
        raise MedsExportError(
            f"{dataset_dir / 'ehr.npy'}: shape {ehr.shape} does not match stays and features"
        )
    names = [feature["name"] for feature in features]
    events = pl.concat(
        [_stay_events(stays), _ehr_events(np.asarray(ehr), stays, names)], how="diagonal_relaxed"
    )
    events = events.with_columns(pl.col(IMAGE_COLUMN).cast(pl.String)).select(
        "subject_id", "time", "code", "numeric_value", "stay_id", IMAGE_COLUMN
    )
    salt = str(((manifest.get("config") or {}).get("splits") or {}).get("salt", "v1"))
    subjects = stays.select("subject_id", "fold_part").unique("subject_id", keep="first").sort("subject_id")
    carebench_split = split_of(
        subjects["subject_id"].to_numpy(), subjects["fold_part"].to_numpy(), fold=fold, salt=salt
    )
    splits = subjects.select("subject_id").with_columns(
        split=pl.Series([MEDS_SPLITS[name] for name in carebench_split], dtype=pl.String)
    )
    label_tables, tasks = _label_tables(stays, labels, dataset_dir)
    codes = _codes(features, events)

    with atomic_directory(out, overwrite=overwrite) as partial:
        shards: dict[str, int] = {}
        for split in MEDS_SPLITS.values():
            members = splits.filter(pl.col("split") == split).select("subject_id")
            shard = events.join(members, on="subject_id", how="semi").sort(
                "subject_id", "time", "code", "stay_id", nulls_last=False, maintain_order=True
            )
            if shard.is_empty():
                continue
            _write_table(meds.DataSchema.align(shard.to_arrow()), partial / "data" / split / "0.parquet")
            shards[split] = shard.height
        for path, frame in label_tables.items():
            _write_table(meds.LabelSchema.align(frame.to_arrow()), partial / path)
        _write_table(meds.SubjectSplitSchema.align(splits.to_arrow()), partial / meds.subject_splits_filepath)
        _write_table(meds.CodeMetadataSchema.align(codes.to_arrow()), partial / meds.code_metadata_filepath)
        images = _write_images(dataset_dir, stays, partial, progress)
        built_at = (manifest.get("build") or {}).get("built_at")
        metadata = {
            "dataset_name": "carebench",
            "dataset_version": str(manifest.get("content_hash", ""))[:16],
            "etl_name": "carebench data export-meds",
            "etl_version": __version__,
            "meds_version": meds.__version__,
            "raw_source_id_columns": ["stay_id"],
            "additional_value_modality_columns": [IMAGE_COLUMN],
        }
        if built_at:
            metadata["created_at"] = dt.datetime.fromisoformat(built_at).isoformat()
        license_text = _license(manifest)
        if license_text:
            metadata["license"] = license_text
        (partial / meds.dataset_metadata_filepath).write_text(canonical_json(metadata), encoding="utf-8")
        carebench = {
            "source_dataset": {
                "path": str(dataset_dir.absolute()),
                "content_hash": manifest.get("content_hash"),
            },
            "fold": fold,
            "splits": {"train": "train", "tuning": "val", "held_out": "test"},
            "tasks": tasks,
            "counts": {"subjects": splits.height, "stays": stays.height, "events": shards, "images": images},
            "rules": {
                "prediction_time": "intime + 48 h (stays.prediction_time)",
                "ehr_time": "intime + (hour + 1) h: the end of the hour bin of the value",
                "image_path": "relative to the MEDS root; the dataset's cxr.npy pixels as PNG",
            },
        }
        (partial / "metadata" / "carebench.json").write_text(canonical_json(carebench), encoding="utf-8")
        validate_meds(partial)
    logger.info("exported %d subjects, %d events to %s", splits.height, sum(shards.values()), out)
    return out


def validate_meds(root: str | Path) -> dict[str, int]:
    """Check a MEDS directory with the ``meds`` schemas and the data rules the schemas cannot express.

    Checks: every ``data/**/*.parquet`` against ``DataSchema``, each subject in one shard only and its
    events sorted by time (static events first); every ``labels/**/*.parquet`` against ``LabelSchema``;
    the split, code and dataset metadata files against their schemas; every ``image_path`` file present;
    the split file names exactly the subjects that have events.

    Returns:
        Row counts: ``events``, ``labels`` (files), ``subjects``, ``codes``.

    Raises:
        MedsExportError: the first violation, naming the file.
    """
    meds = _meds()
    import pyarrow.parquet as pq
    from flexible_schema import SchemaValidationError, TableValidationError

    root = Path(root)

    def check(schema: Any, path: Path) -> Any:
        table = pq.read_table(path)
        try:
            schema.validate(table)
        except (SchemaValidationError, TableValidationError) as error:
            raise MedsExportError(
                f"{path}: fails the MEDS {schema.__name__}: {' '.join(str(error).split())}"
            ) from None
        return table

    seen: dict[int, str] = {}
    events = 0
    data_files = sorted((root / meds.data_subdirectory).rglob("*.parquet"))
    if not data_files:
        raise MedsExportError(f"{root}: no data/*.parquet shards")
    for path in data_files:
        frame = pl.DataFrame(check(meds.DataSchema, path))
        events += frame.height
        for subject in frame["subject_id"].unique().to_list():
            if subject in seen:
                raise MedsExportError(f"{path}: subject {subject} is also in {seen[subject]}")
            seen[subject] = path.name
        ordered = frame.select("subject_id", "time").with_row_index("row")
        expected = ordered.sort("subject_id", "time", nulls_last=False, maintain_order=True)["row"]
        if not expected.equals(ordered["row"]):
            raise MedsExportError(f"{path}: events are not sorted by subject_id and time")
        if IMAGE_COLUMN in frame.columns:
            for relative in frame[IMAGE_COLUMN].drop_nulls().to_list():
                if not (root / relative).is_file():
                    raise MedsExportError(f"{path}: image_path {relative} does not exist under {root}")
    label_files = sorted((root / "labels").rglob("*.parquet"))
    for path in label_files:
        check(meds.LabelSchema, path)
    splits = check(meds.SubjectSplitSchema, root / meds.subject_splits_filepath)
    codes = check(meds.CodeMetadataSchema, root / meds.code_metadata_filepath)
    metadata = json.loads((root / meds.dataset_metadata_filepath).read_text(encoding="utf-8"))
    try:
        meds.DatasetMetadataSchema.validate(metadata)
    except (SchemaValidationError, TableValidationError) as error:
        raise MedsExportError(
            f"{root / meds.dataset_metadata_filepath}: fails the MEDS DatasetMetadataSchema: {error}"
        ) from None
    unknown = set(pl.DataFrame(splits)["subject_id"].to_list()) ^ set(seen)
    if unknown:
        raise MedsExportError(
            f"{root / meds.subject_splits_filepath}: subjects without events or split: {sorted(unknown)[:5]}"
        )
    return {"events": events, "labels": len(label_files), "subjects": len(seen), "codes": codes.num_rows}
