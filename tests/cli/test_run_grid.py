import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carebench_cli.config import check_names, resolve_config
from carebench_cli.errors import CliError
from carebench_cli.grid import RunSpec, expand_grid, parse_shard, shard

MODELS = ("lstm", "transformer", "resnet", "latefusion", "drfuse")
TASKS = ("mortality", "phenotype", "los")


def _grid(**file_values):
    config = check_names(resolve_config(file_values=file_values), known_models=MODELS, known_tasks=TASKS)
    return expand_grid(config, dataset_hash="abc123")


def test_grid_size_and_unique_ids():
    specs = _grid(cohorts=["base", "matched"], seeds=[42, 123, 1234], train_cxr_drop=[0.0, 0.5])
    assert len(specs) == 5 * 3 * 2 * 3 * 2
    assert len({spec.run_id for spec in specs}) == len(specs)


def test_run_id_is_stable_and_sensitive_to_every_field():
    spec = RunSpec(
        model="lstm",
        task="mortality",
        cohort="base",
        fold=0,
        seed=42,
        train_cxr_drop=0.0,
        profile="quick",
        test_settings=("natural", "test_cxr_mcar_0.5"),
        dataset_hash="abc123",
    )
    assert spec.run_id == RunSpec.from_dict(spec.to_dict()).run_id
    assert spec.run_id.startswith("lstm-mortality-")
    assert spec.run_id == "lstm-mortality-" + spec.run_id.rsplit("-", 1)[1]
    changes = {
        "model": "resnet",
        "task": "los",
        "cohort": "matched",
        "fold": 1,
        "seed": 43,
        "train_cxr_drop": 0.5,
        "profile": "paper",
        "test_settings": ("natural",),
        "dataset_hash": "abc124",
        "hparams": {"dropout": 0.2},
        "train": {"max_epochs": 2},
    }
    ids = {spec.run_id}
    for key, value in changes.items():
        ids.add(RunSpec.from_dict({**spec.to_dict(), key: value}).run_id)
    assert len(ids) == len(changes) + 1


def test_run_id_does_not_depend_on_override_key_order():
    base = dict(
        model="lstm",
        task="los",
        cohort="base",
        fold=0,
        seed=1,
        train_cxr_drop=0.0,
        profile="quick",
        test_settings=("natural",),
        dataset_hash="h",
    )
    a = RunSpec(**base, hparams={"a": 1, "b": 2})
    b = RunSpec(**base, hparams={"b": 2, "a": 1})
    assert a.run_id == b.run_id


def test_run_id_is_a_pinned_literal():
    spec = RunSpec(
        model="lstm",
        task="mortality",
        cohort="base",
        fold=0,
        seed=42,
        train_cxr_drop=0.0,
        profile="quick",
        test_settings=("natural",),
        dataset_hash="0" * 64,
    )
    # Pinned: if this changes, existing run stores are no longer resumed (bump RUN_ID_VERSION on purpose).
    assert spec.run_id == "lstm-mortality-59aa47491ed8"
    canonical = (
        '{"cohort":"base","cxr_weights":"none","cxr_weights_sha256":"none","dataset_hash":"'
        + "0" * 64
        + '","fold":0,"hparams":{},"model":"lstm",'
        '"profile":"quick","seed":42,"task":"mortality","test_settings":["natural"],"train":{},'
        '"train_cxr_drop":0.0,"version":2}'
    )
    assert hashlib.sha256(canonical.encode()).hexdigest()[:12] == "59aa47491ed8"


def test_setting_names():
    spec = _grid(train_cxr_drop=[0.3], cohorts=["matched"], train_cxr_drop_protocol="train_only")[0]
    assert spec.setting_name("natural") == "cohort_matched+train_cxr_drop_0.3"
    assert spec.setting_name("test_cxr_mcar_0.5") == "cohort_matched+train_cxr_drop_0.3+test_cxr_mcar_0.5"
    assert spec.train_missingness == ("train_cxr_drop_0.3",)
    base = _grid()[0]
    assert base.setting_name("natural") == "cohort_base"
    assert base.train_missingness == ()


