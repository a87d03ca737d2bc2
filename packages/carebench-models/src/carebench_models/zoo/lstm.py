"""`lstm`: unimodal EHR baseline (Hochreiter & Schmidhuber 1997; models.md §8.1)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import CommonConfig
from carebench_models.encoders.ehr import LSTMEHR, ehr_input
from carebench_models.missing import require_ehr
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec


@dataclass(frozen=True, kw_only=True)
class LSTMConfig(CommonConfig):
    """`lstm` has no fields beyond `CommonConfig` (hidden width = d_model; CareBench lr 4e-4)."""


class LSTMModel(FusionModel):
    """`LSTMEHR` (bidirectional, 1 layer) → Linear(d→K). Never reads `cxr`.

    Inputs: `ehr` [B, T, F] normalised hourly values, `ehr_mask` [B, T, F] observed indicators.
    A missing CXR changes nothing: the model has no CXR input.
    """

    def __init__(self, task: TaskSpec, config: LSTMConfig) -> None:
        super().__init__(task, config)
        self.ehr_encoder = LSTMEHR.from_config(config)
        self.head = nn.Linear(config.d_model, task.num_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K] from the EHR alone."""
        require_ehr(batch)
        return ModelOutput(self.head(self.ehr_encoder(ehr_input(batch))).float())


@register_model("lstm", paper="Hochreiter & Schmidhuber 1997", group="unimodal", modalities=("ehr",))
def lstm(task: TaskSpec, config: LSTMConfig | None = None) -> LSTMModel:
    """Bidirectional LSTM on the EHR only."""
    return LSTMModel(task, config or LSTMConfig())
