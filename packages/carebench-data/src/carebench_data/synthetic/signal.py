"""Small numpy tools to check the planted signal of a synthetic tree (data.md §13.8).

Features come from the raw files only (chartevents within the 48 h window, the selected JPEG);
the truth folder only supplies labels and the cohort. Ridge logistic regression (Newton's method)
and rank AUROC keep this free of any extra dependency.

Example:
    >>> truth = pl.read_parquet(root / "_synthetic_truth/stays.parquet")  # doctest: +SKIP
    >>> cohort = truth.filter(pl.col("expected_in_cohort"))  # doctest: +SKIP
    >>> x, names = chart_summary_features(root / "mimiciv/2.2", cohort)  # doctest: +SKIP
    >>> auroc(cohort["expected_mortality"].to_numpy(), oof_scores(x, y, folds))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

# (feature name, itemids, conversion) of the default-set chart items used for summaries.
SUMMARY_ITEMS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("heart_rate", (220045,)),
    ("resp_rate", (220210, 224690)),
    ("spo2", (220277,)),
    ("sbp", (220050, 220179)),
    ("dbp", (220051, 220180)),
    ("mbp", (220052, 220181)),
    ("temperature", (223762, 223761)),
    ("gcs_eye", (220739,)),
    ("gcs_verbal", (223900,)),
    ("gcs_motor", (223901,)),
    ("fio2", (223835,)),
    ("glucose", (225664,)),
    ("weight", (224639,)),
    ("ph", (223830,)),
)
_STATS = ("mean", "min", "max", "first", "last", "delta", "count")

# Truth columns an oracle may use per modality (the planted ceiling, data.md §13.6): latent state and
# clinical states stand for the EHR, the seven finding severities for the image.
ORACLE_EHR_COLUMNS = (
    "z_severity",
    "z_cardiac",
    "z_pulmonary",
    "z_renal",
    "z_infection",
    "z_metabolic",
    "shock",
    "resp_fail",
    "overload",
    "aki",
    "fever",
    "febrile",
    "ventilated",
    "central_line",
    "dysrhythmia",
    "age",
)
ORACLE_CXR_COLUMNS = (
    "eff_left",
    "eff_right",
    "cardiomegaly",
    "edema",
    "consolidation",
    "pneumothorax",
    "atelectasis",
)


def auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Rank AUROC (Mann-Whitney U with average ranks for ties); NaN if one class is absent."""
    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(y_score, kind="mergesort")
    ranks = np.empty(y.size, dtype=np.float64)
    sorted_scores = np.asarray(y_score)[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1.0, iterations: int = 25) -> np.ndarray:
    """Ridge logistic regression by Newton's method.

    Args:
        x: [n, d] standardized features.
        y: [n] 0/1 labels.
        l2: ridge penalty on the weights (not on the intercept).
        iterations: Newton steps.

    Returns:
        [d + 1] weights, intercept last.
    """
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    w = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -30, 30)))
        gradient = design.T @ (p - y) + penalty * w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def oof_scores(x: np.ndarray, y: np.ndarray, folds: np.ndarray, *, l2: float = 1.0) -> np.ndarray:
    """Out-of-fold logits: for each fold, fit on the others (features standardized on them)."""
    scores = np.zeros(x.shape[0])
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
        w = fit_logistic((x[train] - mean) / std, y[train].astype(np.float64), l2=l2)
        scores[test] = ((x[test] - mean) / std) @ w[:-1] + w[-1]
    return scores


