"""Expand a `RunConfig` into run specs with stable ids, and split the grid into shards.

One run = one trained model: (model, task, cohort, fold, seed, train-time CXR drop rate and protocol)
plus the hyperparameters and the CXR encoder's initial weights (name and SHA-256 of the file). Each
run is evaluated under every test-time setting without retraining.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from types import MappingProxyType
from typing import Any

from carebench_cli.config import RunConfig, format_rate
from carebench_cli.errors import USAGE_EXIT, CliError

RUN_ID_VERSION = 2
"""Bumped when the meaning of a run changes, so that old run directories are not reused.

2: the CXR weights and the train-time drop protocol enter the run; UTDE gained EHR positions and
UTDE's and DAFT's BatchNorms stopped counting rows without a CXR."""

NO_WEIGHTS = "none"
"""`cxr_weights` and `cxr_weights_sha256` of a run whose CNN starts from random weights (or that has none)."""
WeightsFn = Callable[[str], tuple[str, str]]
"""`weights(model) -> (cxr_weights, sha256)`: the resolved initial CXR weights of a model's runs."""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training run of the grid, with everything that identifies its results."""

    model: str
    task: str
    cohort: str
    fold: int
    seed: int
    train_cxr_drop: float
    profile: str
    test_settings: tuple[str, ...]
    dataset_hash: str
    hparams: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    train: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    train_cxr_drop_protocol: str = "upstream"
    """`upstream` (the drop also applies to the validation split) or `train_only`. Part of the run
    (and its id) only when `train_cxr_drop` > 0: a run without a drop is the same under both."""
    cxr_weights: str = NO_WEIGHTS
    """Initial weights of the CXR encoder: `none`, `imagenet`, `imagenet_v1` or a file path."""
    cxr_weights_sha256: str = NO_WEIGHTS
    """SHA-256 of the weights file (`none` for random init), so that other weights give another run id."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the run's `config.json`, without the id)."""
        return {
            "model": self.model,
            "task": self.task,
            "cohort": self.cohort,
            "fold": self.fold,
            "seed": self.seed,
            "train_cxr_drop": self.train_cxr_drop,
            **({"train_cxr_drop_protocol": self.train_cxr_drop_protocol} if self.train_cxr_drop > 0 else {}),
            "profile": self.profile,
            "cxr_weights": self.cxr_weights,
            "cxr_weights_sha256": self.cxr_weights_sha256,
            "test_settings": list(self.test_settings),
            "dataset_hash": self.dataset_hash,
            "hparams": dict(sorted(self.hparams.items())),
            "train": dict(sorted(self.train.items())),
        }

    @property
    def run_id(self) -> str:
        """`<model>-<task>-<12 hex>`: readable prefix, then the hash of the canonical resolved config."""
        canonical = json.dumps(
            {"version": RUN_ID_VERSION, **self.to_dict()}, sort_keys=True, separators=(",", ":")
        )
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        return f"{self.model}-{self.task}-{digest}"

    @property
    def train_missingness(self) -> tuple[str, ...]:
        """Missingness spec of the train and validation datasets (the data loader's setting grammar).

        `upstream`: `trainval_cxr_drop_<r>` (training and validation stays lose their CXR);
        `train_only`: `train_cxr_drop_<r>` (a no-op on the validation split).
        """
        if self.train_cxr_drop == 0.0:
            return ()
        scope = "trainval" if self.train_cxr_drop_protocol == "upstream" else "train"
        return (f"{scope}_cxr_drop_{format_rate(self.train_cxr_drop)}",)

    def setting_name(self, test_setting: str) -> str:
        """The predictions `setting` value: cohort token, train-time drop, test-time setting, joined by `+`.

        Example: `cohort_base+test_cxr_mcar_0.5`; `natural` adds no token (eval.md §7.1).
        """
        tokens = [f"cohort_{self.cohort}", *self.train_missingness]
        if test_setting != "natural":
            tokens.append(test_setting)
        return "+".join(tokens)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunSpec:
        """Inverse of `to_dict` (reads a run's `config.json`).

        A config written before the drop protocol and the weights were recorded reads as what those
        runs did: `train_only` (validation kept every CXR) and `none` (random CNN weights). Without a
        drop the protocol is not recorded (it changes nothing) and reads as `upstream`.
        """
        return cls(
            model=str(values["model"]),
            task=str(values["task"]),
            cohort=str(values["cohort"]),
            fold=int(values["fold"]),
            seed=int(values["seed"]),
            train_cxr_drop=float(values["train_cxr_drop"]),
            profile=str(values["profile"]),
            test_settings=tuple(values["test_settings"]),
            dataset_hash=str(values["dataset_hash"]),
            hparams=MappingProxyType(dict(values.get("hparams", {}))),
            train=MappingProxyType(dict(values.get("train", {}))),
            train_cxr_drop_protocol=str(
                values.get(
                    "train_cxr_drop_protocol",
                    "train_only" if float(values["train_cxr_drop"]) > 0 else "upstream",
                )
            ),
            cxr_weights=str(values.get("cxr_weights", NO_WEIGHTS)),
            cxr_weights_sha256=str(values.get("cxr_weights_sha256", NO_WEIGHTS)),
        )


