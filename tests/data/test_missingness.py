from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carebench_data.missingness import (
    MissingnessError,
    acuity_proxy,
    apply_missingness,
    apply_protocol,
    parse_setting,
    rank_scores,
    setting_name,
)
from carebench_data.splits import unit_hash

N = 400
STAY_IDS = np.arange(30000000, 30000000 + N, dtype=np.int64)


@pytest.fixture
def has_cxr():
    return np.random.default_rng(1).random(N) < 0.3


def test_parse_grammar():
    assert parse_setting("natural") == ()
    assert parse_setting(()) == ()
    (mcar,) = parse_setting("test_cxr_mcar_0.25")
    assert (mcar.kind, mcar.splits, mcar.rate) == ("mcar", ("test",), Fraction(1, 4))
    (drop,) = parse_setting("trainval_cxr_drop_0.3")
    assert drop.splits == ("train", "val") and drop.rate == Fraction(3, 10)
    (subgroup,) = parse_setting("test_cxr_subgroup_race=BLACK/AFRICAN AMERICAN_0.5")
    assert subgroup.predicate.column == "race" and subgroup.predicate.value == "BLACK/AFRICAN AMERICAN"
    (age,) = parse_setting("test_cxr_subgroup_age>=65_1.0")
    assert (age.predicate.column, age.predicate.op, age.predicate.value, age.rate) == ("age", ">=", 65.0, 1)
    both = parse_setting("train_cxr_drop_0.3+test_cxr_mnar_0.5")
    assert [p.kind for p in both] == ["drop", "mnar"]
    assert setting_name(both) == "train_cxr_drop_0.3+test_cxr_mnar_0.5"
    assert setting_name(parse_setting(["train_cxr_drop_0.3", "test_cxr_mcar_1"])) == (
        "train_cxr_drop_0.3+test_cxr_mcar_1"
    )
    assert setting_name(()) == "natural"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("test_cxr_mcar_1.5", r"\[0, 1\]"),
        ("test_cxr_mcar_x", "decimal"),
        ("train_cxr_mnar_0.5", "applies as test_cxr_mnar"),
        ("test_cxr_drop_0.5", "applies as"),
        ("test_cxr_subgroup_height=3_0.5", "predicate"),
        ("test_cxr_subgroup_age=65_0.5", "predicate"),
        ("mcar_0.5", "unknown missingness setting"),
        ("natural+test_cxr_mcar_0.5", "cannot be combined"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(MissingnessError, match=message):
        parse_setting(text)


def test_rank_is_the_spec_hash():
    ranks = rank_scores(STAY_IDS[:3], protocol="mcar", seed=7)
    assert ranks.tolist() == [unit_hash(f"carebench:miss:mcar:7:{s}") for s in STAY_IDS[:3]]


def removed(before, after):
    assert not np.any(after & ~before), "a transform never adds a CXR"
    return set(np.flatnonzero(before & ~after))


def test_mcar_counts_deterministic_and_lowest_ranked(has_cxr):
    (protocol,) = parse_setting("test_cxr_mcar_0.5")
    after = apply_protocol(has_cxr, protocol, split="test", stay_ids=STAY_IDS, seed=3)
    m = int(has_cxr.sum())
    assert len(removed(has_cxr, after)) == m // 2
    again = apply_protocol(has_cxr, protocol, split="test", stay_ids=STAY_IDS, seed=3)
    np.testing.assert_array_equal(after, again)
    other_seed = apply_protocol(has_cxr, protocol, split="test", stay_ids=STAY_IDS, seed=4)
    assert removed(has_cxr, other_seed) != removed(has_cxr, after)
    ranks = rank_scores(STAY_IDS, protocol="mcar", seed=3)
    assert ranks[list(removed(has_cxr, after))].max() < ranks[after].min()


def test_rates_use_floor_of_r_times_m():
    has = np.zeros(N, dtype=bool)
    has[:100] = True
    for rate, expected in [("0.29", 29), ("0.7", 70), ("0.333", 33), ("0.999", 99)]:
        after = apply_missingness(
            has, parse_setting(f"test_cxr_mcar_{rate}"), split="test", stay_ids=STAY_IDS, seed=0
        )
        assert 100 - after.sum() == expected


@pytest.mark.parametrize("kind", ["mcar", "mnar"])
def test_nested_in_rate_and_edge_cases(has_cxr, kind):
    rng = np.random.default_rng(0)
    acuity = (rng.integers(0, 9, N).astype(np.int16), rng.integers(0, 50, N).astype(np.int32))
    previous = set()
    for rate in ["0", "0.25", "0.5", "0.75", "1.0"]:
        after = apply_missingness(
            has_cxr,
            parse_setting(f"test_cxr_{kind}_{rate}"),
            split="test",
            stay_ids=STAY_IDS,
            seed=1,
            acuity=acuity,
        )
        gone = removed(has_cxr, after)
        assert previous <= gone
        previous = gone
        if rate == "0":
            np.testing.assert_array_equal(after, has_cxr)
        if rate == "1.0":
            assert not after.any()


def test_protocol_only_touches_its_split(has_cxr):
    protocols = parse_setting("train_cxr_drop_0.5+test_cxr_mcar_1")
    val = apply_missingness(has_cxr, protocols, split="val", stay_ids=STAY_IDS, seed=0)
    np.testing.assert_array_equal(val, has_cxr)
    train = apply_missingness(has_cxr, protocols, split="train", stay_ids=STAY_IDS, seed=0)
    assert len(removed(has_cxr, train)) == int(has_cxr.sum()) // 2
    test = apply_missingness(has_cxr, protocols, split="test", stay_ids=STAY_IDS, seed=0)
    assert not test.any()
    trainval = parse_setting("trainval_cxr_drop_0.5")
    assert apply_missingness(has_cxr, trainval, split="val", stay_ids=STAY_IDS, seed=0).sum() < has_cxr.sum()


def test_mnar_removes_lowest_acuity_first(has_cxr):
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 9, N).astype(np.int16)
    hours = rng.integers(0, 5, N).astype(np.int32)
    (protocol,) = parse_setting("test_cxr_mnar_0.4")
    after = apply_protocol(has_cxr, protocol, split="test", stay_ids=STAY_IDS, seed=2, acuity=(scores, hours))
    gone = np.array(sorted(removed(has_cxr, after)))
    kept = np.flatnonzero(after)
    assert gone.size == int(0.4 * has_cxr.sum())
    rank = rank_scores(STAY_IDS, protocol="mnar", seed=2)
    key = lambda i: (scores[i], hours[i], rank[i])  # noqa: E731
    assert max(key(i) for i in gone) < min(key(i) for i in kept)
    assert scores[gone].max() <= scores[kept].min()
    with pytest.raises(MissingnessError, match="acuity"):
        apply_protocol(has_cxr, protocol, split="test", stay_ids=STAY_IDS, seed=2)


