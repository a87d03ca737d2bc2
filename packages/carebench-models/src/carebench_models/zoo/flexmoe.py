"""`flexmoe`: Flex-MoE, a sparse mixture of experts routed by the modality combination (Yun et al., NeurIPS 2024).

Paper arXiv:2410.08245, reference code `UNITES-Lab/flex-moe`. A missing modality is filled from a
bank of learned embeddings indexed by (observed combination, missing modality); the tokens of both
modalities pass a Transformer layer whose feed-forward is a top-k mixture of experts. Samples with
every modality train all experts through a balanced router; a sample with fewer modalities has the
expert of its combination forced as its top-1 expert. The first epochs present samples with more
modalities first.

The experts run densely in plain PyTorch (stacked weights, one einsum per layer, gates zero outside
the top k): the same output as sparse dispatch, with static shapes and no CUDA extension.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, ModelOutput, SampleOrder
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

FULL, EHR_ONLY, CXR_ONLY = 0, 1, 2
"""Combination indices: 0 is the full combination (both modalities), as the paper requires."""
EHR, CXR = 0, 1
"""Modality indices (bank's second axis, token chunks)."""
NOISE_FLOOR = 0.01
"""Added to the softplus noise scale of the noisy gate."""
FORCED_LOGIT = 1e4
"""Selection logit of a forced expert: above any gate logit, finite so the load's Normal CDF has gradients."""


@dataclass(frozen=True, kw_only=True)
class FlexMoEConfig(TransformerEHRConfig):
    """Configuration of `flexmoe` (`paper`: 16 tokens per modality, 8 experts, top-4; `quick`: 4, 4, top-2).

    E, k and the gate-loss weight are the searched hyperparameters (per-task defaults in the bundled
    defaults file).
    """

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {"tokens_per_modality": 16, "num_experts": 8, "top_k": 4, "fusion_heads": 4},
        "quick": {"tokens_per_modality": 4, "num_experts": 4, "top_k": 2, "fusion_heads": 2},
    }

    tokens_per_modality: int = 16
    """Tokens each modality's embedding is expanded into."""
    num_experts: int = 8
    """E, the number of experts (≥ 3: experts 1 and 2 are the single-modality combinations' experts)."""
    top_k: int = 4
    """k, experts per token (1 ≤ k ≤ E)."""
    gate_weight: float = 0.01
    """w, weight of the gate loss (router cross-entropy + load balance) in the total loss."""
    fusion_heads: int = 4
    """Heads of the fusion layer's self-attention."""
    expert_ratio: int = 2
    """Expert feed-forward width = expert_ratio · d."""
    warmup_epochs: int = 5
    """Epochs that present paired stays first (`sample_order` "modality_count_desc")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_experts < 3:
            raise CarebenchModelError(f"flexmoe num_experts must be >= 3, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise CarebenchModelError(
                f"flexmoe top_k must be in 1…num_experts ({self.num_experts}), got {self.top_k}"
            )
        if self.tokens_per_modality < 1 or self.expert_ratio < 1 or self.warmup_epochs < 0:
            raise CarebenchModelError(
                "flexmoe tokens_per_modality and expert_ratio must be >= 1, warmup_epochs >= 0"
            )
        if self.gate_weight < 0:
            raise CarebenchModelError(f"flexmoe gate_weight must be >= 0, got {self.gate_weight}")
        if self.d_model % self.fusion_heads:
            raise CarebenchModelError(
                f"flexmoe d_model ({self.d_model}) must be divisible by fusion_heads ({self.fusion_heads})"
            )


def cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation `var(v) / (mean(v)² + 1e-10)` over the last axis: [..., E] → [...].

    0 for a vector of zeros. The variance is the unbiased one, as in Shazeer et al.'s code.
    """
    return values.var(dim=-1) / (values.mean(dim=-1) ** 2 + 1e-10)


