"""Planted signal is recoverable from the raw files (data.md §13.8 A8-A12); the truth only scores.

One 10,000-stay tree with 64 px images. Features: 48 h chartevents summaries and 16×16 pooled pixels
of the image the default CXR rule selects; models: ridge logistic regression with out-of-fold
predictions over 5 stay-id folds; late fusion stacks the two unimodal out-of-fold scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from carebench_data.synthetic import SyntheticConfig, generate_synthetic
from carebench_data.synthetic.signal import (
    auroc,
    chart_summary_features,
    fit_logistic,
    image_features,
    oof_scores,
    oracle_aurocs,
)

pytestmark = pytest.mark.slow


def test_numpy_auroc_and_logistic_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x @ np.array([1.0, -0.5, 0.0, 0.3, 0.8]) + rng.logistic(size=400) > 0).astype(int)
    scores = np.round(x[:, 0], 1)  # many ties
    assert auroc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    w = fit_logistic(x, y.astype(float), l2=2.0)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(w[:-1], reference.coef_[0], atol=1e-4)
    assert w[-1] == pytest.approx(reference.intercept_[0], abs=1e-4)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("signal") / "raw"
    return generate_synthetic(out, SyntheticConfig(n_stays=10_000, image_size=64, seed=0, scale="custom"))


@pytest.fixture(scope="module")
def truth(tree: Path) -> pl.DataFrame:
    return pl.read_parquet(tree / "_synthetic_truth/stays.parquet")


@pytest.fixture(scope="module")
def cohort(truth: pl.DataFrame) -> pl.DataFrame:
    return truth.filter(pl.col("expected_in_cohort"))


@pytest.fixture(scope="module")
def paired(tree: Path, truth: pl.DataFrame) -> dict[str, np.ndarray]:
    """Stays with a selected CXR: EHR features, image features and fold ids."""
    stays = truth.filter(pl.col("expected_cxr_dicom_id").is_not_null())
    meta = pl.read_csv(
        tree / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz", infer_schema=False
    ).select(pl.col("dicom_id"), pl.col("subject_id").cast(pl.Int64), pl.col("study_id").cast(pl.Int64))
    images = stays.select(pl.col("expected_cxr_dicom_id").alias("dicom_id")).join(
        meta, on="dicom_id", how="left"
    )
    ehr, _ = chart_summary_features(tree / "mimiciv/2.2", stays)
    return {
        "ehr": ehr,
        "image": image_features(tree / "mimic-cxr-jpg/2.0.0", images),
        "folds": stays["stay_id"].to_numpy() % 5,
        **{name: stays[name].to_numpy() for name in stays.columns if name.startswith("true_")},
    }


def unimodal_and_fused(data: dict[str, np.ndarray], label: str) -> tuple[float, float, float]:
    y, folds = data[label], data["folds"]
    image = oof_scores(data["image"], y, folds, l2=10.0)
    ehr = oof_scores(data["ehr"], y, folds, l2=10.0)
    stacked = np.column_stack([image, ehr, image * ehr])
    fused = oof_scores(stacked, y, folds, l2=1.0)
    return auroc(y, image), auroc(y, ehr), auroc(y, fused)


def test_a8_mortality_and_los_from_the_ehr(tree: Path, cohort: pl.DataFrame) -> None:
    x, names = chart_summary_features(tree / "mimiciv/2.2", cohort)
    assert len(names) == x.shape[1] and names[0] == "heart_rate_mean"
    folds = cohort["stay_id"].to_numpy() % 5
    mortality = cohort["expected_mortality"].to_numpy()
    assert auroc(mortality, oof_scores(x, mortality, folds)) >= 0.80
    long_stay = (cohort["expected_los_days"].to_numpy() > 7).astype(int)
    assert auroc(long_stay, oof_scores(x, long_stay, folds)) >= 0.70


def test_a9_pleurisy_is_cxr_dominant(paired: dict[str, np.ndarray]) -> None:
    image, ehr, _ = unimodal_and_fused(paired, "true_pleurisy_pneumothorax_collapse")
    assert image >= 0.85
    assert ehr <= 0.65


@pytest.mark.parametrize("label", ["true_chf_nonhypertensive", "true_pneumonia"])
def test_a10_complementary_labels_need_both_modalities(paired: dict[str, np.ndarray], label: str) -> None:
    image, ehr, fused = unimodal_and_fused(paired, label)
    assert min(image, ehr) >= 0.65
    assert fused - max(image, ehr) >= 0.05


@pytest.mark.parametrize("label", ["true_chf_nonhypertensive", "true_pneumonia"])
def test_a10_oracle_needs_both_modalities(cohort: pl.DataFrame, label: str) -> None:
    """On the truth (no emission noise), EHR and image each carry part and together >= .10 more."""
    paired = cohort.filter(pl.col("expected_cxr_dicom_id").is_not_null())
    oracle = oracle_aurocs(paired, label)
    assert 0.70 <= oracle["ehr"] <= 0.90
    assert 0.70 <= oracle["cxr"] <= 0.92
    assert oracle["both"] - max(oracle["ehr"], oracle["cxr"]) >= 0.10


def test_a8_oracle_mortality_stays_ehr_dominant(cohort: pl.DataFrame) -> None:
    paired = cohort.filter(pl.col("expected_cxr_dicom_id").is_not_null())
    oracle = oracle_aurocs(paired, "expected_mortality")
    assert oracle["ehr"] >= 0.75
    assert oracle["cxr"] <= 0.65
    assert oracle["both"] - oracle["ehr"] <= 0.02


def test_a11_cxr_availability_is_missing_not_at_random(cohort: pl.DataFrame) -> None:
    has_cxr = cohort["expected_cxr_dicom_id"].is_not_null().to_numpy()
    severity = cohort["z_severity"].to_numpy()
    assert np.corrcoef(has_cxr, severity)[0, 1] > 0.2
    mortality = cohort["expected_mortality"].to_numpy()
    assert mortality[has_cxr].mean() > mortality[~has_cxr].mean()
    assert 0.01 <= mortality[has_cxr].mean() - mortality.mean() <= 0.04


def test_a12_configured_subgroup_gaps(tree: Path, truth: pl.DataFrame) -> None:
    config = SyntheticConfig()
    amounts = {effect.kind: effect.amount for effect in config.subgroups if effect.kind != "z_shift"}
    admissions = truth.unique("hadm_id")
    # Under-coding: CHF codes dropped with p = .3 for race OTHER (relative sensitivity .7).
    chf = admissions.filter(pl.col("true_chf_nonhypertensive") == 1)
    sensitivity = chf.group_by(pl.col("race_group") == "OTHER").agg(
        pl.col("coded_chf_nonhypertensive").mean()
    )
    by_group = dict(sensitivity.iter_rows())
    assert by_group[True] / by_group[False] == pytest.approx(1 - amounts["code_drop"], abs=0.05)
    # CXR availability x .7 for women, measured as ICU films present per era stay in the raw metadata.
    meta = pl.read_csv(tree / "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz", infer_schema=False)
    imaged = (
        meta.filter(pl.col("PerformedProcedureStepDescription") == "CHEST (PORTABLE AP)")
        .select(pl.col("subject_id").cast(pl.Int64))
        .unique()
    )
    era = truth.filter(pl.col("cxr_era") & ~pl.col("bad_times") & (pl.col("los_hours") > 0.5)).unique(
        "subject_id"
    )
    rate = (
        era.with_columns(pl.col("subject_id").is_in(imaged["subject_id"].implode()).alias("imaged"))
        .group_by("sex")
        .agg(pl.col("imaged").mean())
    )
    rates = dict(rate.iter_rows())
    assert rates["F"] / rates["M"] == pytest.approx(amounts["cxr_availability"], abs=0.05)
    # Lab density x .7 for Medicaid: magnesium (daily panels only) per ICU admission-day.
    labs = pl.read_csv(tree / "mimiciv/2.2/hosp/labevents.csv.gz", infer_schema=False).filter(
        pl.col("itemid") == "50960"
    )
    per_admission = labs.group_by(pl.col("hadm_id").cast(pl.Int64)).len()
    window = admissions.select(
        "hadm_id", "insurance", (pl.min_horizontal("los_hours", pl.lit(72.0)) / 24).alias("days")
    )
    density = (
        window.join(per_admission, on="hadm_id", how="left")
        .fill_null(0)
        .group_by(pl.col("insurance") == "Medicaid")
        .agg((pl.col("len").sum() / pl.col("days").sum()).alias("rate"))
    )
    densities = dict(density.iter_rows())
    assert densities[True] / densities[False] == pytest.approx(amounts["lab_density"], abs=0.05)
