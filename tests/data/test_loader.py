import copy
import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import roc_auc_score

from carebench_data.errors import CarebenchDataError
from carebench_data.normalization import normalize
from carebench_data.splits import split_of
from carebench_data.tasks import TaskInfo, task_specs
from carebench_data.testing import write_tiny_dataset
from carebench_data.torch import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    CarebenchDataset,
    make_loader,
    prepare_images,
)

KEYS = {"ehr", "ehr_mask", "cxr", "has_ehr", "has_cxr", "cxr_hours", "y", "stay_id"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("loader") / "tiny", n_stays=96, paired_fraction=0.4)


@pytest.fixture(scope="module")
def stays(tiny):
    return pl.read_parquet(tiny / "stays.parquet")


def test_task_specs(tiny):
    specs = task_specs(tiny)
    assert list(specs) == ["mortality", "phenotype", "los"]
    assert specs["mortality"] == TaskInfo(
        name="mortality", kind="binary", num_outputs=1, label_names=("mortality",), columns=("mortality",)
    )
    assert specs["phenotype"].num_outputs == 25 and specs["phenotype"].kind == "multilabel"
    assert specs["los"].num_outputs == 7 and specs["los"].columns == ("los_class",)


@pytest.mark.parametrize(
    ("task", "y_shape", "y_dtype"),
    [("mortality", (1,), torch.float32), ("phenotype", (25,), torch.float32), ("los", (), torch.int64)],
)
def test_batch_contract(tiny, task, y_shape, y_dtype):
    ds = CarebenchDataset(tiny, task=task, split="train")
    side = ds.image_size
    assert side == 28  # round(32 * 224 / 256)
    batch = next(iter(make_loader(ds, batch_size=8, shuffle=False)))
    assert set(batch) == KEYS
    expected = {
        "ehr": ((8, 48, 17), torch.float32),
        "ehr_mask": ((8, 48, 17), torch.bool),
        "cxr": ((8, 3, side, side), torch.float32),
        "has_ehr": ((8,), torch.bool),
        "has_cxr": ((8,), torch.bool),
        "cxr_hours": ((8,), torch.float32),
        "y": ((8, *y_shape), y_dtype),
        "stay_id": ((8,), torch.int64),
    }
    assert {key: (tuple(value.shape), value.dtype) for key, value in batch.items()} == expected
    sample = ds[3]
    assert set(sample) == KEYS
    assert {key: (tuple(value.shape), value.dtype) for key, value in sample.items()} == {
        key: (shape[1:], dtype) for key, (shape, dtype) in expected.items()
    }
    assert torch.isfinite(batch["ehr"]).all() and batch["has_ehr"].all()


def test_values_match_dataset_files(tiny, stays):
    ds = CarebenchDataset(tiny, task="phenotype", fold=2, split="val")
    labels = pl.read_parquet(tiny / "labels.parquet")
    raw = np.load(tiny / "ehr.npy")
    stats = json.loads((tiny / "stats" / "fold2.json").read_text())
    values, _ = normalize(raw, stats)
    rows = np.flatnonzero(
        split_of(stays["subject_id"].to_numpy(), stays["fold_part"].to_numpy(), fold=2) == "val"
    )
    np.testing.assert_array_equal(ds.stay_ids, stays["stay_id"].to_numpy()[rows])
    batch = ds.__getitems__(list(range(len(ds))))
    np.testing.assert_array_equal(batch["ehr"].numpy(), values[rows])
    np.testing.assert_array_equal(batch["ehr_mask"].numpy(), ~np.isnan(raw[rows]))
    columns = task_specs(tiny)["phenotype"].columns
    np.testing.assert_array_equal(batch["y"].numpy(), labels.select(columns).to_numpy()[rows])
    natural = stays["has_cxr"].to_numpy()[rows]
    np.testing.assert_array_equal(batch["has_cxr"].numpy(), natural)
    hours = stays["cxr_hours"].fill_null(0).to_numpy()[rows]
    np.testing.assert_array_equal(batch["cxr_hours"].numpy(), np.where(natural, hours, 0))


