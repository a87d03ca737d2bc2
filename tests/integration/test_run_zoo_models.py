"""The models with custom steps and hooks through `carebench run`, `carebench models` and every report section."""

import re

import pytest
import torch
from typer.testing import CliRunner

from carebench_cli.grid import RunSpec
from carebench_cli.main import app
from carebench_cli.pipeline import execute_run
from carebench_cli.run_store import RunStore
from carebench_data.tasks import read_manifest, task_specs
from carebench_data.torch import CarebenchDataset
from carebench_models.zoo.smil import SMILModel

from .conftest import write_run_config

NEW_MODELS = {
    "aug": "imbalance-aware",
    "inforeg": "imbalance-aware",
    "m3care": "missing-modality",
    "smil": "missing-modality",
}
MODELS = ("lstm", "resnet", "latefusion", *NEW_MODELS)


@pytest.fixture(scope="module")
def report_markdown(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    config = write_run_config(
        root / "run.toml", tiny_dataset, root / "runs", models=MODELS, tasks=("mortality",)
    )
    result = CliRunner().invoke(app, ["run", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return (root / "runs" / "report" / "report.md").read_text()


def _section(markdown: str, start: str, end: str) -> str:
    return markdown.split(start, 1)[1].split(end, 1)[0]


def test_models_listing_groups_the_new_models() -> None:
    result = CliRunner().invoke(app, ["models", "--plain"])
    assert result.exit_code == 0
    names = result.output.split()
    # unimodal, complete-modality, imbalance-aware, missing-modality; by name inside a group
    assert names.index("mmtm") < names.index("aug") < names.index("inforeg") < names.index("m3care")
    assert names.index("m3care") < names.index("medfuse") < names.index("smil")
    table = CliRunner().invoke(app, ["models"], env={"COLUMNS": "250"}).output
    for model, group in NEW_MODELS.items():
        assert re.search(rf"{model}\s+│\s+{group}", table), table


def test_every_report_section_covers_the_new_models(report_markdown: str) -> None:
    sections = {
        "runs": _section(report_markdown, "Finished runs per model and task", "## "),
        "Q1 fusion gain": _section(report_markdown, "Table 1 (base cohort)", "**Table"),
        "Q2 leaderboard": _section(report_markdown, "Table 2 (base cohort, mortality)", "**Table"),
        "Q2 CXR contribution": _section(report_markdown, "Table 2b (base cohort)", "**Table"),
        "Q3 robustness": _section(report_markdown, "## Q3.", "## Q4."),
        "Q4 fairness": _section(report_markdown, "## Q4.", "## Methods"),
    }
    for name, text in sections.items():
        for model in NEW_MODELS:
            assert re.search(rf"\| {model}( •)? \|", text), (name, model, text)
    for table in ("runs", "Q2 leaderboard"):
        for model, group in NEW_MODELS.items():
            assert re.search(rf"\| {model}( •)? \| {group} \|", sections[table]), (table, model)


def test_smil_priors_see_the_training_split_without_augmentation(tiny_dataset, tmp_path, monkeypatch) -> None:
    seen: list[torch.Tensor] = []
    original = SMILModel.prepare

    def spy(self: SMILModel, batches) -> None:  # type: ignore[no-untyped-def]
        seen.append(next(iter(batches))["cxr"].clone())
        original(self, batches)

    monkeypatch.setattr(SMILModel, "prepare", spy)
    spec = RunSpec(
        model="smil",
        task="mortality",
        cohort="base",
        fold=0,
        seed=42,
        train_cxr_drop=0.0,
        profile="quick",
        test_settings=("natural",),
        dataset_hash=str(read_manifest(tiny_dataset).get("content_hash", "")),
        train={"max_epochs": 1, "min_epochs": 1, "batch_size": 32, "eval_batch_size": 64},
    )
    task_info = task_specs(tiny_dataset)["mortality"]
    execute_run(
        spec, store=RunStore(tmp_path / "runs"), dataset_dir=tiny_dataset, task_info=task_info, device="cpu"
    )
    (first,) = seen
    kwargs = {
        "task": "mortality",
        "cohort": "base",
        "fold": 0,
        "split": "train",
        "image_size": 64,
        "seed": 42,
    }
    plain = CarebenchDataset(tiny_dataset, augment=False, **kwargs)
    augmented = CarebenchDataset(tiny_dataset, augment=True, **kwargs)
    rows = list(range(first.shape[0]))
    assert torch.equal(first, plain.__getitems__(rows)["cxr"])
    assert not torch.equal(first, augmented.__getitems__(rows)["cxr"])