def chart_summary_features(mimic_root: Path, stays: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """48 h summary features per stay from raw chartevents (mean, min, max, first, last, last - first, count).

    Args:
        mimic_root: `<out>/mimiciv/<version>`.
        stays: frame with stay_id and intime (Datetime), one row per stay.

    Returns:
        ([n, F] float64 with missing values imputed by column medians plus missing indicators, names).
    """
    item_to_feature = {item: name for name, items in SUMMARY_ITEMS for item in items}
    events = (
        pl.scan_csv(
            mimic_root / "icu/chartevents.csv.gz",
            schema_overrides={"value": pl.String, "valuenum": pl.Float64},
        )
        .select("stay_id", "charttime", "itemid", "valuenum")
        .filter(pl.col("itemid").is_in(list(item_to_feature)))
        .with_columns(pl.col("charttime").str.to_datetime("%Y-%m-%d %H:%M:%S"))
        .join(stays.lazy().select("stay_id", "intime"), on="stay_id")
        .filter(
            (pl.col("charttime") >= pl.col("intime"))
            & (pl.col("charttime") < pl.col("intime") + pl.duration(hours=48))
        )
        .with_columns(
            pl.col("itemid").replace_strict(item_to_feature, return_dtype=pl.String).alias("feature"),
            pl.when(pl.col("itemid") == 223761)
            .then((pl.col("valuenum") - 32) / 1.8)
            .otherwise(pl.col("valuenum"))
            .alias("x"),
        )
        .filter(pl.col("x").is_not_null() & pl.col("x").is_finite())
        .sort(["stay_id", "feature", "charttime"])
        .group_by(["stay_id", "feature"])
        .agg(
            pl.col("x").mean().alias("mean"),
            pl.col("x").min().alias("min"),
            pl.col("x").max().alias("max"),
            pl.col("x").first().alias("first"),
            pl.col("x").last().alias("last"),
            (pl.col("x").last() - pl.col("x").first()).alias("delta"),
            pl.len().cast(pl.Float64).alias("count"),
        )
        .collect()
    )
    names = [f"{feature}_{stat}" for feature, _ in SUMMARY_ITEMS for stat in _STATS]
    wide = events.unpivot(index=["stay_id", "feature"], on=list(_STATS), variable_name="stat").with_columns(
        (pl.col("feature") + "_" + pl.col("stat")).alias("name")
    )
    matrix = np.full((stays.height, len(names)), np.nan)
    row_of = {int(s): i for i, s in enumerate(stays["stay_id"])}
    col_of = {n: j for j, n in enumerate(names)}
    rows = np.array([row_of[int(s)] for s in wide["stay_id"]], dtype=np.int64)
    cols = np.array([col_of[n] for n in wide["name"]], dtype=np.int64)
    matrix[rows, cols] = wide["value"].to_numpy()
    missing = np.isnan(matrix)
    medians = np.nanmedian(np.where(missing.all(axis=0), 0.0, matrix), axis=0)
    filled = np.where(missing, medians, matrix)
    return np.hstack([filled, missing.astype(np.float64)]), names + [f"{n}_missing" for n in names]


def image_features(cxr_root: Path, images: pl.DataFrame, *, pooled: int = 16) -> np.ndarray:
    """[n, pooled²] average-pooled grayscale pixels in [0, 1] of the listed JPEGs.

    Args:
        cxr_root: `<out>/mimic-cxr-jpg/2.0.0`.
        images: frame with subject_id, study_id, dicom_id (one image per row).
        pooled: side of the pooled grid.
    """
    out = np.zeros((images.height, pooled * pooled))
    for i, (subject, study, dicom) in enumerate(
        images.select("subject_id", "study_id", "dicom_id").iter_rows()
    ):
        s = str(subject)
        path = cxr_root / f"files/p{s[:2]}/p{s}/s{study}/{dicom}.jpg"
        with Image.open(path) as image:
            pixels = np.asarray(
                image.convert("L").resize((pooled * 4, pooled * 4), Image.Resampling.BILINEAR),
                dtype=np.float64,
            )
        out[i] = pixels.reshape(pooled, 4, pooled, 4).mean(axis=(1, 3)).ravel() / 255.0
    return out


def oracle_aurocs(stays: pl.DataFrame, label: str, *, l2: float = 1.0) -> dict[str, float]:
    """Out-of-fold AUROC of logistic regressions on the truth: EHR state, image findings, and both.

    This is the ceiling the planted signal allows (no emission noise): a complementary label needs
    `both` clearly above the better of `ehr` and `cxr`.

    Args:
        stays: rows of `_synthetic_truth/stays.parquet` (e.g. cohort stays with a selected CXR), with
            stay_id, the ORACLE_EHR_COLUMNS, the ORACLE_CXR_COLUMNS and `label`.
        label: a 0/1 column of `stays` (e.g. `true_pneumonia`, `expected_mortality`).
        l2: ridge penalty.

    Returns:
        {"ehr": AUROC, "cxr": AUROC, "both": AUROC}, folds = stay_id mod 5.
    """
    y = stays[label].cast(pl.Float64).to_numpy()
    folds = stays["stay_id"].to_numpy() % 5

    def matrix(columns: tuple[str, ...]) -> np.ndarray:
        return np.column_stack([stays[c].cast(pl.Float64).to_numpy() for c in columns])

    sets = {
        "ehr": ORACLE_EHR_COLUMNS,
        "cxr": ORACLE_CXR_COLUMNS,
        "both": ORACLE_EHR_COLUMNS + ORACLE_CXR_COLUMNS,
    }
    return {name: auroc(y, oof_scores(matrix(columns), y, folds, l2=l2)) for name, columns in sets.items()}
