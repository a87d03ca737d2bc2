import io
import json

from rich.console import Console

import carebench_data.synthetic as synthetic
from carebench_cli.config import CACHE_ENV, cache_dir
from carebench_cli.demo import DEMO_STAYS, demo_paths, ensure_demo_dataset


def test_demo_dataset_is_built_once_then_reused(tmp_path, monkeypatch):
    console = Console(file=io.StringIO())
    dataset = ensure_demo_dataset(console=console, cache=tmp_path / "cache", scale="tiny", n_stays=120)
    raw, expected = demo_paths(tmp_path / "cache", scale="tiny", n_stays=120)
    assert dataset == expected
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "synthetic"
    assert manifest["source"]["synthetic"]["row_counts"]["icu/icustays"] == 120
    assert (raw / "mimiciv" / "2.2").is_dir()
    stamp = (dataset / "manifest.json").stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("the cached demo must not be generated again")

    monkeypatch.setattr(synthetic, "generate_synthetic", refuse)
    assert (
        ensure_demo_dataset(console=console, cache=tmp_path / "cache", scale="tiny", n_stays=120) == dataset
    )
    assert (dataset / "manifest.json").stat().st_mtime_ns == stamp


def test_demo_cache_path_names_size_seed_and_generator_version(tmp_path):
    import carebench_data
    from carebench_data.synthetic import SyntheticConfig

    default = demo_paths(tmp_path)[1]
    config_hash = SyntheticConfig.demo(n_stays=DEMO_STAYS).config_hash()[:8]
    assert (
        default
        == tmp_path
        / f"demo-demo-{DEMO_STAYS}-seed0-v{carebench_data.__version__}r{synthetic.GENERATOR_REVISION}-{config_hash}"
        / "dataset"
    )
    others = {
        demo_paths(tmp_path, n_stays=2000)[1],
        demo_paths(tmp_path, seed=1)[1],
        demo_paths(tmp_path, scale="tiny")[1],
    }
    assert default not in others and len(others) == 3


def test_cache_directory_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert str(cache_dir()) == ".carebench"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert demo_paths()[1].parent.parent == tmp_path