def test_images_are_center_cropped_normalized_and_zero_without_cxr(tiny, stays):
    ds = CarebenchDataset(tiny, task="mortality", split="train")
    batch = ds.__getitems__(list(range(len(ds))))
    has = batch["has_cxr"].numpy()
    assert has.any() and (~has).any()
    assert torch.all(batch["cxr"][~batch["has_cxr"]] == 0)
    images = np.load(tiny / "cxr.npy")
    first = int(np.flatnonzero(has)[0])
    index = stays.filter(pl.col("stay_id") == int(batch["stay_id"][first]))["cxr_index"].item()
    crop = images[index, 2:30, 2:30].astype(np.float32) / 255.0
    expected = (crop[None] - np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]) / np.array(
        IMAGENET_STD, dtype=np.float32
    )[:, None, None]
    np.testing.assert_allclose(batch["cxr"][first].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_image_size_resizes(tiny):
    ds = CarebenchDataset(tiny, task="mortality", split="train", image_size=16, augment=True)
    assert ds[0]["cxr"].shape == (3, 16, 16)


def test_splits_partition_stays_and_matched_cohort(tiny, stays):
    seen = []
    for split in ("train", "val", "test"):
        ds = CarebenchDataset(tiny, task="mortality", fold=1, split=split)
        seen.append(set(ds.stay_ids.tolist()))
        matched = CarebenchDataset(tiny, task="mortality", fold=1, split=split, cohort="matched")
        assert matched.has_cxr.all()
        assert set(matched.stay_ids.tolist()) == set(ds.stay_ids[ds.has_cxr].tolist())
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert set().union(*seen) == set(stays["stay_id"].to_list())
    subjects = dict(zip(stays["stay_id"].to_list(), stays["subject_id"].to_list(), strict=True))
    subject_sets = [{subjects[s] for s in split} for split in seen]
    assert not (subject_sets[0] & subject_sets[2] or subject_sets[1] & subject_sets[2])


def test_missingness_zeroes_images_and_hours(tiny):
    natural = CarebenchDataset(tiny, task="mortality", split="test")
    removed_all = CarebenchDataset(tiny, task="mortality", split="test", missingness="test_cxr_mcar_1.0")
    assert removed_all.setting == "test_cxr_mcar_1.0" and natural.setting == "natural"
    assert natural.has_cxr.any() and not removed_all.has_cxr.any()
    batch = removed_all.__getitems__(list(range(len(removed_all))))
    assert not batch["has_cxr"].any()
    assert torch.all(batch["cxr"] == 0) and torch.all(batch["cxr_hours"] == 0)
    assert not removed_all.attributes()["has_cxr"].any()
    half = CarebenchDataset(tiny, task="mortality", split="test", missingness="test_cxr_mnar_0.5", seed=3)
    assert half.has_cxr.sum() == natural.has_cxr.sum() - natural.has_cxr.sum() // 2
    # a test protocol leaves the train split alone
    train = CarebenchDataset(tiny, task="mortality", split="train", missingness="test_cxr_mcar_1.0")
    np.testing.assert_array_equal(
        train.has_cxr, CarebenchDataset(tiny, task="mortality", split="train").has_cxr
    )


def test_augmentation_only_in_train_and_seeded(tiny):
    plain = CarebenchDataset(tiny, task="mortality", split="train")
    augmented = CarebenchDataset(tiny, task="mortality", split="train", augment=True, seed=5)
    indices = list(np.flatnonzero(plain.has_cxr)[:6])
    reference = plain.__getitems__(indices)["cxr"]
    first = augmented.__getitems__(indices)["cxr"]
    assert not torch.allclose(first, reference)
    torch.testing.assert_close(augmented.__getitems__(indices)["cxr"], first)  # same seed, epoch, batch
    augmented.set_epoch(1)
    assert not torch.allclose(augmented.__getitems__(indices)["cxr"], first)
    for split in ("val", "test"):
        a = CarebenchDataset(tiny, task="mortality", split=split, augment=True)
        b = CarebenchDataset(tiny, task="mortality", split=split)
        positions = list(range(len(a)))
        torch.testing.assert_close(
            a.__getitems__(positions)["cxr"], b.__getitems__(positions)["cxr"], rtol=0, atol=0
        )


def test_identity_affine_equals_center_crop():
    images = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    identity = AugmentConfig(degrees=0.0, scale=(1.0, 1.0), translate=0.0)
    torch.testing.assert_close(
        prepare_images(images, image_size=28, augment=identity), prepare_images(images, image_size=28)
    )
    crop = AugmentConfig(mode="random_crop")
    out = prepare_images(images, image_size=28, augment=crop, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 28, 28) and torch.isfinite(out).all()


def test_make_loader_covers_each_row_once_and_shuffle_is_seeded(tiny):
    ds = CarebenchDataset(tiny, task="los", split="train")
    orders = []
    for _ in range(2):
        loader = make_loader(ds, batch_size=10, seed=11)
        orders.append(torch.cat([batch["stay_id"] for batch in loader]).tolist())
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == sorted(ds.stay_ids.tolist()) and orders[0] != sorted(orders[0])
    eval_order = torch.cat(
        [b["stay_id"] for b in make_loader(CarebenchDataset(tiny, task="los", split="test"), batch_size=4)]
    )
    assert eval_order.tolist() == sorted(eval_order.tolist())


def test_collate_and_state_round_trip(tiny):
    ds = CarebenchDataset(tiny, task="mortality", split="train")
    samples = [ds[i] for i in range(4)]
    stacked = CarebenchDataset.collate(samples)
    batch = ds.__getitems__([0, 1, 2, 3])
    for key in KEYS:
        torch.testing.assert_close(stacked[key], batch[key])
    assert CarebenchDataset.collate(batch) == batch
    clone = copy.deepcopy(ds)  # what a spawned worker receives: arrays reopened, not copied
    torch.testing.assert_close(clone.__getitems__([0, 1, 2, 3])["ehr"], batch["ehr"])


def test_attributes_align_with_stays(tiny, stays):
    ds = CarebenchDataset(tiny, task="mortality", split="test")
    attributes = ds.attributes()
    assert set(attributes) == {
        "sex",
        "age",
        "age_group",
        "race",
        "insurance",
        "admission_type",
        "has_cxr",
        "subject_id",
    }
    expected = stays.filter(pl.col("stay_id").is_in(ds.stay_ids.tolist()))
    np.testing.assert_array_equal(attributes["subject_id"], expected["subject_id"].to_numpy())
    np.testing.assert_array_equal(attributes["sex"], expected["sex"].to_numpy())
    age = expected["age"].to_numpy()
    groups = np.select([age < 40, age < 60, age < 80], ["[18,40)", "[40,60)", "[60,80)"], "[80,inf)")
    np.testing.assert_array_equal(attributes["age_group"].astype(str), groups)


def test_bad_arguments_raise(tiny):
    with pytest.raises(CarebenchDataError, match="unknown task"):
        CarebenchDataset(tiny, task="readmission")
    with pytest.raises(CarebenchDataError, match="cohort"):
        CarebenchDataset(tiny, task="mortality", cohort="paired")
    with pytest.raises(CarebenchDataError, match="split"):
        CarebenchDataset(tiny, task="mortality", split="holdout")
    with pytest.raises(CarebenchDataError, match="manifest not found"):
        CarebenchDataset(tiny / "stats", task="mortality")
    with pytest.raises(CarebenchDataError, match="already exists"):
        write_tiny_dataset(tiny)


def test_missing_image_file_is_an_error(tiny, tmp_path):
    copy_dir = tmp_path / "no-images"
    shutil.copytree(tiny, copy_dir)
    (copy_dir / "cxr.npy").unlink()
    with pytest.raises(CarebenchDataError, match=r"cxr\.npy not found"):
        CarebenchDataset(copy_dir, task="mortality")


def test_planted_signal_is_recoverable(tmp_path):
    path = write_tiny_dataset(tmp_path / "signal", n_stays=600, paired_fraction=1.0, image_size=16, seed=4)
    ds = CarebenchDataset(path, task="mortality", split="train")
    batch = ds.__getitems__(list(range(len(ds))))
    y = batch["y"][:, 0].numpy()
    heart_rate = ds.feature_names.index("heart_rate")
    mean_hr = batch["ehr"][:, :, heart_rate].mean(dim=1).numpy()
    brightness = batch["cxr"][:, 0].mean(dim=(1, 2)).numpy()
    assert roc_auc_score(y, mean_hr) > 0.75
    assert roc_auc_score(y, brightness) > 0.6


def test_worker_processes_give_identical_batches(tiny):
    ds = CarebenchDataset(tiny, task="mortality", split="train", augment=True, seed=2)
    single = list(make_loader(ds, batch_size=12, seed=5))
    workers = list(make_loader(ds, batch_size=12, seed=5, num_workers=2))
    assert len(single) == len(workers)
    for one, other in zip(single, workers, strict=True):
        for key in KEYS:
            torch.testing.assert_close(one[key], other[key], rtol=0, atol=0)


def test_fixed_scale_matches_torchvision_affine():
    import torchvision.transforms.v2.functional as tvf

    images = torch.zeros(1, 32, 32, dtype=torch.uint8)
    images[0, 10:22, 12:20] = 200
    ours = prepare_images(
        images, image_size=28, augment=AugmentConfig(degrees=0.0, scale=(1.1, 1.1), translate=0.0)
    )
    zoomed = tvf.affine(
        images.float().div(255).unsqueeze(0),
        angle=0.0,
        translate=[0, 0],
        scale=1.1,
        shear=[0.0, 0.0],
        interpolation=tvf.InterpolationMode.BILINEAR,
    )[..., 2:30, 2:30]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(ours, (zoomed - mean) / std, rtol=1e-5, atol=1e-5)


def test_sampling_grid_equals_affine_grid():
    from carebench_data.torch.transforms import _affine_thetas, _sampling_grid

    theta = _affine_thetas(5, 0.875, AugmentConfig(), torch.Generator().manual_seed(1)).float()
    expected = torch.nn.functional.affine_grid(theta, [5, 1, 24, 24], align_corners=False)
    torch.testing.assert_close(_sampling_grid(theta, 24), expected)
