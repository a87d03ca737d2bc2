"""`medfuse`: LSTM fusion of the EHR and CXR embeddings (Hayat, Geras, Shamout, MLHC 2022; models.md §8.16).

Paper arXiv:2207.07027, reference code `nyuad-cai/MedFuse`. The modality embeddings form a short
sequence `[e, c]` read by a fusion LSTM; a stay without a CXR simply has the shorter sequence `[e]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import CommonConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.encoders.ehr import ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

# Submodules whose weights `pretrained_encoders` may provide, and those of a MedFuse file it skips.
_ENCODER_MODULES = ("ehr_lstm", "cxr_branch")
_SKIPPED_MODULES = ("fusion_lstm", "head")


@dataclass(frozen=True, kw_only=True)
class MedFuseConfig(CommonConfig):
    """Configuration of `medfuse` (`paper`: d 256, ResNet-50; `quick`: d 32, SmallCNN; dropout 0.3)."""

    dropout: float = 0.3
    """Dropout on the EHR embedding (0.3 ran upstream; MedFuse's README says 0.2)."""
    layers: int = 1
    """Layers of the EHR LSTM (1 as CareBench ran it; MedFuse's published scripts stack 2)."""
    pretrained_encoders: str | None = None
    """Optional `.safetensors` state dict of a `medfuse` model (e.g. a run trained with every CXR
    dropped) whose EHR and/or CXR encoder weights are loaded at build time, reproducing the paper's
    staged schedule. Each encoder is loaded completely or not at all; the file's fusion and head
    weights are skipped; any other key raises."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 1:
            raise CarebenchModelError(f"medfuse layers must be >= 1, got {self.layers}")
        if self.pretrained_encoders is not None and Path(self.pretrained_encoders).suffix != ".safetensors":
            raise CarebenchModelError(
                f"medfuse pretrained_encoders must be a .safetensors file, got {self.pretrained_encoders!r}"
            )


class MedFuseModel(FusionModel):
    """EHR LSTM + CXR CNN fused by an LSTM over the modality sequence `[e, c]` (MedFuse's LSTM fusion module).

    Inputs: `ehr` [B, T, F] normalised values, `ehr_mask` [B, T, F] observed indicators, `cxr`
    [B, 3, H, W], `has_cxr` [B].

    - EHR: `x = [ehr; ehr_mask]` [B, T, 2F] → LSTM(2F→d, `layers`, unidirectional; Xavier-uniform
      input weights, orthogonal recurrent weights, zero biases) → last hidden state → Dropout → `e` [B, d].
    - CXR: CNN on the paired rows → Linear(C→d) → `c` [n_c, d].
    - Fusion: `[e, c]` [B, 2, d] → LSTM(d→d) → output at step 2 for paired rows, at step 1 for the
      others → Linear(d→K) → logits [B, K].

    Missing CXR (MedFuse's published rule): the CXR step is dropped, so the row's fused state is the
    fusion LSTM's output after `e` alone. The LSTM is causal, so step 1's output equals a length-1
    run and no packing is needed; the zero placeholder at step 2 of those rows is never read. A
    batch without CXRs never runs the CNN.
    """

    def __init__(self, task: TaskSpec, config: MedFuseConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.ehr_lstm = nn.LSTM(2 * config.ehr_features, d, num_layers=config.layers, batch_first=True)
        self.ehr_dropout = nn.Dropout(config.dropout)
        self.cxr_branch = ProjectedCXR(config)
        self.fusion_lstm = nn.LSTM(d, d, batch_first=True)
        self.head = nn.Linear(d, task.num_outputs)
        for name, parameter in self.ehr_lstm.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(parameter)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(parameter)
            else:
                nn.init.zeros_(parameter)
        if config.pretrained_encoders is not None:
            self.load_pretrained_encoders(Path(config.pretrained_encoders))

    def encode_ehr(self, batch: Batch) -> Tensor:
        """`e` [B, d]: the EHR LSTM's last hidden state after dropout."""
        _, (hidden, _) = self.ehr_lstm(ehr_input(batch))
        return self.ehr_dropout(hidden[-1])

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K] from the fusion LSTM's state after the last available modality."""
        idx = paired_index(batch)
        ehr = self.encode_ehr(batch)
        cxr_rows = self.cxr_branch.encode_rows(batch["cxr"], idx)
        if cxr_rows is None:
            fused, _ = self.fusion_lstm(ehr.unsqueeze(1))
            return ModelOutput(self.head(fused[:, 0]).float())
        cxr = ehr.new_zeros(ehr.shape).index_copy(0, idx, cxr_rows.to(ehr.dtype))
        states, _ = self.fusion_lstm(torch.stack([ehr, cxr], dim=1))
        fused = torch.where(batch["has_cxr"].bool().unsqueeze(1), states[:, 1], states[:, 0])
        return ModelOutput(self.head(fused).float())

    def load_pretrained_encoders(self, path: Path) -> None:
        """Load the encoder weights of a saved `medfuse` state dict (see `MedFuseConfig.pretrained_encoders`).

        Raises:
            CarebenchModelError: the file is missing, has keys of no MedFuse module, an encoder only in
                part, tensors of other shapes, or no encoder at all.
        """
        if not path.is_file():
            raise CarebenchModelError(f"medfuse pretrained_encoders file not found: {path}")
        state = load_file(str(path))
        unknown = sorted(
            key for key in state if key.split(".", 1)[0] not in _ENCODER_MODULES + _SKIPPED_MODULES
        )
        if unknown:
            raise CarebenchModelError(f"{path} is not a medfuse state dict: unexpected keys {unknown[:5]}")
        loaded = []
        for module_name in _ENCODER_MODULES:
            module: nn.Module = getattr(self, module_name)
            expected = module.state_dict()
            given = {
                key.removeprefix(f"{module_name}."): value
                for key, value in state.items()
                if key.startswith(f"{module_name}.")
            }
            if not given:
                continue
            missing = sorted(set(expected) - set(given))
            shapes = [
                key for key, value in given.items() if key in expected and value.shape != expected[key].shape
            ]
            if missing or shapes:
                raise CarebenchModelError(
                    f"{path}: {module_name} weights do not fit this configuration "
                    f"(missing {missing[:5]}, other shapes {shapes[:5]})"
                )
            module.load_state_dict(given)
            loaded.append(module_name)
        if not loaded:
            raise CarebenchModelError(f"{path} holds no encoder weights ({', '.join(_ENCODER_MODULES)})")


@register_model("medfuse", paper="arXiv:2207.07027", group="missing")
def medfuse(task: TaskSpec, config: MedFuseConfig | None = None) -> MedFuseModel:
    """MedFuse: an LSTM reads [EHR, CXR] embeddings; a missing CXR shortens the sequence."""
    return MedFuseModel(task, config or MedFuseConfig())
