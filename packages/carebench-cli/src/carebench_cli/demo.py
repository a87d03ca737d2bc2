"""The synthetic demo dataset behind `carebench run` without `--dataset`: generated and built once, cached.

The default run uses 10,000 stays, not the 2,000 of `SyntheticConfig.demo()` (data.md §13.1). About
4,300 of them enter the cohort and 170 test stays have a CXR; with 5,000 stays (about 85 such test
stays) the per-label fusion gain of Q1 on CHF and pneumonia did not separate from zero. Layout under the cache directory (`$CAREBENCH_CACHE`, default `./.carebench`)::

    demo-<scale>-<stays>-seed<seed>-v<generator version>r<revision>-<config hash>/raw/      synthetic raw tree
    demo-<scale>-<stays>-seed<seed>-v<generator version>r<revision>-<config hash>/dataset/  `build_dataset` output

The folder name carries everything that changes the data, so a cache of another size, seed, generator
version or revision, or generator config is never reused. Both steps write atomically, so an interrupted first run leaves no
half-built cache.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from carebench_cli.config import cache_dir

DEMO_SEED = 0
DEMO_STAYS = 10_000
MIMIC_IV_VERSION = "2.2"


def demo_paths(
    cache: Path | None = None, *, scale: str = "demo", n_stays: int = DEMO_STAYS, seed: int = DEMO_SEED
) -> tuple[Path, Path]:
    """(raw tree, dataset directory) of the cached demo of this preset, size, seed and generator version.

    The folder name ends with the first 8 hex digits of the generator config's hash, so a change of any
    generator default (e.g. the planted signal strengths) also gets a fresh cache.
    """
    import carebench_data
    from carebench_data.synthetic import GENERATOR_REVISION, SyntheticConfig

    config_hash = SyntheticConfig.preset(scale, seed=seed, n_stays=n_stays).config_hash()[:8]
    version = f"v{carebench_data.__version__}r{GENERATOR_REVISION}"
    name = f"demo-{scale}-{n_stays}-seed{seed}-{version}-{config_hash}"
    root = (cache or cache_dir()) / name
    return root / "raw", root / "dataset"


def ensure_demo_dataset(
    *,
    console: Console,
    cache: Path | None = None,
    scale: str = "demo",
    n_stays: int = DEMO_STAYS,
    seed: int = DEMO_SEED,
) -> Path:
    """The cached demo dataset directory; generates and builds it on first use (about a minute on 2 cores).

    Args:
        console: where progress is shown.
        cache: cache directory (default `cache_dir()`).
        scale: synthetic preset (`demo`; `tiny` for tests).
        n_stays: ICU stays to generate (overrides the preset's size).
        seed: generator seed.

    Returns:
        The dataset directory (DESIGN §1).
    """
    from carebench_data.build import build_dataset
    from carebench_data.config import BuildConfig
    from carebench_data.synthetic import SyntheticConfig, generate_synthetic

    raw, dataset = demo_paths(cache, scale=scale, n_stays=n_stays, seed=seed)
    if (dataset / "manifest.json").is_file():
        return dataset
    console.print(
        f"first run: generating the synthetic demo dataset ({n_stays:,} stays) under {raw.parent}"
        " (cached for next time)"
    )
    with Progress(
        TextColumn("[bold]{task.description:<18}"),
        BarColumn(bar_width=32),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        if not (raw / "mimiciv" / MIMIC_IV_VERSION).is_dir():
            generating = progress.add_task("synthetic raw tree", total=None)
            generate_synthetic(
                raw,
                SyntheticConfig.preset(scale, seed=seed, n_stays=n_stays),
                progress=lambda done, total: progress.update(generating, completed=done, total=total),
            )
        building = progress.add_task("build dataset", total=None)
        build_dataset(
            BuildConfig(
                mimic_iv=raw / "mimiciv" / MIMIC_IV_VERSION,
                mimic_cxr=raw / "mimic-cxr-jpg" / "2.0.0",
                out=dataset,
            ),
            progress=lambda done, total: progress.update(building, completed=done, total=total),
        )
    return dataset
