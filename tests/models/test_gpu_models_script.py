"""The GPU benchmark script runs end to end on CPU with tiny sizes (CI smoke test)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_models.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_models_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_script_runs_tiny_on_cpu(tmp_path: Path) -> None:
    module = load_script()
    module.main(
        [
            "--device",
            "cpu",
            "--tiny",
            "--models",
            "lstm",
            "resnet",
            "--batch-sizes",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "gpu_models.json").read_text())
    rows = report["rows"]
    assert [(row["model"], row["mode"]) for row in rows] == [
        (model, mode) for mode in ("fp32", "bf16_cl") for model in ("smallcnn (reference)", "lstm", "resnet")
    ]
    for row in rows:
        assert row["status"] == "ok" and row["samples_per_s"] > 0 and row["batch_size"] == 2
    for mode in ("fp32", "bf16_cl"):
        reference, *models = [row for row in rows if row["mode"] == mode]
        for row in models:
            assert row["ratio_to_reference"] == pytest.approx(
                row["samples_per_s"] / reference["samples_per_s"]
            )
    assert rows[1]["parameters"] == 21_561  # quick lstm at F 27, K 25
    table = (tmp_path / "gpu_models.md").read_text()
    assert table.count("\n| ") == 1 + len(rows)


def test_gpu_benchmark_script_covers_models_with_custom_steps_and_hooks(tmp_path: Path) -> None:
    # Two optimisers (aug), per-parameter regularisation (inforeg), a batch graph (m3care) and
    # priors from `prepare` plus an inner loop (smil) all run through the script's step.
    module = load_script()
    names = ["aug", "inforeg", "m3care", "smil"]
    report = module.main(
        ["--device", "cpu", "--tiny", "--models", *names, "--batch-sizes", "2", "--out", str(tmp_path)]
    )
    rows = [row for row in report["rows"] if row["model"] in names]
    assert [(row["model"], row["mode"]) for row in rows] == [
        (model, mode) for mode in ("fp32", "bf16_cl") for model in names
    ]
    for row in rows:
        assert row["status"] == "ok" and row["samples_per_s"] > 0 and row["parameters"] > 0
        assert row["ratio_to_reference"] is not None


def test_tiny_smoke_run_covers_the_missing_modality_models_with_their_targets(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_models_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    backbones = {"healnet": 1, "flexmoe": 1, "drfuse": 2, "umse": 0, "shaspec": 2}
    module.main(
        ["--device", "cpu", "--tiny", "--models", *backbones, "--batch-sizes", "2", "--out", str(tmp_path)]
    )
    rows = json.loads((tmp_path / "gpu_models.json").read_text())["rows"]
    for mode in ("fp32", "bf16_cl"):
        reference, *models = [row for row in rows if row["mode"] == mode]
        assert reference["step_time_ratio"] == 1.0 and reference["target_step_time_ratio"] is None
        assert [row["model"] for row in models] == list(backbones)
        for row in models:
            assert row["status"] == "ok" and row["samples_per_s"] > 0
            assert row["cnn_backbones"] == backbones[row["model"]]
            assert row["target_step_time_ratio"] == 1.5 * max(1, backbones[row["model"]])
            assert row["step_time_ratio"] == pytest.approx(1 / row["ratio_to_reference"])
            assert row["meets_target"] == (row["step_time_ratio"] <= row["target_step_time_ratio"])
    table = (tmp_path / "gpu_models.md").read_text()
    assert "(≤ 3" in table and "(≤ 1.5" in table
