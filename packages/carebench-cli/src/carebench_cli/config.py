"""The resolved configuration of `carebench run`: flag > TOML file > default, resolved once.

A TOML file mirrors the flags and adds the grid axes and overrides that have no flag::

    dataset = "data/carebench-v1"          # omit for the built-in synthetic demo
    out = "runs"
    models = ["lstm", "transformer", "resnet", "latefusion", "drfuse"]
    tasks = ["mortality", "phenotype", "los"]
    cohorts = ["base", "matched"]
    folds = [0]
    seeds = [42, 123, 1234]
    train_cxr_drop = [0.0]
    train_cxr_drop_protocol = "upstream"   # or "train_only"
    test_settings = ["natural", "test_cxr_mcar_0.5", "test_cxr_mcar_1.0", "test_cxr_mnar_0.5"]
    profile = "paper"
    cxr_weights = "imagenet"               # omit for the profile's default; "none" = random init
    device = "auto"

    [train]                                # carebench_models.TrainConfig fields
    max_epochs = 50

    [hparams.drfuse]                       # per-model config overrides
    dropout = 0.2

    [report]
    n_boot = 1000
    n_perm = 10000

Unknown keys, names and values are errors that name the valid choices.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from carebench_cli.errors import USAGE_EXIT, CliError
from carebench_data.typed_toml import ConfigValueError, check_table, load_dataclass

DEFAULT_TASKS: tuple[str, ...] = ("mortality", "phenotype", "los")
COHORTS: tuple[str, ...] = ("base", "matched")
PROFILES: tuple[str, ...] = ("quick", "paper")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DROP_PROTOCOLS: tuple[str, ...] = ("upstream", "train_only")
"""Train-time CXR drop protocols: `upstream` drops the CXR from the same share of training and
validation stays (as CareBench does); `train_only` from training stays only."""
NAMED_CXR_WEIGHTS: tuple[str, ...] = ("none", "imagenet", "imagenet_v1")
DEFAULT_TEST_SETTINGS: tuple[str, ...] = (
    "natural",
    "test_cxr_mcar_0.5",
    "test_cxr_mcar_1.0",
    "test_cxr_mnar_0.5",
)
CACHE_ENV = "CAREBENCH_CACHE"
"""Environment variable naming the cache directory (default `./.carebench`)."""

_RATE = r"(?:0(?:\.\d+)?|1(?:\.0+)?)"
_TEST_SETTING = re.compile(
    rf"^(?:natural|test_cxr_(?:mcar|mnar)_{_RATE}|test_cxr_subgroup_[a-z_]+(?:=|<=|>=|<|>)[^_+]+_{_RATE})$"
)


def cache_dir() -> Path:
    """The directory that caches the synthetic demo dataset: `$CAREBENCH_CACHE` or `./.carebench`."""
    return Path(os.environ.get(CACHE_ENV, ".carebench"))


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """Statistics settings of `carebench report`."""

    n_boot: int = 1000
    """Bootstrap replicates behind every confidence interval."""
    n_perm: int = 10_000
    """Permutations behind every paired test."""
    random_state: int = 0
    """Seed of the bootstrap and permutation streams."""
    min_group_n: int = 10
    """Smallest group (stays) whose per-group numbers the report shows; smaller groups are shown as
    suppressed in every table, figure and results file, and left out of gaps (CareBench's 10)."""

    @classmethod
    def for_profile(cls, profile: str, **overrides: int) -> ReportConfig:
        """Profile defaults (`paper`: 1000 / 10000, `quick`: 200 / 2000 replicates), then overrides."""
        return cls(**{**REPORT_PROFILES[profile], **overrides})


REPORT_PROFILES: dict[str, dict[str, int]] = {
    "paper": {"n_boot": 1000, "n_perm": 10_000},
    "quick": {"n_boot": 200, "n_perm": 2000},
}
"""Bootstrap and permutation counts per profile: the quick profile is a smoke run, sized to finish fast."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything `carebench run` needs, resolved once (flag > TOML file > default) and then read-only."""

    dataset: Path | None = None
    """Benchmark dataset directory; None = the synthetic demo, generated once under `cache_dir()`."""
    out: Path = Path("runs")
    """Run store directory (DESIGN §6)."""
    models: tuple[str, ...] = ()
    """Registered model names; empty = every registered model."""
    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Task names from the dataset manifest."""
    cohorts: tuple[str, ...] = ("base",)
    """`base` (natural missingness) and/or `matched` (stays with a CXR)."""
    folds: tuple[int, ...] = (0,)
    """Patient-level folds 0-4."""
    seeds: tuple[int, ...] = (42,)
    """Training seeds."""
    train_cxr_drop: tuple[float, ...] = (0.0,)
    """Train-time CXR drop rates; 0 = no drop."""
    train_cxr_drop_protocol: str = "upstream"
    """Which splits a train-time drop applies to: `upstream` (training and validation stays, as
    CareBench) or `train_only` (training stays; validation keeps every CXR)."""
    test_settings: tuple[str, ...] = DEFAULT_TEST_SETTINGS
    """Test-time CXR settings each trained model is evaluated under, without retraining."""
    profile: str = "quick"
    """Model and trainer profile: `quick` (CPU-sized) or `paper`."""
    cxr_weights: str | None = None
    """Initial CXR encoder weights of every model that reads the CXR: `none` (random init),
    `imagenet`, `imagenet_v1` or a weights file; None = each model's profile default (`paper`:
    ImageNet, `quick`: none). `[hparams.<model>] cxr_weights` beats it for one model."""
    device: str = "auto"
    """`auto` (CUDA when available), `cpu` or `cuda`."""
    threads: int = 0
    """CPU threads of torch; 0 = auto: 1 for the quick profile on CPU (its small models train fastest
    single-threaded, and it stays fast on a shared machine), torch's default otherwise."""
    train: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Trainer overrides (fields of `carebench_models.TrainConfig`)."""
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    """Per-model config overrides: model name -> {field: value}."""
    report: ReportConfig = field(default_factory=lambda: ReportConfig.for_profile("quick"))
    """Statistics settings of the report written after the grid (defaults follow the profile)."""


_SCALAR_KEYS = (
    "dataset",
    "out",
    "profile",
    "device",
    "threads",
    "cxr_weights",
    "train_cxr_drop_protocol",
)
_LIST_KEYS = ("models", "tasks", "cohorts", "folds", "seeds", "train_cxr_drop", "test_settings")
_TABLE_KEYS = ("train", "hparams", "report")
VALID_KEYS: tuple[str, ...] = _SCALAR_KEYS + _LIST_KEYS + _TABLE_KEYS
REPORT_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ReportConfig))


def _usage(message: str) -> CliError:
    return CliError(message, exit_code=USAGE_EXIT)


def _choices(names: Sequence[str]) -> str:
    return ", ".join(sorted(names))


def _check_names(kind: str, given: Sequence[str], valid: Sequence[str]) -> None:
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise _usage(f"unknown {kind} {', '.join(map(repr, unknown))}; valid {kind}s: {_choices(valid)}")


def _as_list(value: Any) -> Any:
    """A single value where a list is expected counts as a one-item list (`seeds = 42`)."""
    return [value] if isinstance(value, str | int | float) and not isinstance(value, bool) else value


def _typed(load: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a `typed_toml` check; its one-line error becomes a usage error naming the run config."""
    try:
        return load(*args, **kwargs)
    except ConfigValueError as error:
        raise _usage(f"run config: {error}") from None