def test_subgroup_only_inside_predicate(has_cxr):
    rng = np.random.default_rng(2)
    attributes = {"sex": rng.choice(["M", "F"], N), "age": rng.integers(18, 95, N).astype(float)}
    after = apply_missingness(
        has_cxr,
        parse_setting("test_cxr_subgroup_sex=F_0.5"),
        split="test",
        stay_ids=STAY_IDS,
        seed=0,
        attributes=attributes,
    )
    gone = np.array(sorted(removed(has_cxr, after)))
    assert np.all(attributes["sex"][gone] == "F")
    assert gone.size == int((has_cxr & (attributes["sex"] == "F")).sum()) // 2
    old = apply_missingness(
        has_cxr,
        parse_setting("test_cxr_subgroup_age>=65_1"),
        split="test",
        stay_ids=STAY_IDS,
        seed=0,
        attributes=attributes,
    )
    np.testing.assert_array_equal(old, has_cxr & (attributes["age"] < 65))
    with pytest.raises(MissingnessError, match="race"):
        apply_missingness(
            has_cxr,
            parse_setting("test_cxr_subgroup_race=ASIAN_1"),
            split="test",
            stay_ids=STAY_IDS,
            seed=0,
            attributes=attributes,
        )


def test_acuity_proxy_flags():
    names = ["heart_rate", "mbp", "sbp", "gcs_total", "gcs_motor", "ph", "spo2", "fio2"]
    ehr = np.full((4, 48, len(names)), np.nan, dtype=np.float32)
    col = {n: i for i, n in enumerate(names)}
    ehr[0, :, col["heart_rate"]] = 80  # calm: nothing fires
    ehr[1, 3, col["heart_rate"]] = 130  # tachycardia once
    ehr[1, 4, col["heart_rate"]] = 120  # ... twice
    ehr[1, 10, col["mbp"]] = 60  # hypotension once
    ehr[2, 0, col["gcs_motor"]] = 4  # altered mentation without a total
    ehr[2, 1, col["gcs_total"]] = 15
    ehr[2, 1, col["gcs_motor"]] = 4  # total present and normal: motor ignored in this hour
    ehr[3, :, col["ph"]] = 7.1  # acidemia all 48 hours
    ehr[3, 0, col["fio2"]] = 0.6  # hypoxemia
    acuity, hours = acuity_proxy(ehr, names)
    assert acuity.tolist() == [0, 2, 1, 2]
    assert hours.tolist() == [0, 3, 1, 49]
    chunked = acuity_proxy(ehr, names, chunk_stays=3)
    np.testing.assert_array_equal(chunked[0], acuity)
    np.testing.assert_array_equal(chunked[1], hours)


def test_absent_features_never_fire(caplog):
    ehr = np.full((2, 48, 1), 300.0, dtype=np.float32)
    acuity, hours = acuity_proxy(ehr, ["heart_rate"])
    assert acuity.tolist() == [1, 1] and hours.tolist() == [48, 48]
    assert "absent" in caplog.text


@settings(max_examples=60, deadline=None)
@given(
    flags=st.lists(st.booleans(), min_size=1, max_size=60),
    low=st.integers(0, 100),
    high=st.integers(0, 100),
    seed=st.integers(0, 10_000),
)
def test_property_nested_and_exact_count(flags, low, high, seed):
    has = np.array(flags)
    ids = STAY_IDS[: has.size]
    low, high = sorted((low, high))
    small = apply_missingness(
        has, parse_setting(f"test_cxr_mcar_{low / 100}"), split="test", stay_ids=ids, seed=seed
    )
    large = apply_missingness(
        has, parse_setting(f"test_cxr_mcar_{high / 100}"), split="test", stay_ids=ids, seed=seed
    )
    assert removed(has, small) <= removed(has, large)
    assert len(removed(has, large)) == int(Fraction(str(high / 100)) * int(has.sum()))
