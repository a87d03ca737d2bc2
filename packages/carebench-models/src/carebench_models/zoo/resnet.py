"""`resnet`: unimodal CXR baseline (He et al., arXiv:1512.03385; models.md §8.3)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import CommonConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.missing import MissingToken, paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec


@dataclass(frozen=True, kw_only=True)
class ResNetConfig(CommonConfig):
    """`resnet` has no fields beyond `CommonConfig` (d_model is the projection width)."""


class ResNetModel(FusionModel):
    """ResNet→d → Dropout → Linear(d→K) on the CXR alone.

    Inputs: `cxr` [B, 3, H, W] normalised images, `has_cxr` [B].
    Missing CXR: rows without a CXR take the learned token `cxr_missing` [d] as their feature, so
    they all get one learned constant prediction (the CXR-free prior); the CNN runs on paired rows
    only and not at all for a batch without CXRs.
    """

    def __init__(self, task: TaskSpec, config: ResNetConfig) -> None:
        super().__init__(task, config)
        self.cxr_branch = ProjectedCXR(config)
        self.cxr_missing = MissingToken(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, task.num_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K] from the CXR (or the missing token)."""
        idx = paired_index(batch)
        cxr = batch["cxr"]
        features = self.cxr_missing.fill(idx, self.cxr_branch.encode_rows(cxr, idx), cxr.shape[0])
        return ModelOutput(self.head(self.dropout(features)).float())


@register_model("resnet", paper="arXiv:1512.03385", group="unimodal", modalities=("cxr",))
def resnet(task: TaskSpec, config: ResNetConfig | None = None) -> ResNetModel:
    """ResNet-50 on the chest X-ray only; a learned prior for stays without one."""
    return ResNetModel(task, config or ResNetConfig())
