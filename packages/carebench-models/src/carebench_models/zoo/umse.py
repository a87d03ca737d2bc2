"""`umse`: unified multi-modal set embedding with a skip bottleneck (Lee et al., MLHC 2023).

Paper arXiv:2305.02504 ("Learning Missing Modal Electronic Health Records with Unified Multi-modal
Data Embedding and Modality-Aware Attention"). Every EHR observation is one token (value embedding +
time embedding + feature-type embedding, no imputation); image patches get the same time and type
embeddings; the modalities are fused by a bottleneck Transformer (MBT, arXiv:2107.00135) whose
bottleneck is updated only from the modalities a stay has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import CommonConfig
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

Truncate = Literal["latest", "earliest"]


@dataclass(frozen=True, kw_only=True)
class UMSEConfig(CommonConfig):
    """Configuration of `umse` (`paper`: d 256, FF 1024, patch 32, ≤ 500 EHR tokens; `quick`: d 32, FF 64, 16, ≤ 64).

    UMSE has no CNN (the CXR is tokenised by a strided convolution), so `cxr_encoder` is not used
    and `cxr_weights` must stay `none`. The quick profile keeps the 64 latest observations (not 128):
    measured single-threaded on CPU, 128 tokens through two fusion layers made a training step
    1.5-2× as long as `latefusion`'s, 64 tokens about 1.3×.
    """

    takes_cxr_weights: ClassVar[bool] = False

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {"heads": 4, "ff": 1024, "patch_size": 32, "max_ehr_tokens": 500, "cxr_weights": "none"},
        "quick": {"heads": 2, "ff": 64, "patch_size": 16, "max_ehr_tokens": 64},
    }

    layers: int = 2
    """Fusion layers (2: with one layer the updated bottleneck is never read, so the modalities
    would not exchange information)."""
    heads: int = 4
    """Attention heads of every fusion layer."""
    ff: int = 1024
    """Feed-forward width of every fusion layer."""
    bottleneck_tokens: int = 1
    """n_b, the number of shared bottleneck tokens."""
    patch_size: int = 32
    """Side of the square CXR patches (kernel = stride of the patch convolution); must divide the image side."""
    max_ehr_tokens: int = 500
    """Most EHR observations kept per stay."""
    truncate: Truncate = "latest"
    """Which observations a stay with more than `max_ehr_tokens` keeps: the `latest` or the `earliest`."""
    index_positional_encoding: bool = False
    """Add a sinusoidal encoding of each EHR token's index (upstream); off by default, as the tokens
    form a set with explicit times."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("layers", "heads", "ff", "bottleneck_tokens", "patch_size", "max_ehr_tokens"):
            if getattr(self, name) < 1:
                raise CarebenchModelError(f"umse {name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise CarebenchModelError(
                f"umse d_model ({self.d_model}) must be divisible by heads ({self.heads})"
            )
        if self.image_size % self.patch_size:
            raise CarebenchModelError(
                f"umse image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})"
            )
        if self.truncate not in ("latest", "earliest"):
            raise CarebenchModelError(f"umse truncate must be 'latest' or 'earliest', got {self.truncate!r}")
        if self.cxr_weights != "none":
            raise CarebenchModelError(
                f"umse has no pretrained image backbone; cxr_weights must be 'none', got {self.cxr_weights!r}"
            )


class EHRObservations(NamedTuple):
    """The observed EHR cells of each stay, in time order, padded to a fixed count."""

    values: Tensor
    """float [B, N] normalised values."""
    hours: Tensor
    """int64 [B, N] hour index 0…T−1."""
    features: Tensor
    """int64 [B, N] feature index 0…F−1."""
    valid: Tensor
    """bool [B, N]; False marks padding."""


