from pathlib import Path

import pytest

from carebench_cli.config import (
    DEFAULT_TEST_SETTINGS,
    VALID_KEYS,
    ReportConfig,
    RunConfig,
    check_names,
    read_toml,
    resolve_config,
)
from carebench_cli.errors import USAGE_EXIT, CliError

MODELS = ("lstm", "transformer", "resnet", "latefusion")
TASKS = ("mortality", "phenotype", "los")


def test_defaults_without_file_or_flags():
    config = resolve_config()
    assert config == RunConfig()
    assert config.profile == "quick"
    assert config.tasks == TASKS
    assert config.cohorts == ("base",)
    assert config.folds == (0,)
    assert len(config.seeds) == 1
    assert config.test_settings == DEFAULT_TEST_SETTINGS
    assert config.dataset is None


def test_flag_beats_file_beats_default(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'profile = "paper"\nmodels = ["lstm", "resnet"]\nseeds = [42, 123]\nout = "my_runs"\n'
        "[report]\nn_boot = 200\n"
    )
    config = resolve_config(
        file_values=read_toml(toml), flags={"profile": "quick", "models": None}, base_dir=tmp_path
    )
    assert config.profile == "quick"  # flag wins
    assert config.models == ("lstm", "resnet")  # None flag = not given, file wins
    assert config.seeds == (42, 123)  # file only
    assert config.device == "auto"  # default
    assert config.out == tmp_path / "my_runs"  # relative to the file
    assert config.report == ReportConfig(n_boot=200, n_perm=2000)  # file value, then the quick profile


def test_report_statistics_follow_the_profile():
    assert resolve_config().report == ReportConfig(n_boot=200, n_perm=2000)
    assert resolve_config(flags={"profile": "paper"}).report == ReportConfig(n_boot=1000, n_perm=10_000)
    paper = resolve_config(flags={"profile": "paper"}, file_values={"report": {"n_perm": 500}})
    assert (paper.report.n_boot, paper.report.n_perm) == (1000, 500)


def test_config_is_frozen():
    config = resolve_config()
    with pytest.raises(AttributeError):
        config.profile = "paper"  # type: ignore[misc]


def test_unknown_top_level_key_names_the_valid_keys():
    with pytest.raises(CliError) as info:
        resolve_config(file_values={"modles": ["lstm"]})
    message = str(info.value)
    assert "'modles'" in message
    for key in VALID_KEYS:
        assert key in message
    assert info.value.exit_code == USAGE_EXIT


def test_unknown_report_key_and_bad_values():
    with pytest.raises(CliError, match=r"\[report\].*valid keys: min_group_n, n_boot, n_perm, random_state"):
        resolve_config(file_values={"report": {"nboot": 3}})
    with pytest.raises(CliError, match="valid cohorts: base, matched"):
        resolve_config(file_values={"cohorts": ["paired"]})
    with pytest.raises(CliError, match="valid profiles: quick, paper"):
        resolve_config(flags={"profile": "fast"})
    with pytest.raises(CliError, match="outside"):
        resolve_config(file_values={"folds": [5]})
    with pytest.raises(CliError, match="not a rate"):
        resolve_config(file_values={"train_cxr_drop": [1.5]})
    with pytest.raises(CliError, match="invalid test setting"):
        resolve_config(file_values={"test_settings": ["test_cxr_mcar_2"]})
    with pytest.raises(CliError, match="duplicate"):
        resolve_config(file_values={"seeds": [1, 1]})


def test_subgroup_and_mnar_settings_are_accepted():
    settings = [
        "natural",
        "test_cxr_mnar_0.25",
        "test_cxr_subgroup_sex=F_0.5",
        "test_cxr_subgroup_age>=80_1.0",
    ]
    assert resolve_config(file_values={"test_settings": settings}).test_settings == tuple(settings)


def test_check_names_fills_models_and_rejects_unknown_names():
    config = check_names(resolve_config(), known_models=MODELS, known_tasks=TASKS)
    assert config.models == MODELS
    with pytest.raises(CliError) as info:
        check_names(
            resolve_config(flags={"models": ["lstm", "drfus"]}), known_models=MODELS, known_tasks=TASKS
        )
    assert str(info.value) == "unknown model 'drfus'; valid models: latefusion, lstm, resnet, transformer"
    with pytest.raises(CliError, match="unknown task 'mort'; valid tasks: los, mortality, phenotype"):
        check_names(resolve_config(flags={"tasks": ["mort"]}), known_models=MODELS, known_tasks=TASKS)
    with pytest.raises(CliError, match="not in the grid"):
        check_names(
            resolve_config(flags={"models": ["lstm"]}, file_values={"hparams": {"resnet": {"dropout": 0.1}}}),
            known_models=MODELS,
            known_tasks=TASKS,
        )


def test_missing_and_invalid_toml(tmp_path):
    with pytest.raises(CliError, match="does not exist"):
        read_toml(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("models = [\n")
    with pytest.raises(CliError, match="not valid TOML"):
        read_toml(bad)


def test_absolute_paths_in_file_are_kept(tmp_path):
    config = resolve_config(file_values={"dataset": str(tmp_path / "ds")}, base_dir=Path("/elsewhere"))
    assert config.dataset == tmp_path / "ds"


def test_threads_setting():
    assert resolve_config().threads == 0
    assert resolve_config(file_values={"threads": 4}).threads == 4
    with pytest.raises(CliError, match="non-negative integer"):
        resolve_config(file_values={"threads": -1})