@settings(max_examples=40, deadline=None)
@given(n_seeds=st.integers(1, 6), n_models=st.integers(1, 5), count=st.integers(1, 12))
def test_shards_partition_the_grid(n_seeds, n_models, count):
    specs = _grid(models=list(MODELS[:n_models]), seeds=list(range(n_seeds)))
    parts = [shard(specs, index, count) for index in range(count)]
    ids = [spec.run_id for part in parts for spec in part]
    assert sorted(ids) == sorted(spec.run_id for spec in specs)  # every run exactly once
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shard_assignment_ignores_config_order():
    a = _grid(seeds=[1, 2, 3])
    b = _grid(seeds=[3, 1, 2], models=list(reversed(MODELS)))
    assert {s.run_id for s in shard(a, 1, 3)} == {s.run_id for s in shard(b, 1, 3)}


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3/4 ") == (3, 4)
    for bad in ("4/4", "1/0", "a/b", "1-4", "-1/4"):
        with pytest.raises(CliError, match="--shard"):
            parse_shard(bad)


def test_config_overrides_beat_bundled_defaults_and_enter_the_id():
    def defaults(model, task, cohort):
        return ({"alpha": 0.7, "beta": 1.0} if task == "los" else {}), {"lr": 4e-4}

    config = check_names(
        resolve_config(
            file_values={
                "models": ["lstm"],
                "profile": "paper",
                "hparams": {"lstm": {"beta": 2.0}},
                "train": {"max_epochs": 3},
            }
        ),
        known_models=MODELS,
        known_tasks=TASKS,
    )
    specs = {spec.task: spec for spec in expand_grid(config, dataset_hash="h", defaults=defaults)}
    assert dict(specs["los"].hparams) == {"alpha": 0.7, "beta": 2.0}
    assert dict(specs["mortality"].hparams) == {"beta": 2.0}
    assert dict(specs["los"].train) == {"lr": 4e-4, "max_epochs": 3}
    without = {spec.task: spec for spec in expand_grid(config, dataset_hash="h")}
    assert without["los"].run_id != specs["los"].run_id


def test_quick_profile_keeps_its_learning_rate_over_bundled_trainer_defaults():
    def defaults(model, task, cohort):
        return {"alpha": 0.7}, {"lr": 4e-4}

    config = check_names(
        resolve_config(file_values={"models": ["lstm"], "profile": "quick", "train": {"max_epochs": 3}}),
        known_models=MODELS,
        known_tasks=TASKS,
    )
    spec = expand_grid(config, dataset_hash="h", defaults=defaults)[0]
    assert dict(spec.hparams) == {"alpha": 0.7}
    assert dict(spec.train) == {"max_epochs": 3}


def test_auto_jobs_one_per_core_for_the_quick_profile_on_cpu_only(monkeypatch):
    from carebench_cli.run_cmd import MAX_AUTO_JOBS, auto_jobs

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    quick = resolve_config()
    assert auto_jobs(quick, "cpu") == 2
    assert auto_jobs(quick, "cuda") == 1
    assert auto_jobs(resolve_config(file_values={"profile": "paper"}), "cpu") == 1
    assert auto_jobs(resolve_config(file_values={"threads": 2}), "cpu") == 1
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert auto_jobs(quick, "cpu") == MAX_AUTO_JOBS
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert auto_jobs(quick, "cpu") == 1


def test_quick_profile_trains_with_a_light_affine_and_paper_with_medfuses():
    from carebench_cli.pipeline import profile_augmentation
    from carebench_data.torch import AugmentConfig

    quick, paper = profile_augmentation("quick"), profile_augmentation("paper")
    assert paper == AugmentConfig(mode="affine")
    assert (paper.degrees, paper.scale, paper.translate) == (45.0, (0.85, 1.15), 0.15)
    assert quick.mode == "affine"
    assert quick.degrees < paper.degrees and quick.translate < paper.translate
    assert paper.scale[0] < quick.scale[0] <= 1.0 <= quick.scale[1] < paper.scale[1]
