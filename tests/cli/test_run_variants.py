"""Documented method options run from the grid: the report names the variant, the log the training stages."""

import json

from typer.testing import CliRunner

from carebench_cli.config import ReportConfig
from carebench_cli.main import app
from carebench_cli.report.collect import collect_runs
from carebench_cli.report.context import ReportContext
from carebench_cli.report.sections import overview_section
from carebench_data.testing import write_tiny_dataset


def test_daft_direction_and_medfuse_stages_reach_the_run_store_and_the_report(tmp_path):
    dataset = write_tiny_dataset(
        tmp_path / "dataset", n_stays=120, image_size=16, paired_fraction=0.6, seed=4
    )
    out = tmp_path / "runs"
    config = tmp_path / "run.toml"
    config.write_text(
        f'dataset = "{dataset}"\nout = "{out}"\nmodels = ["daft", "medfuse", "lstm"]\ntasks = ["mortality"]\n'
        'device = "cpu"\n[train]\nmax_epochs = 1\nmin_epochs = 1\n'
        '[hparams.daft]\ndirection = "cxr_to_ehr"\n[hparams.medfuse]\ntraining = "staged"\n'
    )
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--no-report", "--jobs", "1"])
    assert result.exit_code == 0, result.output

    (medfuse,) = out.glob("medfuse-mortality-*")
    log = [json.loads(line) for line in (medfuse / "train_log.jsonl").read_text().splitlines()]
    assert [(record["epoch"], record["stage"]) for record in log] == [
        (0, "ehr_pretrain"),
        (1, "cxr_pretrain"),
        (2, "fusion"),
    ]
    (lstm,) = out.glob("lstm-mortality-*")
    assert all(
        "stage" not in json.loads(line) for line in (lstm / "train_log.jsonl").read_text().splitlines()
    )

    context = ReportContext(collection=collect_runs(out), config=ReportConfig(n_boot=0, n_perm=0))
    overview = overview_section(context)
    # Only models with a CXR encoder have initial CXR weights to name.
    assert (
        "CXR encoder initial weights: random init (none): 2 run(s) of daft, medfuse." in overview.paragraphs
    )
    runs = overview.tables[0].frame
    variants = dict(zip(runs["model"], runs["variant"], strict=True))
    assert variants["daft"] == "cxr_to_ehr: the CXR stages scale and shift the EHR embedding (CareBench)"
    assert variants["medfuse"].startswith("staged training (MedFuse paper)")
    assert variants["lstm"] == "-"
