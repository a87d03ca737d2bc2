"""A run's trained weights depend on its seed only, not on what the process drew before."""

from pathlib import Path

import torch
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_data.testing import write_tiny_dataset


def _weights(out: Path, model: str) -> bytes:
    (path,) = out.glob(f"{model}-*/model.safetensors")
    return path.read_bytes()


def test_run_weights_do_not_depend_on_what_the_process_drew_before(tmp_path: Path) -> None:
    dataset = write_tiny_dataset(tmp_path / "dataset", n_stays=40, image_size=16)
    outs = []
    for name, models, earlier_draws in (("alone", "lstm", 7), ("after", "latefusion,lstm", 3)):
        torch.rand(earlier_draws)
        out = tmp_path / name
        result = CliRunner().invoke(
            app,
            [
                "run", "--dataset", str(dataset), "-m", models, "-t", "mortality",
                "--profile", "quick", "--device", "cpu", "--out", str(out), "--no-report",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outs.append(out)
    assert _weights(outs[0], "lstm") == _weights(outs[1], "lstm")
