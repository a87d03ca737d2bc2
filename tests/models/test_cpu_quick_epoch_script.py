"""The CPU quick-epoch benchmark runs end to end on a few stays (smoke test)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_quick_epoch.py"


def test_cpu_quick_epoch_benchmark_reports_ratios_to_latefusion(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("cpu_quick_epoch_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--models", "umse", "drfuse", "--rows", "40", "--rounds", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "cpu_quick_epoch.json").read_text())
    rows = {row["model"]: row for row in report["rows"]}
    assert [row["model"] for row in report["rows"]] == ["latefusion", "umse", "drfuse"]
    assert rows["latefusion"]["cpu_ratio"] == 1.0 and rows["latefusion"]["wall_ratio"] == 1.0
    assert [rows[name]["cnn_backbones"] for name in ("latefusion", "umse", "drfuse")] == [1, 0, 2]
    assert [rows[name]["target_ratio"] for name in ("latefusion", "umse", "drfuse")] == [1.5, 1.5, 2.5]
    for row in rows.values():
        assert row["cpu_s"] > 0 and row["wall_s"] > 0
        assert row["cpu_ratio"] == pytest.approx(row["cpu_s"] / rows["latefusion"]["cpu_s"])
        assert row["meets_target"] == (row["cpu_ratio"] <= row["target_ratio"])
    table = (tmp_path / "cpu_quick_epoch.md").read_text()
    assert table.count("\n| ") == 1 + len(rows)
