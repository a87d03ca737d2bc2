"""`daft`: Dynamic Affine Feature Map Transform (Pölsterl, Wolf, Wachinger, MICCAI 2021; models.md §8.6).

Paper arXiv:2107.05990, reference code `ai-med/DAFT`. An auxiliary network reads the global average
of a CNN feature map together with a tabular vector and emits a per-channel scale α and shift β that
are applied to that map inside the CNN's last residual block. Here the image is the CXR and the
tabular vector is the pooled EHR embedding, which reaches the output only through this transform.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.cxr import build_cxr_encoder
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

ScaleActivation = Literal["linear", "sigmoid", "tanh"]
SCALE_ACTIVATIONS: tuple[str, ...] = ("linear", "sigmoid", "tanh")


@dataclass(frozen=True, kw_only=True)
class DAFTConfig(TransformerEHRConfig):
    """Configuration of `daft` (`paper`: d 256, ResNet-50, bottleneck 329; `quick`: d 32, SmallCNN, 13).

    Both profiles use location 3, factor 7 and a linear scale, the reference code's classification setting.
    """

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


class DAFTBlock(nn.Module):
    """The CNN's last residual block with the DAFT transform inside (the DAFT block of Pölsterl et al.).

    Adopts the convolutions, batch norms and downsample path of a torchvision `BasicBlock` or
    `Bottleneck` (so pretrained weights carry over; at location 3 the first BN loses its affine
    parameters, which DAFT supplies). The transform on a map `v` [n, C_v, h, w] with tabular `e` [n, P]:
    `z = ReLU(W₁ [GAP(v); e])`, `[α | β] = W₂ z` (both without bias), `v ← act(α) ⊙ v + β`.

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
        if self.scale_activation == "sigmoid":
            scale = torch.sigmoid(scale)
        elif self.scale_activation == "tanh":
            scale = torch.tanh(scale)
        return scale[:, :, None, None] * feature_map + shift[:, :, None, None]

    def forward(self, feature_map: Tensor, tabular: Tensor) -> Tensor:
        """Block output [n, C_out, h', w'] of `feature_map` [n, C_in, h, w] given `tabular` [n, P]."""
        if self.location == 0:
            feature_map = self.transform(feature_map, tabular)
        residual = self.transform(feature_map, tabular) if self.location == 1 else feature_map
        main = self.transform(feature_map, tabular) if self.location == 2 else feature_map
        out = self.bn1(self.conv1(main))
        if self.location == 3:
            out = self.transform(out, tabular)
        out = F.relu(out)
        if self.location == 4:
            out = self.transform(out, tabular)
        out = self.tail(out)
        if self.downsample is not None:
            residual = self.downsample(residual)
        return F.relu(out + residual)


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
    """`TransformerEHR` pooled → `e` [B, d] conditions the CNN's last residual block through DAFT.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].

    Paired rows: the CNN up to the last block (ResNet-50: stem, layer1-3, first two bottlenecks of
    layer4; SmallCNN: stem, layer1-3) → `u` [n_c, C_in, h, w]. The DAFT block runs on all B rows with
    `e` → [B, C_out, h', w'] → GAP → Linear(C_out→K) → logits [B, K].

    Missing CXR: the DAFT block's input for rows without a CXR is a learned map `u_miss` ∈ R^C_in
    broadcast over the h × w grid, so those rows are predicted from the EHR through DAFT's own
    information path. A batch without CXRs skips everything before the block.
    """

    def __init__(self, task: TaskSpec, config: DAFTConfig) -> None:
        super().__init__(task, config)
        self.ehr_encoder = TransformerEHR.from_config(config)
        encoder = build_cxr_encoder(config)
        # The last block leaves the encoder so that it can run without a CXR; the rest is the prefix.
        blocks = list(encoder.layer4.children())
        last_block = blocks[-1]
        if not isinstance(last_block, BasicBlock | Bottleneck):
            raise CarebenchModelError(
                "daft needs a torchvision BasicBlock or Bottleneck as the CNN's last block, "
                f"got {type(last_block).__name__}"
            )
        encoder.layer4 = nn.Sequential(*blocks[:-1])
        self.cxr_encoder = encoder
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

    def map_side(self, side: int) -> int:
        """Side of the DAFT block's input map for images of `side` pixels (cached per side)."""
        if side not in self._map_sides:
            self._map_sides[side] = _map_side(self.cxr_encoder, side)
        return self._map_sides[side]

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K]."""
        idx = paired_index(batch)
        ehr = self.ehr_encoder(ehr_input(batch))
        cxr = batch["cxr"]
        height, width = (self.map_side(side) for side in cxr.shape[-2:])
        block_input = self.missing_input[None, :, None, None].expand(cxr.shape[0], -1, height, width)
        if idx.numel() > 0:
            paired_maps = self.cxr_encoder.forward_stages(cxr.index_select(0, idx))[-1]
            block_input = block_input.index_copy(0, idx, paired_maps.to(block_input.dtype))
        out = self.daft_block(self.cxr_encoder.prepare_input(block_input), ehr)
        return ModelOutput(self.head(out.mean(dim=(2, 3))).float())


@register_model("daft", paper="arXiv:2107.05990", group="complete", cnn_stages="last block")
def daft(task: TaskSpec, config: DAFTConfig | None = None) -> DAFTModel:
    """DAFT: the EHR scales and shifts the feature maps of the CXR CNN's last residual block."""
    return DAFTModel(task, config or DAFTConfig())
