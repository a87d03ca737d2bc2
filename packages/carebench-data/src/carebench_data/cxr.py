"""CXR linkage and images (stage S6, spec/data.md §6).

Candidates are frontal images of the stay's subject whose study time lies in
[intime − lookback, prediction_time]; the latest one is selected (ties: view order, then dicom_id),
falling back to the next candidate when a file is missing or fails to decode. The leakage guard
asserts that no selected image lies after prediction_time. Only the selected images are decoded,
once, with JPEG draft (DCT-scaled) decoding, resized and center-cropped to S × S grayscale uint8.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from carebench_data.errors import CarebenchDataError

logger = logging.getLogger(__name__)

_VIEW_CODES = {"antero-posterior": "AP", "postero-anterior": "PA"}
_MAX_LISTED_FAILURES = 100


class CxrError(CarebenchDataError):
    """Images cannot be linked or decoded (wrong root or layout, too many failures, leakage)."""


def parse_study_time(metadata: pl.LazyFrame) -> pl.LazyFrame:
    """Add `study_datetime` from StudyDate (`YYYYMMDD`) and the unpadded float StudyTime (G1, G2).

    The integer part of StudyTime is left-padded to 6 digits and read as HHMMSS; the fraction is
    dropped. HH ≥ 24, MM ≥ 60 or SS ≥ 60 (or an unparseable date) gives a null study_datetime.

    >>> meta = pl.LazyFrame({"StudyDate": ["21800506"] * 5,
    ...     "StudyTime": ["80556.875", "213014.531", "95959", "5", "250000"]})
    >>> [str(t) for t in parse_study_time(meta).collect().get_column("study_datetime")]
    ['2180-05-06 08:05:56', '2180-05-06 21:30:14', '2180-05-06 09:59:59', '2180-05-06 00:00:05', 'None']
    """
    date = (
        pl.col("StudyDate").str.strip_chars().str.split(".").list.first().str.to_date("%Y%m%d", strict=False)
    )
    digits = pl.col("StudyTime").str.strip_chars().str.split(".").list.first().str.zfill(6)
    hours = digits.str.slice(0, 2).cast(pl.Int64, strict=False)
    minutes = digits.str.slice(2, 2).cast(pl.Int64, strict=False)
    seconds = digits.str.slice(4, 2).cast(pl.Int64, strict=False)
    valid = (digits.str.len_chars() == 6) & (hours < 24) & (minutes < 60) & (seconds < 60)
    stamp = date.cast(pl.Datetime("us")) + pl.duration(hours=hours, minutes=minutes, seconds=seconds)
    return metadata.with_columns(study_datetime=pl.when(valid).then(stamp).otherwise(None))


def frontal_views(metadata: pl.LazyFrame, *, views: tuple[str, ...], recover_view: bool) -> pl.LazyFrame:
    """Keep images whose view is in `views` and add `view_rank` (position in `views`, the tie-break).

    With `recover_view`, a null ViewPosition is recovered from ViewCodeSequence_CodeMeaning.
    """
    view = pl.col("ViewPosition").str.strip_chars().str.to_uppercase()
    if recover_view:
        recovered = (
            pl.col("ViewCodeSequence_CodeMeaning")
            .str.strip_chars()
            .str.to_lowercase()
            .replace_strict(_VIEW_CODES, default=None, return_dtype=pl.String)
        )
        view = pl.coalesce(view, recovered)
    return (
        metadata.with_columns(view=view)
        .filter(pl.col("view").is_in(list(views)))
        .with_columns(
            view_rank=pl.col("view").replace_strict({v: i for i, v in enumerate(views)}, return_dtype=pl.Int8)
        )
    )


def window_candidates(images: pl.LazyFrame, *, stays: pl.LazyFrame, lookback_hours: float) -> pl.LazyFrame:
    """Join images to cohort stays on subject_id and keep intime − lookback ≤ study_datetime ≤ prediction_time.

    Adds `candidate_rank` per stay: 0 = latest study, ties by view order then ascending dicom_id.
    """
    lower = pl.col("intime") - timedelta(hours=lookback_hours)
    return (
        images.join(
            stays.select("row", "subject_id", "intime", "prediction_time"), on="subject_id", how="inner"
        )
        .filter((pl.col("study_datetime") >= lower) & (pl.col("study_datetime") <= pl.col("prediction_time")))
        .sort(["row", "study_datetime", "view_rank", "dicom_id"], descending=[False, True, False, False])
        .with_columns(candidate_rank=pl.int_range(pl.len()).over("row").cast(pl.Int32))
    )


def image_path(root: Path, *, subject_id: int, study_id: int, dicom_id: str, layout: str) -> Path:
    """Where the JPEG of one image lives (`mimic`: files/p1X/p<subject>/s<study>/<dicom>.jpg)."""
    if layout == "flat":
        return root / f"{dicom_id}.jpg"
    subject = str(subject_id)
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id}" / f"{dicom_id}.jpg"


def row_image_path(root: Path, row: Mapping[str, Any], *, layout: str) -> Path:
    """`image_path` of one metadata row (a mapping with `subject_id`, `study_id` and `dicom_id`)."""
    return image_path(
        root, subject_id=row["subject_id"], study_id=row["study_id"], dicom_id=row["dicom_id"], layout=layout
    )


def decode_image(path: Path, *, size: int) -> np.ndarray:
    """Decode a JPEG to uint8 [size, size] grayscale (spec/data.md §6.3).

    Draft mode asks libjpeg for the largest DCT reduction (1/2, 1/4, 1/8) that keeps both sides
    ≥ size; the short side is then resized to `size` (antialiased bicubic) and the long side
    center-cropped at offset ⌊(long − size) / 2⌋. A truncated file raises OSError.
    """
    with Image.open(path) as image:
        image.draft("L", (size, size))
        gray = image.convert("L")
    width, height = gray.size
    scale = size / min(width, height)
    new_width = max(size, round(width * scale))
    new_height = max(size, round(height * scale))
    resized = gray.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _try_decode(path: Path, size: int) -> tuple[str, np.ndarray | None]:
    if not path.is_file():
        return "file_missing", None
    try:
        return "ok", decode_image(path, size=size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return "decode_failed", None


@dataclass
class CxrSelection:
    """Per cohort row: the selected image (or none), plus the S6 counts."""

    selected: pl.DataFrame
    """row, dicom_id, study_id, view, study_datetime of every stay with a decoded image, by row."""
    counts: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)


def select_and_decode(
    candidates: pl.DataFrame,
    *,
    root: Path,
    layout: str,
    size: int,
    workers: int,
    max_failure_fraction: float,
    scratch: Path,
    on_image: Callable[[int], None] | None = None,
) -> tuple[CxrSelection, np.ndarray]:
    """Try each stay's candidates in rank order until one decodes; images are placed by stay, never by completion.

    Returns the selection and a uint8 [n_selected, S, S] memory map (in `scratch`) ordered by row.
    """
    stays = candidates.get_column("row").unique().sort().to_list()
    slot_of = {row: slot for slot, row in enumerate(stays)}
    buffer = np.lib.format.open_memmap(
        scratch, mode="w+", dtype=np.uint8, shape=(max(len(stays), 1), size, size)
    )
    by_row = candidates.partition_by("row", as_dict=True, maintain_order=True)
    pending = {row: 0 for row in stays}
    chosen: dict[int, dict[str, Any]] = {}
    counts = {"file_missing": 0, "decode_failed": 0, "fallback_used": 0, "attempted": 0}
    failures: list[dict[str, str]] = []
    _preflight(candidates, root=root, layout=layout)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while pending:
            attempts = []
            for row, rank in sorted(pending.items()):
                candidate = by_row[(row,)].row(rank, named=True)
                path = row_image_path(root, candidate, layout=layout)
                attempts.append((row, rank, candidate, pool.submit(_try_decode, path, size)))
            next_pending: dict[int, int] = {}
            for row, rank, candidate, future in attempts:
                status, pixels = future.result()
                counts["attempted"] += 1
                if on_image is not None:
                    on_image(1)
                if status == "ok" and pixels is not None:
                    buffer[slot_of[row]] = pixels
                    chosen[row] = candidate
                    counts["fallback_used"] += int(rank > 0)
                    continue
                counts[status] += 1
                if len(failures) < _MAX_LISTED_FAILURES:
                    failures.append({"dicom_id": candidate["dicom_id"], "reason": status})
                if rank + 1 < by_row[(row,)].height:
                    next_pending[row] = rank + 1
            pending = next_pending
    failed = counts["file_missing"] + counts["decode_failed"]
    if counts["attempted"] and failed / counts["attempted"] > max_failure_fraction:
        raise CxrError(
            f"{failed} of {counts['attempted']} images under {root} are missing or corrupt, above "
            f"cxr.max_failure_fraction = {max_failure_fraction}; check the MIMIC-CXR root and layout "
            f"(first failures: {[f['dicom_id'] for f in failures[:3]]})"
        )
    rows = sorted(chosen)
    selected = pl.DataFrame(
        {
            "row": rows,
            "slot": [slot_of[row] for row in rows],
            "dicom_id": [chosen[row]["dicom_id"] for row in rows],
            "study_id": [chosen[row]["study_id"] for row in rows],
            "view": [chosen[row]["view"] for row in rows],
            "study_datetime": [chosen[row]["study_datetime"] for row in rows],
        },
        schema={
            "row": pl.Int32,
            "slot": pl.Int64,
            "dicom_id": pl.String,
            "study_id": pl.Int64,
            "view": pl.String,
            "study_datetime": pl.Datetime("us"),
        },
    )
    return CxrSelection(selected=selected, counts=counts, failures=failures), buffer


def _preflight(candidates: pl.DataFrame, *, root: Path, layout: str) -> None:
    """Fail early when none of the first 100 candidate files exists (wrong root or layout)."""
    probe = candidates.head(100)
    if not probe.height:
        return
    for candidate in probe.iter_rows(named=True):
        path = row_image_path(root, candidate, layout=layout)
        if path.is_file():
            return
    example = row_image_path(root, probe.row(0, named=True), layout=layout)
    raise CxrError(
        f"none of the first {probe.height} candidate images exists (e.g. {example}); check --mimic-cxr "
        f"(the folder holding files/) and cxr.layout = {layout!r}"
    )


def check_leakage(selected: pl.DataFrame, *, lookback_hours: float) -> None:
    """Leakage guard: every selected study lies in [intime − lookback, prediction_time]; else abort."""
    lower = pl.col("intime") - timedelta(hours=lookback_hours)
    bad = selected.filter(
        (pl.col("study_datetime") > pl.col("prediction_time")) | (pl.col("study_datetime") < lower)
    )
    if bad.height:
        raise CxrError(
            f"leakage guard: {bad.height} selected image(s) lie outside [intime - lookback, prediction_time] "
            f"(e.g. dicom_id {bad['dicom_id'][0]}); nothing was written"
        )
