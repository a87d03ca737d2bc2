import hashlib

import numpy as np
import pytest

from carebench_data.splits import SplitError, fold_parts, split_of, unit_hash, unit_hashes


def reference_unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16) / 2**64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("carebench:part:v1:10000032", 0.7859492348783308),
        ("carebench:val:v1:0:10000032", reference_unit_hash("carebench:val:v1:0:10000032")),
        ("", 0.8894159948913374),
    ],
)
def test_unit_hash_pinned_values(text, expected):
    assert unit_hash(text) == expected
    assert unit_hash(text) == reference_unit_hash(text)


def test_unit_hashes_equal_scalar_version():
    texts = [f"carebench:part:v1:{i}" for i in range(10000000, 10000500)]
    np.testing.assert_array_equal(unit_hashes(texts), [unit_hash(t) for t in texts])


def test_fold_parts_pinned_and_stable():
    subjects = np.array([10000032, 10000980, 10001217, 10000032])
    parts = fold_parts(subjects)
    assert parts.dtype == np.int8
    assert parts.tolist() == [3, 4, 1, 3]
    assert parts.tolist() == [int(5 * unit_hash(f"carebench:part:v1:{s}")) for s in subjects]


def test_salt_changes_assignment():
    subjects = np.arange(10000000, 10000200)
    assert (fold_parts(subjects) != fold_parts(subjects, salt="other")).mean() > 0.6


def test_split_definition_matches_spec_rule():
    subjects = np.arange(10000000, 10002000)
    parts = fold_parts(subjects)
    for fold in range(5):
        splits = split_of(subjects, parts, fold=fold)
        for subject, part, split in zip(subjects[:300], parts[:300], splits[:300], strict=True):
            if part == fold:
                expected = "test"
            elif unit_hash(f"carebench:val:v1:{fold}:{subject}") < 1 / 8:
                expected = "val"
            else:
                expected = "train"
            assert split == expected


def test_proportions_and_patient_disjointness():
    rng = np.random.default_rng(0)
    subjects = rng.choice(np.arange(10000000, 19999999), size=20000, replace=False)
    # three stays for some subjects: a subject's stays must share a split
    stays = np.concatenate([subjects, subjects[:5000], subjects[:2000]])
    parts = fold_parts(stays)
    assert np.bincount(parts, minlength=5).min() > 0
    test_sets = []
    for fold in range(5):
        splits = split_of(stays, parts, fold=fold)
        per_subject = {}
        for subject, split in zip(stays, splits, strict=True):
            assert per_subject.setdefault(subject, split) == split
        unique_splits = np.array([per_subject[s] for s in subjects])
        fractions = [(unique_splits == name).mean() for name in ("train", "val", "test")]
        np.testing.assert_allclose(fractions, [0.70, 0.10, 0.20], atol=0.012)
        groups = {name: set(subjects[unique_splits == name]) for name in ("train", "val", "test")}
        assert not groups["train"] & groups["val"]
        assert not groups["train"] & groups["test"]
        assert not groups["val"] & groups["test"]
        test_sets.append(groups["test"])
    # the five test splits partition the subjects
    assert sum(len(t) for t in test_sets) == len(subjects)
    assert set().union(*test_sets) == set(subjects)


def test_bad_inputs_raise():
    subjects = np.array([10000032, 10000980])
    with pytest.raises(SplitError, match="integers"):
        fold_parts(np.array([1.5, 2.0]))
    with pytest.raises(SplitError, match="fold"):
        split_of(subjects, fold_parts(subjects), fold=5)
    with pytest.raises(SplitError, match="shape"):
        split_of(subjects, np.array([0]), fold=0)
    with pytest.raises(SplitError, match=r"0\.\.4"):
        split_of(subjects, np.array([0, 7]), fold=0)


def test_empty_input():
    empty = np.array([], dtype=np.int64)
    assert fold_parts(empty).shape == (0,)
    assert split_of(empty, fold_parts(empty), fold=1).shape == (0,)