def _no_duplicates(key: str, items: Sequence[Any]) -> None:
    if len(set(items)) != len(items):
        raise _usage(f"config key {key!r} has duplicate entries: {list(items)}")


def _parse_report(value: Any, *, profile: str) -> ReportConfig:
    table = _typed(check_table, ReportConfig, value, section="report")
    for name, item in table.items():
        if item < 0:
            raise _usage(f"[report] {name} must be a non-negative integer, got {item!r}")
    return ReportConfig.for_profile(profile, **table)


def read_toml(path: Path) -> dict[str, Any]:
    """Read a run config file.

    Raises:
        CliError: the file is missing or is not valid TOML (one line, usage exit).
    """
    if not path.is_file():
        raise _usage(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise _usage(f"config file {str(path)!r} is not valid TOML: {error}") from None


def resolve_config(
    *,
    file_values: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> RunConfig:
    """Merge flags over file values over defaults and check every key and value.

    Model and task names are checked later by `check_names`, against the registry and the dataset.

    Args:
        file_values: the parsed TOML file (may be empty).
        flags: command-line values; a None value means "not given".
        base_dir: relative `dataset` and `out` paths of the file are resolved against it.

    Returns:
        The frozen configuration.

    Raises:
        CliError: an unknown key or an invalid value, naming the valid choices (usage exit).
    """
    file_values = dict(file_values or {})
    for key, path_value in list(file_values.items()):
        is_path = key in ("dataset", "out") or (key == "cxr_weights" and path_value not in NAMED_CXR_WEIGHTS)
        if is_path and isinstance(path_value, str):
            path = Path(path_value).expanduser()
            path = path if path.is_absolute() or base_dir is None else base_dir / path
            file_values[key] = str(path) if key == "cxr_weights" else path
    if isinstance(flags, Mapping) and isinstance(flags.get("cxr_weights"), Path):
        flags = {**flags, "cxr_weights": str(flags["cxr_weights"])}
    merged = {**file_values, **{key: value for key, value in (flags or {}).items() if value is not None}}
    report = merged.pop("report", {})
    typed = {key: _as_list(value) if key in _LIST_KEYS else value for key, value in merged.items()}
    config: RunConfig = _typed(load_dataclass, RunConfig, typed)

    for key, valid in (
        ("profile", PROFILES),
        ("device", DEVICES),
        ("train_cxr_drop_protocol", DROP_PROTOCOLS),
    ):
        if getattr(config, key) not in valid:
            raise _usage(f"unknown {key} {getattr(config, key)!r}; valid {key}s: {', '.join(valid)}")
    if config.cxr_weights is not None and not config.cxr_weights:
        raise _usage(
            f"cxr_weights must be one of {', '.join(NAMED_CXR_WEIGHTS)} or a weights file path, got ''"
        )
    if config.threads < 0:
        raise _usage(
            f"config key 'threads' must be a non-negative integer (0 = auto), got {config.threads!r}"
        )
    if not config.tasks:
        raise _usage("config key 'tasks' must name at least one task")
    _check_names("cohort", config.cohorts, COHORTS)
    for name in ("folds", "seeds"):
        low, high = (0, 4) if name == "folds" else (0, None)
        for item in getattr(config, name):
            if item < low or (high is not None and item > high):
                raise _usage(f"config key {name!r}: {item} is outside [{low}, {high}]")
    for rate in config.train_cxr_drop:
        if not 0.0 <= rate <= 1.0:
            raise _usage(f"config key 'train_cxr_drop': {rate!r} is not a rate in [0, 1]")
    bad = [setting for setting in config.test_settings if not _TEST_SETTING.match(setting)]
    if bad:
        raise _usage(
            f"invalid test setting(s) {bad}; use 'natural', 'test_cxr_mcar_<rate>', "
            "'test_cxr_mnar_<rate>' or 'test_cxr_subgroup_<attr>=<value>_<rate>' with a rate in [0, 1]"
        )
    for key in ("models", "tasks", "cohorts", "folds", "seeds", "train_cxr_drop", "test_settings"):
        _no_duplicates(key, getattr(config, key))
    for key in ("cohorts", "folds", "seeds", "train_cxr_drop", "test_settings"):
        if not getattr(config, key):
            raise _usage(f"config key {key!r} must not be empty")
    return replace(
        config,
        train=MappingProxyType(dict(config.train)),
        hparams=MappingProxyType(
            {name: MappingProxyType(dict(table)) for name, table in config.hparams.items()}
        ),
        report=report if isinstance(report, ReportConfig) else _parse_report(report, profile=config.profile),
    )


def check_override_types(config: RunConfig) -> None:
    """Check the `[train]` and `[hparams.<model>]` values against the trainer's and the model's config fields.

    Raises:
        CliError: a key the config class lacks, or a value of the wrong type (one line, usage exit).
    """
    from carebench_models import model_info
    from carebench_models.training import TrainConfig

    _typed(check_table, TrainConfig, config.train, section="train")
    for model, overrides in config.hparams.items():
        _typed(check_table, model_info(model).config_class, overrides, section=f"hparams.{model}")


def check_model_names(config: RunConfig, *, known_models: Sequence[str]) -> RunConfig:
    """Check model names (and `hparams` keys) against the registry and fill the default model list.

    Needs no dataset, so a run can check its models (and their weights) before preparing one.

    Returns:
        The config with `models` = every registered model when none was named.

    Raises:
        CliError: an unknown model, naming the valid ones (usage exit).
    """
    _check_names("model", config.models, known_models)
    _check_names("model", list(config.hparams), known_models)
    models = config.models or tuple(known_models)
    unused = sorted(set(config.hparams) - set(models))
    if unused:
        raise _usage(
            f"[hparams] names model(s) {unused} that are not in the grid; grid models: {', '.join(models)}"
        )
    return replace(config, models=models)


def check_names(config: RunConfig, *, known_models: Sequence[str], known_tasks: Sequence[str]) -> RunConfig:
    """Check model and task names (and `hparams` keys) and fill the default model list.

    Returns:
        The config with `models` = every registered model when none was named.

    Raises:
        CliError: an unknown model or task, naming the valid ones (usage exit).
    """
    _check_names("model", config.models, known_models)
    _check_names("task", config.tasks, known_tasks)
    return check_model_names(config, known_models=known_models)


def format_rate(rate: float) -> str:
    """Canonical text of a missingness rate, as in setting names: 0.5 -> '0.5', 1 -> '1.0'."""
    if not math.isfinite(rate):
        raise ValueError(f"rate must be finite, got {rate}")
    return repr(float(rate))
