import pytest
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_data.testing import write_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("cli") / "dataset", n_stays=40, image_size=16)


def _invoke(*args):
    return CliRunner().invoke(app, list(args))


def _one_line(output):
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    return " ".join(lines[0].split())


def test_unknown_model_is_one_line_listing_valid_models(dataset, tmp_path):
    from carebench_models import available_models

    result = _invoke(
        "run", "--dataset", str(dataset), "--models", "lstm,drfus", "--out", str(tmp_path / "runs")
    )
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert line.startswith("error: unknown model 'drfus'; valid models: ")
    assert line.endswith(", ".join(sorted(available_models())))
    assert not (tmp_path / "runs").exists()


def test_unknown_task_and_config_key(dataset, tmp_path):
    result = _invoke(
        "run", "--dataset", str(dataset), "--tasks", "mortality,mort", "--out", str(tmp_path / "runs")
    )
    assert result.exit_code == 2
    assert _one_line(result.output) == "error: unknown task 'mort'; valid tasks: los, mortality, phenotype"
    config = tmp_path / "run.toml"
    config.write_text('modles = ["lstm"]\n')
    result = _invoke("run", "--config", str(config))
    assert result.exit_code == 2
    assert _one_line(result.output).startswith(
        "error: run config: unknown key(s) 'modles'; valid keys: cohorts, cxr_weights, dataset"
    )


def test_bad_override_fails_before_any_training(dataset, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        f'dataset = "{dataset}"\nmodels = ["lstm"]\ntasks = ["mortality"]\n[hparams.lstm]\nhiden = 3\n'
    )
    result = _invoke("run", "--config", str(config), "--out", str(tmp_path / "runs"))
    assert result.exit_code != 0
    assert "hiden" in _one_line(result.output)
    assert not (tmp_path / "runs").exists()


def test_bad_shard_and_missing_dataset(dataset, tmp_path):
    result = _invoke("run", "--dataset", str(dataset), "--shard", "2/2", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert _one_line(result.output) == "error: --shard 2/2: need 0 <= I < N"
    result = _invoke("run", "--dataset", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    assert "not a carebench dataset directory" in _one_line(result.output)


def test_report_of_empty_store_and_models_listing(tmp_path):
    (tmp_path / "runs").mkdir()
    result = _invoke("report", str(tmp_path / "runs"))
    assert result.exit_code == 1
    assert "no finished runs to report" in _one_line(result.output)
    result = _invoke("models", "--plain")
    assert result.exit_code == 0
    names = result.output.split()
    assert {"lstm", "transformer", "resnet", "latefusion"} <= set(names)
    assert names.index("lstm") < names.index("latefusion")  # unimodal group first
