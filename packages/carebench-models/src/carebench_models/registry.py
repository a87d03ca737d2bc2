"""Model registry: `@register_model` on a builder function, lookup by name (models.md §2).

Adding a model is one new file in `carebench_models/zoo/`; every module there is imported the first
time the registry is queried, so the decorator is the only registration step.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from carebench_models.base import FusionModel
from carebench_models.config import CommonConfig
from carebench_models.errors import CarebenchModelError
from carebench_models.task import TaskSpec

ModelGroup = Literal["unimodal", "complete", "imbalance", "missing"]
MODEL_GROUPS: tuple[str, ...] = get_args(ModelGroup)
MODALITIES: tuple[str, ...] = ("ehr", "cxr")
Builder = Callable[..., FusionModel]
BuilderT = TypeVar("BuilderT", bound=Builder)


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model.

    Attributes:
        name: registry name (`latefusion`).
        paper: citation of the method (`arXiv:2207.07027`).
        group: `unimodal`, `complete` (complete-modality), `imbalance` (imbalance-aware) or `missing`.
        description: first line of the builder's docstring.
        config_class: the model's frozen config dataclass.
        model_class: the `FusionModel` subclass the builder returns.
        custom_step: the model overrides `training_step`.
        cnn_stages: which CNN stages the fusion reads (`"-"` when only the pooled feature).
        batch_dependent: eval outputs depend on the other rows of the batch.
        builder: `builder(task, config) -> FusionModel`.
        modalities: the inputs the model reads, `("ehr", "cxr")` for fusion models; a model without
            `cxr` builds no CXR encoder (so its CXR weights never matter).
    """

    name: str
    paper: str
    group: str
    description: str
    config_class: type[CommonConfig]
    model_class: type[FusionModel]
    custom_step: bool
    cnn_stages: str
    batch_dependent: bool
    builder: Builder
    modalities: tuple[str, ...] = MODALITIES


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    paper: str,
    group: ModelGroup,
    cnn_stages: str = "-",
    modalities: tuple[str, ...] = MODALITIES,
) -> Callable[[BuilderT], BuilderT]:
    """Register a builder `fn(task: TaskSpec, config: XConfig | None = None) -> XModel`.

    The config class and the model class are read from the builder's annotations, which are
    therefore required.

    Raises:
        CarebenchModelError: the name is taken, the group or a modality is unknown, or an annotation
            is missing.

    Example:
        >>> @register_model("mymodel", paper="arXiv:0000.00000", group="complete")  # doctest: +SKIP
        ... def mymodel(task: TaskSpec, config: MyConfig | None = None) -> MyModel:
        ...     return MyModel(task, config or MyConfig())
    """
    if group not in MODEL_GROUPS:
        raise CarebenchModelError(f"model group must be one of {', '.join(MODEL_GROUPS)}, got {group!r}")
    if not modalities or not set(modalities) <= set(MODALITIES):
        raise CarebenchModelError(
            f"model modalities must be a non-empty subset of {', '.join(MODALITIES)}, got {modalities!r}"
        )

    def decorate(builder: BuilderT) -> BuilderT:
        if name in _REGISTRY:
            raise CarebenchModelError(
                f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})"
            )
        config_class, model_class = _annotated_classes(name, builder)
        doc = inspect.getdoc(builder) or inspect.getdoc(model_class) or ""
        _REGISTRY[name] = ModelInfo(
            name=name,
            paper=paper,
            group=group,
            description=doc.splitlines()[0] if doc else "",
            config_class=config_class,
            model_class=model_class,
            custom_step=model_class.training_step is not FusionModel.training_step,
            cnn_stages=cnn_stages,
            batch_dependent=model_class.eval_batch_dependent,
            builder=builder,
            modalities=tuple(modalities),
        )
        return builder

    return decorate


def _annotated_classes(name: str, builder: Builder) -> tuple[type[CommonConfig], type[FusionModel]]:
    try:
        hints = typing.get_type_hints(builder)
    except NameError as error:
        raise CarebenchModelError(
            f"annotations of the builder of model {name!r} must name module-level classes: {error}"
        ) from error
    config_hint = hints.get("config")
    candidates = [
        arg
        for arg in (get_args(config_hint) or (config_hint,))
        if isinstance(arg, type) and issubclass(arg, CommonConfig)
    ]
    model_class = hints.get("return")
    if len(candidates) != 1 or not (isinstance(model_class, type) and issubclass(model_class, FusionModel)):
        raise CarebenchModelError(
            f"builder of model {name!r} must be annotated `(task: TaskSpec, config: XConfig | None = None) -> XModel`"
        )
    return candidates[0], model_class


def unregister_model(name: str) -> None:
    """Remove a model (for tests and plugins that register temporary models)."""
    _REGISTRY.pop(name, None)


def _load_zoo() -> None:
    importlib.import_module("carebench_models.zoo")


def available_models() -> list[str]:
    """Names of all registered models, sorted."""
    _load_zoo()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """Registry entry of `name`.

    Raises:
        CarebenchModelError: unknown name (the message lists the valid ones).
    """
    _load_zoo()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CarebenchModelError(
            f"unknown model {name!r}{hint}; available models: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def build_model(name: str, task: TaskSpec, config: CommonConfig | None = None) -> FusionModel:
    """Instantiate model `name` for `task` (config None = the `paper` profile defaults).

    Raises:
        CarebenchModelError: unknown model, or a config of another model's class.
    """
    info = model_info(name)
    if config is not None and not isinstance(config, info.config_class):
        raise CarebenchModelError(
            f"model {name!r} takes a {info.config_class.__name__}, got {type(config).__name__}"
        )
    return info.builder(task, config)


def create_model(
    name: str, *, task: TaskSpec, profile: str = "quick", cohort: str | None = None, **overrides: Any
) -> FusionModel:
    """Build model `name` from a profile, optional per-task defaults and keyword overrides.

    Precedence: `overrides` > bundled per-task defaults of (name, task.name, cohort) when `cohort`
    is given (`carebench_models.defaults`) > profile defaults.

    Raises:
        CarebenchModelError: unknown model, profile, cohort or config key.

    Example:
        >>> task = TaskSpec("mortality", "binary", 1, ("mortality",))
        >>> create_model("latefusion", task=task, profile="quick", dropout=0.1).config.dropout
        0.1
    """
    info = model_info(name)
    info.config_class.check_keys(overrides)
    values: dict[str, Any] = {}
    if cohort is not None:
        from carebench_models.defaults import task_defaults

        values.update(task_defaults(name, task.name, cohort).config)
    values.update(overrides)
    return build_model(name, task, info.config_class.for_profile(profile, **values))
