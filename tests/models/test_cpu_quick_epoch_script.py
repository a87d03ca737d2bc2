"""The quick-epoch CPU benchmark runs end to end on a few rows (smoke test)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_quick_epoch.py"


def test_cpu_quick_epoch_script_reports_ratios_to_latefusion(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("cpu_quick_epoch_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--models", "smil", "aug", "--rows", "40", "--rounds", "1", "--image-size", "32"]
    module.main([*argv, "--task-defaults", "los", "full", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "cpu_quick_epoch.json").read_text())
    rows = {row["model"]: row for row in report["results"]}
    assert list(rows) == ["latefusion", "smil", "aug"]  # the reference first, measured in the same run
    assert rows["latefusion"]["ratio_to_reference"] == 1.0
    for row in rows.values():
        assert row["seconds"] > 0
        assert row["ratio_to_reference"] == pytest.approx(row["seconds"] / rows["latefusion"]["seconds"])
    assert rows["smil"]["overrides"]["inner_steps"] == 3  # the bundled los/full row
    assert (tmp_path / "cpu_quick_epoch.md").read_text().count("\n| ") == 1 + len(rows)
