"""`shaspec`: shared and specific feature learning for missing modalities (Wang et al., CVPR 2023).

Paper arXiv:2307.14126 ("Multi-modal Learning with Missing Modality via Shared-Specific Feature
Modelling"), reference code `billhhh/ShaSpec`. A shared encoder (one set of weights for every
modality) and modality-specific encoders; the shared features are aligned across modalities, the
specific ones made modality-discriminative by a domain classifier; each modality's fused feature is
its shared feature plus a residual projection of [shared; specific]; a missing modality's fused
feature is the mean of the available modalities' shared features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

EHR_DOMAIN, CXR_DOMAIN = 0, 1


@dataclass(frozen=True, kw_only=True)
class ShaSpecConfig(TransformerEHRConfig):
    """Configuration of `shaspec` (`paper`: d 256, two ResNet-50; `quick`: d 32, two SmallCNN).

    `ehr_heads` and `ehr_ff` size both the specific EHR encoder and the shared Transformer layer.
    α and β default to the reference code's base config; the bundled per-task defaults hold
    CareBench's values.
    """

    alpha: float = 0.1
    """Weight of the shared-feature alignment loss (mean |r_EHR − r_CXR| over paired rows)."""
    beta: float = 0.02
    """Weight of the domain-classification loss on the specific features."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0 or self.beta < 0:
            raise CarebenchModelError(f"shaspec alpha and beta must be >= 0, got {self.alpha}, {self.beta}")


class ShaSpecModel(FusionModel):
    """Shared encoder (same Transformer layer for both modalities) plus specific encoders, residual fusion.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].

    - Shared: EHR tokens `Linear(2F → d)(x) + mod[0] + pos` [B, T, d]; CXR token `ResNet→d + mod[1] +
      pos[0]` [n_c, 1, d] (its own CNN: tokenisers are modality-specific); one post-LN Transformer
      layer (GELU) applied to each batch, mean over tokens → Linear(d → d) → `r_e` [B, d], `r_c` [n_c, d].
      `mod` [2, d] and `pos` [T, d] are initialised N(0, 0.02).
    - Specific: `TransformerEHR` → `s_e` [B, d]; ResNet→d → `s_c` [n_c, d].
    - Fusion: `f_m = r_m + W[r_m; s_m]` (W: Linear(2d → d), shared); `h = (f_e + f_c)/2` → Dropout →
      Linear(d → d/2) → ReLU → Dropout → Linear(d/2 → K) → logits [B, K].
    - Aux losses: `align` = α · mean |r_e − r_c| over paired rows; `domain` = β · CE of D = Linear(d → 2)
      on the specific features (B EHR rows labelled 0, n_c CXR rows labelled 1); both in float32.

    Missing CXR: `f_c = r_e` (the mean of the available shared features); no CXR row enters the
    alignment or the domain loss. A batch without CXRs runs neither CNN.
    """

    def __init__(self, task: TaskSpec, config: ShaSpecConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.alpha, self.beta = config.alpha, config.beta
        self.shared_ehr_tokens = nn.Linear(2 * config.ehr_features, d)
        self.shared_cxr_tokens = ProjectedCXR(config)
        self.modality_embedding = nn.Parameter(torch.empty(2, d))
        self.shared_position = nn.Parameter(torch.empty(config.ehr_steps, d))
        for parameter in (self.modality_embedding, self.shared_position):
            nn.init.normal_(parameter, std=0.02)
        self.shared_layer = nn.TransformerEncoderLayer(
            d,
            config.ehr_heads,
            dim_feedforward=config.ehr_ff,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
        )
        self.shared_out = nn.Linear(d, d)
        self.specific_ehr = TransformerEHR.from_config(config)
        self.specific_cxr = ProjectedCXR(config)
        self.residual = nn.Linear(2 * d, d)
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(d, d // 2),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(d // 2, task.num_outputs),
        )
        self.domain_classifier = nn.Linear(d, 2)

    def shared(self, tokens: Tensor) -> Tensor:
        """The shared encoder's Transformer part: tokens [n, L, d] → shared feature [n, d]."""
        return self.shared_out(self.shared_layer(tokens).mean(dim=1))

    def fuse(self, shared: Tensor, specific: Tensor) -> Tensor:
        """`r + W[r; s]` for `r`, `s` [n, d]."""
        return shared + self.residual(torch.cat([shared, specific.to(shared.dtype)], dim=1))

    def domain_loss(self, specific: list[Tensor], domains: list[int]) -> Tensor:
        """Cross-entropy (float32) of the domain classifier on the specific features of each modality."""
        features = torch.cat([rows.to(specific[0].dtype) for rows in specific])
        labels = torch.cat(
            [
                torch.full((rows.shape[0],), domain, device=features.device)
                for rows, domain in zip(specific, domains, strict=True)
            ]
        )
        with torch.autocast(device_type=features.device.type, enabled=False):
            return F.cross_entropy(self.domain_classifier(features.float()), labels)

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K] and the weighted `align` and `domain` losses."""
        idx = paired_index(batch)
        x = ehr_input(batch)
        steps = x.shape[1]
        ehr_tokens = self.shared_ehr_tokens(x) + self.modality_embedding[0] + self.shared_position[:steps]
        shared_ehr = self.shared(ehr_tokens)
        specific_ehr = self.specific_ehr(x)
        fused_ehr = self.fuse(shared_ehr, specific_ehr)
        fused_cxr = shared_ehr
        specific, domains = [specific_ehr], [EHR_DOMAIN]
        align = shared_ehr.new_zeros((), dtype=torch.float32)
        cxr_rows = self.shared_cxr_tokens.encode_rows(batch["cxr"], idx)
        if cxr_rows is not None:
            cxr_tokens = cxr_rows + self.modality_embedding[1] + self.shared_position[0]
            shared_cxr = self.shared(cxr_tokens[:, None, :])
            specific_cxr = self.specific_cxr(batch["cxr"].index_select(0, idx))
            fused_cxr = fused_cxr.index_copy(0, idx, self.fuse(shared_cxr, specific_cxr).to(fused_cxr.dtype))
            with torch.autocast(device_type=x.device.type, enabled=False):
                align = (shared_ehr.index_select(0, idx).float() - shared_cxr.float()).abs().mean()
            specific.append(specific_cxr)
            domains.append(CXR_DOMAIN)
        logits = self.head((fused_ehr + fused_cxr.to(fused_ehr.dtype)) / 2)
        aux = {"align": self.alpha * align, "domain": self.beta * self.domain_loss(specific, domains)}
        return ModelOutput(logits.float(), aux)


@register_model("shaspec", paper="arXiv:2307.14126", group="missing")
def shaspec(task: TaskSpec, config: ShaSpecConfig | None = None) -> ShaSpecModel:
    """ShaSpec: shared and modality-specific encoders; a missing CXR is replaced by the EHR's shared feature."""
    return ShaSpecModel(task, config or ShaSpecConfig())