BUNDLED_TRAIN_PROFILES = ("paper",)
"""Profiles that take the bundled per-model trainer overrides (tuned under CareBench's protocol)."""

DefaultsFn = Callable[[str, str, str], tuple[Mapping[str, Any], Mapping[str, Any]]]
"""`defaults(model, task, cohort) -> (model config overrides, trainer overrides)` bundled with the models."""


def expand_grid(
    config: RunConfig,
    *,
    dataset_hash: str,
    defaults: DefaultsFn | None = None,
    weights: WeightsFn | None = None,
) -> list[RunSpec]:
    """Every run of the grid, in a fixed order (model, task, cohort, fold, seed, train drop).

    Hyperparameters are resolved here, so that the run id covers them: the config's `[hparams.<model>]`
    and `[train]` overrides beat the bundled per-task defaults returned by `defaults`. The bundled
    trainer overrides (e.g. `lstm`'s lr 4e-4) were tuned for CareBench's protocol and apply to the
    `paper` profile only; the `quick` profile keeps its own learning rate and epoch budget.

    Args:
        config: a config whose model list is filled (`config.check_names`).
        dataset_hash: `manifest.json["content_hash"]` of the dataset the runs train on.
        defaults: bundled per-(model, task, cohort) defaults; None = no bundled defaults.
        weights: each model's resolved CXR weights and their SHA-256 (they replace any `cxr_weights`
            of `[hparams.<model>]`, which the resolution has read); None = `none` for every model.

    Returns:
        The run specs; run ids are unique.
    """
    if not config.models:
        raise ValueError("expand_grid needs a config with its model list filled (check_names)")
    specs = []
    for model, task, cohort, fold, seed, drop in product(
        config.models, config.tasks, config.cohorts, config.folds, config.seeds, config.train_cxr_drop
    ):
        model_defaults, train_defaults = defaults(model, task, cohort) if defaults else ({}, {})
        if config.profile not in BUNDLED_TRAIN_PROFILES:
            train_defaults = {}
        hparams = {**model_defaults, **config.hparams.get(model, {})}
        hparams.pop("cxr_weights", None)
        cxr_weights, cxr_weights_sha256 = weights(model) if weights else (NO_WEIGHTS, NO_WEIGHTS)
        specs.append(
            RunSpec(
                model=model,
                task=task,
                cohort=cohort,
                fold=fold,
                seed=seed,
                train_cxr_drop=drop,
                profile=config.profile,
                test_settings=config.test_settings,
                dataset_hash=dataset_hash,
                hparams=MappingProxyType(hparams),
                train=MappingProxyType({**train_defaults, **config.train}),
                train_cxr_drop_protocol=config.train_cxr_drop_protocol if drop > 0 else "upstream",
                cxr_weights=cxr_weights,
                cxr_weights_sha256=cxr_weights_sha256,
            )
        )
    return specs


_SHARD = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """Parse `I/N` (0 <= I < N), e.g. `--shard $SLURM_ARRAY_TASK_ID/8`.

    Raises:
        CliError: malformed or out of range (usage exit).
    """
    match = _SHARD.match(text.strip())
    if not match:
        raise CliError(f"--shard must look like I/N (e.g. 0/4), got {text!r}", exit_code=USAGE_EXIT)
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise CliError(f"--shard {text}: need 0 <= I < N", exit_code=USAGE_EXIT)
    return index, count


def shard(specs: Sequence[RunSpec], index: int, count: int) -> list[RunSpec]:
    """The runs of shard `index` of `count`: round robin over the runs sorted by run id.

    The shards partition the grid: every run lands in exactly one shard, the sizes differ by at most
    one, and the assignment depends only on the set of runs (not on the order of the config lists).
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must satisfy 0 <= index < count, got {index}/{count}")
    ordered = sorted(specs, key=lambda spec: spec.run_id)
    chosen = {spec.run_id for position, spec in enumerate(ordered) if position % count == index}
    return [spec for spec in specs if spec.run_id in chosen]
