"""`daft`: Dynamic Affine Feature Map Transform (Pölsterl, Wolf, Wachinger, MICCAI 2021; models.md §8.6).

Paper arXiv:2107.05990, reference code `ai-med/DAFT`. An auxiliary network reads the global average
of a CNN feature map together with a tabular vector and emits a per-channel scale α and shift β that
are applied to that map inside the CNN's last residual block. Here the image is the CXR and the
tabular vector is the pooled EHR embedding, which reaches the output only through this transform.

`direction="cxr_to_ehr"` is CareBench's adaptation (taken from MedFuse's DAFT baseline), which
reverses the roles: the CXR's stage features scale and shift the EHR embedding, stage after stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.cxr import CXREncoder, build_cxr_encoder, load_cxr_weights
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_batch_norm, paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

ScaleActivation = Literal["linear", "sigmoid", "tanh"]
SCALE_ACTIVATIONS: tuple[str, ...] = ("linear", "sigmoid", "tanh")
Direction = Literal["ehr_to_cxr", "cxr_to_ehr"]
DIRECTIONS: tuple[str, ...] = ("ehr_to_cxr", "cxr_to_ehr")


@dataclass(frozen=True, kw_only=True)
class DAFTConfig(TransformerEHRConfig):
    """Configuration of `daft` (`paper`: d 256, ResNet-50, bottleneck 329; `quick`: d 32, SmallCNN, 13).

    Both profiles use location 3, factor 7 and a linear scale, the reference code's classification setting.
    """

    direction: Direction = "ehr_to_cxr"
    """Who conditions whom. `ehr_to_cxr` (default, the DAFT paper): the EHR embedding scales and
    shifts the feature maps inside the CNN's last residual block. `cxr_to_ehr` (CareBench's
    adaptation, from MedFuse's DAFT baseline): after each of the five CNN stages, a transform
    conditioned on that stage's pooled map scales and shifts the pooled EHR embedding, which then
    predicts; `location` does not apply."""

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {"location": 3, "bottleneck_factor": 7, "scale_activation": "linear"},
        "quick": {"location": 3, "bottleneck_factor": 7, "scale_activation": "linear"},
    }

    location: int = 3
    """Where the transform acts in the last block: 0 block input (main and residual path), 1 residual
    path only, 2 main path before conv1 (needs a downsample path), 3 after conv1 + BN and before its
    ReLU (that BN then has no affine parameters), 4 after the first ReLU."""
    bottleneck_factor: int = 7
    """The auxiliary network's hidden width is ⌊(C_in + d) / factor⌋, C_in the block's input channels."""
    scale_activation: ScaleActivation = "linear"
    """Activation of the scale α: `linear` (none, the reference default), `sigmoid` or `tanh`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.location not in range(5):
            raise CarebenchModelError(f"daft location must be 0, 1, 2, 3 or 4, got {self.location}")
        if self.bottleneck_factor < 1:
            raise CarebenchModelError(f"daft bottleneck_factor must be >= 1, got {self.bottleneck_factor}")
        if self.scale_activation not in SCALE_ACTIVATIONS:
            raise CarebenchModelError(
                f"daft scale_activation must be one of {', '.join(SCALE_ACTIVATIONS)}, "
                f"got {self.scale_activation!r}"
            )
        if self.direction not in DIRECTIONS:
            raise CarebenchModelError(
                f"daft direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}"
            )


def _scaled(scale: Tensor, activation: str) -> Tensor:
    """The scale α after the configured activation (`linear` leaves it as is)."""
    if activation == "sigmoid":
        return torch.sigmoid(scale)
    if activation == "tanh":
        return torch.tanh(scale)
    return scale


