"""`CarebenchDataset`: one split of one fold of a benchmark dataset directory, as batch dicts.

``ehr.npy`` and ``cxr.npy`` are memory-mapped; the fold's normalized EHR (data.md §7.2) is computed
once per process and shared by every split of that fold; images are cropped, resized, augmented and
normalized as a batch (`prepare_images`). Simulated CXR missingness (§8.2) changes ``has_cxr`` at load
time only. ``__getitems__`` builds a whole batch in one call, which ``torch.utils.data.DataLoader``
uses automatically, so there is no per-sample Python work on the hot path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from carebench_data.errors import CarebenchDataError
from carebench_data.missingness import acuity_proxy, apply_missingness, parse_setting, setting_name
from carebench_data.normalization import ScaleMethod, normalize, read_fold_stats
from carebench_data.splits import SPLITS, split_of
from carebench_data.tasks import TaskInfo, read_manifest, task_specs
from carebench_data.torch.transforms import (
    AugmentConfig,
    augment_thetas,
    crop_size,
    image_pixels,
    normalize_pixels,
)

__all__ = ["AGE_EDGES", "COHORTS", "CarebenchDataset", "clear_cache"]

logger = logging.getLogger(__name__)

COHORTS = ("base", "matched")
"""``base``: every stay; ``matched``: stays with a CXR on disk (before simulated removal)."""

AGE_EDGES = (18, 40, 60, 80)
"""Left-closed age groups ``[18,40)``, ``[40,60)``, ``[60,80)``, ``[80,inf)`` (eval.md fairness)."""

_STAY_COLUMNS = (
    "subject_id",
    "stay_id",
    "age",
    "sex",
    "race",
    "insurance",
    "admission_type",
    "first_careunit",
    "has_cxr",
    "cxr_index",
    "cxr_hours",
    "fold_part",
)
_CACHE_SIZE = 2
_DEFAULT_IMAGE_SIDE = 256
_cache: OrderedDict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Drop the per-process cache of normalized EHR arrays."""
    with _cache_lock:
        _cache.clear()


