"""MIMIC-CXR-JPG emission: film schedule, metadata, CheXpert/NegBio labels, split, images (data.md §13.5).

Films: the first ICU film at intime + Exp(6 h) inside the 48 h window, daily AP films at 04:00-06:00
while ventilated (continuing past prediction_time: leakage traps), ED PA + lateral studies 0-48 h
before intime (traps at lookback 0), older studies of ICU patients and studies of CXR-only
patients. Only anchor groups 2011-2013 and 2014-2016 have films.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from carebench_data.mimic_schemas import CHEXPERT_FINDINGS
from carebench_data.synthetic.config import SyntheticConfig
from carebench_data.synthetic.latent import Population, age_bins, subgroup_factor
from carebench_data.synthetic.render import (
    HEART_CTR,
    N_BASES,
    N_EFFUSION,
    N_GAMMA,
    N_NOISE,
    RenderParams,
    TemplateCache,
)
from carebench_data.synthetic.rng import SECONDS_PER_DAY, SECONDS_PER_HOUR, rng_for, unique_ids
from carebench_data.synthetic.vocab import CXR_ERA_GROUPS, EMERGENCY_TYPES

FINDINGS = ("eff_left", "eff_right", "cardiomegaly", "edema", "consolidation", "pneumothorax", "atelectasis")
WINDOW_HOURS = 48


@dataclass
class CxrPlan:
    """One row per image (arrays of equal length), in file order (subject, study time, dicom_id).

    Keys: dicom_id, subject_id, study_id, stay_row (-1 if not an ICU film), kind, view (None = null
    ViewPosition), true_view, time_ms (ms since 1970), the FINDINGS severities, tube, central_line,
    noise_factor.
    """

    images: dict[str, np.ndarray]


def _dicom_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 2**32, size=(n, 5), dtype=np.uint64)
    return np.array(["-".join(f"{int(v):08x}" for v in row) for row in raw], dtype=object)


def plan_films(population: Population, config: SyntheticConfig) -> CxrPlan:
    """Schedule every image of the tree and attach the severities it shows."""
    rng = rng_for(config.seed, "cxr-plan")
    stays, adm, pat, bg = population.stays, population.admissions, population.patients, population.background
    parts: list[dict[str, np.ndarray]] = []
    next_study = [0]

    def add(
        stay_row: np.ndarray,
        subject: np.ndarray,
        t: np.ndarray,
        kind: str,
        views: tuple[str, ...],
        source: np.ndarray,
        scale: float,
    ) -> None:
        """One study per entry of t, with one image per view (all views share the study time)."""
        n = t.size
        ordinal = next_study[0] + np.arange(n)
        next_study[0] += n
        time_ms = t * 1000 + rng.integers(0, 1000, size=n)
        for view in views:
            parts.append(
                {
                    "stay_row": stay_row,
                    "subject_id": subject,
                    "time_ms": time_ms,
                    "kind": np.full(n, kind, dtype=object),
                    "true_view": np.full(n, view, dtype=object),
                    "source_adm": source,
                    "scale": np.full(n, scale),
                    "study": ordinal,
                }
            )

    usable = stays["cxr_planned"] & ~stays["bad_times"] & (stays["los_hours"] > 0.5)
    rows = np.flatnonzero(usable)
    intime, end = stays["intime"][rows], stays["end_of_charting"][rows]
    limit = np.minimum(47.9 * SECONDS_PER_HOUR, end - intime - 360)
    delay = np.minimum(rng.exponential(6.0, size=rows.size) * SECONDS_PER_HOUR + 720, limit)
    first = intime + delay.astype(np.int64)
    add(rows, stays["subject_id"][rows], first, "icu_first", ("AP",), stays["admission"][rows], 1.0)
    # Daily portable films at 04:00-06:00 while ventilated, also after prediction_time.
    vent = rows[stays["ventilated"][rows]]
    vent_first = first[stays["ventilated"][rows]]
    stop = np.minimum(stays["vent_end"][vent], stays["end_of_charting"][vent])
    day0 = (stays["intime"][vent] // SECONDS_PER_DAY + 1) * SECONDS_PER_DAY
    counts = np.maximum((stop - day0) // SECONDS_PER_DAY + 1, 0).astype(np.int64)
    r = np.repeat(vent, counts)
    k = np.arange(r.size) - np.repeat(np.cumsum(counts) - counts, counts)
    t = np.repeat(day0, counts) + k * SECONDS_PER_DAY + rng.integers(4 * 3600, 6 * 3600, size=r.size)
    keep = (t > np.repeat(vent_first, counts) + 600) & (t < np.repeat(stop, counts))
    add(
        r[keep], stays["subject_id"][r[keep]], t[keep], "icu_daily", ("AP",), stays["admission"][r[keep]], 1.0
    )
    # ED PA + lateral studies 0-48 h before intime (first stays of emergency admissions in the era).
    adm_of = stays["admission"]
    era_stay = np.isin(pat["anchor_group"][adm["patient"][adm_of]], list(CXR_ERA_GROUPS))
    ed = era_stay & ~stays["second_stay"] & np.isin(adm["admission_type"][adm_of], list(EMERGENCY_TYPES))
    ed &= rng.random(ed.size) < 0.35
    ed_rows = np.flatnonzero(ed)
    ed_time = stays["intime"][ed_rows] - (
        rng.uniform(0.5, 47.5, size=ed_rows.size) * SECONDS_PER_HOUR
    ).astype(np.int64)
    lateral_ll = rng.random(ed_rows.size) < 0.3
    for mask, views in ((~lateral_ll, ("PA", "LATERAL")), (lateral_ll, ("PA", "LL"))):
        add(
            ed_rows[mask],
            stays["subject_id"][ed_rows[mask]],
            ed_time[mask],
            "ed_pre_icu",
            views,
            adm_of[ed_rows[mask]],
            0.7,
        )
    # Older studies of ICU patients (other admissions) and CXR-only patients.
    n_adm = adm["hadm_id"].size
    older = np.isin(pat["anchor_group"][adm["patient"]], list(CXR_ERA_GROUPS)) & (rng.random(n_adm) < 0.1)
    older_rows = np.flatnonzero(older)
    older_time = adm["admittime"][older_rows] - rng.integers(30, 300, size=older_rows.size) * SECONDS_PER_DAY
    add(
        np.full(older_rows.size, -1),
        adm["subject_id"][older_rows],
        older_time,
        "other_admission",
        ("PA", "LATERAL"),
        np.full(older_rows.size, -1),
        0.0,
    )
    only = np.flatnonzero(bg["cxr_only_study"] & (bg["patient"] >= n_adm))
    only_time = bg["admittime"][only] + rng.integers(0, SECONDS_PER_DAY, size=only.size)
    add(
        np.full(only.size, -1),
        bg["subject_id"][only],
        only_time,
        "cxr_only",
        ("PA", "LATERAL"),
        np.full(only.size, -1),
        0.0,
    )

    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = merged["study"].size
    study_ids = rng.permutation(unique_ids(rng, next_study[0], 50_000_000, 60_000_000))
    time_ms = merged["time_ms"]

    # Severities: ICU films show the admission's findings; ED films a milder version; others random.
    severities = {}
    source = merged["source_adm"]
    has_source = source >= 0
    for name in FINDINGS:
        unrelated = 1 / (1 + np.exp(-rng.normal(-2.5, 1.0, size=n)))
        own = adm[name][np.maximum(source, 0)] * merged["scale"] + rng.normal(0, 0.03, size=n)
        severities[name] = np.clip(np.where(has_source, own, unrelated), 0, 1)
    stay_row = merged["stay_row"]
    icu_film = np.isin(merged["kind"], ["icu_first", "icu_daily"])
    safe_row = np.maximum(stay_row, 0)
    tube = icu_film & stays["ventilated"][safe_row] & (time_ms // 1000 < stays["vent_end"][safe_row])
    central = icu_film & adm["central_line"][np.maximum(source, 0)]
    patient_of = {int(s): i for i, s in enumerate(pat["subject_id"])}
    patient = np.array([patient_of[int(s)] for s in merged["subject_id"]], dtype=np.int64)
    attributes = {
        "race": pat["race_group"][patient],
        "sex": pat["sex"][patient],
        "age_bin": age_bins(pat["age_float"][patient]),
        "insurance": pat["insurance"][patient],
    }
    noise_factor = subgroup_factor(config, "image_noise", attributes, n)
    view = merged["true_view"].copy()
    view[rng.random(n) < 0.04] = None
    images = {
        "dicom_id": _dicom_ids(rng, n),
        "subject_id": merged["subject_id"].astype(np.int64),
        "study_id": study_ids[merged["study"]],
        "stay_row": stay_row.astype(np.int64),
        "kind": merged["kind"],
        "view": view,
        "true_view": merged["true_view"],
        "time_ms": time_ms,
        "tube": tube,
        "central_line": central,
        "noise_factor": noise_factor,
        **severities,
    }
    order = np.lexsort((images["dicom_id"], images["time_ms"], images["subject_id"]))
    return CxrPlan(images={k: v[order] for k, v in images.items()})


def render_params(plan: CxrPlan, config: SyntheticConfig) -> list[RenderParams]:
    """Render parameters of every image (the acquisition randomness of data.md §13.5)."""
    rng = rng_for(config.seed, "cxr-render")
    im = plan.images
    n = im["dicom_id"].size
    size = config.image_size
    ap = im["true_view"] == "AP"
    ctr = 0.40 + 0.36 * im["cardiomegaly"]
    heart = np.clip(np.searchsorted(HEART_CTR, ctr) + ap, 0, len(HEART_CTR) - 1)
    params = []
    for i in range(n):
        levels = []
        for name in ("eff_left", "eff_right"):
            e = im[name][i]
            levels.append(int(min((e - 0.2) / 0.8 * N_EFFUSION, N_EFFUSION - 1)) if e > 0.2 else -1)
        q = im["consolidation"][i]
        n_blobs = 0 if q < 0.3 else int(1 + rng.integers(0, 3))
        blobs = np.column_stack(
            [
                rng.uniform(0.24, 0.38, n_blobs),
                rng.choice([0.33, 0.67], n_blobs) + rng.uniform(-0.04, 0.04, n_blobs),
                np.full(n_blobs, 0.55 * q),
            ]
        )
        sd = 0.03 * im["noise_factor"][i]
        params.append(
            RenderParams(
                base=int(rng.integers(0, N_BASES)),
                heart=int(heart[i]),
                effusion_left=levels[0],
                effusion_right=levels[1],
                blobs=blobs,
                lobar=float(0.45 + 0.45 * q) if q > 0.5 else 0.0,
                lobar_side=2 if q > 0.85 else int(rng.integers(0, 2)),
                edema=float(0.3 * im["edema"][i]) if im["edema"][i] > 0.3 else 0.0,
                pneumothorax_side=int(rng.integers(0, 2)) if im["pneumothorax"][i] > 0.5 else -1,
                atelectasis=float(0.6 * im["atelectasis"][i]) if im["atelectasis"][i] > 0.3 else 0.0,
                tube=bool(im["tube"][i]),
                central_line=bool(im["central_line"][i]),
                noise=int(rng.integers(0, N_NOISE)),
                noise_sd=float(sd),
                contrast=float((0.8 if ap[i] else 0.95) / (1 + 0.25 * (im["noise_factor"][i] - 1))),
                gamma=int(rng.integers(0, N_GAMMA)),
                shift_x=int(rng.integers(-size // 40, size // 40 + 1) * (2 if ap[i] else 1)),
                shift_y=int(rng.integers(-size // 40, size // 40 + 1)),
                lateral=im["true_view"][i] in ("LATERAL", "LL"),
            )
        )
    return params


def image_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
    """`files/p10/p10000032/s50414267/<dicom_id>.jpg` (data.md §1.3)."""
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}/{dicom_id}.jpg"


def write_images(
    root: Path,
    plan: CxrPlan,
    params: list[RenderParams],
    config: SyntheticConfig,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Render and write every JPEG under root/files."""
    cache = TemplateCache(config.image_size, seed=config.seed)
    im = plan.images
    paths = [
        root / image_relpath(int(s), int(t), str(d))
        for s, t, d in zip(im["subject_id"], im["study_id"], im["dicom_id"], strict=True)
    ]
    for folder in sorted({path.parent for path in paths}):
        folder.mkdir(parents=True, exist_ok=True)

    def write_one(i: int) -> None:
        paths[i].write_bytes(cache.encode(params[i]))

    # Rendering is numpy + libjpeg (both release the GIL), so two threads use both cores.
    batch = 256
    with ThreadPoolExecutor(max_workers=2) as pool:
        for lo in range(0, len(params), batch):
            list(pool.map(write_one, range(lo, min(lo + batch, len(params)))))
            if progress is not None:
                progress(min(batch, len(params) - lo))


