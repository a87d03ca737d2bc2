"""One run of the grid: train a model, predict validation and every test setting, write the run store.

This is where data (the loader), models (the trainer) and eval (quick point metrics) meet; the three
libraries only exchange plain data (DESIGN §2, §5).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from carebench_cli.compute import ComputeMeter
from carebench_cli.config import RunConfig
from carebench_cli.errors import USAGE_EXIT, CliError
from carebench_cli.grid import NO_WEIGHTS, RunSpec
from carebench_cli.placement import Placement
from carebench_cli.report.context import PRIMARY_METRICS
from carebench_cli.run_store import (
    MEDS_PREDICTIONS_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
    WEIGHTS_FILE,
    RunStore,
    RunWriter,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

TEST_MISSINGNESS_SEED = 0
"""Seed of the test-time CXR removal. Fixed (not the training seed) so that every model and seed is
scored on the same perturbed test set, which paired comparisons need."""


@dataclass(frozen=True)
class RunHooks:
    """Progress callbacks of one run (all optional)."""

    on_epoch: ProgressCallback | None = None
    on_batch: ProgressCallback | None = None
    on_phase: Callable[[str], None] | None = None


@dataclass(frozen=True)
class RunResult:
    """What the live table shows about a finished run."""

    epochs: int
    val_metric: float | None
    test_metric: float | None
    test_metric_name: str
    seconds: float


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`.

    Raises:
        CliError: `cuda` was asked for but no GPU is visible.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return device


COHORT_DEFAULTS_KEY: Mapping[str, str] = {"base": "full", "matched": "paired"}
"""carebench cohort name -> the cohort key of the models' bundled per-task defaults."""