def _normalized_ehr(
    root: Path, fold: int, *, content_hash: str, scaling: ScaleMethod, feature_scale: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """The whole dataset's EHR normalized with fold ``fold``'s statistics, cached per process.

    Returns float32 [N, T, F] values and bool [N, T, F] mask; the two most recent folds are kept.
    """
    key = (str(root.resolve()), content_hash, fold, scaling, tuple(sorted(feature_scale.items())))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        stats = read_fold_stats(root / "stats" / f"fold{fold}.json")
        raw = np.load(root / "ehr.npy", mmap_mode="r")
        logger.info("normalizing %s EHR rows with fold %d statistics", raw.shape[0], fold)
        arrays = normalize(raw, stats, method=scaling, feature_scale=feature_scale)
        for array in arrays:
            array.setflags(write=False)
        _cache[key] = arrays
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return arrays


def _age_groups(age: np.ndarray) -> np.ndarray:
    """String [n] age group labels ``[18,40)`` ... ``[80,inf)``; ``(missing)`` below 18 or null."""
    names = [f"[{low},{high})" for low, high in itertools.pairwise([*AGE_EDGES, "inf"])]
    index = np.searchsorted(np.asarray(AGE_EDGES, dtype=np.float64), age, side="right") - 1
    valid = (index >= 0) & ~np.isnan(age)
    return np.where(valid, np.asarray(names, dtype=object)[np.clip(index, 0, None)], "(missing)").astype(
        object
    )


class CarebenchDataset(torch.utils.data.Dataset):
    """A map-style dataset of one split of one fold, yielding the DESIGN §2 batch contract.

    Args:
        dataset_dir: a benchmark dataset directory (DESIGN §1).
        task: task name in ``manifest["labels"]["tasks"]`` (``mortality``, ``phenotype``, ``los``) or a
            `TaskInfo` from `task_specs`.
        cohort: ``base`` (all stays) or ``matched`` (stays with a CXR on disk, before simulated removal).
        fold: 0-4.
        split: ``train``, ``val`` or ``test``.
        missingness: setting string(s) of data.md §8.2, e.g. ``"test_cxr_mcar_0.5"`` or
            ``("train_cxr_drop_0.3", "test_cxr_mnar_0.5")``; protocols for other splits are no-ops.
        augment: image augmentation on the train split: ``True`` (random affine), ``"affine"``,
            ``"random_crop"`` or an `AugmentConfig`. Other splits never augment.
        image_size: output side H = W; default ``round(S * 224 / 256)`` (224 for S = 256).
        seed: seed of the missingness ranking and of the augmentation draws.
        scaling: ``robust`` (default), ``standard`` or ``none``; the ``scale`` of each feature in
            features.json overrides it.
        images_on_device: leave the images as stored (uint8) in the batches, for `finish_batch` to
            crop, augment and normalize them after the batch moved to its device (a GPU): the
            loader then ships 1 byte per stored pixel instead of 12 per output pixel, and the GPU
            does the image work. Same draws, same values as the default path (on the same device).

    Sample dict (``__getitem__``): ``ehr`` float32 [T, F], ``ehr_mask`` bool [T, F], ``cxr`` float32
    [3, H, W] (all zeros without a CXR), ``has_ehr`` bool [], ``has_cxr`` bool [], ``cxr_hours`` float32 []
    (0 without a CXR), ``y`` float32 [K] (binary, multilabel) or int64 [] (multiclass), ``stay_id``
    int64 []. ``__getitems__`` returns the same keys with a leading batch dimension B.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> ds = CarebenchDataset("data/demo", task="mortality", split="train")  # doctest: +SKIP
        >>> loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ds.collate)  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike[str],
        *,
        task: str | TaskInfo,
        cohort: Literal["base", "matched"] = "base",
        fold: int = 0,
        split: Literal["train", "val", "test"] = "train",
        missingness: str | Sequence[str] = (),
        augment: bool | Literal["affine", "random_crop"] | AugmentConfig = False,
        image_size: int | None = None,
        seed: int = 0,
        scaling: ScaleMethod = "robust",
        images_on_device: bool = False,
    ) -> None:
        self.root = Path(dataset_dir)
        manifest = read_manifest(self.root)
        self.task = self._resolve_task(task)
        if cohort not in COHORTS:
            raise CarebenchDataError(f"cohort must be one of {', '.join(COHORTS)}, not {cohort!r}.")
        if split not in SPLITS:
            raise CarebenchDataError(f"split must be one of {', '.join(SPLITS)}, not {split!r}.")
        self.cohort, self.fold, self.split, self.seed = cohort, fold, split, int(seed)
        self.protocols = parse_setting(missingness)
        self.setting = setting_name(self.protocols)
        self._content_hash = str(manifest.get("content_hash", ""))
        self._scaling: ScaleMethod = scaling
        self._epoch = 0
        self.images_on_device = bool(images_on_device)

        features = self._read_features()
        self.feature_names: list[str] = [feature["name"] for feature in features]
        self._feature_scale = {
            feature["name"]: feature["scale"]
            for feature in features
            if feature.get("scale", "inherit") != "inherit"
        }
        stays = self._read_stays()
        salt = str(((manifest.get("config") or {}).get("splits") or {}).get("salt", "v1"))
        subject_ids = stays["subject_id"].to_numpy()
        in_split = split_of(subject_ids, stays["fold_part"].to_numpy(), fold=fold, salt=salt) == split
        natural_cxr = stays["has_cxr"].to_numpy()
        if cohort == "matched":
            in_split &= natural_cxr
        self._rows = np.flatnonzero(in_split)
        selected = stays[self._rows]
        self.stay_ids: np.ndarray = selected["stay_id"].to_numpy().astype(np.int64)
        self._stays = selected

        self.has_cxr: np.ndarray = self._apply_missingness(selected["has_cxr"].to_numpy())
        self._cxr_index = selected["cxr_index"].to_numpy().astype(np.int64)
        self._cxr_hours = np.where(self.has_cxr, selected["cxr_hours"].fill_null(0.0).to_numpy(), 0.0).astype(
            np.float32
        )
        self._y = self._read_targets()

        self._cxr: np.ndarray | None = None
        images = self._images()
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise CarebenchDataError(
                f"{self.root / 'cxr.npy'}: expected uint8 [M, S, S], got {images.shape}."
            )
        self.image_size = int(image_size) if image_size is not None else crop_size(images.shape[1])
        if self.image_size < 1:
            raise CarebenchDataError(f"image_size must be a positive number of pixels, got {image_size}.")
        self._augment = self._resolve_augment(augment)
        # built eagerly, so forked DataLoader workers share the arrays copy-on-write
        self._ehr_values, self._ehr_mask = self._ehr_arrays()
        logger.info(
            "%s fold %d %s (%s cohort, %s): %d stays, %d with a CXR",
            self.task.name,
            fold,
            split,
            cohort,
            self.setting,
            len(self),
            int(self.has_cxr.sum()),
        )

    # construction helpers -------------------------------------------------------------------

    def _resolve_task(self, task: str | TaskInfo) -> TaskInfo:
        if isinstance(task, TaskInfo):
            return task
        specs = task_specs(self.root)
        if task not in specs:
            raise CarebenchDataError(f"unknown task {task!r} in {self.root}; available: {', '.join(specs)}.")
        return specs[task]

    def _read_features(self) -> list[dict[str, Any]]:
        path = self.root / "features.json"
        if not path.is_file():
            raise CarebenchDataError(f"{path} not found; the dataset directory is incomplete.")
        features = json.loads(path.read_text(encoding="utf-8")).get("features")
        if not isinstance(features, list) or not features:
            raise CarebenchDataError(f"{path}: no 'features' list; rebuild the dataset directory.")
        return features

    def _read_stays(self) -> pl.DataFrame:
        path = self.root / "stays.parquet"
        if not path.is_file():
            raise CarebenchDataError(f"{path} not found; the dataset directory is incomplete.")
        available = pl.read_parquet_schema(path)
        missing = [column for column in _STAY_COLUMNS if column not in available]
        if missing:
            raise CarebenchDataError(f"{path}: missing columns {missing}; rebuild the dataset directory.")
        return pl.read_parquet(path, columns=list(_STAY_COLUMNS))

    def _read_targets(self) -> torch.Tensor:
        path = self.root / "labels.parquet"
        columns = list(self.task.columns)
        labels = pl.read_parquet(path, columns=["stay_id", *columns])[self._rows]
        if not np.array_equal(labels["stay_id"].to_numpy(), self.stay_ids):
            raise CarebenchDataError(f"{path}: row order differs from stays.parquet; rebuild the dataset.")
        nulls = {column: labels[column].null_count() for column in columns if labels[column].null_count()}
        if nulls:
            raise CarebenchDataError(f"{path}: null targets in {nulls}; every stay needs a label.")
        if self.task.kind == "multiclass":
            classes = labels[columns[0]].to_numpy().astype(np.int64)
            if classes.size and (classes.min() < 0 or classes.max() >= self.task.num_outputs):
                raise CarebenchDataError(
                    f"{path}: {columns[0]} outside 0..{self.task.num_outputs - 1} for task {self.task.name!r}."
                )
            return torch.from_numpy(classes)
        return torch.from_numpy(labels.select(columns).to_numpy().astype(np.float32).reshape(len(labels), -1))

    def _apply_missingness(self, natural_cxr: np.ndarray) -> np.ndarray:
        applies = [protocol for protocol in self.protocols if self.split in protocol.splits]
        acuity = None
        if any(protocol.kind == "mnar" for protocol in applies):
            raw = np.load(self.root / "ehr.npy", mmap_mode="r")
            acuity = acuity_proxy(raw[self._rows], self.feature_names)
        attributes = {
            column: self._stays[column].to_numpy()
            for column in ("sex", "race", "insurance", "admission_type", "first_careunit")
        }
        attributes["age"] = self._stays["age"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        flags = apply_missingness(
            natural_cxr.astype(bool),
            self.protocols,
            split=self.split,
            stay_ids=self.stay_ids,
            seed=self.seed,
            acuity=acuity,
            attributes=attributes,
        )
        if applies:
            logger.info(
                "%s: %d of %d CXRs removed on the %s split",
                self.setting,
                int((natural_cxr & ~flags).sum()),
                int(natural_cxr.sum()),
                self.split,
            )
        return flags

    def _resolve_augment(self, augment: bool | str | AugmentConfig) -> AugmentConfig | None:
        if augment is False or augment is None:
            return None
        config = (
            augment
            if isinstance(augment, AugmentConfig)
            else AugmentConfig(
                mode="affine" if augment is True else augment  # type: ignore[arg-type]
            )
        )
        if self.split != "train":
            logger.info(
                "augmentation is applied on the train split only; the %s split is not augmented", self.split
            )
            return None
        return config

    def _images(self) -> np.ndarray:
        """The memory-mapped ``cxr.npy`` [M, S, S] (opened lazily, once per process)."""
        if self._cxr is None:
            path = self.root / "cxr.npy"
            if path.is_file():
                self._cxr = np.load(path, mmap_mode="r")
            elif not self._stays["has_cxr"].any():
                self._cxr = np.zeros(
                    (0, _DEFAULT_IMAGE_SIDE, _DEFAULT_IMAGE_SIDE), dtype=np.uint8
                )  # EHR-only
            else:
                raise CarebenchDataError(
                    f"{path} not found but stays have a CXR; the dataset directory is incomplete."
                )
        return self._cxr

    def _ehr_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return _normalized_ehr(
            self.root,
            self.fold,
            content_hash=self._content_hash,
            scaling=self._scaling,
            feature_scale=self._feature_scale,
        )

    # pickling (spawned DataLoader workers): never ship the arrays, reopen them instead ----------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_cxr=None, _ehr_values=None, _ehr_mask=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ehr_values, self._ehr_mask = self._ehr_arrays()

    # public API --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._rows.size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the augmentation draws (with the seed and the batch's indices)."""
        self._epoch = int(epoch)

    def _generator(self, indices: np.ndarray) -> torch.Generator:
        """A CPU generator seeded from (seed, epoch, the batch's indices): worker-order independent."""
        digest = hashlib.sha256(f"carebench:augment:{self.seed}:{self._epoch}:".encode())
        digest.update(indices.astype("<i8").tobytes())
        return torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "big") & (2**63 - 1))

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch, already stacked: the DESIGN §2 batch dict for the given dataset positions."""
        positions = np.asarray(indices, dtype=np.int64)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} stays")
        positions = positions % max(len(self), 1)
        if self.images_on_device:
            return self._stored_image_batch(positions)
        rows = self._rows[positions]
        has_cxr = self.has_cxr[positions]
        cxr = torch.empty((positions.size, 3, self.image_size, self.image_size), dtype=torch.float32)
        present = np.flatnonzero(has_cxr)
        pixels = None
        if present.size:
            image_rows = self._cxr_index[positions[present]]
            order = np.argsort(image_rows, kind="stable")
            stored = np.empty((present.size, *self._images().shape[1:]), dtype=np.uint8)
            stored[order] = self._images()[image_rows[order]]  # sorted reads from the memory map
            generator = self._generator(positions) if self._augment is not None else None
            pixels = image_pixels(
                torch.from_numpy(stored),
                image_size=self.image_size,
                augment=self._augment,
                generator=generator,
            )
        # write every output row exactly once, run by run: normalized image or zeros
        boundaries = np.flatnonzero(np.diff(has_cxr.astype(np.int8))) + 1
        image_cursor = 0
        for begin, end in itertools.pairwise([0, *boundaries.tolist(), positions.size]):
            if has_cxr[begin] and pixels is not None:
                count = end - begin
                normalize_pixels(pixels[image_cursor : image_cursor + count], out=cxr[begin:end])
                image_cursor += count
            else:
                cxr[begin:end].zero_()
        return {
            "ehr": torch.from_numpy(self._ehr_values[rows]),
            "ehr_mask": torch.from_numpy(self._ehr_mask[rows]),
            "cxr": cxr,
            "has_ehr": torch.ones(positions.size, dtype=torch.bool),
            "has_cxr": torch.from_numpy(has_cxr.copy()),
            "cxr_hours": torch.from_numpy(self._cxr_hours[positions]),
            "y": self._y[torch.from_numpy(positions)],
            "stay_id": torch.from_numpy(self.stay_ids[positions]),
        }

    def _stored_image_batch(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of `images_on_device`: stored images instead of ``cxr``.

        ``cxr_images`` uint8 [n_c, S, S] holds the rows with a CXR, in batch order, and on an augmented
        split ``cxr_theta`` float64 [n_c, 2, 3] their augmentation draws.
        """
        has_cxr = self.has_cxr[positions]
        present = np.flatnonzero(has_cxr)
        image_rows = self._cxr_index[positions[present]]
        order = np.argsort(image_rows, kind="stable")
        stored = np.empty((present.size, *self._images().shape[1:]), dtype=np.uint8)
        if present.size:
            stored[order] = self._images()[image_rows[order]]  # sorted reads from the memory map
        images: dict[str, torch.Tensor] = {"cxr_images": torch.from_numpy(stored)}
        if self._augment is not None and present.size:
            images["cxr_theta"] = augment_thetas(
                present.size,
                image_side=stored.shape[1],
                augment=self._augment,
                generator=self._generator(positions),
            )
        rows = self._rows[positions]
        return {
            "ehr": torch.from_numpy(self._ehr_values[rows]),
            "ehr_mask": torch.from_numpy(self._ehr_mask[rows]),
            **images,
            "has_ehr": torch.ones(positions.size, dtype=torch.bool),
            "has_cxr": torch.from_numpy(has_cxr.copy()),
            "cxr_hours": torch.from_numpy(self._cxr_hours[positions]),
            "y": self._y[torch.from_numpy(positions)],
            "stay_id": torch.from_numpy(self.stay_ids[positions]),
        }

    def finish_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Turn a batch of `images_on_device` into the batch contract, on the device its tensors are on.

        ``cxr_images`` (and ``cxr_theta``) become ``cxr`` float32 [B, 3, H, W]: cropped, augmented with
        the draws the loader made, normalized, zeros where ``has_cxr`` is False. Any other batch passes
        through unchanged. The trainer calls it after moving each batch to its device.
        """
        if "cxr_images" not in batch:
            return dict(batch)
        finished = {key: value for key, value in batch.items() if key not in ("cxr_images", "cxr_theta")}
        has_cxr = batch["has_cxr"]
        images = batch["cxr_images"]
        cxr = torch.zeros(
            (has_cxr.shape[0], 3, self.image_size, self.image_size), dtype=torch.float32, device=images.device
        )
        if images.shape[0]:
            pixels = image_pixels(
                images,
                image_size=self.image_size,
                augment=self._augment if "cxr_theta" in batch else None,
                theta=batch.get("cxr_theta"),
            )
            cxr[has_cxr] = normalize_pixels(pixels)
        finished["cxr"] = cxr
        return finished

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One sample: the batch keys without the batch dimension (images finished on the CPU)."""
        return {key: value[0] for key, value in self.finish_batch(self.__getitems__([index])).items()}

    @staticmethod
    def collate(
        batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """The ``collate_fn`` for a DataLoader: a `__getitems__` batch passes through unchanged.

        A list of sample dicts (e.g. from a wrapper without ``__getitems__``) is stacked instead.
        """
        if isinstance(batch, Mapping):
            return dict(batch)
        return {key: torch.stack([sample[key] for sample in batch]) for key in batch[0]}

    def attributes(self) -> dict[str, np.ndarray]:
        """Sensitive attributes of the dataset's stays, aligned with `stay_ids` (for predictions files).

        Returns:
            ``sex``, ``race``, ``insurance``, ``admission_type`` (str), ``age`` (int), ``age_group`` (str,
            ``[18,40)`` ... ``[80,inf)``), ``has_cxr`` (bool, after the missingness transforms) and
            ``subject_id`` (int64), each [n].
        """
        age = self._stays["age"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        result = {
            column: self._stays[column].to_numpy()
            for column in ("sex", "race", "insurance", "admission_type")
        }
        result.update(
            age=self._stays["age"].to_numpy(),
            age_group=_age_groups(age),
            has_cxr=self.has_cxr.copy(),
            subject_id=self._stays["subject_id"].to_numpy().astype(np.int64),
        )
        return result

    def __repr__(self) -> str:
        return (
            f"CarebenchDataset({str(self.root)!r}, task={self.task.name!r}, cohort={self.cohort!r}, "
            f"fold={self.fold}, split={self.split!r}, setting={self.setting!r}, n={len(self)}, "
            f"with_cxr={int(self.has_cxr.sum())}, image_size={self.image_size})"
        )
