"""The plain-PyTorch trainer (models.md §5): seeded, early-stopped, best checkpoint kept.

`Trainer(model, TrainConfig(...)).fit(train, val) -> FitResult`; `Trainer.predict(data) ->
PredictionArrays`. `train`/`val` are map-style datasets yielding batch-contract samples (a batched
`__getitems__` plus a `collate` staticmethod is used when present) or any re-iterable of ready batches.
A dataset may also define `finish_batch(batch) -> batch`, applied to each batch after it moved to the
device (e.g. stored uint8 images cropped, augmented and normalized on the GPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from carebench_models.base import Batch, FusionModel, SampleOrder, TrainingStage, TrainState
from carebench_models.encoders.cxr import CXREncoder
from carebench_models.encoders.ehr import LSTMEHR, TransformerEHR
from carebench_models.errors import CarebenchModelError
from carebench_models.training.config import TrainConfig
from carebench_models.training.metrics import default_monitor
from carebench_models.weights import cpu_state_dict, save_state_dict

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""`progress(epochs_done, max_epochs)`, called after every epoch."""
DataSource = Any
"""A map-style dataset of samples, or a re-iterable of ready batch dicts."""
FinishFn = Callable[[dict[str, Any]], dict[str, Any]]
"""A dataset's `finish_batch`: the batch on its device -> the batch contract."""


@dataclass
class PredictionArrays:
    """Predictions of one split, in the dataset's row order.

    Attributes:
        stay_id: int64 [n] (row numbers when the batches carry no `stay_id`).
        proba: float32 [n, K] probabilities.
        y: float32 [n, K] (binary, multilabel) or int64 [n] (multiclass); None without labels.
        has_cxr: bool [n], as the model saw it (after simulated missingness).
    """

    stay_id: np.ndarray
    proba: np.ndarray
    y: np.ndarray | None
    has_cxr: np.ndarray


