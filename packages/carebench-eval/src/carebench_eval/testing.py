"""Synthetic predictions with planted effects, for tests, examples and users (like `polars.testing`).

`synthetic_predictions` draws stays of patients (some patients have several stays), sensitive
attributes, labels for the CareBench tasks from a latent risk, and each model's scores from that risk
with a model-specific signal strength. Planted effects are known, so tests can check that they are
recovered: a stronger model scores higher, a `weak_group` gets noisier scores (a fairness gap), and all
models see the same labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from carebench_eval.io import validate
from carebench_eval.schema import RESULT_SCHEMA, check_notes

__all__ = [
    "DEFAULT_PHENOTYPES",
    "LOS_CLASSES",
    "assert_result_table",
    "example_predictions_path",
    "select_rows",
    "synthetic_predictions",
]

LOS_CLASSES = ("2-3d", "3-4d", "4-5d", "5-6d", "6-7d", "7-14d", "14+d")
"""Length-of-stay classes in bin order (DESIGN.md §3)."""

DEFAULT_PHENOTYPES = ("chf", "copd", "pneumonia", "acute_renal_failure")
"""Short phenotype label names used by the synthetic generator."""

SEXES = ("F", "M")
RACES = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO", "ASIAN", "OTHER")
RACE_SHARES = (0.6, 0.15, 0.1, 0.05, 0.1)
AGE_GROUPS = ("[18,40)", "[40,60)", "[60,80)", "[80,inf)")
AGE_SHARES = (0.15, 0.3, 0.4, 0.15)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def synthetic_predictions(
    *,
    n_samples: int = 300,
    tasks: Sequence[str] = ("mortality", "phenotype", "los"),
    models: Sequence[str] = ("lstm", "medfuse"),
    strength: Mapping[str, float] | None = None,
    seeds: Sequence[int] = (0,),
    phenotypes: Sequence[str] = DEFAULT_PHENOTYPES,
    stays_per_patient: float = 1.25,
    weak_group: tuple[str, str] | None = None,
    weak_factor: float = 0.0,
    seed: int = 0,
) -> pl.DataFrame:
    """Long predictions of several models on one synthetic test set.

    Labels come from a latent risk per stay; a model's logit is ``strength · risk + noise``, so a larger
    strength gives a better AUROC. With ``weak_group=("race", "ASIAN")`` the signal inside that group is
    multiplied by `weak_factor` (0 = pure noise), planting a subgroup performance gap.

    Args:
        n_samples: ICU stays.
        tasks: any of ``mortality`` (binary), ``phenotype`` (multilabel over `phenotypes`), ``los``
            (multiclass over `LOS_CLASSES`).
        models: model names (the ``model`` column).
        strength: model -> signal strength; default ``1.0, 2.0, 3.0, ...`` in `models` order.
        seeds: training seeds (the ``seed`` column; each seed perturbs the scores independently).
        phenotypes: multilabel label names.
        stays_per_patient: average stays per patient (``subject_id`` clusters).
        weak_group: ``(attribute, group)`` whose scores carry less signal.
        weak_factor: signal multiplier inside `weak_group`.
        seed: random seed; the output is a deterministic function of all arguments.

    Returns:
        Validated long predictions with ``sample_id, subject_id, task, target, y_true, y_score, model,
        seed, sex, race, age_group, has_cxr``.
    """
    known = {"mortality", "phenotype", "los"}
    unknown = [task for task in tasks if task not in known]
    if unknown:
        raise ValueError(f"synthetic tasks must be among {sorted(known)}; got {unknown}")
    if n_samples < 2:
        raise ValueError("n_samples must be at least 2")
    strengths = dict(strength or {model: float(position + 1) for position, model in enumerate(models)})
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n_subjects = max(1, round(n_samples / stays_per_patient))
    subject_of = np.sort(
        np.concatenate([np.arange(n_subjects), rng.integers(0, n_subjects, n_samples - n_subjects)])
    )
    sample_ids = (100_000 + np.arange(n_samples)).astype(str)
    subject_ids = (10_000 + subject_of).astype(str)
    attributes = {
        "sex": np.asarray(SEXES)[rng.integers(0, 2, n_subjects)][subject_of],
        "race": np.asarray(RACES)[rng.choice(len(RACES), n_subjects, p=RACE_SHARES)][subject_of],
        "age_group": np.asarray(AGE_GROUPS)[rng.choice(len(AGE_GROUPS), n_subjects, p=AGE_SHARES)][
            subject_of
        ],
        "has_cxr": rng.random(n_samples) < 0.7,
    }
    risk = rng.normal(size=n_samples)
    labels: dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]] = {}
    if "mortality" in tasks:
        mortality_risk = 1.5 * risk + rng.normal(scale=0.5, size=n_samples)
        y = (rng.random(n_samples) < _sigmoid(mortality_risk - 2.0)).astype(np.int8)[:, None]
        labels["mortality"] = (("mortality",), y, mortality_risk[:, None])
    if "phenotype" in tasks:
        label_risk = 0.7 * risk[:, None] + rng.normal(size=(n_samples, len(phenotypes)))
        offsets = np.linspace(-2.2, -0.4, len(phenotypes))
        y = (rng.random(label_risk.shape) < _sigmoid(1.5 * label_risk + offsets)).astype(np.int8)
        labels["phenotype"] = (tuple(phenotypes), y, label_risk)
    if "los" in tasks:
        los_risk = risk + rng.normal(scale=0.8, size=n_samples)
        edges = np.quantile(los_risk, [0.25, 0.45, 0.6, 0.72, 0.82, 0.93])
        index = np.searchsorted(edges, los_risk)
        labels["los"] = (LOS_CLASSES, np.eye(len(LOS_CLASSES), dtype=np.int8)[index], los_risk[:, None])

    weak = np.zeros(n_samples, dtype=bool)
    if weak_group is not None:
        attribute, group = weak_group
        if attribute not in attributes:
            raise ValueError(f"weak_group attribute must be one of {sorted(attributes)}; got {attribute!r}")
        weak = attributes[attribute].astype(str) == str(group)
    signal_scale = np.where(weak, weak_factor, 1.0)[:, None]

    parts = []
    for model_index, model in enumerate(models):
        for seed_index, run_seed in enumerate(seeds):
            run_rng = np.random.default_rng(
                np.random.SeedSequence(seed, spawn_key=(1, model_index, seed_index))
            )
            for task, (targets, y, latent) in labels.items():
                if task == "los":
                    centers = np.arange(len(targets))[None, :]
                    position = np.argmax(y, axis=1)[:, None]
                    noise = run_rng.normal(scale=3.0 / strengths[model], size=(n_samples, 1))
                    noisy = position * signal_scale + noise
                    logits = -np.abs(centers - noisy)
                    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
                else:
                    noise = run_rng.normal(size=latent.shape)
                    scores = _sigmoid(strengths[model] * signal_scale * latent / 2.0 + noise - 1.0)
                n_targets = len(targets)
                parts.append(
                    pl.DataFrame(
                        {
                            "sample_id": np.repeat(sample_ids, n_targets),
                            "subject_id": np.repeat(subject_ids, n_targets),
                            "task": [task] * (n_samples * n_targets),
                            "target": np.tile(np.asarray(targets), n_samples),
                            "y_true": y.reshape(-1),
                            "y_score": scores.reshape(-1),
                            "model": [model] * (n_samples * n_targets),
                            "seed": np.full(n_samples * n_targets, run_seed, dtype=np.int64),
                            **{name: np.repeat(values, n_targets) for name, values in attributes.items()},
                        }
                    )
                )
    return validate(
        pl.concat(parts), kinds={"mortality": "binary", "phenotype": "multilabel", "los": "multiclass"}
    )


def example_predictions_path() -> Path:
    """Path of the bundled example predictions (CSV; 2 models, mortality, phenotype and los tasks).

    Generated by ``synthetic_predictions(n_samples=200, seed=7)`` with scores rounded to 4 decimals.
    """
    return Path(str(resources.files("carebench_eval").joinpath("examples/predictions_example.csv")))


def assert_result_table(frame: pl.DataFrame) -> None:
    """Assert that `frame` is a result table: exactly `RESULT_SCHEMA`, and only known note tokens.

    Raises:
        AssertionError: the columns, their order or their dtypes differ from `RESULT_SCHEMA`.
        ValueError: a ``notes`` token is not in `NOTE_TOKENS` (`check_notes`).
    """
    if dict(frame.schema) != RESULT_SCHEMA:
        raise AssertionError(f"not a result table: expected {dict(RESULT_SCHEMA)}, got {dict(frame.schema)}")
    check_notes(frame)


def select_rows(frame: pl.DataFrame, **equal: str | None) -> pl.DataFrame:
    """Rows of a result table where each named column equals its value (None: the column is null).

    Example:
        >>> table = pl.DataFrame({"statistic": ["estimate", "gap"], "group": ["F", None]})
        >>> select_rows(table, statistic="gap", group=None).height
        1
    """
    for column, value in equal.items():
        frame = frame.filter(pl.col(column).is_null() if value is None else pl.col(column) == value)
    return frame
