"""The grid-cost benchmark runs end to end on CPU with tiny sizes and says that CPU numbers are not GPU-hours."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grid_cost.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grid_cost_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_seconds_extrapolates_full_epochs_and_predictions() -> None:
    module = load_script()
    result = {"seconds_per_step": 0.1, "seconds_per_eval_batch": 0.05}
    sizes = {"train": 160, "val": 32, "test": 40}
    # 2 epochs of (10 steps + 2 validation batches), then 2 validation + 7 × 3 test batches
    expected = 2 * (10 * 0.1 + 2 * 0.05) + (2 + 7 * 3) * 0.05
    assert module.run_seconds(result, sizes, epochs=2, test_settings=7) == pytest.approx(expected)


def test_grid_cost_runs_tiny_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script()
    module.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--models",
            "lstm",
            "--cohorts",
            "base",
            "--concurrency",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "grid_cost.json").read_text())
    assert report["device"] == "cpu" and report["profile"] == "quick" and report["concurrency"] == 2
    assert report["runs"] == 1 * 1 * 3 * 5 * 3
    (row,) = report["rows"]
    assert row["model"] == "lstm" and row["cohort"] == "base" and len(row["together"]) == 2
    for result in [row["alone"], *row["together"]]:
        for key in (
            "seconds_per_step",
            "seconds_per_eval_batch",
            "loader_samples_per_s",
            "model_samples_per_s",
        ):
            assert result[key] > 0 and math.isfinite(result[key])
        assert 0 < result["paired_fraction"] < 1
    sizes = report["split_sizes"]["base"]
    assert sizes["train"] > sizes["test"] > sizes["val"] > 0
    for epochs in (11, 20, 50):
        alone = module.run_seconds(row["alone"], sizes, epochs=epochs, test_settings=7)
        assert row[f"run_seconds_alone@{epochs}"] == pytest.approx(alone)
        assert report["grid_hours"][str(epochs)]["alone"] == pytest.approx(alone * 45 / 3600)
        assert report["grid_hours"][str(epochs)]["together"] > 0
    text = (tmp_path / "grid_cost.md").read_text()
    assert "NOT GPU-hours" in text and "CPU process-hours" in text
    assert "GPU-hours alone" not in text and "Ratio upstream" not in text
    assert text in capsys.readouterr().out
