"""`drfuse`: disentangled shared and distinct representations with disease-wise attention (Yao et al., AAAI 2024).

Paper arXiv:2403.06197, reference code `dorothy-yao/drfuse`. Each modality has a shared and a
distinct encoder; the shared features are aligned by a Jensen–Shannon divergence and combined by a
logit average, the distinct ones are pushed orthogonal to them; a disease-wise attention weighs
{EHR-distinct, shared, CXR-distinct} per patient and per label, trained with a ranking loss that
favours the representation whose own prediction has the lower loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

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

LAMBDAS = ("lambda_ds", "lambda_de", "lambda_dc", "lambda_pe", "lambda_pc", "lambda_ps", "lambda_attn")
TOKENS = ("ehr", "shared", "cxr")
"""The attention's three representations, in token order."""


@dataclass(frozen=True, kw_only=True)
class DrFuseConfig(TransformerEHRConfig):
    """Configuration of `drfuse` (`paper`: d 256, EHR FF 2048, two ResNet-50; `quick`: d 32, FF 64, two SmallCNN).

    `ehr_layers` is the depth of the common EHR trunk; the shared and the distinct EHR branch add
    one layer each (same heads and FF). Every λ is 1 by default (the reference code's base config);
    the bundled per-task defaults hold CareBench's values.
    """

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {"ehr_ff": 2048},
        "quick": {"ehr_ff": 64},
    }

    ehr_ff: int = 2048
    """Feed-forward width of the EHR Transformer layers (2048, DrFuse's encoder)."""
    lambda_ds: float = 1.0
    """Weight of the Jensen–Shannon divergence between the two shared representations (paired rows)."""
    lambda_de: float = 1.0
    """Weight of |cos(shared, distinct)| of the EHR (all rows)."""
    lambda_dc: float = 1.0
    """Weight of |cos(shared, distinct)| of the CXR (paired rows)."""
    lambda_pe: float = 1.0
    """Weight of the task loss of the EHR-distinct prediction."""
    lambda_pc: float = 1.0
    """Weight of the task loss of the CXR-distinct prediction (paired rows)."""
    lambda_ps: float = 1.0
    """Weight of the task loss of the shared prediction."""
    lambda_attn: float = 1.0
    """Weight of the disease-wise attention ranking loss (paired rows)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        negative = [name for name in LAMBDAS if getattr(self, name) < 0]
        if negative:
            raise CarebenchModelError(f"drfuse loss weights must be >= 0: {', '.join(negative)}")


def logit_average(ehr_logits: Tensor, cxr_logits: Tensor) -> Tensor:
    """DrFuse's logit average of two shared representations, elementwise in float32.

    `s = LSE(h₁+h₂, h₁+h₂, h₁, h₂) − LSE(0, 0, h₁, h₂)` for `h₁`, `h₂` [n, d].
    """
    with torch.autocast(device_type=ehr_logits.device.type, enabled=False):
        h1, h2 = ehr_logits.float(), cxr_logits.float()
        both, zero = h1 + h2, torch.zeros_like(h1)
        numerator = torch.logsumexp(torch.stack([both, both, h1, h2]), dim=0)
        return numerator - torch.logsumexp(torch.stack([zero, zero, h1, h2]), dim=0)


def jensen_shannon(ehr_logits: Tensor, cxr_logits: Tensor) -> Tensor:
    """Mean over rows of `Σ_dim ½[p log(p/m) + q log(q/m)]`, `p = σ(h₁)`, `q = σ(h₂)`, `m = (p+q)/2` (float32).

    Computed from log-sigmoids, so saturated features give finite values.
    """
    with torch.autocast(device_type=ehr_logits.device.type, enabled=False):
        log_p, log_q = F.logsigmoid(ehr_logits.float()), F.logsigmoid(cxr_logits.float())
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        divergence = 0.5 * (log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m))
        return divergence.sum(dim=1).mean()


def mean_abs_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Mean over rows of |cos(a, b)| (float32) for `a`, `b` [n, d]."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return F.cosine_similarity(a.float(), b.float(), dim=1).abs().mean()


class DrFuseModel(FusionModel):
    """Shared/distinct EHR and CXR representations, a logit-averaged shared prediction and disease-wise attention.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B]; `y` for the
    label-dependent losses.

    - EHR: Linear(2F → d) + positions [T, d] → `ehr_layers` post-LN layers (FF `ehr_ff`) = `feat`;
      one more layer each gives the shared and the distinct sequence → mean over time → `e_sh`,
      `e_di` [B, d]. CXR: two independent ResNet→d on the paired rows → `c_sh`, `c_di` [n_c, d].
    - Shared MLP P (d → 2d → d → d, ReLU), one set of weights: `h₁ = P(e_sh)`, `h₂ = P(c_sh)`;
      `s = logit_average(h₁, h₂)` on paired rows, `s = h₁` elsewhere.
    - Heads: `pred_e = Lin(e_di)`, `pred_c = Lin(c_di)`, `pred_s = Lin(s)` [·, K].
    - Disease-wise attention: `X = [e_di, s, c_di]` [B, 3, d] → Linear(d → (2+K)·d) → q, v [B, 3, d]
      and K key sets `k_j` [B, 3, d]; `q̄` = mean of q over the available tokens;
      `a[b, j, t] = softmax_t(q̄·k_j[t] / √d)` with the CXR token at −∞ on rows without a CXR;
      `F[b, j] = Σ_t a[b, j, t] v[b, t]` [B, K, d]; logit j = row j of Linear(d → K) applied to `F[b, j]`.

    Aux losses (weighted): `pred_shared`, `pred_ehr`, `pred_cxr` (task loss of each head; CXR over paired
    rows), `jsd`, `orth_ehr`, `orth_cxr` (disentanglement) and `rank` (attention ranking). The
    label-dependent ones (`pred_*`, `rank`) only when the batch has `y`. Paired-row terms are 0 in a
    batch without a CXR.

    Missing CXR: `s = h₁`, the CXR token is masked out of the attention (its slot holds zeros that
    receive weight 0), CXR terms are over paired rows. A batch without CXRs runs neither CNN.
    """

    def __init__(self, task: TaskSpec, config: DrFuseConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.lambdas = {name: getattr(config, name) for name in LAMBDAS}
        self.ehr_trunk = TransformerEHR.from_config(config)
        self.ehr_shared, self.ehr_distinct = (
            nn.TransformerEncoderLayer(
                d, config.ehr_heads, dim_feedforward=config.ehr_ff, dropout=config.dropout, batch_first=True
            )
            for _ in range(2)
        )
        self.cxr_shared = ProjectedCXR(config)
        self.cxr_distinct = ProjectedCXR(config)
        self.shared_mlp = nn.Sequential(
            nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d)
        )
        self.ehr_head = nn.Linear(d, task.num_outputs)
        self.cxr_head = nn.Linear(d, task.num_outputs)
        self.shared_head = nn.Linear(d, task.num_outputs)
        self.attention_proj = nn.Linear(d, (2 + task.num_outputs) * d)
        self.final = nn.Linear(d, task.num_outputs)

    def disease_attention(self, tokens: Tensor, available: Tensor) -> tuple[Tensor, Tensor]:
        """Disease-wise attention over the three representations.

        Args:
            tokens: X [B, 3, d] (EHR-distinct, shared, CXR-distinct).
            available: bool [B, 3], False for the CXR token of rows without a CXR.

        Returns:
            (final logits [B, K], attention weights a [B, K, 3]).
        """
        rows, count, d = tokens.shape
        projected = self.attention_proj(tokens).view(rows, count, -1, d)
        query, value, keys = projected[:, :, 0], projected[:, :, 1], projected[:, :, 2:]
        weight = available.to(query.dtype)[:, :, None]
        mean_query = (query * weight).sum(dim=1) / weight.sum(dim=1)
        scores = torch.einsum("bd,btkd->bkt", mean_query, keys) / math.sqrt(d)
        attention = torch.softmax(scores.float().masked_fill(~available[:, None, :], float("-inf")), dim=2)
        attended = torch.einsum("bkt,btd->bkd", attention.to(value.dtype), value)
        logits = torch.einsum("bkd,kd->bk", attended, self.final.weight.to(attended.dtype)) + self.final.bias
        return logits, attention

    def elementwise_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Detached per-(row, label) task loss [n, K]: BCE per output, or the row's CE repeated over K."""
        with torch.no_grad(), torch.autocast(device_type=logits.device.type, enabled=False):
            if self.task.kind == "multiclass":
                loss = F.cross_entropy(logits.float(), y, reduction="none")
                return loss[:, None].expand(-1, self.task.num_outputs)
            return F.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="none")

    def rank_loss(self, attention: Tensor, losses: dict[str, Tensor]) -> Tensor:
        """Margin-0 ranking of the attention weights by the heads' losses, per label, over the rows given.

        For the pairs (cxr, ehr), (shared, ehr), (shared, cxr): target +1 when the first has the lower
        loss (−1 when higher, 0 when equal); `max(0, −target · (a_first − a_second))`, mean over rows and
        labels; the mean of the three pairs.

        Args:
            attention: a [n, K, 3].
            losses: name in `TOKENS` → detached loss [n, K].
        """
        terms = []
        for first, second in (("cxr", "ehr"), ("shared", "ehr"), ("shared", "cxr")):
            target = torch.sign(losses[second] - losses[first])
            gap = attention[:, :, TOKENS.index(first)] - attention[:, :, TOKENS.index(second)]
            terms.append(F.relu(-target * gap).mean())
        return torch.stack(terms).mean()

    def forward(self, batch: Batch) -> ModelOutput:
        """Final logits [B, K] and the weighted aux losses."""
        idx = paired_index(batch)
        feat = self.ehr_trunk.encode_sequence(ehr_input(batch))
        ehr_shared = self.ehr_shared(feat).mean(dim=1)
        ehr_distinct = self.ehr_distinct(feat).mean(dim=1)
        rows, d = ehr_distinct.shape
        cxr_shared_rows = self.cxr_shared.encode_rows(batch["cxr"], idx)
        cxr_distinct_rows = self.cxr_distinct.encode_rows(batch["cxr"], idx)
        if cxr_shared_rows is None:
            h1, h2 = self.shared_mlp(ehr_shared), None
        else:  # one call of the shared MLP for both modalities
            h1, h2 = self.shared_mlp(torch.cat([ehr_shared, cxr_shared_rows.to(ehr_shared.dtype)])).split(
                [rows, idx.numel()]
            )
        shared = h1.float()
        cxr_distinct = ehr_distinct.new_zeros(rows, d)
        available = torch.ones(rows, 3, dtype=torch.bool, device=h1.device)
        available[:, 2] = False
        zero = h1.new_zeros((), dtype=torch.float32)
        lam = self.lambdas
        aux = {"orth_ehr": lam["lambda_de"] * mean_abs_cosine(h1, ehr_distinct)}
        pred_cxr = None
        if h2 is not None and cxr_distinct_rows is not None:
            h1_paired = h1.index_select(0, idx)
            shared = shared.index_copy(0, idx, logit_average(h1_paired, h2))
            cxr_distinct = cxr_distinct.index_copy(0, idx, cxr_distinct_rows.to(cxr_distinct.dtype))
            available = available.index_fill(0, idx, True)
            pred_cxr = self.cxr_head(cxr_distinct_rows)
            aux["jsd"] = lam["lambda_ds"] * jensen_shannon(h1_paired, h2)
            aux["orth_cxr"] = lam["lambda_dc"] * mean_abs_cosine(h2, cxr_distinct_rows)
        else:
            aux["jsd"] = aux["orth_cxr"] = zero
        tokens = torch.stack([ehr_distinct, shared.to(ehr_distinct.dtype), cxr_distinct], dim=1)
        logits, attention = self.disease_attention(tokens, available)
        if "y" in batch:
            y = batch["y"]
            pred_ehr, pred_shared = (
                self.ehr_head(ehr_distinct),
                self.shared_head(shared.to(ehr_distinct.dtype)),
            )
            aux["pred_ehr"] = lam["lambda_pe"] * self.task.loss(pred_ehr.float(), y)
            aux["pred_shared"] = lam["lambda_ps"] * self.task.loss(pred_shared.float(), y)
            aux["pred_cxr"] = aux["rank"] = zero
            if pred_cxr is not None:
                y_paired = y.index_select(0, idx)
                aux["pred_cxr"] = lam["lambda_pc"] * self.task.loss(pred_cxr.float(), y_paired)
                losses = {
                    "ehr": self.elementwise_loss(pred_ehr.index_select(0, idx), y_paired),
                    "shared": self.elementwise_loss(pred_shared.index_select(0, idx), y_paired),
                    "cxr": self.elementwise_loss(pred_cxr, y_paired),
                }
                aux["rank"] = lam["lambda_attn"] * self.rank_loss(attention.index_select(0, idx), losses)
        return ModelOutput(logits.float(), aux)


@register_model("drfuse", paper="arXiv:2403.06197", group="missing")
def drfuse(task: TaskSpec, config: DrFuseConfig | None = None) -> DrFuseModel:
    """DrFuse: disentangled shared/distinct EHR and CXR features fused by disease-wise attention."""
    return DrFuseModel(task, config or DrFuseConfig())
