"""Typed TOML values: every configuration value is checked against its dataclass field's type."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_data.config import BuildConfig, ConfigError
from carebench_data.testing.raw import write_raw_tree
from carebench_data.typed_toml import ConfigValueError, check_value, describe, load_dataclass

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class Inner:
    rate: float = 0.5
    mode: Literal["icu", "hospital"] = "icu"


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str = "x"
    count: int = 1
    flag: bool = False
    path: Path | None = None
    views: tuple[str, ...] = ("AP",)
    pair: tuple[float, float] = (0.9, 0.999)
    table: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"flag": "false"}, 'flag must be a boolean (true or false), got "false" (a string)'),
        ({"flag": 0}, "flag must be a boolean (true or false), got 0 (an integer)"),
        ({"count": 2.0}, "count must be an integer, got 2.0 (a float)"),
        ({"count": True}, "count must be an integer, got true (a boolean)"),
        ({"count": "ten"}, 'count must be an integer, got "ten" (a string)'),
        ({"name": True}, "name must be a string, got true (a boolean)"),
        ({"name": 3}, "name must be a string, got 3 (an integer)"),
        ({"path": 5}, "path must be a path (a string), got 5 (an integer)"),
        ({"views": "AP"}, 'views must be an array (each item a string), got "AP" (a string)'),
        ({"views": ["AP", 1]}, "views[1] must be a string, got 1 (an integer)"),
        ({"pair": [0.9]}, "pair must be an array of 2 items (a number, a number), got [0.9] (an array)"),
        ({"table": [1]}, "table must be a table, got [1] (an array)"),
        ({"inner": {"rate": "lots"}}, 'inner.rate must be a number, got "lots" (a string)'),
        ({"inner": {"mode": "ward"}}, 'inner.mode must be one of "icu", "hospital", got "ward" (a string)'),
        ({"inner": 3}, "inner must be a table, got 3 (an integer)"),
        ({"inner": {"rte": 1}}, "unknown key(s) 'inner.rte' in [inner]; valid keys: mode, rate"),
        (
            {"cuont": 1},
            "unknown key(s) 'cuont'; valid keys: count, flag, inner, name, pair, path, table, views",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_key_type_and_value(data, message):
    with pytest.raises(ConfigValueError) as info:
        load_dataclass(Outer, data)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_values_are_converted_as_the_field_says():
    loaded = load_dataclass(
        Outer,
        {
            "count": 3,
            "path": "a/b",
            "views": ["PA"],
            "pair": [1, 0.5],
            "inner": {"rate": 1, "mode": "hospital"},
        },
    )
    assert loaded.path == Path("a/b") and loaded.views == ("PA",) and loaded.pair == (1.0, 0.5)
    assert loaded.inner == Inner(rate=1.0, mode="hospital") and isinstance(loaded.inner.rate, float)
    assert check_value(None, int | None, key="k") is None
    assert check_value([1, 2], list[int], key="k") == [1, 2]
    assert describe(tuple[int, ...]) == "an array (each item an integer)"


def test_build_config_types(tmp_path):
    base = {"mimic_iv": "x", "out": "y", "mimic_cxr": "z"}
    with pytest.raises(
        ConfigError, match=r'cohort.single_careunit must be a boolean \(true or false\), got "false"'
    ):
        BuildConfig.from_dict({**base, "cohort": {"single_careunit": "false"}})
    with pytest.raises(ConfigError, match=r'build\.max_bad_row_fraction must be a number, got "lots"'):
        BuildConfig.from_dict({**base, "build": {"max_bad_row_fraction": "lots"}})
    with pytest.raises(ConfigError, match=r"cxr\.image_size must be an integer, got 256\.5"):
        BuildConfig.from_dict({**base, "cxr": {"image_size": 256.5}})
    config = BuildConfig.from_dict({**base, "cxr": {"views": ["pa"], "max_failure_fraction": 1}})
    assert config.cxr.views == ("PA",) and config.cxr.max_failure_fraction == 1.0


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        (
            "cohort",
            'single_careunit = "false"',
            'cohort.single_careunit must be a boolean (true or false), got "false"',
        ),
        ("build", 'max_bad_row_fraction = "lots"', 'build.max_bad_row_fraction must be a number, got "lots"'),
        ("cohort", "min_age = 18.5", "cohort.min_age must be an integer, got 18.5 (a float)"),
        ("bogus", "x = 1", "unknown key(s) 'bogus'"),
    ],
)
def test_build_cli_rejects_mistyped_toml_before_building(tmp_path, section, line, expected):
    truth = write_raw_tree(tmp_path / "raw")
    config = tmp_path / "build.toml"
    config.write_text(f"[cxr]\nworkers = 1\n[{section}]\n{line}\n")
    out = tmp_path / "dataset"
    result = CliRunner().invoke(
        app,
        [
            *("data", "build", "--mimic-iv", str(truth.mimic_iv), "--mimic-cxr", str(truth.mimic_cxr)),
            *("--config", str(config), "--out", str(out)),
        ],
    )
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_mistyped_rule_no_longer_changes_the_cohort(tmp_path):
    """`single_careunit = "false"` used to switch the rule on; `false` keeps every stay."""
    truth = write_raw_tree(tmp_path / "raw")
    config = tmp_path / "build.toml"
    config.write_text("[cxr]\nworkers = 1\nmax_failure_fraction = 0.5\n[cohort]\nsingle_careunit = false\n")
    out = tmp_path / "dataset"
    arguments = ["data", "build", "--mimic-iv", str(truth.mimic_iv), "--mimic-cxr", str(truth.mimic_cxr)]
    result = CliRunner().invoke(app, [*arguments, "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["cohort"]["single_careunit"] is False


def test_the_eval_copy_is_identical():
    """carebench-eval installs alone, so it carries the same module; the two must not drift."""
    data_copy = REPO / "packages/carebench-data/src/carebench_data/typed_toml.py"
    eval_copy = REPO / "packages/carebench-eval/src/carebench_eval/_typed_toml.py"
    assert data_copy.read_bytes() == eval_copy.read_bytes()
