"""CXR weights of a run: ImageNet by default in the paper profile, never downloaded silently, recorded in the run id."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from carebench_cli.config import check_names, resolve_config
from carebench_cli.errors import CliError
from carebench_cli.grid import expand_grid
from carebench_cli.main import app
from carebench_cli.pipeline import check_loaded_weights, resolve_model_weights
from carebench_data.testing import write_tiny_dataset
from carebench_models import CarebenchModelError
from carebench_models.encoders import SmallCNN, file_sha256, imagenet_cache_path

V2_FILE, V1_FILE = "resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"
MODELS = ("lstm", "resnet", "latefusion", "medfuse")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache: no ImageNet file is cached."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("weights") / "dataset", n_stays=40, image_size=16)


def _one_line(output):
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    return " ".join(lines[0].split())


def _config(**file_values):
    values = {"tasks": ["mortality"], **file_values}
    return check_names(resolve_config(file_values=values), known_models=MODELS, known_tasks=("mortality",))


def test_paper_run_without_cached_weights_stops_before_anything_with_one_line(
    torch_home, dataset, tmp_path, monkeypatch
):
    runner = CliRunner()
    out = tmp_path / "runs"
    result = runner.invoke(
        app,
        ["run", "--profile", "paper", "--dataset", str(dataset), "-m", "latefusion,lstm", "--out", str(out)],
    )
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert line.startswith(f"error: CXR weights not found: {torch_home / V2_FILE} (imagenet);")
    assert "carebench models weights --download" in line
    assert not out.exists()
    # The default grid (every model, synthetic demo) stops the same way, before building the demo.
    monkeypatch.setenv("CAREBENCH_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["run", "--profile", "paper", "--out", str(out)])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert f"{torch_home / V2_FILE} (imagenet), {torch_home / V1_FILE} (imagenet_v1)" in line
    assert not (tmp_path / "cache").exists() and not out.exists()


def test_weights_command_lists_then_downloads_explicitly(torch_home, monkeypatch):
    import torchvision.models._api as torchvision_api

    runner = CliRunner()
    listed = runner.invoke(app, ["models", "weights"])
    assert listed.exit_code == 0, listed.output
    assert (
        f"imagenet: torchvision ResNet50_Weights.IMAGENET1K_V2, {torch_home / V2_FILE}: missing"
        in listed.output
    )
    v2_line, v1_line = (line for line in listed.output.splitlines() if line.startswith("imagenet"))
    assert "latefusion" in v2_line and "medfuse" not in v2_line and "lstm" not in v2_line
    assert v1_line.startswith("imagenet_v1:") and v1_line.endswith("paper-profile default of: medfuse")
    fetched = []

    def fake_download(url, *args, **kwargs):
        fetched.append(url)
        target = torch_home / Path(url).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"weights of " + url.encode())
        return {}

    monkeypatch.setattr(torchvision_api, "load_state_dict_from_url", fake_download)
    downloaded = runner.invoke(app, ["models", "weights", "--download"])
    assert downloaded.exit_code == 0, downloaded.output
    assert [Path(url).name for url in fetched] == [V2_FILE, V1_FILE]
    assert f"downloaded imagenet (torchvision ResNet50_Weights.IMAGENET1K_V2) to {torch_home / V2_FILE}" in (
        downloaded.output
    )
    listed = runner.invoke(app, ["models", "weights", "imagenet"])
    assert f"{torch_home / V2_FILE}: cached (sha256 {file_sha256(torch_home / V2_FILE)})" in listed.output
    again = runner.invoke(app, ["models", "weights", "--download"])
    assert len(fetched) == 2 and "downloaded" not in again.output  # cached files are not fetched again
    bad = runner.invoke(app, ["models", "weights", "imagenet_v3"])
    assert bad.exit_code == 2 and "unknown named weights 'imagenet_v3'" in bad.output


def test_weights_sha256_enters_the_run_id_and_none_is_recorded(torch_home, tmp_path):
    torch_home.mkdir(parents=True)
    (torch_home / V2_FILE).write_bytes(b"v2")
    (torch_home / V1_FILE).write_bytes(b"v1")
    config = _config(profile="paper")
    weights = resolve_model_weights(config)
    assert weights["lstm"] == ("none", "none")  # no CXR encoder
    assert weights["resnet"] == weights["latefusion"] == ("imagenet", file_sha256(torch_home / V2_FILE))
    assert weights["medfuse"] == ("imagenet_v1", file_sha256(torch_home / V1_FILE))
    specs = {spec.model: spec for spec in expand_grid(config, dataset_hash="h", weights=weights.__getitem__)}
    assert specs["latefusion"].to_dict()["cxr_weights_sha256"] == file_sha256(torch_home / V2_FILE)
    first = {model: spec.run_id for model, spec in specs.items()}
    (torch_home / V2_FILE).write_bytes(b"other v2")  # other weights under the same name: other runs
    weights = resolve_model_weights(config)
    second = {
        spec.model: spec.run_id for spec in expand_grid(config, dataset_hash="h", weights=weights.__getitem__)
    }
    assert second["latefusion"] != first["latefusion"] and second["resnet"] != first["resnet"]
    assert second["lstm"] == first["lstm"] and second["medfuse"] == first["medfuse"]
    # Random init is available explicitly (run-wide or per model) and recorded as none.
    config = _config(profile="paper", cxr_weights="none", hparams={"medfuse": {"cxr_weights": "imagenet"}})
    weights = resolve_model_weights(config)
    assert weights["latefusion"] == ("none", "none")
    assert weights["medfuse"] == ("imagenet", file_sha256(torch_home / V2_FILE))
    specs = {spec.model: spec for spec in expand_grid(config, dataset_hash="h", weights=weights.__getitem__)}
    assert specs["latefusion"].to_dict()["cxr_weights"] == "none"
    assert "cxr_weights" not in specs["medfuse"].hparams  # one owner: the spec's cxr_weights
    # A local file (e.g. CXR-domain weights) works the same way; a missing one is one clear error.
    local = tmp_path / "cxr_domain.safetensors"
    local.write_bytes(b"cxr-domain weights")
    weights = resolve_model_weights(_config(profile="paper", cxr_weights=str(local)))
    assert weights["resnet"] == (str(local.resolve()), file_sha256(local))
    with pytest.raises(CarebenchModelError, match="CXR weights file not found"):
        resolve_model_weights(_config(profile="paper", cxr_weights=str(tmp_path / "absent.safetensors")))
    with pytest.raises(CarebenchModelError, match="no ImageNet weights"):
        resolve_model_weights(_config(profile="quick", cxr_weights="imagenet"))


def test_quick_run_with_a_local_weights_file_records_and_loads_it(dataset, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "small_cnn.safetensors"
    save_file({key: value.contiguous() for key, value in SmallCNN().state_dict().items()}, str(weights))
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            "run", "--dataset", str(dataset), "-m", "resnet,lstm", "-t", "mortality", "--device", "cpu",
            "--cxr-weights", str(weights), "--out", str(out), "--no-report", "--jobs", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (resnet_dir,) = out.glob("resnet-mortality-*")
    config = json.loads((resnet_dir / "config.json").read_text())
    assert (config["cxr_weights"], config["cxr_weights_sha256"]) == (
        str(weights.resolve()),
        file_sha256(weights),
    )
    (lstm_dir,) = out.glob("lstm-mortality-*")
    assert json.loads((lstm_dir / "config.json").read_text())["cxr_weights"] == "none"
    metrics = json.loads((resnet_dir / "metrics.json").read_text())
    assert metrics["model_info"]["modalities"] == ["cxr"]


def test_a_changed_weights_file_is_refused_at_training_time(torch_home):
    torch_home.mkdir(parents=True)
    (spec,) = expand_grid(
        _config(models=["resnet"], profile="quick"),
        dataset_hash="h",
        weights=lambda model: ("x.pt", "ab" * 32),
    )
    from carebench_models import create_model
    from carebench_models.testing import task_spec

    model = create_model("resnet", task=task_spec("binary"), profile="quick")
    model.cxr_branch.encoder.weights_sha256 = "cd" * 32
    with pytest.raises(CliError, match="changed since the grid was planned"):
        check_loaded_weights(model, spec)
    assert imagenet_cache_path("imagenet").parent == torch_home