class DAFTBlock(nn.Module):
    """The CNN's last residual block with the DAFT transform inside (the DAFT block of Pölsterl et al.).

    Adopts the convolutions, batch norms and downsample path of a torchvision `BasicBlock` or
    `Bottleneck` (so pretrained weights carry over; at location 3 the first BN loses its affine
    parameters, which DAFT supplies). The transform on a map `v` [n, C_v, h, w] with tabular `e` [n, P]:
    `z = ReLU(W₁ [GAP(v); e])`, `[α | β] = W₂ z` (both without bias), `v ← act(α) ⊙ v + β`. Given
    `rows`, every BatchNorm of the block takes its training statistics from those rows only.

    Args:
        block: the residual block to wrap.
        tabular_dim: P, width of the tabular (EHR) vector.
        location: 0-4, see `DAFTConfig.location`.
        factor: hidden width ⌊(C_in + P) / factor⌋.
        scale_activation: `linear`, `sigmoid` or `tanh`.

    Raises:
        CarebenchModelError: location 2 on a block without a downsample path, or a block whose
            first normalisation is not a BatchNorm2d.
    """

    def __init__(
        self,
        block: BasicBlock | Bottleneck,
        *,
        tabular_dim: int,
        location: int,
        factor: int,
        scale_activation: str,
    ) -> None:
        super().__init__()
        self.location = location
        self.scale_activation = scale_activation
        self.conv1 = block.conv1
        in_channels, width = self.conv1.in_channels, self.conv1.out_channels
        bn1 = block.bn1
        if not isinstance(bn1, nn.BatchNorm2d):
            raise CarebenchModelError(f"daft needs BatchNorm2d in the last block, got {type(bn1).__name__}")
        self.bn1 = bn1
        if location == 3:
            self.bn1 = nn.BatchNorm2d(width, eps=bn1.eps, momentum=bn1.momentum, affine=False)
            self.bn1.load_state_dict(
                {k: v for k, v in bn1.state_dict().items() if k not in ("weight", "bias")}
            )
        if isinstance(block, Bottleneck):
            self.tail = nn.Sequential(block.conv2, block.bn2, nn.ReLU(), block.conv3, block.bn3)
            self.out_channels = block.conv3.out_channels
        else:
            self.tail = nn.Sequential(block.conv2, block.bn2)
            self.out_channels = block.conv2.out_channels
        self.downsample = block.downsample
        if location == 2 and self.downsample is None:
            raise CarebenchModelError(
                "daft location 2 needs a last block with a downsample path (without one it equals location 1)"
            )
        self.in_channels = in_channels
        self.film_channels = in_channels if location in (0, 1, 2) else width
        hidden = (in_channels + tabular_dim) // factor
        self.aux_hidden = nn.Linear(self.film_channels + tabular_dim, hidden, bias=False)
        self.aux_out = nn.Linear(hidden, 2 * self.film_channels, bias=False)

    def transform(self, feature_map: Tensor, tabular: Tensor) -> Tensor:
        """`α ⊙ v + β` for `v` = `feature_map` [n, C_v, h, w], conditioned on `tabular` [n, P]."""
        squeeze = feature_map.mean(dim=(2, 3))
        z = F.relu(self.aux_hidden(torch.cat([squeeze, tabular.to(squeeze.dtype)], dim=1)))
        scale, shift = self.aux_out(z).split(self.film_channels, dim=1)
        scale = _scaled(scale, self.scale_activation)
        return scale[:, :, None, None] * feature_map + shift[:, :, None, None]

    def forward(self, feature_map: Tensor, tabular: Tensor, rows: Tensor | None = None) -> Tensor:
        """Block output [n, C_out, h', w'] of `feature_map` [n, C_in, h, w] given `tabular` [n, P].

        `rows` (int64 [n_c]): the rows whose maps are real (the stays with a CXR); BatchNorm statistics
        come from them only. None: every row counts.
        """
        if self.location == 0:
            feature_map = self.transform(feature_map, tabular)
        residual = self.transform(feature_map, tabular) if self.location == 1 else feature_map
        main = self.transform(feature_map, tabular) if self.location == 2 else feature_map
        out = _run(self.bn1, self.conv1(main), rows)
        if self.location == 3:
            out = self.transform(out, tabular)
        out = F.relu(out)
        if self.location == 4:
            out = self.transform(out, tabular)
        for module in self.tail:
            out = _run(module, out, rows)
        if self.downsample is not None:
            for module in self.downsample:
                residual = _run(module, residual, rows)
        return F.relu(out + residual)


def _run(module: nn.Module, x: Tensor, rows: Tensor | None) -> Tensor:
    """`module(x)`, except that a BatchNorm takes its training statistics from `rows` only (when given)."""
    if rows is not None and isinstance(module, nn.BatchNorm2d):
        return paired_batch_norm(module, x, rows)
    return module(x)


