"""`utde`: unified time-series discretisation embedding + interleaved cross-modal attention (models.md §8.5).

Zhang, Wang, Li, Wang, Gao, Liu, ICML 2023, arXiv:2210.12156 ("Improving Medical Predictions by
Irregular Multimodal Electronic Health Records Modeling"). The hourly EHR is embedded by UTDE: a
gate mixes an imputation embedding with a learned mTAND interpolation (Shukla & Marlin,
arXiv:2101.10318); the second modality (here the CXR) is embedded by time attention; interleaved
MulT-style (arXiv:1906.00295) self- and cross-attention layers fuse the two streams over time.
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
from carebench_models.encoders.ehr import ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import MissingToken, paired_batch_norm, paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec


@dataclass(frozen=True, kw_only=True)
class UTDEConfig(TransformerEHRConfig):
    """Configuration of `utde` (`paper`: d 256, time embedding 64, 4 fusion heads; `quick`: d 32, 16, 2).

    `ehr_layers`, `ehr_heads` and `ehr_ff` size the Transformer layers applied to the gated embedding.
    """

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {"time_dim": 64, "mtand_heads": 8, "fusion_heads": 4, "cross_layers": 1},
        "quick": {"time_dim": 16, "mtand_heads": 8, "fusion_heads": 2, "cross_layers": 1},
    }

    time_dim: int = 64
    """Width of the mTAND time embedding φ(t) (1 linear + time_dim − 1 periodic units)."""
    mtand_heads: int = 8
    """mTAND attention heads (8, fixed by the UTDE authors); must divide time_dim."""
    fusion_heads: int = 4
    """Heads of the interleaved self/cross-attention layers (CareBench 4; the authors' default 8)."""
    cross_layers: int = 1
    """Number of interleaved cross-modal layers (CareBench 1; the authors' default 3)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.time_dim < 2 or self.mtand_heads < 1 or self.time_dim % self.mtand_heads:
            raise CarebenchModelError(
                f"utde time_dim ({self.time_dim}) must be >= 2 and divisible by "
                f"mtand_heads ({self.mtand_heads})"
            )
        if self.fusion_heads < 1 or self.d_model % self.fusion_heads:
            raise CarebenchModelError(
                f"utde d_model ({self.d_model}) must be divisible by fusion_heads ({self.fusion_heads})"
            )
        if self.cross_layers < 1:
            raise CarebenchModelError(f"utde cross_layers must be >= 1, got {self.cross_layers}")


class TimeEmbedding(nn.Module):
    """mTAND's learned time embedding (arXiv:2101.10318): `φ(t) = [w₀t + b₀, sin(W t + b)]`.

    Args:
        dim: output width (1 linear unit + dim − 1 periodic units).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.periodic = nn.Linear(1, dim - 1)

    def forward(self, times: Tensor) -> Tensor:
        """`times` [n] → φ [n, dim]."""
        t = times.unsqueeze(-1)
        return torch.cat([self.linear(t), torch.sin(self.periodic(t))], dim=-1)


class MTANDEmbedding(nn.Module):
    """mTAND's multi-time attention: interpolation of the hourly series at T reference times.

    Reference times `r_j = j/T` and observation times `t_i = i/T`; `q = W_q φ(r)`, `k = W_k φ(t)`, split
    into `heads` heads; `score[h,j,i] = q_h(r_j)·k_h(t_i)/√(time_dim/heads)`. For each feature f, a
    softmax over the hours i where f was observed gives `α[h,j,i,f]`; the attended channels are the
    value and its observed indicator: `z_x[h,j,f] = Σ_i α x_f(i)`, and the indicator channel reduces to 1
    where f was observed at all. A feature never observed in the window gives 0 in both channels.
    `e_mt = Linear(2·heads·F → d)(z)` [B, T, d].

    The masked softmax is evaluated in factorised form: since the scores do not depend on the
    sample, `α = exp(s − c) m / Σ_i exp(s − c) m` with `c[h,j] = max_i s[h,j,i]`, computed by two
    [h,T,T] × [B,T,F] contractions in float32. This is the same softmax without materialising the
    [B, h, T, T, F] tensor (≈50× faster on CPU); a feature whose observed hours all score more than
    ≈87 below the row's best hour would underflow to weight 0, far outside practical score ranges.

    Args:
        num_features: F.
        steps: T.
        time_dim: width of φ.
        heads: attention heads (must divide time_dim).
        d_model: output width d.
    """

    def __init__(self, num_features: int, steps: int, *, time_dim: int, heads: int, d_model: int) -> None:
        super().__init__()
        self.heads = heads
        self.time_embedding = TimeEmbedding(time_dim)
        self.query = nn.Linear(time_dim, time_dim)
        self.key = nn.Linear(time_dim, time_dim)
        self.output = nn.Linear(2 * heads * num_features, d_model)
        self.register_buffer("times", torch.arange(steps, dtype=torch.float32) / steps, persistent=False)

    def scores(self) -> Tensor:
        """Attention scores float32 [heads, T (reference), T (observed)]; they depend on time only."""
        phi = self.time_embedding(self.times)
        steps = phi.shape[0]
        query = self.query(phi).view(steps, self.heads, -1).transpose(0, 1)
        key = self.key(phi).view(steps, self.heads, -1).transpose(0, 1)
        return query @ key.transpose(1, 2) / math.sqrt(query.shape[-1])

    def forward(self, ehr: Tensor, ehr_mask: Tensor) -> Tensor:
        """`ehr` [B, T, F] values and `ehr_mask` [B, T, F] observed → `e_mt` [B, T, d]."""
        batch, steps, _ = ehr.shape
        with torch.autocast(device_type=ehr.device.type, enabled=False):
            scores = self.scores().float()
            weights = torch.exp(scores - scores.amax(dim=2, keepdim=True))
            observed = ehr_mask.float()
            numerator = torch.einsum("hji,bif->bhjf", weights, observed * ehr.float())
            denominator = torch.einsum("hji,bif->bhjf", weights, observed)
            ever_observed = ehr_mask.any(dim=1).float()[:, None, None, :]
            values = numerator / denominator.clamp_min(torch.finfo(torch.float32).tiny) * ever_observed
            z = torch.cat([values, ever_observed.expand_as(values)], dim=3)
        return self.output(z.permute(0, 2, 1, 3).reshape(batch, steps, -1))


class RowBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over [B, d] whose training statistics come from chosen rows, never from one row alone.

    With `rows`, only those rows (the stays with a CXR) set the batch statistics and update the
    running ones; every row is normalised with them, so the learned missing-CXR token never shifts
    them. Batch statistics of a single row are undefined (torch raises); a training batch with one
    such row (e.g. a trailing batch of one stay) is normalised as in eval mode and leaves the running
    statistics untouched.
    """

    def forward(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """[B, d] → [B, d]; `rows` int64 [n] whose statistics count (None = every row)."""
        if rows is not None:
            return paired_batch_norm(self, x, rows)
        if self.training and x.shape[0] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class StreamLayer(nn.Module):
    """One stream's pre-LN sublayers in an interleaved layer: self-attention, cross-attention, FFN.

    The cross-attention normalises its query and the other stream's keys/values with the same
    LayerNorm (MulT's convention). FFN d→4d→d with ReLU; dropout on attention weights and residuals.
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(d_model)
        self.self_attention = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(d_model)
        self.cross_attention = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * d_model, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def attend_self(self, stream: Tensor) -> Tensor:
        """`s + SelfAttn(LN s)` for `s` [B, T, d]."""
        normed = self.self_norm(stream)
        return stream + self.dropout(self.self_attention(normed, normed, normed, need_weights=False)[0])

    def attend_other(self, stream: Tensor, other: Tensor) -> Tensor:
        """`s + CrossAttn(q=LN s, kv=LN o)`, then `+ FFN(LN s)`; `s`, `o` [B, T, d]."""
        query, memory = self.cross_norm(stream), self.cross_norm(other)
        stream = stream + self.dropout(self.cross_attention(query, memory, memory, need_weights=False)[0])
        return stream + self.dropout(self.ffn(self.ffn_norm(stream)))


class InterleavedLayer(nn.Module):
    """One interleaved cross-modal layer over the EHR and CXR streams (UTDE, MulT-style).

    Both cross-attentions read the other stream's post-self-attention state, not its updated one.
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ehr = StreamLayer(d_model, heads, dropout)
        self.cxr = StreamLayer(d_model, heads, dropout)

    def forward(self, ehr_stream: Tensor, cxr_stream: Tensor) -> tuple[Tensor, Tensor]:
        """Both streams [B, T, d] → updated streams [B, T, d]."""
        ehr_stream = self.ehr.attend_self(ehr_stream)
        cxr_stream = self.cxr.attend_self(cxr_stream)
        return self.ehr.attend_other(ehr_stream, cxr_stream), self.cxr.attend_other(cxr_stream, ehr_stream)


class UTDEModel(FusionModel):
    """UTDE EHR embedding, time-attention CXR embedding and interleaved cross-modal fusion.

    Inputs: `ehr` [B, T, F] normalised values, `ehr_mask` [B, T, F] observed indicators, `cxr`
    [B, 3, H, W], `has_cxr` [B].

    EHR (UTDE's gated embedding): `e_imp = Linear(2F→d)([ehr; ehr_mask])` and
    `e_mt = mTAND(ehr, ehr_mask)`, both [B, T, d]; gate `g = σ(W₂ ReLU(W₁ Dropout[e_imp; e_mt]))` (one
    gate per step and channel, Xavier-normal W₁: 2d→d, W₂: d→d); `e = g ⊙ e_imp + (1 − g) ⊙ e_mt` →
    `+ P_e` (learned positions [T, d], U(−0.1, 0.1), as in `TransformerEHR`: without them the
    Transformer layers could not tell the hours apart) → Transformer encoder layers → `s_e` [B, T, d].

    CXR: ResNet→d on the paired rows → `c` [B, d] (learned `cxr_missing` elsewhere) → Linear(d→d) +
    BatchNorm1d (statistics of the paired rows only) + ReLU + Dropout → time attention. With a single image the attention has one key, so
    its softmax weight is 1 at every reference time and the output is the projected value at all T
    steps: `s_c = broadcast(Linear(d→d)(c))` [B, T, d], computed directly. For the same reason the
    image time `cxr_hours` cannot change the output and is not read.

    Fusion (MulT): both streams `s ← √d·s + P` (`P` [T, d] learned, shared) → Dropout →
    `cross_layers` interleaved layers → final LayerNorm per stream → `h = [s_e[:, −1]; s_c[:, −1]]`
    [B, 2d] → `h + Linear(Dropout(ReLU(Linear h)))` → Linear(2d→K) → logits [B, K].

    Missing CXR: `c = cxr_missing` before the CXR projection; a batch without CXRs never runs the CNN.
    """

    def __init__(self, task: TaskSpec, config: UTDEConfig) -> None:
        super().__init__(task, config)
        d, features, steps = config.d_model, config.ehr_features, config.ehr_steps
        self.imputation_embedding = nn.Linear(2 * features, d)
        self.mtand = MTANDEmbedding(
            features, steps, time_dim=config.time_dim, heads=config.mtand_heads, d_model=d
        )
        self.gate_dropout = nn.Dropout(config.dropout)
        self.gate_hidden = nn.Linear(2 * d, d)
        self.gate_out = nn.Linear(d, d)
        for layer in (self.gate_hidden, self.gate_out):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.ehr_position = nn.Parameter(torch.empty(steps, d))
        nn.init.uniform_(self.ehr_position, -0.1, 0.1)
        self.ehr_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, config.ehr_heads, dim_feedforward=config.ehr_ff, dropout=config.dropout, batch_first=True
            )
            for _ in range(config.ehr_layers)
        )
        self.cxr_branch = ProjectedCXR(config)
        self.cxr_missing = MissingToken(d)
        self.cxr_embedding = nn.Sequential(
            nn.Linear(d, d), RowBatchNorm(d), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.cxr_value = nn.Linear(d, d)
        self.position = nn.Parameter(torch.empty(steps, d))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.fusion_layers = nn.ModuleList(
            InterleavedLayer(d, config.fusion_heads, config.dropout) for _ in range(config.cross_layers)
        )
        self.ehr_norm = nn.LayerNorm(d)
        self.cxr_norm = nn.LayerNorm(d)
        self.residual_hidden = nn.Linear(2 * d, 2 * d)
        self.residual_out = nn.Linear(2 * d, 2 * d)
        self.output_dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * d, task.num_outputs)

    def embed_ehr(self, batch: Batch) -> Tensor:
        """UTDE embedding followed by the Transformer layers: `s_e` [B, T, d]."""
        imputation = self.imputation_embedding(ehr_input(batch))
        interpolation = self.mtand(batch["ehr"], batch["ehr_mask"].bool()).to(imputation.dtype)
        gate_input = self.gate_dropout(torch.cat([imputation, interpolation], dim=-1))
        gate = torch.sigmoid(self.gate_out(F.relu(self.gate_hidden(gate_input))))
        sequence = gate * imputation + (1 - gate) * interpolation
        sequence = sequence + self.ehr_position[: sequence.shape[1]]
        for layer in self.ehr_layers:
            sequence = layer(sequence)
        return sequence

    def embed_cxr(self, batch: Batch, idx: Tensor, steps: int) -> Tensor:
        """Time-attention CXR stream `s_c` [B, T, d] (constant over time, see the class docstring)."""
        cxr = batch["cxr"]
        features = self.cxr_missing.fill(idx, self.cxr_branch.encode_rows(cxr, idx), cxr.shape[0])
        linear, norm, activation, dropout = self.cxr_embedding
        embedded = dropout(activation(norm(linear(features), rows=idx)))
        value = self.cxr_value(embedded)
        return value.unsqueeze(1).expand(-1, steps, -1)

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K]."""
        idx = paired_index(batch)
        ehr_stream = self.embed_ehr(batch)
        steps, d = ehr_stream.shape[1], ehr_stream.shape[2]
        cxr_stream = self.embed_cxr(batch, idx, steps).to(ehr_stream.dtype)
        position = self.position[:steps]
        ehr_stream = self.embed_dropout(math.sqrt(d) * ehr_stream + position)
        cxr_stream = self.embed_dropout(math.sqrt(d) * cxr_stream + position)
        for layer in self.fusion_layers:
            ehr_stream, cxr_stream = layer(ehr_stream, cxr_stream)
        last = torch.cat([self.ehr_norm(ehr_stream)[:, -1], self.cxr_norm(cxr_stream)[:, -1]], dim=1)
        hidden = last + self.residual_out(self.output_dropout(F.relu(self.residual_hidden(last))))
        return ModelOutput(self.head(hidden).float())


@register_model("utde", paper="arXiv:2210.12156", group="complete")
def utde(task: TaskSpec, config: UTDEConfig | None = None) -> UTDEModel:
    """UTDE: gated imputation/mTAND EHR embedding fused with the CXR by interleaved cross-attention."""
    return UTDEModel(task, config or UTDEConfig())