def bundled_defaults(model: str, task: str, cohort: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The models package's per-(model, task, cohort) defaults: (model config overrides, trainer overrides)."""
    from carebench_models.defaults import task_defaults

    defaults = task_defaults(model, task, COHORT_DEFAULTS_KEY[cohort])
    return dict(defaults.config), dict(defaults.train)


WEIGHTS_COMMAND = "carebench models weights --download"
"""The one command that downloads CXR weights (nothing else does)."""


def resolve_model_weights(config: RunConfig) -> dict[str, tuple[str, str]]:
    """Each grid model's initial CXR weights and the SHA-256 of their file, found without downloading.

    A model's weights are its `[hparams.<model>] cxr_weights`, else the run's `cxr_weights`, else its
    profile default (`paper`: ImageNet; `quick`: none). Models that do not read the CXR, or read it
    without a CNN (`takes_cxr_weights` False), get `none`.
    Named ImageNet weights must already be in the torch hub cache.

    Args:
        config: a config whose model list is filled (`config.check_model_names`).

    Returns:
        model -> (`none`, `imagenet`, `imagenet_v1` or the absolute file path; SHA-256 or `none`).

    Raises:
        CliError: named weights not cached (one line naming every expected file and the download
            command), or a weights file that does not exist (usage exit).
    """
    from carebench_models import model_info
    from carebench_models.encoders import (
        IMAGENET_WEIGHT_NAMES,
        file_sha256,
        imagenet_cache_path,
        resolve_cxr_weights,
    )

    chosen: dict[str, str] = {}
    for model in config.models:
        info = model_info(model)
        own = config.hparams.get(model, {}).get("cxr_weights")
        if "cxr" not in info.modalities or (not info.config_class.takes_cxr_weights and own is None):
            chosen[model] = NO_WEIGHTS
            continue
        value = own if own is not None else config.cxr_weights
        if value is None:
            value = info.config_class.for_profile(config.profile).cxr_weights
        # Checks the value against the profile's encoder (e.g. the quick CNN has no ImageNet weights).
        info.config_class.for_profile(config.profile, cxr_weights=str(value))
        chosen[model] = str(value)
    uncached = sorted(
        {
            name
            for name in chosen.values()
            if name in IMAGENET_WEIGHT_NAMES and not imagenet_cache_path(name).is_file()
        }
    )
    if uncached:
        files = ", ".join(f"{imagenet_cache_path(name)} ({name})" for name in uncached)
        raise CliError(
            f"CXR weights not found: {files}; download them once with `{WEIGHTS_COMMAND}`, "
            'or set cxr_weights = "none" (--cxr-weights none) to start the CNN from random weights',
            exit_code=USAGE_EXIT,
        )
    digests: dict[Path, str] = {}
    resolved: dict[str, tuple[str, str]] = {}
    for model, value in chosen.items():
        if value == NO_WEIGHTS:
            resolved[model] = (NO_WEIGHTS, NO_WEIGHTS)
            continue
        path = resolve_cxr_weights(value, allow_download=False).resolve()
        if path not in digests:
            digests[path] = file_sha256(path)
        resolved[model] = (value if value in IMAGENET_WEIGHT_NAMES else str(path), digests[path])
    return resolved


def model_overrides(spec: RunSpec, features: int) -> dict[str, Any]:
    """The model config overrides of a run: F, its hyperparameters and its CXR weights."""
    return {"ehr_features": features, **dict(spec.hparams), "cxr_weights": spec.cxr_weights}


def check_loaded_weights(model: Any, spec: RunSpec) -> None:
    """Raise when the CXR encoder did not load the weights file the run was planned with (changed since)."""
    from carebench_models.encoders import CXREncoder

    if spec.cxr_weights_sha256 == NO_WEIGHTS:
        return
    for module in model.modules():
        if isinstance(module, CXREncoder) and module.weights_sha256 != spec.cxr_weights_sha256:
            raise CliError(
                f"CXR weights {spec.cxr_weights} changed since the grid was planned (SHA-256 "
                f"{str(module.weights_sha256)[:12]}..., planned {spec.cxr_weights_sha256[:12]}...); run again"
            )


def train_config_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """TOML/JSON lists -> tuples (e.g. `betas`), as the frozen TrainConfig expects."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}


def feature_count(dataset_dir: Path) -> int:
    """F, the number of EHR features of a dataset (`features.json`)."""
    return len(json.loads((dataset_dir / "features.json").read_text(encoding="utf-8"))["features"])


def model_metadata(name: str, model: Any = None) -> dict[str, Any]:
    """Registry facts about a model (group, paper, ...) and, given the built model, its variant.

    Stored in `metrics.json` so that reports need no registry; `variant` names the method variant
    the run's config selected (e.g. DAFT's direction), empty for models with one form.
    """
    from carebench_models import model_info

    info = model_info(name)
    return {
        "group": info.group,
        "paper": info.paper,
        "custom_step": info.custom_step,
        "batch_dependent": info.batch_dependent,
        "modalities": list(info.modalities),
        "variant": model.variant() if model is not None else "",
    }


class ProgressDataset:
    """A map-style dataset proxy that reports batches finished per pass to a progress callback.

    The trainer fetches whole batches through `__getitems__` (DataLoader with a batch sampler, maybe
    in worker processes) and hands each to `finish_batch` in this process, where batches are counted;
    a pass ends when every row has been seen once.
    """

    def __init__(self, dataset: Any, batch_size: int, progress: ProgressCallback | None) -> None:
        self.dataset = dataset
        self.progress = progress
        self.total_batches = max(1, -(-len(dataset) // batch_size))
        self._rows = 0
        self._batches = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        return self.dataset.__getitems__(indices)

    def finish_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The wrapped dataset's `finish_batch` (if any) on a batch on its device; counts the batch."""
        finish = getattr(self.dataset, "finish_batch", None)
        if finish is not None:
            batch = finish(batch)
        self._rows += int(batch["has_cxr"].shape[0])
        self._batches += 1
        if self.progress is not None:
            done = self._rows >= len(self.dataset)
            self.progress(
                self.total_batches if done else min(self._batches, self.total_batches), self.total_batches
            )
        if self._rows >= len(self.dataset):
            self._rows = self._batches = 0
        return batch

    @property
    def has_cxr(self) -> np.ndarray:
        """CXR availability per row, after simulated missingness (the trainer orders samples by it)."""
        return np.asarray(self.dataset.has_cxr)

    def collate(self, batch: Any) -> Any:
        """The wrapped dataset's collate (batches arrive stacked from `__getitems__`)."""
        return self.dataset.collate(batch)

    def __getattr__(self, name: str) -> Any:
        # Everything else (set_epoch, stay_ids, task, attributes, ...) is the wrapped dataset's.
        if name == "dataset":  # not set yet (e.g. while unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _attributes_for(dataset: Any, stay_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The dataset's sensitive attributes (and subject ids), reordered to follow `stay_ids`."""
    attributes = dataset.attributes()
    position = {int(stay): index for index, stay in enumerate(np.asarray(dataset.stay_ids))}
    order = np.fromiter((position[int(stay)] for stay in stay_ids), dtype=np.int64, count=len(stay_ids))
    return {name: np.asarray(values)[order] for name, values in attributes.items()}