def _study_time_text(time_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seconds = time_ms // 1000
    stamp = seconds.astype("datetime64[s]")
    day = stamp.astype("datetime64[D]")
    date = np.char.replace(np.datetime_as_string(day), "-", "").astype(np.int64)
    of_day = seconds - day.astype("datetime64[s]").astype(np.int64)
    hhmmss = (of_day // 3600) * 10000 + (of_day % 3600 // 60) * 100 + of_day % 60
    text = np.array([f"{h}.{ms:03d}" for h, ms in zip(hhmmss, time_ms % 1000, strict=True)], dtype=object)
    return date, text


def metadata_frame(plan: CxrPlan) -> pl.DataFrame:
    """mimic-cxr-2.0.0-metadata rows: unpadded StudyTime, integer StudyDate, DICOM Rows/Columns."""
    im = plan.images
    date, text = _study_time_text(im["time_ms"])
    portable = np.isin(im["kind"], ["icu_first", "icu_daily"])
    description = np.where(portable, "CHEST (PORTABLE AP)", "CHEST (PA AND LAT)")
    code_meaning = {
        "AP": "antero-posterior",
        "PA": "postero-anterior",
        "LATERAL": "lateral",
        "LL": "left lateral",
    }
    rows = {"AP": 2539, "PA": 3056, "LATERAL": 3056, "LL": 3056}
    cols = {"AP": 3050, "PA": 2544, "LATERAL": 2544, "LL": 2544}
    true_view = im["true_view"]
    # Portable films: Recumbent or not recorded; PA/lateral studies: Erect.
    orientation = np.full(true_view.size, None, dtype=object)
    orientation[~portable] = "Erect"
    orientation[portable & (im["dicom_id"].astype(str) < "8")] = "Recumbent"
    return pl.DataFrame(
        {
            "dicom_id": im["dicom_id"].astype(str),
            "subject_id": im["subject_id"],
            "study_id": im["study_id"],
            "PerformedProcedureStepDescription": description,
            "ViewPosition": pl.Series("ViewPosition", im["view"].tolist(), dtype=pl.String),
            "Rows": np.array([rows[v] for v in true_view], dtype=np.int32),
            "Columns": np.array([cols[v] for v in true_view], dtype=np.int32),
            "StudyDate": date.astype(np.int32),
            "StudyTime": text.astype(str),
            "ProcedureCodeSequence_CodeMeaning": description,
            "ViewCodeSequence_CodeMeaning": np.array(
                [code_meaning[v] for v in true_view], dtype=object
            ).astype(str),
            "PatientOrientationCodeSequence_CodeMeaning": pl.Series(
                "o", orientation.tolist(), dtype=pl.String
            ),
        }
    )


def label_frames(plan: CxrPlan, config: SyntheticConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(chexpert, negbio): one row per study from the rendered severities (data.md §13.5)."""
    rng = rng_for(config.seed, "cxr-labels")
    im = plan.images
    frame = pl.DataFrame(
        {
            "subject_id": im["subject_id"],
            "study_id": im["study_id"],
            "effusion": np.maximum(im["eff_left"], im["eff_right"]),
            "cardiomegaly": im["cardiomegaly"],
            "consolidation": im["consolidation"],
            "edema": im["edema"],
            "pneumothorax": im["pneumothorax"],
            "atelectasis": im["atelectasis"],
            "devices": (im["tube"] | im["central_line"]).astype(np.float64),
        }
    )
    studies = frame.group_by(["subject_id", "study_id"]).max().sort(["subject_id", "study_id"])
    n = studies.height
    severity = {
        "Atelectasis": studies["atelectasis"].to_numpy(),
        "Cardiomegaly": studies["cardiomegaly"].to_numpy(),
        "Consolidation": studies["consolidation"].to_numpy(),
        "Edema": studies["edema"].to_numpy(),
        "Enlarged Cardiomediastinum": 0.9 * studies["cardiomegaly"].to_numpy(),
        "Fracture": rng.random(n) * 0.52,
        "Lung Lesion": rng.random(n) * 0.53,
        "Pleural Effusion": studies["effusion"].to_numpy(),
        "Pleural Other": rng.random(n) * 0.51,
        "Pneumonia": studies["consolidation"].to_numpy() * 0.9,
        "Pneumothorax": studies["pneumothorax"].to_numpy(),
        "Support Devices": studies["devices"].to_numpy(),
    }
    severity["Lung Opacity"] = np.maximum.reduce(
        [severity[k] for k in ("Atelectasis", "Consolidation", "Edema", "Pleural Effusion")]
    )
    explicit_negative = {"Pleural Effusion": 0.5, "Pneumothorax": 0.5, "Edema": 0.4}
    chexpert: dict[str, np.ndarray] = {}
    for name in CHEXPERT_FINDINGS:
        if name == "No Finding":
            continue
        s = severity[name]
        values = np.where(s > 0.5, 1.0, np.nan)
        near = (np.abs(s - 0.5) < 0.1) & (rng.random(n) < 0.2)
        values[near] = -1.0
        negative = (s <= 0.5) & ~near & (rng.random(n) < explicit_negative.get(name, 0.05))
        values[negative] = 0.0
        chexpert[name] = values
    positives = np.column_stack([chexpert[k] == 1.0 for k in chexpert if k != "Support Devices"]).any(axis=1)
    chexpert["No Finding"] = np.where(positives, np.nan, 1.0)
    negbio = {k: v.copy() for k, v in chexpert.items()}
    for name in negbio:
        flip = rng.random(n) < 0.02
        negbio[name][flip] = np.where(np.isnan(negbio[name][flip]), 1.0, np.nan)

    def build(values: dict[str, np.ndarray]) -> pl.DataFrame:
        columns = {"subject_id": studies["subject_id"], "study_id": studies["study_id"]}
        columns.update(
            {
                name: pl.Series(name, values[name], dtype=pl.Float32).fill_nan(None)
                for name in CHEXPERT_FINDINGS
            }
        )
        return pl.DataFrame(columns)

    return build(chexpert), build(negbio)


def split_frame(plan: CxrPlan) -> pl.DataFrame:
    """mimic-cxr-2.0.0-split: by subject, about 97.8 % train, 0.8 % validate, 1.4 % test."""
    im = plan.images
    u = (im["subject_id"].astype(np.uint64) * np.uint64(2654435761) % np.uint64(2**32)).astype(
        np.float64
    ) / 2**32
    split = np.where(u < 0.978, "train", np.where(u < 0.986, "validate", "test"))
    return pl.DataFrame(
        {
            "dicom_id": im["dicom_id"].astype(str),
            "study_id": im["study_id"],
            "subject_id": im["subject_id"],
            "split": split,
        }
    )


def expected_selection(population: Population, plan: CxrPlan) -> pl.DataFrame:
    """The image the default builder rule must select per stay (AP/PA, lookback 0, latest in window).

    Returns:
        stay_id, expected_cxr_dicom_id, expected_cxr_hours for stays with a candidate.
    """
    im = plan.images
    stays = population.stays
    candidates = pl.DataFrame(
        {
            "subject_id": im["subject_id"],
            "dicom_id": im["dicom_id"].astype(str),
            "view": pl.Series("view", im["view"].tolist(), dtype=pl.String),
            "t": im["time_ms"] // 1000,
        }
    ).filter(pl.col("view").is_in(["AP", "PA"]))
    spine = pl.DataFrame(
        {"stay_id": stays["stay_id"], "subject_id": stays["subject_id"], "intime": stays["intime"]}
    )
    joined = spine.join(candidates, on="subject_id").filter(
        (pl.col("t") >= pl.col("intime"))
        & (pl.col("t") <= pl.col("intime") + WINDOW_HOURS * SECONDS_PER_HOUR)
    )
    chosen = (
        joined.with_columns((pl.col("view") == "PA").cast(pl.Int8).alias("view_rank"))
        .sort(["stay_id", "t", "view_rank", "dicom_id"], descending=[False, True, False, False])
        .group_by("stay_id", maintain_order=True)
        .first()
    )
    return chosen.select(
        "stay_id",
        pl.col("dicom_id").alias("expected_cxr_dicom_id"),
        ((pl.col("t") - pl.col("intime")) / SECONDS_PER_HOUR).cast(pl.Float32).alias("expected_cxr_hours"),
    )
