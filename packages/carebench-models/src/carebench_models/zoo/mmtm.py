"""`mmtm`: Multimodal Transfer Module (Joze, Shaban, Iuzzolino, Koishida, CVPR 2020; models.md §8.7).

Paper arXiv:1911.08670; EHR + CXR placement after MedFuse (arXiv:2207.07027). Between stages of the
two unimodal networks, each stream is squeezed by global average pooling, the concatenation is
compressed, and a channel excitation per stream rescales both; the rescaled features feed the next
stages of both networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, ModelOutput, StepLog, TrainState
from carebench_models.config import CommonConfig
from carebench_models.encoders.cxr import build_cxr_encoder
from carebench_models.encoders.ehr import ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import MissingToken, paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

if TYPE_CHECKING:
    from carebench_models.training.config import TrainConfig

Schedule = Literal["joint", "medfuse"]


@dataclass(frozen=True, kw_only=True)
class MMTMConfig(CommonConfig):
    """Configuration of `mmtm` (`paper`: hidden 256, ResNet-50; `quick`: hidden 32, SmallCNN).

    Both profiles fuse after all five CNN stages with ratio 4, gate 2σ and the `joint` schedule.
    """

    dropout: float = 0.3
    """Dropout on the EHR LSTM's last hidden state (CareBench's encoder)."""
    stages: tuple[int, ...] = (0, 1, 2, 3, 4)
    """CNN stages followed by an MMTM (0 = stem ... 4 = layer4); all five as CareBench, MedFuse's
    default and published scripts fuse after stage 4 only."""
    ratio: float = 4.0
    """Compression ratio: the squeeze layer has 2 (C_i + d) / ratio units (the reference code's factor 2)."""
    gate_scale: float = 2.0
    """Excitation = gate_scale · σ(·): 2.0 as the paper (a zero excitation is the identity); 1.0 is
    MedFuse's plain sigmoid."""
    schedule: Schedule = "joint"
    """`joint` (the paper): one optimiser on the joint loss. `medfuse` (MedFuse's baseline recipe):
    per batch three sequential steps on an EHR-only head, a CXR-only head and the joint loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        stages = tuple(sorted({int(stage) for stage in self.stages}))
        if not stages or not set(stages) <= {0, 1, 2, 3, 4}:
            raise CarebenchModelError(f"mmtm stages must be a non-empty subset of 0-4, got {self.stages!r}")
        object.__setattr__(self, "stages", stages)
        if self.ratio <= 0 or self.gate_scale <= 0:
            raise CarebenchModelError("mmtm ratio and gate_scale must be > 0")
        if self.schedule not in ("joint", "medfuse"):
            raise CarebenchModelError(f"mmtm schedule must be 'joint' or 'medfuse', got {self.schedule!r}")


class MMTMUnit(nn.Module):
    """One MMTM between CNN stage i and the EHR hidden sequence (the paper's squeeze and excitation steps).

    `z = ReLU(W_z [s_v; s_e])` with `s_v = GAP(F_i)` [·, C_i] and `s_e = mean_t h` [B, d];
    `g_v = gate_scale · σ(W_v z)`, `g_e = gate_scale · σ(W_e z)`; `F_i ← F_i ⊙ g_v`, `h ← h ⊙ g_e`.

    Missing CXR: rows without a CXR use the learned squeeze `missing_squeeze` ∈ R^C_i as their `s_v`
    (no CXR stream exists for them, so their `g_v` is not used).

    Args:
        cxr_channels: C_i.
        ehr_channels: d.
        ratio: the squeeze layer has ⌊2 (C_i + d) / ratio⌋ units.
        gate_scale: factor of the sigmoid gates.
    """

    def __init__(self, cxr_channels: int, ehr_channels: int, *, ratio: float, gate_scale: float) -> None:
        super().__init__()
        joint = cxr_channels + ehr_channels
        hidden = int(2 * joint / ratio)
        self.gate_scale = gate_scale
        self.squeeze = nn.Linear(joint, hidden)
        self.cxr_excitation = nn.Linear(hidden, cxr_channels)
        self.ehr_excitation = nn.Linear(hidden, ehr_channels)
        self.missing_squeeze = MissingToken(cxr_channels)

    def gates(self, cxr_map: Tensor | None, ehr_seq: Tensor, idx: Tensor) -> tuple[Tensor | None, Tensor]:
        """Excitations `(g_v [n_c, C_i] or None, g_e [B, d])`.

        Args:
            cxr_map: stage output of the paired rows [n_c, C_i, h, w], or None when no row has a CXR.
            ehr_seq: EHR hidden sequence [B, T, d].
            idx: int64 [n_c] row indices of the paired rows.
        """
        ehr_squeeze = ehr_seq.mean(dim=1)
        pooled = None if cxr_map is None else cxr_map.mean(dim=(2, 3))
        cxr_squeeze = self.missing_squeeze.fill(idx, pooled, ehr_seq.shape[0])
        z = F.relu(self.squeeze(torch.cat([cxr_squeeze.to(ehr_squeeze.dtype), ehr_squeeze], dim=1)))
        ehr_gate = self.gate_scale * torch.sigmoid(self.ehr_excitation(z))
        if cxr_map is None:
            return None, ehr_gate
        return self.gate_scale * torch.sigmoid(self.cxr_excitation(z.index_select(0, idx))), ehr_gate

    def forward(self, cxr_map: Tensor | None, ehr_seq: Tensor, idx: Tensor) -> tuple[Tensor | None, Tensor]:
        """`(F_i ⊙ g_v, h ⊙ g_e)`, shapes as the inputs (see `gates`)."""
        cxr_gate, ehr_gate = self.gates(cxr_map, ehr_seq, idx)
        ehr_seq = ehr_seq * ehr_gate.unsqueeze(1).to(ehr_seq.dtype)
        if cxr_map is None or cxr_gate is None:
            return None, ehr_seq
        return cxr_map * cxr_gate[:, :, None, None].to(cxr_map.dtype), ehr_seq


class MMTMFeatures(NamedTuple):
    """Intermediate results of one MMTM forward pass."""

    logits: Tensor
    """Joint logits float32 [B, K]."""
    ehr: Tensor
    """EHR embedding `e` [B, d]."""
    cxr_rows: Tensor | None
    """`GAP(F_4)` of the paired rows [n_c, C_4]; None without paired rows."""
    idx: Tensor
    """int64 [n_c] paired row indices."""


class MMTMModel(FusionModel):
    """2-layer LSTM EHR stream and CNN stream, exchanging channel gates after the chosen CNN stages.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].

    `h₁ = LSTM₁(Linear(2F→d)([ehr; ehr_mask]))` [B, T, d]; `F₀ = stem(cxr[idx])`. For each CNN stage i
    (C_i = 64, 256, 512, 1024, 2048 for ResNet-50; 16, 16, 32, 64, 128 for SmallCNN) the map `F_i`
    is computed from the *gated* `F_{i-1}`, and where an MMTM follows stage i it gates `F_i` and `h₁`.
    Then `e = Linear(d→d)(Dropout(last hidden of LSTM₂(h₁)))` [B, d], `c = GAP(F₄)` [B, C₄], and
    logits = Linear(2C₄→K)([Linear(d→C₄)(e); c]) [B, K].

    Missing CXR: each MMTM uses a learned squeeze for rows without a CXR, and their `c` is the
    learned `cxr_missing` ∈ R^C₄. A batch without CXRs never runs the CNN; the MMTMs still gate the
    EHR stream.

    `schedule="medfuse"` adds an EHR-only head Linear(d→K) on `e` and a CXR-only head Linear(C₄→K) on
    `c` (paired rows), trained by their own optimisers (see `training_step`).
    """

    def __init__(self, task: TaskSpec, config: MMTMConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.schedule = config.schedule
        self.ehr_proj = nn.Linear(2 * config.ehr_features, d)
        self.ehr_lstm1 = nn.LSTM(d, d, batch_first=True)
        self.ehr_lstm2 = nn.LSTM(d, d, batch_first=True)
        self.ehr_dropout = nn.Dropout(config.dropout)
        self.ehr_out = nn.Linear(d, d)
        self.cxr_encoder = build_cxr_encoder(config)
        channels = self.cxr_encoder.stage_channels
        self.mmtm = nn.ModuleDict(
            {
                str(stage): MMTMUnit(channels[stage], d, ratio=config.ratio, gate_scale=config.gate_scale)
                for stage in config.stages
            }
        )
        cxr_dim = self.cxr_encoder.out_channels
        self.cxr_missing = MissingToken(cxr_dim)
        self.ehr_to_cxr = nn.Linear(d, cxr_dim)
        self.head = nn.Linear(2 * cxr_dim, task.num_outputs)
        if config.schedule == "medfuse":
            self.ehr_head = nn.Linear(d, task.num_outputs)
            self.cxr_head = nn.Linear(cxr_dim, task.num_outputs)

    def fuse(self, batch: Batch) -> MMTMFeatures:
        """Run both streams with interleaved MMTMs; see the class docstring for the shapes."""
        idx = paired_index(batch)
        hidden, _ = self.ehr_lstm1(self.ehr_proj(ehr_input(batch)))
        cxr_map = None
        if idx.numel() > 0:
            cxr_map = self.cxr_encoder.prepare_input(batch["cxr"].index_select(0, idx))
        for stage_index, stage in enumerate(self.cxr_encoder.stages):
            if cxr_map is not None:
                cxr_map = stage(cxr_map)
            if str(stage_index) in self.mmtm:
                cxr_map, hidden = self.mmtm[str(stage_index)](cxr_map, hidden, idx)
        _, (last, _) = self.ehr_lstm2(hidden)
        ehr = self.ehr_out(self.ehr_dropout(last[-1]))
        cxr_rows = None if cxr_map is None else cxr_map.mean(dim=(2, 3))
        cxr = self.cxr_missing.fill(idx, cxr_rows, ehr.shape[0])
        logits = self.head(torch.cat([self.ehr_to_cxr(ehr), cxr.to(ehr.dtype)], dim=1))
        return MMTMFeatures(logits.float(), ehr, cxr_rows, idx)

    def forward(self, batch: Batch) -> ModelOutput:
        """Joint logits [B, K]."""
        return ModelOutput(self.fuse(batch).logits)

    def configure_optimizers(self, train_cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        """The optimisers in the order `training_step` uses them.

        `joint`: one AdamW over all parameters. `medfuse`: AdamW over (EHR stream + MMTMs + EHR head),
        over (CNN + MMTMs + CXR head) and over all parameters; every one with the run's lr, betas, eps
        and weight decay.
        """
        if self.schedule == "joint":
            return super().configure_optimizers(train_cfg)
        ehr_modules = (self.ehr_proj, self.ehr_lstm1, self.ehr_lstm2, self.ehr_out, self.mmtm, self.ehr_head)
        cxr_modules = (self.cxr_encoder, self.mmtm, self.cxr_head)
        groups = [
            [p for module in ehr_modules for p in module.parameters()],
            [p for module in cxr_modules for p in module.parameters()],
            list(self.parameters()),
        ]
        return [
            torch.optim.AdamW(
                [p for p in group if p.requires_grad],
                lr=train_cfg.lr,
                betas=train_cfg.betas,
                eps=train_cfg.eps,
                weight_decay=train_cfg.weight_decay,
            )
            for group in groups
        ]

    def _cxr_only_loss(self, batch: Batch, y: Tensor) -> Tensor | None:
        """Task loss of the CXR-only head on the paired rows; None when the batch has no CXR."""
        features = self.fuse(batch)
        if features.cxr_rows is None:
            return None
        return self.task.loss(self.cxr_head(features.cxr_rows), y.index_select(0, features.idx))

    def training_step(
        self, batch: Batch, optimizers: list[torch.optim.Optimizer], state: TrainState
    ) -> StepLog:
        """`joint`: the default step. `medfuse`: three sequential steps, each with a fresh forward pass.

        1. EHR-only head loss on all rows, optimiser 0 (EHR stream, MMTMs, EHR head);
        2. CXR-only head loss on the paired rows, optimiser 1 (CNN, MMTMs, CXR head), skipped when
           the batch has no CXR (then `cxr_only` is not logged);
        3. joint loss, optimiser 2 (all parameters).

        Logs `loss` and `task` (the joint loss), `ehr_only` and `cxr_only`.
        """
        if self.schedule == "joint":
            return super().training_step(batch, optimizers, state)
        y = batch["y"]
        logs: StepLog = {}

        def step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
            loss.backward()
            if state.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.parameters(), state.max_grad_norm)
            optimizer.step()

        optimizers[0].zero_grad(set_to_none=True)
        features = self.fuse(batch)
        ehr_loss = self.task.loss(self.ehr_head(features.ehr), y)
        step(optimizers[0], ehr_loss)
        logs["ehr_only"] = ehr_loss.detach()

        optimizers[1].zero_grad(set_to_none=True)
        cxr_loss = self._cxr_only_loss(batch, y)
        if cxr_loss is not None:
            step(optimizers[1], cxr_loss)
            logs["cxr_only"] = cxr_loss.detach()

        optimizers[2].zero_grad(set_to_none=True)
        joint_loss = self.task.loss(self.fuse(batch).logits, y)
        step(optimizers[2], joint_loss)
        logs["loss"] = logs["task"] = joint_loss.detach()
        return logs


@register_model("mmtm", paper="arXiv:1911.08670", group="complete", cnn_stages="all 5")
def mmtm(task: TaskSpec, config: MMTMConfig | None = None) -> MMTMModel:
    """MMTM: squeeze-excitation gates exchanged between the EHR LSTM and every CXR CNN stage."""
    return MMTMModel(task, config or MMTMConfig())
