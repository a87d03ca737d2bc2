"""TaskSpec losses and probabilities, config profiles and the registry's errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from carebench_models import (
    CarebenchModelError,
    CommonConfig,
    FusionModel,
    ModelOutput,
    TaskSpec,
    TransformerEHRConfig,
    available_models,
    build_model,
    create_model,
    model_info,
    register_model,
)
from carebench_models.defaults import defaults_table, task_defaults
from carebench_models.registry import unregister_model
from carebench_models.testing import task_spec


def test_binary_loss_and_proba_match_the_formulas() -> None:
    task = task_spec("binary")
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    y = torch.tensor([[1.0], [0.0], [0.0]])
    p = 1 / (1 + np.exp(-logits.numpy()))
    expected = -np.mean(y.numpy() * np.log(p) + (1 - y.numpy()) * np.log(1 - p))
    assert task.loss(logits, y).item() == pytest.approx(expected, rel=1e-6)
    assert task.per_sample_loss(logits, y).shape == (3,)
    assert task.per_sample_loss(logits, y).mean().item() == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(task.proba(logits).numpy(), p, rtol=1e-6)


def test_multilabel_per_sample_loss_is_the_label_mean() -> None:
    task = task_spec("multilabel")
    logits = torch.tensor([[1.0, -2.0, 0.0], [0.3, 0.2, -0.1]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    p = torch.sigmoid(logits)
    elementwise = -(y * p.log() + (1 - y) * (1 - p).log())
    torch.testing.assert_close(task.per_sample_loss(logits, y), elementwise.mean(dim=1))
    torch.testing.assert_close(task.loss(logits, y), elementwise.mean())


def test_multiclass_loss_is_cross_entropy_and_proba_sums_to_one() -> None:
    task = task_spec("multiclass")
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 6, 3, 3])
    log_p = torch.log_softmax(logits, dim=1)
    expected = -log_p[torch.arange(4), y]
    torch.testing.assert_close(task.per_sample_loss(logits, y), expected)
    torch.testing.assert_close(task.loss(logits, y), expected.mean())
    torch.testing.assert_close(task.proba(logits).sum(dim=1), torch.ones(4))
    torch.testing.assert_close(task.one_hot(y)[1], torch.eye(7)[6])


@pytest.mark.parametrize(
    ("kind", "outputs", "labels"),
    [("binary", 2, ("a", "b")), ("multiclass", 1, ("a",)), ("multilabel", 2, ("a",)), ("ordinal", 1, ("a",))],
)
def test_inconsistent_task_specs_raise(kind: str, outputs: int, labels: tuple[str, ...]) -> None:
    with pytest.raises(CarebenchModelError):
        TaskSpec("t", kind, outputs, labels)  # type: ignore[arg-type]


def test_targets_of_the_wrong_layout_raise_clearly() -> None:
    with pytest.raises(CarebenchModelError, match="int64 class indices"):
        task_spec("multiclass").loss(torch.zeros(4, 7), torch.zeros(4, 1))
    with pytest.raises(CarebenchModelError, match=r"expects y float32 \[B=4, K=3\]"):
        task_spec("multilabel").per_sample_loss(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(CarebenchModelError, match=r"expects logits \[B, 1\]"):
        task_spec("binary").loss(torch.zeros(4, 2), torch.zeros(4, 1))


def test_task_spec_from_any_task_info_object() -> None:
    @dataclass(frozen=True)
    class Info:
        name: str = "los"
        kind: str = "multiclass"
        num_outputs: int = 3
        label_names: tuple[str, ...] = ("a", "b", "c")
        columns: tuple[str, ...] = ("los_class",)

    assert TaskSpec.from_info(Info()) == TaskSpec("los", "multiclass", 3, ("a", "b", "c"))


def test_profiles_fill_defaults_and_overrides_win() -> None:
    quick = TransformerEHRConfig.for_profile("quick")
    paper = TransformerEHRConfig.for_profile("paper")
    assert (quick.d_model, quick.ehr_heads, quick.ehr_ff, quick.cxr_encoder, quick.image_size) == (
        32,
        2,
        64,
        "smallcnn",
        64,
    )
    assert (paper.d_model, paper.ehr_heads, paper.ehr_ff, paper.cxr_encoder, paper.image_size) == (
        256,
        4,
        1024,
        "resnet50",
        224,
    )
    assert TransformerEHRConfig.for_profile("quick", ehr_ff=8).ehr_ff == 8


@pytest.mark.parametrize(
    "overrides",
    [
        {"dropout": 1.5},
        {"d_model": 30, "ehr_heads": 4},
        {"cxr_encoder": "vit"},
        {"image_size": 16},
        {"cxr_weights": "imagenet"},
    ],
)
def test_invalid_config_values_raise(overrides: dict[str, object]) -> None:
    with pytest.raises(CarebenchModelError):
        TransformerEHRConfig.for_profile("quick", **overrides)


def test_unknown_keys_and_profiles_raise_with_the_valid_names() -> None:
    with pytest.raises(CarebenchModelError, match="valid keys: profile, ehr_features"):
        CommonConfig.for_profile("quick", hidden_size=3)
    with pytest.raises(CarebenchModelError, match="valid profiles"):
        CommonConfig.for_profile("huge")


def test_unknown_model_lists_the_available_ones() -> None:
    with pytest.raises(CarebenchModelError, match=r"did you mean 'lstm'.*available models: .*latefusion"):
        model_info("lstn")
    with pytest.raises(CarebenchModelError):
        create_model("nope", task=task_spec("binary"))


def test_build_model_rejects_another_models_config() -> None:
    config = model_info("lstm").config_class.for_profile("quick")
    with pytest.raises(CarebenchModelError, match="takes a"):
        build_model("transformer", task_spec("binary"), config)  # type: ignore[arg-type]


class Constant(FusionModel):
    def forward(self, batch):  # type: ignore[no-untyped-def]
        return ModelOutput(torch.zeros(batch["ehr"].shape[0], self.task.num_outputs))


def constant(task: TaskSpec, config: CommonConfig | None = None) -> Constant:
    """A constant model."""
    return Constant(task, config or CommonConfig())


def test_register_model_rejects_duplicates_and_missing_annotations() -> None:
    register_model("constant_for_test", paper="none", group="unimodal")(constant)
    try:
        assert "constant_for_test" in available_models()
        info = model_info("constant_for_test")
        assert (info.config_class, info.model_class, info.custom_step) == (CommonConfig, Constant, False)
        assert info.description == "A constant model."
        with pytest.raises(CarebenchModelError, match="already registered"):
            register_model("constant_for_test", paper="none", group="unimodal")(constant)
    finally:
        unregister_model("constant_for_test")
    with pytest.raises(CarebenchModelError, match="must be annotated"):
        register_model("unannotated_for_test", paper="none", group="unimodal")(lambda task, config=None: None)
    with pytest.raises(CarebenchModelError, match="group"):
        register_model("x", paper="none", group="fancy")  # type: ignore[arg-type]
    with pytest.raises(CarebenchModelError, match="modalities"):
        register_model("x", paper="none", group="unimodal", modalities=("ehr", "notes"))


def test_registry_names_the_modalities_each_model_reads() -> None:
    from carebench_models.encoders import CXREncoder

    assert model_info("lstm").modalities == model_info("transformer").modalities == ("ehr",)
    assert model_info("resnet").modalities == ("cxr",)
    assert model_info("latefusion").modalities == ("ehr", "cxr")
    # A model without the CXR modality builds no CXR encoder, so its CXR weights never matter; a model
    # that reads the CXR without a CNN (UMSE's image patches) says it takes no CXR weights.
    for name in available_models():
        info = model_info(name)
        model = create_model(name, task=task_spec("binary"), profile="quick")
        has_cnn = any(isinstance(module, CXREncoder) for module in model.modules())
        assert has_cnn == ("cxr" in info.modalities and info.config_class.takes_cxr_weights), name


def test_cohort_defaults_reach_the_config() -> None:
    assert task_defaults("lstm", "mortality", "full").train == {"lr": 4e-4}
    assert "tuned on test by CareBench" in task_defaults("aug", "los", "paired").source
    assert task_defaults("aug", "los", "paired").config["t_check"] == 10
    assert task_defaults("latefusion", "phenotype", "paired").config == {}
    with pytest.raises(CarebenchModelError, match="cohort"):
        task_defaults("lstm", "mortality", "matched")


@pytest.mark.parametrize("name", sorted(set(defaults_table()) & set(available_models())))
def test_bundled_defaults_name_real_config_fields(name: str) -> None:
    entry = defaults_table()[name]
    fields = set(model_info(name).config_class.field_names())
    for task_name, cohorts in entry.get("config", {}).items():
        for cohort, values in cohorts.items():
            assert set(values) <= fields, (name, task_name, cohort, set(values) - fields)
            kind = {"los": "multiclass", "phenotype": "multilabel"}.get(task_name, "binary")
            spec = task_spec(kind)
            spec = TaskSpec(task_name, spec.kind, spec.num_outputs, spec.label_names)
            model = create_model(name, task=spec, profile="quick", cohort=cohort)
            for key, value in values.items():
                assert getattr(model.config, key) == value
