"""`images_on_device`: uint8 images in the batch, finished (cropped, augmented, normalized) by `finish_batch`."""

import numpy as np
import pytest
import torch

from carebench_data.testing import write_tiny_dataset
from carebench_data.torch import AugmentConfig, CarebenchDataset, augment_thetas, image_pixels, make_loader


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(
        tmp_path_factory.mktemp("device-images") / "tiny", n_stays=96, paired_fraction=0.4, image_size=40
    )


@pytest.mark.parametrize(
    ("split", "augment"),
    [("train", False), ("train", True), ("train", AugmentConfig(mode="random_crop")), ("test", True)],
)
def test_finished_batch_equals_the_default_batch(tiny, split, augment):
    kwargs = {"task": "phenotype", "split": split, "augment": augment, "seed": 7, "image_size": 24}
    default = CarebenchDataset(tiny, **kwargs)
    stored = CarebenchDataset(tiny, images_on_device=True, **kwargs)
    for dataset in (default, stored):
        dataset.set_epoch(3)
    # a mix of rows with and without a CXR, in an order that is not the image order
    positions = np.random.default_rng(0).permutation(len(default))[:20].tolist()
    expected = default.__getitems__(positions)
    raw = stored.__getitems__(positions)
    n_images = int(expected["has_cxr"].sum())
    assert 0 < n_images < len(positions)
    assert "cxr" not in raw and raw["cxr_images"].dtype == torch.uint8
    assert raw["cxr_images"].shape == (n_images, 40, 40)
    assert ("cxr_theta" in raw) == (split == "train" and augment is not False)
    finished = stored.finish_batch(raw)
    assert set(finished) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(finished[key], value, rtol=0, atol=0)


def test_batch_without_images_and_single_samples(tiny):
    stored = CarebenchDataset(tiny, task="mortality", split="train", augment=True, images_on_device=True)
    default = CarebenchDataset(tiny, task="mortality", split="train", augment=True)
    without = np.flatnonzero(~stored.has_cxr)[:5].tolist()
    finished = stored.finish_batch(stored.__getitems__(without))
    assert finished["cxr"].shape == (5, 3, stored.image_size, stored.image_size)
    assert not finished["cxr"].any()
    first_with = int(np.flatnonzero(stored.has_cxr)[0])
    torch.testing.assert_close(stored[first_with]["cxr"], default[first_with]["cxr"], rtol=0, atol=0)
    # a batch that is not of this mode passes through unchanged
    plain = default.__getitems__([0, 1])
    assert stored.finish_batch(plain).keys() == plain.keys()


def test_worker_processes_ship_the_same_stored_batches(tiny):
    stored = CarebenchDataset(
        tiny, task="mortality", split="train", augment=True, seed=2, images_on_device=True
    )
    single = [stored.finish_batch(batch) for batch in make_loader(stored, batch_size=12, seed=5)]
    workers = [
        stored.finish_batch(batch) for batch in make_loader(stored, batch_size=12, seed=5, num_workers=2)
    ]
    assert len(single) == len(workers)
    for one, other in zip(single, workers, strict=True):
        for key in one:
            torch.testing.assert_close(one[key], other[key], rtol=0, atol=0)


def test_given_draws_replace_the_generator():
    images = torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8)
    augment = AugmentConfig()
    drawn = image_pixels(images, image_size=24, augment=augment, generator=torch.Generator().manual_seed(9))
    theta = augment_thetas(4, image_side=32, augment=augment, generator=torch.Generator().manual_seed(9))
    assert theta.shape == (4, 2, 3) and theta.dtype == torch.float64
    torch.testing.assert_close(image_pixels(images, image_size=24, augment=augment, theta=theta), drawn)
