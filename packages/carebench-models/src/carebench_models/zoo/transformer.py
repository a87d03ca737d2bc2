"""`transformer`: unimodal EHR baseline (Vaswani et al., arXiv:1706.03762; models.md §8.2)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.missing import require_ehr
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec


@dataclass(frozen=True, kw_only=True)
class TransformerConfig(TransformerEHRConfig):
    """`transformer` has no fields beyond the shared EHR Transformer's."""


class TransformerModel(FusionModel):
    """`TransformerEHR` → mean-pool → Linear(d→K). Never reads `cxr`.

    Inputs: `ehr` [B, T, F] normalised hourly values, `ehr_mask` [B, T, F] observed indicators.
    0.82 M parameters in the paper profile (F 27, K 25).
    """

    def __init__(self, task: TaskSpec, config: TransformerConfig) -> None:
        super().__init__(task, config)
        self.ehr_encoder = TransformerEHR.from_config(config)
        self.head = nn.Linear(config.d_model, task.num_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K] from the EHR alone."""
        require_ehr(batch)
        return ModelOutput(self.head(self.ehr_encoder(ehr_input(batch))).float())


@register_model("transformer", paper="arXiv:1706.03762", group="unimodal", modalities=("ehr",))
def transformer(task: TaskSpec, config: TransformerConfig | None = None) -> TransformerModel:
    """Self-attention encoder on the EHR only."""
    return TransformerModel(task, config or TransformerConfig())
