"""Same seed → byte-identical files (A17); atomic output; configuration errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from carebench_data.errors import CarebenchDataError
from carebench_data.synthetic import SubgroupEffect, SyntheticConfig, SyntheticConfigError, generate_synthetic
from carebench_data.synthetic.generate import SyntheticOutputError


def digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    config = SyntheticConfig.tiny(seed=3, chunk_stays=64)
    first = digests(generate_synthetic(tmp_path / "a", config))
    second = digests(generate_synthetic(tmp_path / "b", config))
    assert first == second
    assert any(name.endswith(".jpg") for name in first)
    assert "mimiciv/2.2/icu/chartevents.csv.gz" in first
    assert "_synthetic_truth/stays.parquet" in first


def test_another_seed_changes_the_data(tmp_path: Path) -> None:
    first = digests(generate_synthetic(tmp_path / "a", SyntheticConfig.tiny(seed=1)))
    second = digests(generate_synthetic(tmp_path / "b", SyntheticConfig.tiny(seed=2)))
    assert first["mimiciv/2.2/icu/chartevents.csv.gz"] != second["mimiciv/2.2/icu/chartevents.csv.gz"]
    # Dictionaries do not depend on the seed.
    assert first["mimiciv/2.2/icu/d_items.csv.gz"] == second["mimiciv/2.2/icu/d_items.csv.gz"]


def test_non_empty_output_is_refused_and_nothing_is_left_behind(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SyntheticOutputError, match="not empty"):
        generate_synthetic(out, SyntheticConfig.tiny())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert issubclass(SyntheticOutputError, CarebenchDataError)


def test_empty_existing_directory_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    generate_synthetic(out, SyntheticConfig.tiny(n_stays=50))
    assert (out / "mimiciv/2.2/SYNTHETIC.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_stays": 5}, "n_stays"),
        ({"mimic_version": "1.4"}, "mimic_version"),
        ({"image_size": 32}, "image_size"),
        (
            {
                "subgroups": (
                    SubgroupEffect(attribute="zip", value="1", kind="z_shift", target="renal", amount=1.0),
                )
            },
            "zip",
        ),
        (
            {
                "subgroups": (
                    SubgroupEffect(attribute="sex", value="F", kind="z_shift", target="liver", amount=1.0),
                )
            },
            "liver",
        ),
    ],
)
def test_invalid_configuration_raises_a_clear_error(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SyntheticConfigError, match=message):
        SyntheticConfig(**overrides)  # type: ignore[arg-type]


def test_unknown_scale_is_rejected() -> None:
    with pytest.raises(SyntheticConfigError, match="unknown scale"):
        SyntheticConfig.preset("huge")
    assert SyntheticConfig.preset("perf10").n_stays == 7318
    assert SyntheticConfig.preset("tiny", seed=4).seed == 4
