"""Shared encoders: shapes, stage interface, weight files, the missing-CXR helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50

from carebench_models import CarebenchModelError, TransformerEHRConfig, create_model
from carebench_models.encoders import (
    LSTMEHR,
    ResNet50CXR,
    SmallCNN,
    TransformerEHR,
    build_cxr_encoder,
    download_imagenet_weights,
    ehr_input,
    file_sha256,
    imagenet_cache_path,
    load_cxr_weights,
    resolve_cxr_weights,
)
from carebench_models.missing import MissingToken, paired_index, scatter_rows
from carebench_models.testing import task_spec, tiny_batch


def test_ehr_input_appends_one_indicator_per_feature() -> None:
    batch = tiny_batch(task_spec("binary"), 3)
    x = ehr_input(batch)
    assert x.shape == (3, 48, 12)
    torch.testing.assert_close(x[..., 6:], batch["ehr_mask"].float())


def test_ehr_encoders_shapes_and_paper_sizes() -> None:
    config = TransformerEHRConfig.for_profile("paper")
    transformer = TransformerEHR.from_config(config)
    lstm = LSTMEHR.from_config(config)
    assert sum(p.numel() for p in transformer.parameters()) == 816_128
    assert sum(p.numel() for p in lstm.parameters()) == 1_198_080
    x = torch.randn(2, 48, 54)
    assert transformer.encode_sequence(x).shape == (2, 48, 256)
    assert transformer(x).shape == lstm(x).shape == (2, 256)
    assert float(transformer.position.detach().abs().max()) <= 0.1


def test_resnet50_stages_at_224_px() -> None:
    encoder = ResNet50CXR().eval()
    assert sum(p.numel() for p in encoder.parameters()) == 23_508_032
    with torch.no_grad():
        maps = encoder.forward_stages(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (64, 56, 56),
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (2048, 7, 7),
    ]


def test_small_cnn_stages_and_pooled_output_agree() -> None:
    encoder = SmallCNN().eval()
    assert 0.29e6 < sum(p.numel() for p in encoder.parameters()) < 0.33e6
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = encoder.forward_stages(x)
        pooled = encoder(x)
        first_two = encoder.forward_stages(x, upto=1)
    assert [m.shape[-1] for m in maps] == [32, 32, 16, 8, 4]
    assert [m.shape[1] for m in maps] == list(encoder.stage_channels)
    torch.testing.assert_close(pooled, maps[-1].mean(dim=(2, 3)))
    assert len(first_two) == 2


def test_channels_last_is_applied_when_asked() -> None:
    encoder = SmallCNN(channels_last=True)
    assert encoder.prepare_input(torch.randn(2, 3, 32, 32)).is_contiguous(memory_format=torch.channels_last)
    assert SmallCNN().prepare_input(torch.randn(2, 3, 32, 32)).is_contiguous()


def test_torchvision_weight_files_load_with_renamed_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = resnet50(weights=None)
    state = {f"module.{key}": value.contiguous() for key, value in source.state_dict().items()}
    path = tmp_path / "resnet50.safetensors"
    save_file(state, str(path))
    encoder = ResNet50CXR().eval()
    digest = load_cxr_weights(encoder, str(path))
    assert encoder.weights_sha256 == digest and len(digest) == 64
    torch.testing.assert_close(encoder.stem[0].weight, source.conv1.weight)
    source.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = torch.flatten(
            source.avgpool(
                source.layer4(
                    source.layer3(
                        source.layer2(source.layer1(source.maxpool(source.relu(source.bn1(source.conv1(x))))))
                    )
                )
            ),
            1,
        )
        torch.testing.assert_close(encoder(x), reference)


def test_pt_files_are_read_without_pickle_and_bad_keys_raise(tmp_path: Path) -> None:
    encoder = SmallCNN()
    good = tmp_path / "small.pt"
    torch.save(encoder.state_dict(), good)
    load_cxr_weights(SmallCNN(), str(good))
    bad = tmp_path / "bad.safetensors"
    save_file({"stem.0.weight": torch.zeros(16, 3, 3, 3), "head.weight": torch.zeros(2)}, str(bad))
    with pytest.raises(CarebenchModelError, match="unexpected keys"):
        load_cxr_weights(SmallCNN(), str(bad))
    with pytest.raises(CarebenchModelError, match="not found"):
        load_cxr_weights(SmallCNN(), str(tmp_path / "absent.safetensors"))


def test_imagenet_weights_never_download_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    expected = imagenet_cache_path("imagenet")
    assert expected.parent == tmp_path / "checkpoints"

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    config = TransformerEHRConfig.for_profile("paper", cxr_weights="imagenet")
    with pytest.raises(CarebenchModelError, match=str(expected)):
        build_cxr_encoder(config)
    expected.parent.mkdir(parents=True)
    torch.save(resnet50(weights=None).state_dict(), expected)
    encoder = build_cxr_encoder(config)
    assert encoder.weights_sha256 is not None


def test_paired_index_and_scatter_follow_the_missing_rule() -> None:
    batch = {"has_cxr": torch.tensor([True, False, True, False]), "has_ehr": torch.ones(4, dtype=torch.bool)}
    idx = paired_index(batch)
    assert idx.tolist() == [0, 2]
    token = MissingToken(3)
    rows = torch.ones(2, 3)
    filled = token.fill(idx, rows, 4)
    torch.testing.assert_close(filled[[0, 2]], rows)
    torch.testing.assert_close(filled[1], token.value.detach())
    assert token.fill(idx[:0], None, 4).shape == (4, 3)
    assert scatter_rows(torch.zeros(4, 3), idx, None).abs().sum() == 0
    filled.sum().backward()
    torch.testing.assert_close(token.value.grad, torch.full((3,), 2.0))


def test_rows_without_ehr_are_refused() -> None:
    batch = {"has_cxr": torch.tensor([True, False]), "has_ehr": torch.tensor([True, False])}
    with pytest.raises(CarebenchModelError, match="has_ehr=False"):
        paired_index(batch)


def test_paper_profile_fine_tunes_imagenet_weights_and_quick_starts_random() -> None:
    from carebench_models.zoo.latefusion import LateFusionConfig

    assert LateFusionConfig.for_profile("paper").cxr_weights == "imagenet"
    assert LateFusionConfig().cxr_weights == "imagenet"
    assert LateFusionConfig.for_profile("quick").cxr_weights == "none"
    assert LateFusionConfig.for_profile("paper", cxr_weights="none").cxr_weights == "none"


def test_paper_profile_model_refuses_uncached_imagenet_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = imagenet_cache_path("imagenet")
    assert expected == tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    with pytest.raises(CarebenchModelError, match=f"not cached at {expected}"):
        create_model("resnet", task=task_spec("binary"), profile="paper")


def test_imagenet_download_uses_torchvisions_weights_api_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.models._api as torchvision_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    fetched: list[str] = []

    def fake_download(url: str, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        # What torch hub does: the file lands in <hub>/checkpoints/<basename of the url>.
        fetched.append(url)
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        target.parent.mkdir(parents=True, exist_ok=True)
        state = resnet50(weights=None).state_dict()
        torch.save(state, target)
        return state

    monkeypatch.setattr(torchvision_api, "load_state_dict_from_url", fake_download)
    with pytest.raises(CarebenchModelError, match="not cached"):
        resolve_cxr_weights("imagenet_v1", allow_download=False)
    assert fetched == []
    path = download_imagenet_weights("imagenet_v1")
    assert fetched == ["https://download.pytorch.org/models/resnet50-0676ba61.pth"]
    assert path == imagenet_cache_path("imagenet_v1") and path.is_file()
    assert resolve_cxr_weights("imagenet_v1", allow_download=False) == path
    encoder = build_cxr_encoder(TransformerEHRConfig.for_profile("paper", cxr_weights="imagenet_v1"))
    assert encoder.weights_sha256 == file_sha256(path)
    assert fetched == ["https://download.pytorch.org/models/resnet50-0676ba61.pth"]  # no second fetch
    with pytest.raises(CarebenchModelError, match="unknown named CXR weights"):
        imagenet_cache_path("imagenet_v3")


def test_a_local_cxr_domain_weight_file_is_used_like_imagenet(tmp_path: Path) -> None:
    # CXR-pretrained weights with torchvision key names (and a classifier head, which is ignored).
    torch.manual_seed(3)
    source = resnet50(weights=None)
    state = {key: value.contiguous() for key, value in source.state_dict().items()}
    path = tmp_path / "cxr_domain.safetensors"
    save_file(state, str(path))
    model = create_model("latefusion", task=task_spec("binary"), profile="paper", cxr_weights=str(path))
    encoder = model.cxr_branch.encoder
    torch.testing.assert_close(encoder.layer4[2].conv3.weight, source.layer4[2].conv3.weight)
    assert encoder.weights_sha256 == file_sha256(path)
