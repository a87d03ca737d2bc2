"""The missing-modality models of the zoo train through `carebench run` and reach every per-model report table."""

import itertools
import re

import pytest
from typer.testing import CliRunner

from carebench_cli.main import app

from .conftest import write_run_config

NEW_MODELS = ("healnet", "flexmoe", "drfuse", "umse", "shaspec")
# The references the report compares with: EHR-only and CXR-only baselines and latefusion (Table 3b).
MODELS = ("transformer", "resnet", "latefusion", *NEW_MODELS)


@pytest.fixture(scope="module")
def report(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("missing-models")
    config = write_run_config(
        root / "run.toml", tiny_dataset, root / "runs", models=MODELS, tasks=("mortality",)
    )
    result = CliRunner().invoke(app, ["run", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return (root / "runs" / "report" / "report.md").read_text()


def table(markdown, caption):
    """The lines of the table whose caption starts with `caption`."""
    lines = markdown.split(f"**{caption}")[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    return "\n".join(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))


@pytest.mark.parametrize(
    ("caption", "row"),
    [
        ("Finished runs per model and task", r"\| {model} \| missing-modality \| [^|]+ \| mortality \| 1 \|"),
        ("Table 1 (base cohort)", r"\| mortality \| {model} \| AUPRC \|"),
        ("Table 1b (base cohort)", r"\| mortality \| {model} \| AUPRC \|"),
        ("Table 2 (base cohort, mortality)", r"\| \d+ \| {model}( •)? \| missing-modality \|"),
        ("Table 2b (base cohort)", r"\| mortality \| {model} \| AUPRC \|"),
        ("Table 3 (base cohort)", r"\| mortality \| {model} \| MCAR \| AUPRC \|"),
        ("Table 3b (base cohort)", r"\| mortality \| {model} \| missing-modality \| MNAR \|"),
        ("Table 6 (base cohort)", r"\| mortality \| {model} \| sex \|"),
    ],
)
def test_every_new_model_has_its_row(report, caption, row):
    rows = table(report, caption)
    for model in NEW_MODELS:
        assert re.search(row.format(model=model), rows), (caption, model, rows)
