"""`latefusion`: joint feature concatenation (MedFuse's "joint" baseline, arXiv:2207.07027; models.md §8.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import MissingToken, paired_index, scatter_rows
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec


@dataclass(frozen=True, kw_only=True)
class LateFusionConfig(TransformerEHRConfig):
    """Configuration of `latefusion`."""

    mode: Literal["concat", "logit_average"] = "concat"
    """`concat` (CareBench): Linear on [EHR; CXR] embeddings. `logit_average`: mean of two unimodal
    heads' logits, the EHR head alone for rows without a CXR (classic decision-level late fusion)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("concat", "logit_average"):
            raise CarebenchModelError(
                f"latefusion mode must be 'concat' or 'logit_average', got {self.mode!r}"
            )


class LateFusionModel(FusionModel):
    """`TransformerEHR` → e [B, d]; ResNet→d → c [n_c, d]; fused by concatenation or logit average.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].
    `concat`: h = [e; c_full] [B, 2d] → Linear(2d→K), where c_full is the learned token
    `cxr_missing` [d] on rows without a CXR. `logit_average`: (head_e(e) + head_c(c)) / 2 on paired
    rows, head_e(e) elsewhere. A batch without CXRs never runs the CNN.
    """

    def __init__(self, task: TaskSpec, config: LateFusionConfig) -> None:
        super().__init__(task, config)
        self.mode = config.mode
        self.ehr_encoder = TransformerEHR.from_config(config)
        self.cxr_branch = ProjectedCXR(config)
        if config.mode == "concat":
            self.cxr_missing = MissingToken(config.d_model)
            self.head = nn.Linear(2 * config.d_model, task.num_outputs)
        else:
            self.ehr_head = nn.Linear(config.d_model, task.num_outputs)
            self.cxr_head = nn.Linear(config.d_model, task.num_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K]."""
        idx = paired_index(batch)
        ehr = self.ehr_encoder(ehr_input(batch))
        cxr_rows = self.cxr_branch.encode_rows(batch["cxr"], idx)
        if self.mode == "concat":
            cxr = self.cxr_missing.fill(idx, cxr_rows, ehr.shape[0])
            logits = self.head(torch.cat([ehr, cxr.to(ehr.dtype)], dim=1))
        else:
            logits = self.ehr_head(ehr)
            if cxr_rows is not None:
                averaged = (logits.index_select(0, idx) + self.cxr_head(cxr_rows)) / 2
                logits = scatter_rows(logits, idx, averaged)
        return ModelOutput(logits.float())


@register_model("latefusion", paper="arXiv:2207.07027", group="complete")
def latefusion(task: TaskSpec, config: LateFusionConfig | None = None) -> LateFusionModel:
    """Concatenated EHR and CXR embeddings with a linear classifier, trained end to end."""
    return LateFusionModel(task, config or LateFusionConfig())