class Experts(nn.Module):
    """E feed-forward experts d → h → d with GELU, stacked: `w_in` [E, d, h], `w_out` [E, h, d].

    Each expert is initialised as an `nn.Linear` pair (uniform ±1/√fan_in).
    """

    def __init__(self, num_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b_in = nn.Parameter(torch.empty(num_experts, hidden))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b_out = nn.Parameter(torch.empty(num_experts, dim))
        for parameter, fan_in in (
            (self.w_in, dim),
            (self.b_in, dim),
            (self.w_out, hidden),
            (self.b_out, hidden),
        ):
            nn.init.uniform_(parameter, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, tokens: Tensor) -> Tensor:
        """Every expert on every token: [N, d] → [N, E, d]."""
        hidden = F.gelu(torch.einsum("nd,edh->neh", tokens, self.w_in) + self.b_in)
        return torch.einsum("neh,ehd->ned", hidden, self.w_out) + self.b_out


class CombinationMoE(nn.Module):
    """Top-k mixture of experts with the noisy gate of Shazeer et al. (arXiv:1701.06538) and Flex-MoE's routing.

    Gate logits `l = u W_g`, plus `ε ⊙ (softplus(u W_n) + 0.01)` with ε ~ N(0, 1) in training
    (`W_g`, `W_n` zero-initialised). A token of the full combination (c = 0) takes the top-k of l
    (G-Router); any other token has expert c forced as its top-1 plus the best k − 1 others
    (S-Router). `g` = softmax over the selected logits, 0 elsewhere; output `Σ_e g_e · expert_e(u)`.

    Gate loss (float32), per group of tokens (one call of the layer in the paper; here Flex-MoE's
    two modality chunks share one call) and summed over groups: cross-entropy of the non-full
    tokens' logits against their combination (mean over them, 0 without any), plus the balance
    `cv²(importance) + cv²(load)` of the full tokens over all experts and of the non-full tokens
    over experts 1…E−1 (a set without tokens adds 0, so an all-full batch gives exactly the
    all-token balance). `importance = Σ g`; `load` = Σ P(expert in the top k under the noise) in
    training with k < E, else the count of non-zero gates.

    Args:
        dim: token width d.
        num_experts: E.
        top_k: k.
        hidden: expert feed-forward width.
    """

    def __init__(self, dim: int, *, num_experts: int, top_k: int, hidden: int) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.w_gate = nn.Parameter(torch.zeros(dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(dim, num_experts))
        self.experts = Experts(num_experts, dim, hidden)

    def route(
        self, tokens: Tensor, combination: Tensor, group: Tensor | None = None, groups: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Gates float32 [N, E] (k non-zero per row) and the gate loss (float32 scalar).

        Args:
            tokens: [N, d].
            combination: int64 [N] combination index of each token's stay.
            group: int64 [N] in 0…groups−1, the balance group of each token; None = one group.
            groups: number of groups.
        """
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            u = tokens.float()
            clean = u @ self.w_gate
            noise_scale = None
            logits = clean
            if self.training:
                noise_scale = F.softplus(u @ self.w_noise) + NOISE_FLOOR
                logits = clean + torch.randn_like(clean) * noise_scale
            full = combination == FULL
            forced = F.one_hot(combination, self.num_experts).bool() & ~full[:, None]
            selection = torch.where(forced, torch.full_like(logits, FORCED_LOGIT), logits)
            top_values, top_indices = selection.topk(min(self.top_k + 1, self.num_experts), dim=1)
            chosen = torch.zeros_like(forced).scatter(1, top_indices[:, : self.top_k], True)
            gates = torch.softmax(logits.masked_fill(~chosen, float("-inf")), dim=1)
            if noise_scale is not None and self.top_k < self.num_experts:
                load = self.probability_in_top_k(clean, selection, noise_scale, top_values, forced)
            else:
                load = chosen.float()
            member = torch.ones_like(clean[:, :1]) if group is None else F.one_hot(group, groups).float()
            full_member = member * full.float()[:, None]
            rest_member = member - full_member
            balance = (
                cv_squared(full_member.T @ gates)
                + cv_squared(full_member.T @ load)
                + cv_squared((rest_member.T @ gates)[:, 1:])
                + cv_squared((rest_member.T @ load)[:, 1:])
            )
            router = F.cross_entropy(logits, combination, reduction="none")
            router_loss = (rest_member.T @ router) / rest_member.sum(dim=0).clamp_min(1.0)
        return gates, (router_loss + balance).sum()

    def probability_in_top_k(
        self, clean: Tensor, selection: Tensor, noise_scale: Tensor, top_values: Tensor, forced: Tensor
    ) -> Tensor:
        """P(expert e is selected) under a fresh draw of its noise, given the others' noisy logits: [N, E].

        The threshold is the k-th largest selection logit for an expert outside the top k and the
        (k+1)-th for one inside (Shazeer et al.'s `_prob_in_top_k`); a forced expert has probability 1.
        """
        inside = top_values[:, self.top_k : self.top_k + 1]
        outside = top_values[:, self.top_k - 1 : self.top_k]
        clean = torch.where(forced, torch.full_like(clean, FORCED_LOGIT), clean)
        is_in = selection > inside
        probability = torch.where(
            is_in,
            torch.special.ndtr((clean - inside) / noise_scale),
            torch.special.ndtr((clean - outside) / noise_scale),
        )
        return torch.where(forced, torch.ones_like(probability), probability)

    def forward(
        self, tokens: Tensor, combination: Tensor, group: Tensor | None = None, groups: int = 1
    ) -> tuple[Tensor, Tensor]:
        """`tokens` [N, d], `combination` int64 [N] → (mixture [N, d], gate loss float32 scalar); see `route`."""
        gates, gate_loss = self.route(tokens, combination, group, groups)
        outputs = self.experts(tokens)
        return torch.einsum("ne,ned->nd", gates.to(outputs.dtype), outputs), gate_loss


class TokenAdapter(nn.Module):
    """One modality embedding → n tokens: Linear(d → n·d) → [·, n, d] → LayerNorm → Dropout."""

    def __init__(self, dim: int, tokens: int, dropout: float) -> None:
        super().__init__()
        self.tokens = tokens
        self.expand = nn.Linear(dim, tokens * dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, embedding: Tensor) -> Tensor:
        """[n, d] → [n, tokens, d]."""
        return self.dropout(self.norm(self.expand(embedding).view(embedding.shape[0], self.tokens, -1)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a bias-free qkv projection and dropout on probabilities and output."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """[B, N, d] → [B, N, d]."""
        rows, tokens, _ = x.shape
        query, key, value = self.qkv(x).view(rows, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj_dropout(self.proj(attended.transpose(1, 2).reshape(rows, tokens, -1)))


class FlexMoEModel(FusionModel):
    """Modality tokens with a missing-modality bank, one self-attention layer and a per-modality sparse MoE.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_ehr` [B], `has_cxr` [B].

    - Combination index c [B]: 0 = {EHR, CXR}, 1 = {EHR}, 2 = {CXR}.
    - Tokens: `TransformerEHR` pooled → adapter → `tok_e` [B, n, d]; ResNet→d on the paired rows →
      own adapter → `tok_c` [n_c, n, d]; a row without a CXR takes `bank[c, CXR]` (bank [3, 2, n, d],
      N(0, 1)).
    - Fusion: `x = [tok_e; tok_c] + pos` [B, 2n, d] (pos zero-initialised); `x ← x + Attn(LN₁ x)`;
      per modality chunk `x_m ← x_m + Dropout(MoE(LN₂ x_m, c))`; head: mean of each chunk's tokens →
      [B, 2d] → Linear(2d → K) → logits [B, K].
    - `aux_losses["gate"]` = gate_weight · Σ over the two chunks of their gate loss.

    Missing CXR: the bank; a batch without CXRs never runs the CNN, every row has c = 1.

    Training order: `sample_order` puts paired stays first during the first `warmup_epochs`.
    """

    conditional_parameters: ClassVar[tuple[str, ...]] = ("moe.experts",)
    """The stacked expert weights: an expert outside every token's top k gets an all-zero gradient
    slice in that step (with k = E every expert gets a non-zero one)."""

    def __init__(self, task: TaskSpec, config: FlexMoEConfig) -> None:
        super().__init__(task, config)
        d, tokens = config.d_model, config.tokens_per_modality
        self.gate_weight = config.gate_weight
        self.warmup_epochs = config.warmup_epochs
        self.ehr_encoder = TransformerEHR.from_config(config)
        self.ehr_adapter = TokenAdapter(d, tokens, config.dropout)
        self.cxr_branch = ProjectedCXR(config)
        self.cxr_adapter = TokenAdapter(d, tokens, config.dropout)
        self.bank = nn.Parameter(torch.randn(3, 2, tokens, d))
        self.position = nn.Parameter(torch.zeros(2 * tokens, d))
        self.attention_norm = nn.LayerNorm(d)
        self.attention = SelfAttention(d, config.fusion_heads, config.dropout)
        self.moe_norm = nn.LayerNorm(d)
        self.moe = CombinationMoE(
            d, num_experts=config.num_experts, top_k=config.top_k, hidden=config.expert_ratio * d
        )
        self.moe_dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * d, task.num_outputs)

    @staticmethod
    def combination(batch: Batch) -> Tensor:
        """Combination index int64 [B]: 0 both modalities, 1 EHR only, 2 CXR only."""
        has_cxr = batch["has_cxr"].bool()
        has_ehr = batch["has_ehr"].bool() if "has_ehr" in batch else torch.ones_like(has_cxr)
        return torch.where(
            has_ehr & has_cxr,
            FULL,
            torch.where(has_ehr, EHR_ONLY, CXR_ONLY),
        ).long()

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K] and `aux_losses["gate"]`."""
        idx = paired_index(batch)
        combination = self.combination(batch)
        ehr_tokens = self.ehr_adapter(self.ehr_encoder(ehr_input(batch)))
        rows, tokens, _ = ehr_tokens.shape
        cxr_tokens = self.bank[combination, CXR].to(ehr_tokens.dtype)
        cxr_rows = self.cxr_branch.encode_rows(batch["cxr"], idx)
        if cxr_rows is not None:
            cxr_tokens = cxr_tokens.index_copy(0, idx, self.cxr_adapter(cxr_rows).to(cxr_tokens.dtype))
        x = torch.cat([ehr_tokens, cxr_tokens], dim=1) + self.position
        x = x + self.attention(self.attention_norm(x))
        # Both modality chunks go through the MoE in one call; the gate loss keeps them apart.
        flat = self.moe_norm(x).reshape(rows * 2 * tokens, -1)
        chunk = torch.arange(2, device=x.device).repeat_interleave(tokens).repeat(rows)
        mixed, gate_loss = self.moe(flat, combination.repeat_interleave(2 * tokens), chunk, groups=2)
        x = x + self.moe_dropout(mixed.view(rows, 2 * tokens, -1).to(x.dtype))
        pooled = torch.cat([x[:, :tokens].mean(dim=1), x[:, tokens:].mean(dim=1)], dim=1)
        return ModelOutput(self.head(pooled).float(), {"gate": self.gate_weight * gate_loss})

    def sample_order(self, epoch: int) -> SampleOrder:
        """Paired stays first (seeded shuffle within each group) for `warmup_epochs`, then a plain shuffle."""
        return "modality_count_desc" if epoch < self.warmup_epochs else "shuffle"


@register_model("flexmoe", paper="arXiv:2410.08245", group="missing")
def flexmoe(task: TaskSpec, config: FlexMoEConfig | None = None) -> FlexMoEModel:
    """Flex-MoE: a missing-modality bank and a sparse mixture of experts routed by the modality combination."""
    return FlexMoEModel(task, config or FlexMoEConfig())
