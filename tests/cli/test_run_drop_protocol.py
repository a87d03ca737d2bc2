"""Train-time CXR drop: the upstream protocol (default) also drops validation CXRs; train_only keeps them."""

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from carebench_cli.config import ReportConfig, check_names, resolve_config
from carebench_cli.errors import CliError
from carebench_cli.grid import RunSpec, expand_grid
from carebench_cli.main import app
from carebench_cli.report import write_report_dir
from carebench_data.testing import write_tiny_dataset


def _grid(**file_values):
    config = check_names(
        resolve_config(file_values=file_values), known_models=("lstm",), known_tasks=("los",)
    )
    return expand_grid(config, dataset_hash="h")


def test_upstream_is_the_default_and_names_the_splits_it_drops_from():
    dropped, kept = (
        {spec.train_cxr_drop: spec for spec in _grid(tasks=["los"], train_cxr_drop=[0.0, 0.3], **extra)}
        for extra in ({}, {"train_cxr_drop_protocol": "train_only"})
    )
    assert dropped[0.3].train_cxr_drop_protocol == "upstream"
    assert dropped[0.3].train_missingness == ("trainval_cxr_drop_0.3",)
    assert dropped[0.3].setting_name("natural") == "cohort_base+trainval_cxr_drop_0.3"
    assert kept[0.3].train_missingness == ("train_cxr_drop_0.3",)
    # The protocol is part of a dropping run's id, and of no other run's.
    assert dropped[0.3].run_id != kept[0.3].run_id
    assert dropped[0.0].run_id == kept[0.0].run_id
    assert "train_cxr_drop_protocol" not in dropped[0.0].to_dict()
    assert RunSpec.from_dict(dropped[0.3].to_dict()) == dropped[0.3]
    # Configs written before the protocol existed describe train-only runs.
    old = {key: value for key, value in kept[0.3].to_dict().items() if key != "train_cxr_drop_protocol"}
    assert RunSpec.from_dict(old).train_cxr_drop_protocol == "train_only"
    with pytest.raises(CliError, match="valid train_cxr_drop_protocols: upstream, train_only"):
        resolve_config(file_values={"train_cxr_drop_protocol": "val_only"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("drop")
    dataset = write_tiny_dataset(root / "dataset", n_stays=120, image_size=16, paired_fraction=0.7, seed=4)
    out = root / "runs"
    for protocol in ("upstream", "train_only"):
        config = root / f"{protocol}.toml"
        config.write_text(
            f'dataset = "{dataset}"\nout = "{out}"\nmodels = ["lstm"]\ntasks = ["mortality"]\n'
            f'train_cxr_drop = [0.0, 0.5]\ntrain_cxr_drop_protocol = "{protocol}"\ndevice = "cpu"\n'
            "[train]\nmax_epochs = 1\nmin_epochs = 1\n[report]\nn_boot = 20\nn_perm = 20\n"
        )
        result = CliRunner().invoke(app, ["run", "--config", str(config), "--no-report", "--jobs", "1"])
        assert result.exit_code == 0, result.output
    return out


def _run(out, *, drop, protocol=None):
    for path in out.glob("lstm-mortality-*/config.json"):
        config = json.loads(path.read_text())
        if config["train_cxr_drop"] == drop and config.get("train_cxr_drop_protocol") == protocol:
            return path.parent
    raise AssertionError(f"no run with drop {drop} and protocol {protocol}")


def test_validation_split_follows_the_protocol(store):
    # Three runs: the run without a drop is shared by both protocols.
    assert len(list(store.glob("lstm-mortality-*"))) == 3
    natural = pl.read_parquet(_run(store, drop=0.0) / "val_predictions.parquet")
    upstream = pl.read_parquet(_run(store, drop=0.5, protocol="upstream") / "val_predictions.parquet")
    train_only = pl.read_parquet(_run(store, drop=0.5, protocol="train_only") / "val_predictions.parquet")
    paired = int(natural["has_cxr"].sum())
    assert paired >= 4
    assert int(upstream["has_cxr"].sum()) == paired - paired // 2
    assert int(train_only["has_cxr"].sum()) == paired
    assert upstream["setting"].unique().to_list() == ["cohort_base+trainval_cxr_drop_0.5"]
    assert train_only["setting"].unique().to_list() == ["cohort_base+train_cxr_drop_0.5"]
    # The test set is untouched by a train-time drop: every run sees the same natural test CXRs.
    natural_test = [
        pl.read_parquet(_run(store, drop=drop, protocol=protocol) / "predictions.parquet").filter(
            ~pl.col("setting").str.contains("test_cxr")
        )
        for drop, protocol in ((0.0, None), (0.5, "upstream"), (0.5, "train_only"))
    ]
    assert len({int(frame["has_cxr"].sum()) for frame in natural_test}) == 1


def test_table_4_is_labelled_with_the_protocols_that_ran(store):
    report = write_report_dir(store, config=ReportConfig(n_boot=20, n_perm=20))
    markdown = (report / "report.md").read_text()
    caption = next(line for line in markdown.splitlines() if "Table 4." in line)
    assert (
        "upstream protocol: the CXR is removed from the same share of training and validation stays"
        in caption
    )
    assert "train-only protocol: the CXR is removed from a share of training stays, validation" in caption
    table = markdown.split("Table 4.")[1]
    assert "| protocol | cohort | task | model | drop 0% | drop 50% |" in table
    assert (
        "| upstream | base | mortality | lstm |" in table
        and "| train_only | base | mortality | lstm |" in table
    )