def _long_frame(prediction: Any, task: Any, dataset: Any, *, spec: RunSpec, setting: str) -> pl.DataFrame:
    """DESIGN §5 long predictions of one pass, with run keys and sensitive attributes."""
    from carebench_models.export import long_predictions

    stay_ids = np.asarray(prediction.stay_id)
    extra = _attributes_for(dataset, stay_ids)
    columns = long_predictions(
        prediction,
        task,
        extra=extra,
        model=spec.model,
        seed=spec.seed,
        fold=spec.fold,
        setting=setting,
    )
    return pl.DataFrame({name: np.asarray(values) for name, values in columns.items()})


def quick_metric(frame: pl.DataFrame, *, kind: str) -> float:
    """The task's primary metric as a point estimate (no CI), for the live table and `metrics.json`."""
    import carebench_eval as ce
    from carebench_cli.report.tidy import summary_target, value_of, where

    name = PRIMARY_METRICS[kind]
    with warnings.catch_warnings():
        # An undefined metric is NaN here and in the table; the report states why.
        warnings.simplefilter("ignore", ce.UndefinedMetricWarning)
        table = ce.score(frame, metrics=[name], n_boot=0, aggregate=())
    task = str(frame["task"][0])
    value = value_of(where(table, metric=name, target=summary_target(table, task=task, metric=name)))
    return float("nan") if value is None else value


def profile_augmentation(profile: str) -> Any:
    """The train-split image augmentation of a profile (`carebench_data.torch.AugmentConfig`).

    `paper`: MedFuse's random affine (±45°, scale 0.85-1.15, shift 15 %; models.md §5). `quick`: a
    light affine (±10°, scale 0.95-1.05, shift 5 %). Measured on the validation split of a
    10,000-stay demo (one run each, 64 px CNN, ten epochs), the light affine gave the best validation
    score of the three choices on both tasks checked: CHF from the CXR alone (`resnet`, val AUROC on
    the stays with a CXR) 0.70 against 0.58 with the paper's affine and 0.68-0.70 without
    augmentation, and `latefusion` mortality (val AUPRC) 0.732 against 0.724 and 0.709.
    """
    from carebench_data.torch import AugmentConfig

    if profile == "quick":
        return AugmentConfig(mode="affine", degrees=10.0, scale=(0.95, 1.05), translate=0.05)
    return AugmentConfig(mode="affine")


def write_meds_predictions(
    writer: RunWriter, frames: Mapping[str, pl.DataFrame], *, dataset_dir: Path, task: str
) -> list[str]:
    """Each setting's test predictions of a binary task in meds-evaluation's layout, beside predictions.parquet.

    Written to ``meds_predictions/<setting>/<task>.parquet`` (``prediction_time`` from the dataset's
    stays, ``predicted_boolean_value`` at 0.5), so that MEDS tools score carebench runs and
    `carebench eval` reads them back under the task's name.

    Returns:
        The files written, relative to the run directory.
    """
    from carebench_eval.meds import to_meds_predictions

    stays = pl.read_parquet(dataset_dir / "stays.parquet", columns=["stay_id", "prediction_time"])
    times = stays.select(pl.col("stay_id").alias("sample_id"), "prediction_time")
    names = []
    for setting, frame in frames.items():
        name = f"{MEDS_PREDICTIONS_DIR}/{setting}/{task}.parquet"
        writer.write_parquet(name, to_meds_predictions(frame, times))
        names.append(name)
    return names