def observed_cells(ehr: Tensor, ehr_mask: Tensor, *, cap: int, latest: bool) -> EHRObservations:
    """Select at most `cap` observed cells per row without a host sync (static output shape).

    Cells are ranked in time order (hour-major, then feature) by a cumulative sum of `ehr_mask`;
    slot s of a row holds the cell of rank `offset + s + 1`, found by `searchsorted` on the ranks,
    where `offset` skips the earliest cells of rows with more than `cap` observations (`latest`).

    Args:
        ehr: [B, T, F] values.
        ehr_mask: [B, T, F] True where observed.
        cap: N, the number of slots.
        latest: keep the latest observations (else the earliest).
    """
    rows, steps, features = ehr.shape
    rank = ehr_mask.reshape(rows, steps * features).long().cumsum(dim=1)
    count = rank[:, -1:]
    target = torch.arange(1, cap + 1, device=ehr.device).repeat(rows, 1)
    if latest:
        target = target + (count - cap).clamp_min(0)
    valid = target <= count
    cell = torch.searchsorted(rank, target).clamp_max(steps * features - 1)
    values = ehr.reshape(rows, -1).gather(1, cell)
    return EHRObservations(values, cell // features, cell % features, valid)


def sinusoid_table(length: int, dim: int) -> Tensor:
    """Transformer sinusoidal position encodings float32 [length, dim]."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, : dim // 2]
    return table


class ScalarEmbedding(nn.Sequential):
    """`MLP(x)` = Linear(1 → d) → LayerNorm → ReLU, applied to a scalar per token: [...] → [..., d]."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(1, dim), nn.LayerNorm(dim), nn.ReLU())

    def forward(self, values: Tensor) -> Tensor:
        """Scalars [...] → embeddings [..., d]."""
        return super().forward(values.unsqueeze(-1))


class UMSEModel(FusionModel):
    """Observation tokens and CXR patch tokens fused by per-modality Transformer layers sharing a bottleneck.

    Inputs: `ehr` [B, T, F] and `ehr_mask` [B, T, F] (only observed cells are read), `cxr` [B, 3, H, W],
    `cxr_hours` [B] (CXR time minus ICU admission), `has_cxr` [B].

    - EHR: each observed cell (hour t, feature f, value x) → `MLP_v(x) + MLP_t(t/T) + Emb(f)`; at most
      `max_ehr_tokens` per stay (the latest by default) → [B, N, d] with a key-padding mask.
    - CXR (paired rows): Conv2d(3 → d, kernel = stride = patch) → (H/p)(W/p) tokens + learned
      positions (interpolated when the grid differs from `image_size`'s) + `MLP_t(cxr_hours/T)` +
      `Emb(F)` (the image type) → [n_c, P, d].
    - Each stream: `[CLS_m; tokens]` → LayerNorm_m → Dropout. Per layer, each modality's own post-LN
      Transformer layer reads `[b; CLS_m; tokens_m]`, b the bottleneck [·, n_b, d]; then
      `b ← (b_EHR' + b_CXR')/2` on paired rows, `b ← b_EHR'` on the others.
    - Output: `softmax([w_e, w_c])`-weighted CLS of the present modalities → Linear(d → d) → ReLU →
      Dropout → Linear(d → K) → logits [B, K].

    Missing CXR: the CXR stream runs on the paired rows only, so rows without a CXR keep the EHR
    bottleneck update (the skip bottleneck) and put weight 1 on CLS_EHR. A batch without CXRs never
    runs the CXR stream.
    """

    def __init__(self, task: TaskSpec, config: UMSEConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.steps, self.features = config.ehr_steps, config.ehr_features
        self.cap, self.latest = config.max_ehr_tokens, config.truncate == "latest"
        self.patch_size = config.patch_size
        self.grid = config.image_size // config.patch_size
        self.value_embedding = ScalarEmbedding(d)
        self.time_embedding = ScalarEmbedding(d)
        self.type_embedding = nn.Embedding(config.ehr_features + 1, d)
        if config.index_positional_encoding:
            self.register_buffer("index_encoding", sinusoid_table(config.max_ehr_tokens, d), persistent=False)
        else:
            self.index_encoding: Tensor | None = None
        self.patch_embedding = nn.Conv2d(3, d, kernel_size=config.patch_size, stride=config.patch_size)
        self.patch_position = nn.Parameter(torch.empty(self.grid * self.grid, d))
        self.cls = nn.Parameter(torch.empty(2, d))
        self.bottleneck = nn.Parameter(torch.empty(config.bottleneck_tokens, d))
        for parameter in (self.patch_position, self.cls, self.bottleneck):
            nn.init.trunc_normal_(parameter, std=0.02)
        self.stream_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(2))
        self.stream_dropout = nn.Dropout(config.dropout)
        self.fusion_layers = nn.ModuleList(
            nn.ModuleList(
                nn.TransformerEncoderLayer(
                    d, config.heads, dim_feedforward=config.ff, dropout=config.dropout, batch_first=True
                )
                for _ in range(2)
            )
            for _ in range(config.layers)
        )
        self.modality_weights = nn.Parameter(torch.zeros(2))
        self.head = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(d, task.num_outputs)
        )

    def ehr_stream(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """`[CLS_e; observation tokens]` [B, 1 + N, d] and its key-padding mask [B, 1 + N] (True = padding)."""
        ehr = batch["ehr"]
        cells = observed_cells(ehr, batch["ehr_mask"].bool(), cap=self.cap, latest=self.latest)
        # MLP_t of the T possible hours, then looked up: the same values as per token, computed T times.
        hour_embedding = self.time_embedding(torch.arange(ehr.shape[1], device=ehr.device) / self.steps)
        tokens = (
            self.value_embedding(cells.values)
            + hour_embedding[cells.hours]
            + self.type_embedding(cells.features)
        )
        if self.index_encoding is not None:
            tokens = tokens + self.index_encoding.to(tokens.dtype)
        rows = tokens.shape[0]
        stream = torch.cat([self.cls[0].to(tokens.dtype).expand(rows, 1, -1), tokens], dim=1)
        padding = torch.cat([cells.valid.new_zeros(rows, 1), ~cells.valid], dim=1)
        return self.stream_dropout(self.stream_norms[0](stream)), padding

    def patch_positions(self, height: int, width: int) -> Tensor:
        """Learned patch positions [height · width, d], bilinearly resized when the grid is not `image_size`'s."""
        if (height, width) == (self.grid, self.grid):
            return self.patch_position
        table = self.patch_position.T.reshape(1, -1, self.grid, self.grid)
        resized = F.interpolate(table, size=(height, width), mode="bilinear", align_corners=False)
        return resized.reshape(-1, height * width).T

    def cxr_stream(self, cxr: Tensor, cxr_hours: Tensor) -> Tensor:
        """`[CLS_c; patch tokens]` [n_c, 1 + P, d] of the paired rows' `cxr` [n_c, 3, H, W] and `cxr_hours` [n_c]."""
        height, width = cxr.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise CarebenchModelError(
                f"umse needs an image side divisible by its patch size {self.patch_size}, got {height}×{width}"
            )
        patches = self.patch_embedding(cxr)
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = tokens + self.patch_positions(*patches.shape[-2:]).to(tokens.dtype)
        stamp = self.time_embedding(cxr_hours / self.steps) + self.type_embedding.weight[self.features]
        tokens = tokens + stamp[:, None, :].to(tokens.dtype)
        stream = torch.cat([self.cls[1].to(tokens.dtype).expand(tokens.shape[0], 1, -1), tokens], dim=1)
        return self.stream_dropout(self.stream_norms[1](stream))

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K]."""
        idx = paired_index(batch)
        ehr, ehr_padding = self.ehr_stream(batch)
        rows, n_b = ehr.shape[0], self.bottleneck.shape[0]
        ehr_padding = torch.cat([ehr_padding.new_zeros(rows, n_b), ehr_padding], dim=1)
        cxr = None
        if idx.numel() > 0:
            cxr = self.cxr_stream(batch["cxr"].index_select(0, idx), batch["cxr_hours"].index_select(0, idx))
        bottleneck = self.bottleneck.to(ehr.dtype).expand(rows, -1, -1)
        for ehr_layer, cxr_layer in self.fusion_layers:  # type: ignore[misc]
            out = ehr_layer(torch.cat([bottleneck, ehr], dim=1), src_key_padding_mask=ehr_padding)
            ehr_bottleneck, ehr = out[:, :n_b], out[:, n_b:]
            if cxr is not None:
                out = cxr_layer(torch.cat([bottleneck.index_select(0, idx).to(cxr.dtype), cxr], dim=1))
                cxr_bottleneck, cxr = out[:, :n_b], out[:, n_b:]
                mixed = (ehr_bottleneck.index_select(0, idx) + cxr_bottleneck.to(ehr_bottleneck.dtype)) / 2
                ehr_bottleneck = ehr_bottleneck.index_copy(0, idx, mixed)
            bottleneck = ehr_bottleneck
        fused = ehr[:, 0]
        if cxr is not None:
            weights = torch.softmax(self.modality_weights, dim=0)
            paired = weights[0] * fused.index_select(0, idx) + weights[1] * cxr[:, 0].to(fused.dtype)
            fused = fused.index_copy(0, idx, paired.to(fused.dtype))
        return ModelOutput(self.head(fused).float())


@register_model("umse", paper="arXiv:2305.02504", group="missing")
def umse(task: TaskSpec, config: UMSEConfig | None = None) -> UMSEModel:
    """UMSE: observation and patch tokens fused through a bottleneck that skips a missing CXR."""
    return UMSEModel(task, config or UMSEConfig())