@dataclass
class FitResult:
    """Outcome of `Trainer.fit`.

    Attributes:
        best_epoch: 0-based epoch of the best validation metric (ties: the earlier epoch).
        best_metric: that metric's value.
        best_val_loss: validation loss at `best_epoch`.
        metric_name: e.g. `val_auprc`.
        epochs: one log record per epoch (the JSON lines of the training log).
        best_state: CPU state dict of the best epoch (already loaded into the model).
        stopped_early: whether patience ended the run before `max_epochs`.
        seconds: wall-clock time of the fit.
        stages: for a staged model, one summary per stage (stage, first_epoch, epochs, best_epoch,
            best_metric, stopped_early); the other fields then describe the last stage.
    """

    best_epoch: int
    best_metric: float
    best_val_loss: float
    metric_name: str
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, Tensor] = field(default_factory=dict)
    stopped_early: bool = False
    seconds: float = 0.0
    stages: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and CUDA); optionally make cuDNN and torch deterministic.

    Call it before building the model so that initial weights are reproducible too.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """`auto` → CUDA when available, else CPU; anything else is passed to `torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed_worker(worker_id: int) -> None:
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _chunks(order: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive batches of `size`; a trailing batch of one row joins the previous batch.

    A single-row batch breaks BatchNorm in training and M3Care's batch graph in evaluation.
    """
    batches = [list(order[start : start + size]) for start in range(0, len(order), size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


def _is_dataset(data: object) -> bool:
    return isinstance(data, Dataset) or hasattr(data, "__getitems__")


class Trainer:
    """Fits a `FusionModel` with the protocol of models.md §5 and predicts with it.

    Args:
        model: any registered (or hand-built) `FusionModel`; moved to the configured device.
        config: training settings (default: `TrainConfig()`, the paper protocol).
    """

    def __init__(self, model: FusionModel, config: TrainConfig | None = None) -> None:
        self.model = model
        self.config = config or TrainConfig()
        self.device = resolve_device(self.config.device)
        use_bf16 = self.config.precision == "bf16" or (
            self.config.precision == "auto" and self.device.type == "cuda"
        )
        self.amp_dtype = torch.bfloat16 if use_bf16 else None
        self.metric_name, self.monitor = default_monitor(model.task)
        if self.config.monitor is not None:
            self.monitor = self.config.monitor
            self.metric_name = self.config.monitor_name or "val_metric"
        self.model.to(self.device)
        channels_last = self.config.channels_last
        if channels_last or (channels_last is None and self.device.type == "cuda"):
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.config.compile:
            for module in self.model.modules():
                if isinstance(module, CXREncoder | TransformerEHR | LSTMEHR):
                    module.compile(dynamic=True)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.amp_dtype or torch.bfloat16,
            enabled=self.amp_dtype is not None,
        )

    def _to_device(self, batch: Mapping[str, Any], finish: FinishFn | None = None) -> dict[str, Any]:
        moved = {
            key: value.to(self.device, non_blocking=True) if isinstance(value, Tensor) else value
            for key, value in batch.items()
        }
        return moved if finish is None else finish(moved)

    def _loader(self, dataset: Any, index_batches: list[list[int]], generator: torch.Generator) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=index_batches,
            collate_fn=getattr(dataset, "collate", None) or default_collate,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_seed_worker,
            generator=generator,
        )

    def _epoch_order(self, dataset: Any, epoch: int, order: SampleOrder) -> list[int]:
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        if order == "shuffle":
            return torch.randperm(len(dataset), generator=generator).tolist()
        if order == "modality_count_desc":
            has_cxr = np.asarray(dataset.has_cxr, dtype=bool)
            paired, unpaired = np.flatnonzero(has_cxr), np.flatnonzero(~has_cxr)
            paired = paired[torch.randperm(len(paired), generator=generator).numpy()]
            unpaired = unpaired[torch.randperm(len(unpaired), generator=generator).numpy()]
            return np.concatenate([paired, unpaired]).tolist()
        raise CarebenchModelError(
            f"unknown sample order {order!r} from {type(self.model).__name__}.sample_order"
        )

    def _train_batches(
        self, data: DataSource, epoch: int, rows: np.ndarray | None = None
    ) -> Iterator[dict[str, Any]]:
        order = self.model.sample_order(epoch)
        if not _is_dataset(data):
            if order != "shuffle":
                raise CarebenchModelError(
                    f"{type(self.model).__name__} asks for sample order {order!r} in epoch {epoch}, which needs "
                    "a dataset with a has_cxr array; got ready-made batches"
                )
            return (self._to_device(batch) for batch in data)
        indices = self._epoch_order(data, epoch, order)
        if rows is not None:
            keep = np.zeros(len(data), dtype=bool)
            keep[rows] = True
            indices = [index for index in indices if keep[index]]
        batches = _chunks(indices, self.config.batch_size)
        generator = torch.Generator().manual_seed(self.config.seed + epoch)
        finish = getattr(data, "finish_batch", None)
        return (self._to_device(batch, finish) for batch in self._loader(data, batches, generator))

    def _eval_batches(self, data: DataSource, rows: np.ndarray | None = None) -> Iterator[dict[str, Any]]:
        if not _is_dataset(data):
            return (self._to_device(batch) for batch in data)
        indices = range(len(data)) if rows is None else [int(index) for index in rows]
        batches = _chunks(indices, self.config.eval_batch_size)
        finish = getattr(data, "finish_batch", None)
        return (
            self._to_device(batch, finish)
            for batch in self._loader(data, batches, torch.Generator().manual_seed(0))
        )

    def fit(
        self,
        train: DataSource,
        val: DataSource,
        *,
        progress: ProgressFn | None = None,
        prepare_data: DataSource | None = None,
    ) -> FitResult:
        """Train with early stopping on the validation metric and reload the best epoch's weights.

        A model with `training_stages` is fitted stage by stage, each stage with this protocol (fresh
        optimisers and schedulers, its own early stopping and best epoch); epochs are numbered across
        stages and every epoch record names its `stage`.

        Args:
            train: training data (dataset or re-iterable of batches).
            val: validation data, evaluated in its fixed order after every epoch.
            progress: called with (epochs done, epoch budget of all stages) after every epoch.
            prepare_data: what the model's `prepare` hook reads, in its fixed order (batches of
                `eval_batch_size`); None = `train`. Pass the training split without augmentation
                when `train` augments its images (SMIL's priors must not see augmented images).

        Returns:
            The `FitResult`; the model holds the best epoch's weights (of the last stage) afterwards.
        """
        config, model = self.config, self.model
        seed_everything(config.seed, deterministic=config.deterministic)
        started = time.perf_counter()
        prepare_source = train if prepare_data is None else prepare_data
        model.prepare(_Reiterable(lambda: self._eval_batches(prepare_source)))
        stages = model.training_stages()
        state = TrainState(
            max_epochs=config.max_epochs,
            device=self.device,
            amp_dtype=self.amp_dtype,
            generator=torch.Generator().manual_seed(config.seed),
            max_grad_norm=config.max_grad_norm,
        )
        result = FitResult(
            best_epoch=-1, best_metric=math.nan, best_val_loss=math.nan, metric_name=self.metric_name
        )
        budget = config.max_epochs * max(1, len(stages))
        for stage in stages or (None,):
            if stage is not None:
                model.set_training_stage(stage.name)
                logger.info("training stage %r (rows: %s)", stage.name, stage.rows)
            epochs_before = len(result.epochs)
            stage_result = self._fit_stage(
                train,
                val,
                stage,
                state,
                epochs=result.epochs,
                progress=None if progress is None else lambda done: progress(done, budget),
            )
            # The fit's result is the last stage's: its best epoch is what the model holds now.
            result.best_epoch, result.best_metric = stage_result.best_epoch, stage_result.best_metric
            result.best_val_loss, result.best_state = stage_result.best_val_loss, stage_result.best_state
            result.stopped_early = stage_result.stopped_early
            if stage is not None:
                result.stages.append(
                    {
                        "stage": stage.name,
                        "first_epoch": epochs_before,
                        "epochs": len(result.epochs) - epochs_before,
                        "best_epoch": stage_result.best_epoch,
                        "best_metric": stage_result.best_metric,
                        "stopped_early": stage_result.stopped_early,
                    }
                )
        if stages:
            model.set_training_stage(None)
        if config.checkpoint_path is not None:
            save_state_dict(result.best_state, config.checkpoint_path)
        result.seconds = time.perf_counter() - started
        return result

    def _fit_stage(
        self,
        train: DataSource,
        val: DataSource,
        stage: TrainingStage | None,
        state: TrainState,
        *,
        epochs: list[dict[str, Any]],
        progress: Callable[[int], None] | None,
    ) -> FitResult:
        """One stage (or the whole fit of an unstaged model): epochs until early stopping, best epoch reloaded.

        Appends its epoch records to `epochs` (numbered after the records already there).
        """
        config, model = self.config, self.model
        train_rows = val_rows = None
        if stage is not None and stage.rows == "paired":
            train_rows = self._paired_rows(train, stage, "training")
            val_rows = self._paired_rows(val, stage, "validation")
        optimizers = model.configure_optimizers(config)
        schedulers = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=config.scheduler_factor,
                patience=config.scheduler_patience,
                min_lr=config.min_lr,
            )
            for optimizer in optimizers
        ]
        result = FitResult(
            best_epoch=-1, best_metric=math.nan, best_val_loss=math.nan, metric_name=self.metric_name
        )
        epochs_without_improvement = 0
        first_epoch = len(epochs)
        for stage_epoch in range(config.max_epochs):
            epoch = first_epoch + stage_epoch
            epoch_started = time.perf_counter()
            state.epoch = epoch
            model.train()
            model.on_epoch_start(state)
            train_logs, samples = self._train_epoch(train, epoch, optimizers, state, rows=train_rows)
            train_seconds = time.perf_counter() - epoch_started
            hook_logs = model.on_epoch_end(state, optimizers)
            val_loss, val_metric = self.evaluate(val, rows=val_rows)
            for scheduler in schedulers:
                scheduler.step(val_loss)
            seconds = time.perf_counter() - epoch_started
            record: dict[str, Any] = {
                "epoch": epoch,
                **({"stage": stage.name} if stage is not None else {}),
                "lr": [group["lr"] for optimizer in optimizers for group in optimizer.param_groups],
                **{f"train_{key}": value for key, value in train_logs.items()},
                **{key: float(value) for key, value in hook_logs.items()},
                "val_loss": val_loss,
                self.metric_name: val_metric,
                "seconds": round(seconds, 3),
                "samples_per_s": round(samples / seconds, 1) if seconds > 0 else None,
                "train_samples": samples,
                "train_seconds": round(train_seconds, 3),
            }
            epochs.append(record)
            logger.info(json.dumps(record, allow_nan=True))
            improved = result.best_epoch < 0 or (
                math.isfinite(val_metric)
                and not (math.isfinite(result.best_metric) and val_metric <= result.best_metric)
            )
            if improved:
                result.best_epoch, result.best_metric, result.best_val_loss = epoch, val_metric, val_loss
                result.best_state = cpu_state_dict(model)
                epochs_without_improvement = 0
            else:
                epochs_without_improvement += 1
            if progress is not None:
                progress(epoch + 1)
            if epochs_without_improvement >= config.patience and stage_epoch + 1 >= config.min_epochs:
                result.stopped_early = stage_epoch + 1 < config.max_epochs
                break
        model.load_state_dict(result.best_state)
        return result

    def _paired_rows(self, data: DataSource, stage: TrainingStage, split: str) -> np.ndarray:
        """Indices of the rows with a CXR, for a stage that uses only those."""
        if not _is_dataset(data) or not hasattr(data, "has_cxr"):
            raise CarebenchModelError(
                f"training stage {stage.name!r} uses only the rows with a CXR, which needs a dataset with a "
                "has_cxr array; got ready-made batches"
            )
        rows = np.flatnonzero(np.asarray(data.has_cxr, dtype=bool))
        if rows.size == 0:
            raise CarebenchModelError(
                f"training stage {stage.name!r} uses only the rows with a CXR, and the {split} data has none"
            )
        return rows

    def _train_epoch(
        self,
        train: DataSource,
        epoch: int,
        optimizers: list[torch.optim.Optimizer],
        state: TrainState,
        *,
        rows: np.ndarray | None = None,
    ) -> tuple[dict[str, float], int]:
        sums: dict[str, Tensor | float] = {}
        steps = samples = 0
        for batch in self._train_batches(train, epoch, rows):
            with self._autocast():
                logs = self.model.training_step(batch, optimizers, state)
            for key, value in logs.items():
                value = value.detach().float() if isinstance(value, Tensor) else float(value)
                sums[key] = sums[key] + value if key in sums else value
            steps += 1
            samples += int(batch["has_cxr"].shape[0])
            state.global_step += 1
        if steps == 0:
            raise CarebenchModelError("the training data yielded no batch")
        return {key: float(value) / steps for key, value in sums.items()}, samples

    def _collect(
        self, data: DataSource, *, with_logits: bool, rows: np.ndarray | None = None
    ) -> dict[str, Any]:
        model = self.model
        training = model.training
        model.eval()
        probas, labels, stay_ids, has_cxr, losses = [], [], [], [], []
        seen = 0
        try:
            with torch.inference_mode(), self._autocast():
                for batch in self._eval_batches(data, rows):
                    if with_logits:
                        logits = model(batch).logits.float()
                        proba = model.task.proba(logits)
                        if "y" in batch:
                            losses.append(model.task.per_sample_loss(logits, batch["y"]))
                    else:
                        proba = model.predict_proba(batch).float()
                    size = int(proba.shape[0])
                    probas.append(proba)
                    if "y" in batch:
                        labels.append(batch["y"])
                    stay_ids.append(
                        batch["stay_id"] if "stay_id" in batch else torch.arange(seen, seen + size)
                    )
                    has_cxr.append(batch["has_cxr"])
                    seen += size
        finally:
            model.train(training)
        if not probas:
            raise CarebenchModelError("the evaluation data yielded no batch")
        return {
            "proba": torch.cat(probas).cpu().numpy(),
            "y": torch.cat(labels).cpu().numpy() if len(labels) == len(probas) else None,
            "stay_id": torch.cat([ids.to(self.device) for ids in stay_ids]).cpu().numpy().astype(np.int64),
            "has_cxr": torch.cat(has_cxr).bool().cpu().numpy(),
            "loss": float(torch.cat(losses).mean()) if losses and len(losses) == len(probas) else math.nan,
        }

    def evaluate(self, data: DataSource, *, rows: np.ndarray | None = None) -> tuple[float, float]:
        """(validation loss, monitored metric) in eval mode; the loss is the task loss on the final logits.

        Args:
            data: validation data.
            rows: evaluate only these row indices of a dataset (None = every row).
        """
        collected = self._collect(data, with_logits=True, rows=rows)
        if collected["y"] is None:
            raise CarebenchModelError("validation data has no labels ('y')")
        return collected["loss"], float(self.monitor(collected["y"], collected["proba"]))

    def predict(self, data: DataSource) -> PredictionArrays:
        """Probabilities for every row of `data`, in its order (batches of `eval_batch_size`)."""
        collected = self._collect(data, with_logits=False)
        return PredictionArrays(
            stay_id=collected["stay_id"],
            proba=collected["proba"],
            y=collected["y"],
            has_cxr=collected["has_cxr"],
        )


class _Reiterable:
    """An iterable that calls `factory` afresh on every `iter()` (so `prepare` may pass over the data twice)."""

    def __init__(self, factory: Callable[[], Iterator[dict[str, Any]]]) -> None:
        self._factory = factory

    def __iter__(self) -> Iterator[Batch]:
        return self._factory()


__all__ = [
    "FitResult",
    "PredictionArrays",
    "ProgressFn",
    "Trainer",
    "resolve_device",
    "seed_everything",
]
