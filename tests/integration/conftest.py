"""Shared fixtures of the composed-pipeline tests: one tiny benchmark dataset per session."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_data.testing import write_tiny_dataset

MODELS = ("lstm", "latefusion")
"""The models of the reduced grid that `finished_store` runs."""


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 240-stay benchmark dataset directory with planted mortality signal, half the stays with a CXR."""
    return write_tiny_dataset(
        tmp_path_factory.mktemp("integration") / "dataset",
        n_stays=240,
        paired_fraction=0.5,
        image_size=64,
        seed=3,
    )


def write_run_config(
    path: Path, dataset: Path, out: Path, *, models, tasks, seeds=(42,), epochs=1, n_boot=60, n_perm=99
):
    """A reduced grid: the given models and tasks, one fold, `epochs` epochs, small bootstrap."""
    lines = [
        f'dataset = "{dataset}"',
        f'out = "{out}"',
        f"models = {list(models)!r}".replace("'", '"'),
        f"tasks = {list(tasks)!r}".replace("'", '"'),
        f"seeds = {list(seeds)!r}",
        "[train]",
        f"max_epochs = {epochs}",
        "min_epochs = 1",
        "batch_size = 32",
        "eval_batch_size = 64",
        "[report]",
        f"n_boot = {n_boot}",
        f"n_perm = {n_perm}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def finished_store(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`carebench run` on a reduced grid (lstm and latefusion × mortality and LoS, one epoch) with its report.

    Returns:
        (the run store, the command's output).
    """
    root = tmp_path_factory.mktemp("e2e")
    config = write_run_config(
        root / "run.toml", tiny_dataset, root / "runs", models=MODELS, tasks=("mortality", "los")
    )
    result = CliRunner().invoke(app, ["run", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "runs", result.output
