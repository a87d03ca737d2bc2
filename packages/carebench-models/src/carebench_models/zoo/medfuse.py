"""`medfuse`: LSTM fusion of the EHR and CXR embeddings (Hayat, Geras, Shamout, MLHC 2022; models.md §8.16).

Paper arXiv:2207.07027, reference code `nyuad-cai/MedFuse`. The modality embeddings form a short
sequence `[e, c]` read by a fusion LSTM; a stay without a CXR simply has the shorter sequence `[e]`.

Two training protocols: `end_to_end` (the default, as CareBench trains it) and `staged` (the MedFuse
paper's: each encoder is first trained alone with its own head, then the fusion LSTM is trained on
top and the encoders fine-tuned with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, ModelOutput, TrainingStage
from carebench_models.config import CommonConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.encoders.ehr import ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

# Submodules whose weights `pretrained_encoders` may provide, and those of a MedFuse file it skips.
_ENCODER_MODULES = ("ehr_lstm", "cxr_branch")
_SKIPPED_MODULES = ("fusion_lstm", "head", "ehr_head", "cxr_head")
Training = Literal["end_to_end", "staged"]
TRAINING_PROTOCOLS: tuple[str, ...] = ("end_to_end", "staged")
STAGES: tuple[TrainingStage, ...] = (
    TrainingStage("ehr_pretrain"),
    TrainingStage("cxr_pretrain", rows="paired"),
    TrainingStage("fusion"),
)
"""The staged protocol: the EHR encoder alone (every stay), the CXR encoder alone (stays with a CXR),
then the whole model (fusion LSTM and head trained, both encoders fine-tuned)."""


@dataclass(frozen=True, kw_only=True)
class MedFuseConfig(CommonConfig):
    """Configuration of `medfuse` (`paper`: d 256, ResNet-50; `quick`: d 32, SmallCNN; dropout 0.3)."""

    cxr_weights: str = "imagenet_v1"
    """As `CommonConfig.cxr_weights`; the `paper` default is `imagenet_v1` (IMAGENET1K_V1), the
    ResNet-50 weights CareBench starts MedFuse from."""
    dropout: float = 0.3
    """Dropout on the EHR embedding (0.3 ran upstream; MedFuse's README says 0.2)."""
    layers: int = 1
    """Layers of the EHR LSTM (1 as CareBench ran it; MedFuse's published scripts stack 2)."""
    pretrained_encoders: str | None = None
    """Optional `.safetensors` state dict of a `medfuse` model (e.g. a run trained with every CXR
    dropped) whose EHR and/or CXR encoder weights are loaded at build time, reproducing the paper's
    staged schedule. Each encoder is loaded completely or not at all; the file's fusion and head
    weights are skipped; any other key raises."""
    training: Training = "end_to_end"
    """`end_to_end` (CareBench: the whole model from the start) or `staged` (the MedFuse paper: the EHR
    encoder, then the CXR encoder, each pretrained on the task with its own linear head, then the
    fusion LSTM trained with both encoders fine-tuned; see `STAGES`). The paper pretrains the CXR
    encoder on radiology labels, which the benchmark dataset does not carry, so here it learns the
    task's labels on the stays with a CXR."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 1:
            raise CarebenchModelError(f"medfuse layers must be >= 1, got {self.layers}")
        if self.training not in TRAINING_PROTOCOLS:
            raise CarebenchModelError(
                f"medfuse training must be one of {', '.join(TRAINING_PROTOCOLS)}, got {self.training!r}"
            )
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

    Staged training (`training="staged"`) adds two linear heads, `ehr_head` (d→K on `e`) and `cxr_head`
    (d→K on `c`), used only by the pretraining stages: `ehr_pretrain` predicts from the EHR alone,
    `cxr_pretrain` from the CXR alone on rows that all have one; the `fusion` stage and prediction use
    the fused model above.
    """

    conditional_parameters = ("ehr_head", "cxr_head")

    def __init__(self, task: TaskSpec, config: MedFuseConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.ehr_lstm = nn.LSTM(2 * config.ehr_features, d, num_layers=config.layers, batch_first=True)
        self.ehr_dropout = nn.Dropout(config.dropout)
        self.cxr_branch = ProjectedCXR(config)
        self.fusion_lstm = nn.LSTM(d, d, batch_first=True)
        self.head = nn.Linear(d, task.num_outputs)
        self.stage: str | None = None
        if config.training == "staged":
            self.ehr_head = nn.Linear(d, task.num_outputs)
            self.cxr_head = nn.Linear(d, task.num_outputs)
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

    def training_stages(self) -> tuple[TrainingStage, ...]:
        """`STAGES` for the staged protocol; none (one ordinary fit) end to end."""
        return STAGES if self.config.training == "staged" else ()

    def set_training_stage(self, stage: str | None) -> None:
        """Switch `forward` to a pretraining stage's unimodal head, or back to the fused model (None, `fusion`)."""
        self.stage = stage

    def variant(self) -> str:
        """The training protocol that runs."""
        if self.config.training == "staged":
            return (
                "staged training (MedFuse paper): EHR, then CXR encoder pretrained on the task, then fusion"
            )
        return "end-to-end training (CareBench)"

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K] from the fusion LSTM's state after the last available modality.

        In the pretraining stages: the EHR head on `e` (`ehr_pretrain`), or the CXR head on `c`
        (`cxr_pretrain`, every row must have a CXR).

        Raises:
            CarebenchModelError: a row without a CXR in the `cxr_pretrain` stage.
        """
        idx = paired_index(batch)
        if self.stage == "cxr_pretrain":
            if idx.numel() != batch["has_cxr"].shape[0]:
                raise CarebenchModelError(
                    "medfuse's cxr_pretrain stage trains on rows with a CXR only; the batch has rows without one"
                )
            return ModelOutput(self.cxr_head(self.cxr_branch(batch["cxr"])).float())
        ehr = self.encode_ehr(batch)
        if self.stage == "ehr_pretrain":
            return ModelOutput(self.ehr_head(ehr).float())
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
