"""`healnet`: hybrid early fusion through a shared latent array (Hemker, Simidjievski, Jamnik, NeurIPS 2024).

Paper arXiv:2311.09115, reference code `konst-int-i/healnet` (Perceiver lineage, arXiv:2103.03206).
A learned latent array is updated in turn by each modality's cross-attention over that modality's
tokens, with latent self-attention after every modality update; the layers after the first share
one set of weights; a missing modality's update is skipped.

The paper's image tokens are patch embeddings of a frozen, pretrained ResNet-50. The CXR analogue
here is the CNN's layer3 map: at 224 px a 14 × 14 grid of 1024-d local descriptors (196 tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import CommonConfig
from carebench_models.encoders.cxr import CXREncoder, build_cxr_encoder
from carebench_models.encoders.ehr import ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

CXRTokens = Literal["map", "pixels"]
FF_MULT = 4
"""Feed-forward width = 4 · d (the reference code's `mult`)."""
MAP_STAGE = 3
"""CNN stage whose feature map gives the CXR tokens (layer3)."""


@dataclass(frozen=True, kw_only=True)
class HEALNetConfig(CommonConfig):
    """Configuration of `healnet` (`paper`: 256 latents of width 256, 4 heads × 64; `quick`: 16 × 32, 2 × 16).

    The latent width is `d_model`. Depth, Fourier bands and maximum frequency are the searched
    hyperparameters (per-task defaults in the bundled defaults file).
    """

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {"num_latents": 256, "heads": 4, "head_dim": 64},
        "quick": {"num_latents": 16, "heads": 2, "head_dim": 16},
    }

    depth: int = 1
    """Fusion layers; layer 0 has its own weights, layers 1… share one set (searched in {1, 2, 3})."""
    fourier_bands: int = 4
    """Fourier frequency bands per position axis: 2·bands + 1 position channels per axis (searched in {1, 2, 4})."""
    max_freq: float = 10.0
    """Highest Fourier frequency; the bands are linspace(1, max_freq / 2) (searched in {5, 10})."""
    num_latents: int = 256
    """Rows of the learned latent array (its width is d_model)."""
    heads: int = 4
    """Attention heads of the cross- and self-attention."""
    head_dim: int = 64
    """Width of one attention head."""
    temperature: float = 0.5
    """Attention logits are scaled by 1/√head_dim and divided by this temperature."""
    cxr_tokens: CXRTokens = "map"
    """`map`: the CNN's layer3 map, one token per grid cell (the analogue of the paper's patch
    embeddings). `pixels`: encoder-free tokens of the image average-pooled by `pixel_pool`."""
    pixel_pool: int = 4
    """Average-pooling factor of `cxr_tokens="pixels"` (≥ 4: at most 3,136 tokens at 224 px)."""
    freeze_cnn: bool = False
    """Freeze the CNN (no gradient, BatchNorm in eval mode), as the paper's pre-extracted features;
    meant for pretrained `cxr_weights`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("depth", "fourier_bands", "num_latents", "heads", "head_dim"):
            if getattr(self, name) < 1:
                raise CarebenchModelError(f"healnet {name} must be >= 1, got {getattr(self, name)}")
        if self.max_freq <= 0 or self.temperature <= 0:
            raise CarebenchModelError("healnet max_freq and temperature must be > 0")
        if self.cxr_tokens not in ("map", "pixels"):
            raise CarebenchModelError(
                f"healnet cxr_tokens must be 'map' or 'pixels', got {self.cxr_tokens!r}"
            )
        if self.pixel_pool < 4:
            raise CarebenchModelError(
                f"healnet pixel_pool must be >= 4 (full-resolution pixel tokens are refused), got {self.pixel_pool}"
            )


def fourier_features(size: int, *, bands: int, max_freq: float, device: torch.device) -> Tensor:
    """Fourier position features of one axis of `size` positions: float32 [size, 2·bands + 1].

    `u = linspace(−1, 1, size)`, `f_j = linspace(1, max_freq / 2, bands)`:
    `[sin(π f_j u) for j; cos(π f_j u) for j; u]`.
    """
    position = torch.linspace(-1.0, 1.0, size, device=device)
    frequencies = torch.linspace(1.0, max_freq / 2, bands, device=device)
    scaled = position[:, None] * frequencies[None, :] * math.pi
    return torch.cat([scaled.sin(), scaled.cos(), position[:, None]], dim=1)


def grid_fourier_features(
    height: int, width: int, *, bands: int, max_freq: float, device: torch.device
) -> Tensor:
    """Fourier features of a 2-d grid: float32 [height · width, 2 (2·bands + 1)] (row axis, then column axis)."""
    rows = fourier_features(height, bands=bands, max_freq=max_freq, device=device)
    columns = fourier_features(width, bands=bands, max_freq=max_freq, device=device)
    return torch.cat(
        [rows[:, None, :].expand(-1, width, -1), columns[None, :, :].expand(height, -1, -1)], dim=2
    ).reshape(height * width, -1)


class LatentAttention(nn.Module):
    """Multi-head attention of the latents over a context (cross) or over themselves (self).

    q = W_q L, [k | v] = W_kv C (no bias); SDPA with scale 1/(√head_dim · temperature) and dropout
    on the attention probabilities; output Linear(heads·head_dim → d) then LeakyReLU(0.01).

    Args:
        dim: latent width d.
        context_dim: width of the context tokens.
        heads: attention heads.
        head_dim: width of one head.
        temperature: softmax temperature.
        dropout: dropout on the attention probabilities.
    """

    def __init__(
        self, dim: int, context_dim: int, *, heads: int, head_dim: int, temperature: float, dropout: float
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.dropout = dropout
        self.scale = 1.0 / (math.sqrt(head_dim) * temperature)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, latents: Tensor, context: Tensor) -> Tensor:
        """`latents` [n, L, d], `context` [n, N, C] → update [n, L, d]."""
        rows = latents.shape[0]
        query = self.to_q(latents).view(rows, latents.shape[1], self.heads, -1).transpose(1, 2)
        key, value = (
            part.view(rows, context.shape[1], self.heads, -1).transpose(1, 2)
            for part in self.to_kv(context).chunk(2, dim=-1)
        )
        attended = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
        merged = attended.transpose(1, 2).reshape(rows, latents.shape[1], -1)
        return F.leaky_relu(self.to_out(merged), negative_slope=0.01)


class GatedFeedForward(nn.Module):
    """Pre-LN feed-forward: LN → Linear(d → 2·4d) → split (a, g) → a·SELU(g) → Linear(4d → d) → Dropout."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, 2 * FF_MULT * dim)
        self.project = nn.Linear(FF_MULT * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, latents: Tensor) -> Tensor:
        """[n, L, d] → update [n, L, d]."""
        value, gate = self.expand(self.norm(latents)).chunk(2, dim=-1)
        return self.dropout(self.project(value * F.selu(gate)))


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention: `LatentAttention(LN L, LN C)` (each input has its own LayerNorm)."""

    def __init__(self, dim: int, context_dim: int, **attention: Any) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(context_dim)
        self.attention = LatentAttention(dim, context_dim, **attention)

    def forward(self, latents: Tensor, context: Tensor) -> Tensor:
        """`latents` [n, L, d], `context` [n, N, C] → update [n, L, d]."""
        return self.attention(self.norm(latents), self.context_norm(context))


class SelfAttentionBlock(nn.Module):
    """Pre-LN latent self-attention: `LatentAttention(LN L, LN L)`."""

    def __init__(self, dim: int, **attention: Any) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = LatentAttention(dim, dim, **attention)

    def forward(self, latents: Tensor) -> Tensor:
        """[n, L, d] → update [n, L, d]."""
        normed = self.norm(latents)
        return self.attention(normed, normed)


class HEALNetLayer(nn.Module):
    """One fusion layer: per modality, a cross-attention and a cross feed-forward, then the self block.

    Args:
        dim: latent width d.
        context_dims: token widths of the modalities (EHR, CXR).
        share_cross_ff: one cross feed-forward for every modality (the weight-tied layers).
        dropout: dropout of the attention probabilities and the feed-forward outputs.
        attention: `heads`, `head_dim`, `temperature` of every attention.
    """

    def __init__(
        self,
        dim: int,
        context_dims: tuple[int, ...],
        *,
        share_cross_ff: bool,
        dropout: float,
        **attention: Any,
    ) -> None:
        super().__init__()
        self.cross_attention = nn.ModuleList(
            CrossAttentionBlock(dim, context_dim, dropout=dropout, **attention)
            for context_dim in context_dims
        )
        self.cross_ff = nn.ModuleList(
            GatedFeedForward(dim, dropout) for _ in range(1 if share_cross_ff else len(context_dims))
        )
        self.self_attention = SelfAttentionBlock(dim, dropout=dropout, **attention)
        self.self_ff = GatedFeedForward(dim, dropout)

    def update(self, latents: Tensor, tokens: Tensor, modality: int) -> Tensor:
        """The latents after modality `modality`'s update and the self block that follows it.

        Args:
            latents: [n, L, d] (only the rows that have this modality).
            tokens: the modality's tokens [n, N, C].
            modality: 0 EHR, 1 CXR.

        Returns:
            [n, L, d] in the dtype of `latents`.
        """
        cross_ff = self.cross_ff[min(modality, len(self.cross_ff) - 1)]
        latents = latents + self.cross_attention[modality](latents, tokens)
        latents = latents + cross_ff(latents)
        latents = latents + self.self_attention(latents)
        return latents + self.self_ff(latents)


class HEALNetModel(FusionModel):
    """A shared latent array updated by cross-attention over raw EHR steps and CXR feature-map cells.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].

    - EHR tokens: `[ehr; ehr_mask]` [B, T, 2F] with Fourier time features → [B, T, 2F + 2nb + 1], no encoder.
    - CXR tokens (paired rows): the CNN up to layer3 → [n_c, C₃, h, w] (ResNet-50 at 224 px: 1024 ×
      14 × 14) → one token per cell with 2-d Fourier features → [n_c, h·w, C₃ + 2(2nb + 1)]; or, with
      `cxr_tokens="pixels"`, the average-pooled image's pixels (3 channels + Fourier features).
    - Fusion: latents L [num_latents, d] (N(0, 1)) repeated over B; per layer, for m in (EHR, CXR):
      `L ← L + CrossAttn_m(LN L, LN tokens_m)`, `L ← L + FF_m(LN L)`, `L ← L + SelfAttn(LN L)`,
      `L ← L + FF_s(LN L)`. Layer 0 has its own weights; layers 1… reuse one tied layer in which
      one cross feed-forward serves both modalities.
    - Head: mean over latents → LayerNorm → Linear(d → K) → logits [B, K].

    Missing CXR (the paper's skip): a row without a CXR skips the whole CXR step (cross-attention,
    cross feed-forward and the self block after it), computed by running that step on the paired
    rows only. A batch without CXRs runs neither the CNN nor any CXR step.
    """

    def __init__(self, task: TaskSpec, config: HEALNetConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.bands, self.max_freq = config.fourier_bands, config.max_freq
        self.pixel_pool = config.pixel_pool
        self.freeze_cnn = config.freeze_cnn
        position_channels = 2 * config.fourier_bands + 1
        self.cxr_encoder: CXREncoder | None = None
        if config.cxr_tokens == "map":
            encoder = build_cxr_encoder(config)
            encoder.layer4 = nn.Sequential()  # the tokens come from layer3; layer4 would never run
            if config.freeze_cnn:
                encoder.requires_grad_(False)
            self.cxr_encoder = encoder
            cxr_channels = encoder.stage_channels[MAP_STAGE]
        else:
            cxr_channels = 3
        context_dims = (2 * config.ehr_features + position_channels, cxr_channels + 2 * position_channels)
        layer_options = {
            "dropout": config.dropout,
            "heads": config.heads,
            "head_dim": config.head_dim,
            "temperature": config.temperature,
        }
        self.latents = nn.Parameter(torch.randn(config.num_latents, d))
        self.first_layer = HEALNetLayer(d, context_dims, share_cross_ff=False, **layer_options)
        self.tied_layer = (
            HEALNetLayer(d, context_dims, share_cross_ff=True, **layer_options) if config.depth > 1 else None
        )
        self.depth = config.depth
        self.head_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, task.num_outputs)

    def train(self, mode: bool = True) -> HEALNetModel:
        """Set train/eval mode; a frozen CNN always stays in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        if self.freeze_cnn and self.cxr_encoder is not None:
            self.cxr_encoder.eval()
        return self

    def layers(self) -> list[HEALNetLayer]:
        """The `depth` layers in execution order (layer 0, then the tied layer repeated)."""
        if self.tied_layer is None:
            return [self.first_layer]
        return [self.first_layer] + [self.tied_layer] * (self.depth - 1)

    def ehr_tokens(self, batch: Batch) -> Tensor:
        """[B, T, 2F + 2nb + 1]: values, observed indicators and Fourier time features."""
        x = ehr_input(batch)
        steps = fourier_features(x.shape[1], bands=self.bands, max_freq=self.max_freq, device=x.device)
        return torch.cat([x, steps.to(x.dtype).expand(x.shape[0], -1, -1)], dim=2)

    def cxr_tokens(self, cxr: Tensor) -> Tensor:
        """Tokens [n_c, N, C + 2(2nb + 1)] of the paired rows' images `cxr` [n_c, 3, H, W]."""
        if self.cxr_encoder is None:
            grid = F.avg_pool2d(cxr, self.pixel_pool)
        else:
            grid = self.cxr_encoder.forward_stages(cxr, upto=MAP_STAGE)[-1]
        rows, _, height, width = grid.shape
        cells = grid.permute(0, 2, 3, 1).reshape(rows, height * width, -1)
        position = grid_fourier_features(
            height, width, bands=self.bands, max_freq=self.max_freq, device=cxr.device
        )
        return torch.cat([cells, position.to(cells.dtype).expand(rows, -1, -1)], dim=2)

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K]."""
        idx = paired_index(batch)
        ehr_tokens = self.ehr_tokens(batch)
        cxr_tokens = self.cxr_tokens(batch["cxr"].index_select(0, idx)) if idx.numel() > 0 else None
        latents = self.latents.expand(ehr_tokens.shape[0], -1, -1)
        for layer in self.layers():
            latents = layer.update(latents, ehr_tokens, 0)
            if cxr_tokens is not None:
                updated = layer.update(latents.index_select(0, idx), cxr_tokens, 1)
                latents = latents.index_copy(0, idx, updated.to(latents.dtype))
        return ModelOutput(self.head(self.head_norm(latents.mean(dim=1))).float())


@register_model("healnet", paper="arXiv:2311.09115", group="missing", cnn_stages="layer3 map")
def healnet(task: TaskSpec, config: HEALNetConfig | None = None) -> HEALNetModel:
    """HEALNet: a shared latent array attends to each available modality in turn; absent ones are skipped."""
    return HEALNetModel(task, config or HEALNetConfig())