class EHRFiLM(nn.Module):
    """One step of the `cxr_to_ehr` direction: a CXR stage's pooled map scales and shifts the EHR vector.

    `z = ReLU(W₁ [s; e])`, `[α | β] = W₂ z` (both without bias), `e ← act(α) ⊙ e + β`, with `s` [B, C]
    the stage's global average pool and `e` [B, P] the EHR embedding; hidden width ⌊(C + P) / factor⌋.

    Args:
        channels: C, the stage's channels.
        tabular_dim: P.
        factor: bottleneck factor.
        scale_activation: `linear`, `sigmoid` or `tanh`.
    """

    def __init__(self, channels: int, tabular_dim: int, *, factor: int, scale_activation: str) -> None:
        super().__init__()
        self.tabular_dim = tabular_dim
        self.scale_activation = scale_activation
        hidden = max(1, (channels + tabular_dim) // factor)
        self.aux_hidden = nn.Linear(channels + tabular_dim, hidden, bias=False)
        self.aux_out = nn.Linear(hidden, 2 * tabular_dim, bias=False)

    def forward(self, squeeze: Tensor, ehr: Tensor) -> Tensor:
        """`ehr` [B, P] modulated by `squeeze` [B, C] → [B, P]."""
        z = F.relu(self.aux_hidden(torch.cat([squeeze.to(ehr.dtype), ehr], dim=1)))
        scale, shift = self.aux_out(z).split(self.tabular_dim, dim=1)
        return _scaled(scale, self.scale_activation) * ehr + shift


def _map_side(encoder: nn.Module, side: int) -> int:
    """Side of the encoder's output map for an input of `side` pixels, from its conv and pool geometry.

    Walks the main path (downsample branches run in parallel and are skipped) in registration
    order, which is execution order in ResNet-style encoders.
    """
    for name, module in encoder.named_modules():
        if "downsample" in name.split(".") or not isinstance(module, nn.Conv2d | nn.MaxPool2d):
            continue
        if isinstance(module.padding, str):
            raise CarebenchModelError(
                f"daft cannot size the CNN map of {name!r} with padding={module.padding!r}"
            )
        kernel, stride, padding, dilation = (
            _first(value) for value in (module.kernel_size, module.stride, module.padding, module.dilation)
        )
        side = (side + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    return side


def _first(value: int | tuple[int, ...]) -> int:
    """The height entry of a conv/pool geometry argument (square kernels and strides)."""
    return value if isinstance(value, int) else value[0]


class DAFTModel(FusionModel):
    """DAFT between the pooled `TransformerEHR` embedding `e` [B, d] and the CXR CNN, in either direction.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].

    `ehr_to_cxr` (default, the DAFT paper): on the paired rows, the CNN up to the last block
    (ResNet-50: stem, layer1-3, first two bottlenecks of layer4; SmallCNN: stem, layer1-3) → `u`
    [n_c, C_in, h, w]. The DAFT block runs on all B rows with `e` → [B, C_out, h', w'] → GAP →
    Linear(C_out→K) → logits [B, K]. Missing CXR: the block's input for rows without a CXR is a
    learned map `u_miss` ∈ R^C_in broadcast over the h × w grid, so those rows are predicted from the
    EHR through DAFT's own information path; the block's BatchNorms take their statistics from the
    paired rows only. A batch without CXRs skips everything before the block.

    `cxr_to_ehr` (CareBench): the whole CNN runs on the paired rows; after each of its five stages an
    `EHRFiLM` conditioned on the stage's pooled map [n_c, C_i] transforms `e`, then Dropout →
    Linear(d→K). Missing CXR: rows without a CXR use a learned pooled map `s_i^miss` ∈ R^C_i per stage
    (CareBench fed zero images through the CNN instead); a batch without CXRs skips the CNN.
    """

    def __init__(self, task: TaskSpec, config: DAFTConfig) -> None:
        super().__init__(task, config)
        self.ehr_encoder = TransformerEHR.from_config(config)
        if config.direction == "cxr_to_ehr":
            self.cxr_encoder = build_cxr_encoder(config)
            d = self.ehr_encoder.out_dim
            self.film_blocks = nn.ModuleList(
                EHRFiLM(
                    channels,
                    d,
                    factor=config.bottleneck_factor,
                    scale_activation=config.scale_activation,
                )
                for channels in self.cxr_encoder.stage_channels
            )
            self.squeeze_missing = nn.ParameterList(
                nn.Parameter(nn.init.trunc_normal_(torch.empty(channels), std=0.02))
                for channels in self.cxr_encoder.stage_channels
            )
            self.dropout = nn.Dropout(config.dropout)
            self.head = nn.Linear(d, task.num_outputs)
            return
        # Options are checked on the bare CNN before any weights file is read.
        encoder = build_cxr_encoder(replace(config, cxr_weights="none"))
        last_block = list(encoder.layer4.children())[-1]
        if not isinstance(last_block, BasicBlock | Bottleneck):
            raise CarebenchModelError(
                "daft needs a torchvision BasicBlock or Bottleneck as the CNN's last block, "
                f"got {type(last_block).__name__}"
            )
        if config.location == 2 and last_block.downsample is None:
            raise CarebenchModelError(
                "daft location 2 needs a last block with a downsample path (without one it equals location 1)"
            )
        if config.cxr_weights != "none":
            load_cxr_weights(encoder, config.cxr_weights, allow_download=config.allow_download)
        # The last block leaves the encoder so that it can run without a CXR; the rest is the prefix.
        blocks = list(encoder.layer4.children())
        encoder.layer4 = nn.Sequential(*blocks[:-1])
        self.cxr_encoder: CXREncoder = encoder
        self.daft_block = DAFTBlock(
            last_block,
            tabular_dim=self.ehr_encoder.out_dim,
            location=config.location,
            factor=config.bottleneck_factor,
            scale_activation=config.scale_activation,
        )
        self.missing_input = nn.Parameter(torch.empty(self.daft_block.in_channels))
        nn.init.trunc_normal_(self.missing_input, std=0.02)
        self.head = nn.Linear(self.daft_block.out_channels, task.num_outputs)
        self._map_sides: dict[int, int] = {}

    def variant(self) -> str:
        """Which direction runs."""
        if self.config.direction == "cxr_to_ehr":
            return "cxr_to_ehr: the CXR stages scale and shift the EHR embedding (CareBench)"
        return "ehr_to_cxr: the EHR scales and shifts the CXR feature maps (DAFT paper)"

    def map_side(self, side: int) -> int:
        """Side of the DAFT block's input map for images of `side` pixels (cached per side)."""
        if side not in self._map_sides:
            self._map_sides[side] = _map_side(self.cxr_encoder, side)
        return self._map_sides[side]

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K]."""
        idx = paired_index(batch)
        ehr = self.ehr_encoder(ehr_input(batch))
        if self.config.direction == "cxr_to_ehr":
            return ModelOutput(self.head(self.dropout(self._condition_ehr(batch["cxr"], idx, ehr))).float())
        cxr = batch["cxr"]
        height, width = (self.map_side(side) for side in cxr.shape[-2:])
        block_input = self.missing_input[None, :, None, None].expand(cxr.shape[0], -1, height, width)
        if idx.numel() > 0:
            paired_maps = self.cxr_encoder.forward_stages(cxr.index_select(0, idx))[-1]
            block_input = block_input.index_copy(0, idx, paired_maps.to(block_input.dtype))
        out = self.daft_block(self.cxr_encoder.prepare_input(block_input), ehr, idx)
        return ModelOutput(self.head(out.mean(dim=(2, 3))).float())

    def _condition_ehr(self, cxr: Tensor, idx: Tensor, ehr: Tensor) -> Tensor:
        """`e` [B, d] after the five stage-conditioned transforms of the `cxr_to_ehr` direction."""
        batch_size = cxr.shape[0]
        maps = self.cxr_encoder.forward_stages(cxr.index_select(0, idx)) if idx.numel() > 0 else None
        for stage, (film, missing) in enumerate(zip(self.film_blocks, self.squeeze_missing, strict=True)):
            squeeze = missing.unsqueeze(0).expand(batch_size, -1)
            if maps is not None:
                squeeze = squeeze.index_copy(0, idx, maps[stage].mean(dim=(2, 3)).to(squeeze.dtype))
            ehr = film(squeeze, ehr)
        return ehr


@register_model("daft", paper="arXiv:2107.05990", group="complete", cnn_stages="last block")
def daft(task: TaskSpec, config: DAFTConfig | None = None) -> DAFTModel:
    """DAFT: the EHR scales and shifts the feature maps of the CXR CNN's last residual block (or the reverse)."""
    return DAFTModel(task, config or DAFTConfig())