def execute_run(
    spec: RunSpec,
    *,
    store: RunStore,
    dataset_dir: Path,
    task_info: Any,
    device: str,
    hooks: RunHooks | None = None,
    placement: Placement | None = None,
) -> RunResult:
    """Train one model and write its run directory; `DONE` is written last.

    Args:
        spec: the run.
        store: the run store; a partial directory of this run is removed first.
        dataset_dir: benchmark dataset directory (DESIGN §1).
        task_info: `carebench_data.tasks.TaskInfo` of `spec.task`.
        device: `cpu`, `cuda` or `cuda:<index>` (already resolved). On CUDA the loader ships the
            stored uint8 images and the GPU crops, augments and normalizes them.
        hooks: progress callbacks.
        placement: loader workers and GPU sharing (how the run is scheduled; never part of the run).

    Returns:
        Summary numbers for the live table.
    """
    from carebench_data.torch import CarebenchDataset
    from carebench_models import FusionModel, TaskSpec, create_model, save_weights
    from carebench_models.training import TrainConfig, Trainer, seed_everything

    hooks = hooks or RunHooks()
    placement = placement or Placement()
    meter = ComputeMeter(device, placement)
    meter.start()
    started = time.perf_counter()
    writer = store.start(spec)
    task = TaskSpec.from_info(task_info)
    overrides = model_overrides(spec, feature_count(dataset_dir))
    # The initial weights come from the run's seed, not from whatever the process drew before
    # (torch's unseeded start, earlier runs of the grid, preflight); `fit` seeds again for training.
    seed_everything(spec.seed, deterministic=False)
    model = create_model(spec.model, task=task, profile=spec.profile, **overrides)
    check_loaded_weights(model, spec)
    image_size = int(model.config.image_size)

    def dataset(split: str, missingness: tuple[str, ...], seed: int, *, augment: bool = True) -> Any:
        return CarebenchDataset(
            dataset_dir,
            task=spec.task,
            cohort=spec.cohort,
            fold=spec.fold,
            split=split,
            missingness=missingness,
            augment=profile_augmentation(spec.profile) if split == "train" and augment else False,
            image_size=image_size,
            seed=seed,
            images_on_device=device != "cpu",
        )

    train_config = TrainConfig.for_profile(
        spec.profile,
        **{
            "seed": spec.seed,
            "device": device,
            "num_workers": placement.loader_workers,
            **train_config_values(spec.train),
        },
    )
    train_ds = ProgressDataset(
        dataset("train", spec.train_missingness, spec.seed), train_config.batch_size, hooks.on_batch
    )
    # The upstream drop protocol removes CXRs from validation stays too (`train_missingness` says
    # which splits the drop reaches; on the validation split `train_only`'s spec is a no-op).
    val_ds = ProgressDataset(
        dataset("val", spec.train_missingness, spec.seed), train_config.eval_batch_size, hooks.on_batch
    )
    trainer = Trainer(model, train_config)

    if hooks.on_phase:
        hooks.on_phase("training")
    # A model's `prepare` (SMIL's priors) reads the training split without augmentation; the
    # dataset is built only for models that have that hook.
    prepare_ds = None
    if type(model).prepare is not FusionModel.prepare:
        prepare_ds = dataset("train", spec.train_missingness, spec.seed, augment=False)
    fit = trainer.fit(train_ds, val_ds, progress=hooks.on_epoch, prepare_data=prepare_ds)
    writer.write_train_log(list(fit.epochs))

    if hooks.on_phase:
        hooks.on_phase("predict val")
    val_frame = _long_frame(
        trainer.predict(val_ds), task, val_ds.dataset, spec=spec, setting=spec.setting_name("natural")
    )
    writer.write_parquet(VAL_PREDICTIONS_FILE, val_frame)

    test_frames: dict[str, pl.DataFrame] = {}
    test_metrics: dict[str, float] = {}
    for test_setting in spec.test_settings:
        if hooks.on_phase:
            hooks.on_phase(f"predict {test_setting}")
        missingness = () if test_setting == "natural" else (test_setting,)
        test_ds = ProgressDataset(
            dataset("test", missingness, TEST_MISSINGNESS_SEED), train_config.eval_batch_size, hooks.on_batch
        )
        setting = spec.setting_name(test_setting)
        frame = _long_frame(trainer.predict(test_ds), task, test_ds.dataset, spec=spec, setting=setting)
        test_frames[setting] = frame
        test_metrics[setting] = quick_metric(frame, kind=task.kind)
    writer.write_parquet(PREDICTIONS_FILE, pl.concat(list(test_frames.values()), how="vertical"))
    if task.kind == "binary":
        write_meds_predictions(writer, test_frames, dataset_dir=dataset_dir, task=spec.task)

    with writer.file(WEIGHTS_FILE) as temporary:
        save_weights(model, temporary)
    seconds = time.perf_counter() - started
    primary = PRIMARY_METRICS[task.kind]
    val_metric = quick_metric(val_frame, kind=task.kind)
    natural = spec.setting_name("natural")
    writer.write_json(
        METRICS_FILE,
        {
            "run_id": spec.run_id,
            "model_info": model_metadata(spec.model, model),
            "task_kind": task.kind,
            "primary_metric": primary,
            "val": {primary: val_metric},
            "test": {setting: {primary: value} for setting, value in test_metrics.items()},
            "best_epoch": fit.best_epoch,
            "epochs": len(fit.epochs),
            "n_train": len(train_ds),
            "n_val": len(val_ds),
            "seconds": round(seconds, 3),
            "device": device,
            "compute": meter.record(wall_seconds=seconds, epochs=fit.epochs),
        },
    )
    writer.finish()
    logger.info("run %s finished in %.1f s (validation %s %.4f)", spec.run_id, seconds, primary, val_metric)
    return RunResult(
        epochs=len(fit.epochs),
        val_metric=val_metric,
        test_metric=test_metrics.get(natural),
        test_metric_name=primary.removesuffix("_score"),
        seconds=seconds,
    )
