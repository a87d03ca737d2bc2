"""`aug`: sustained boosting with adaptive classifier assignment (Jiang, Huang, Yang, NeurIPS 2025).

Paper arXiv:2502.20120 (code `njustkmg/NeurIPS25-AUG`). Modality imbalance comes from a gap in
classification ability: the weaker modality gets extra classifiers, each trained on the task error
and on the residual error of the classifiers before it (sustained boosting), and which modality is
weaker is decided every few epochs from the ratio of the two modalities' training confidences
(adaptive classifier assignment, ACA). Predictions mix the per-modality logits late.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carebench_models.base import (
    Batch,
    FusionModel,
    ModelOutput,
    StepLog,
    TrainState,
    adamw,
    reset_optimizer_state,
)
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_index, scatter_rows
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

if TYPE_CHECKING:
    from carebench_models.training.config import TrainConfig

logger = logging.getLogger(__name__)

CONFIDENCE_KEY = "aug_confidence"
"""`TrainState.extra` key of the epoch's confidence sums: float [3] = (Σ S_ehr, Σ S_cxr, paired rows)."""


@dataclass(frozen=True, kw_only=True)
class AUGConfig(TransformerEHRConfig):
    """Configuration of `aug` (`paper`: d 256, 11 slots per modality; `quick`: d 32, 4 slots).

    The class defaults of α, λ, δ and T_check are untuned starting points (δ is the authors' fixed
    margin); the bundled per-task defaults replace them in `carebench run`.
    """

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {"max_slots": 11},
        "quick": {"max_slots": 4},
    }

    alpha: float = 0.5
    """Weight of the EHR logits in the prediction of a paired row: α·logits_ehr + (1 − α)·logits_cxr;
    also the weight of the EHR loss in the logged loss."""
    lam: float = 1.0
    """λ, the target of the confidence ratio r = S_ehr / S_cxr: r > λ + δ boosts the CXR, r < λ − δ the EHR."""
    delta: float = 0.01
    """δ, the dead zone around λ in which no classifier is added."""
    t_check: int = 5
    """ACA checks the ratio after epoch 0 and after every epoch e with (e + 1) divisible by t_check."""
    max_slots: int = 11
    """Boosting classifiers pre-allocated per modality (11 cover 50 epochs at t_check 5)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise CarebenchModelError(f"aug alpha must be in [0, 1], got {self.alpha}")
        if self.lam <= 0 or self.delta < 0:
            raise CarebenchModelError(f"aug needs lam > 0 and delta >= 0, got {self.lam} and {self.delta}")
        if self.t_check < 1 or self.max_slots < 1:
            raise CarebenchModelError(
                f"aug needs t_check >= 1 and max_slots >= 1, got {self.t_check} and {self.max_slots}"
            )


class BoostingSlots(nn.Module):
    """Pre-allocated boosting classifiers of one modality; the first `active_count` are in use.

    Slot k maps a feature f [n, d] to `ReLU(A_k f + b_k)` [n, d] (the shared `fc_out` turns it into
    logits). Each slot is its own parameter, so an inactive slot never receives a gradient and an
    optimiser keeps separate state per slot. The active count is the int64 buffer `active` (saved
    with the weights) mirrored as the Python int `active_count`, so `forward` needs no device sync.

    Args:
        slots: L_max.
        width: d.
    """

    def __init__(self, slots: int, width: int) -> None:
        super().__init__()
        self.weight = nn.ParameterList(nn.Parameter(torch.empty(width, width)) for _ in range(slots))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(width)) for _ in range(slots))
        for weight in self.weight:
            nn.init.xavier_normal_(weight)
        self.register_buffer("active", torch.zeros((), dtype=torch.int64))
        self.active_count = 0
        self.register_load_state_dict_post_hook(BoostingSlots._sync_active_count)

    @staticmethod
    def _sync_active_count(module: nn.Module, _incompatible_keys: object) -> None:
        assert isinstance(module, BoostingSlots)
        module.active_count = int(module.active)

    @property
    def capacity(self) -> int:
        """L_max."""
        return len(self.weight)

    def hidden(self, features: Tensor) -> Tensor | None:
        """`ReLU(A_k f + b_k)` of every active slot, [n, active, d] in one einsum; None without active slots."""
        if self.active_count == 0:
            return None
        active = range(self.active_count)
        weight = torch.stack([self.weight[slot] for slot in active])
        bias = torch.stack([self.bias[slot] for slot in active])
        return F.relu(
            torch.einsum("ni,koi->nko", features, weight.to(features.dtype)) + bias.to(features.dtype)
        )

    @torch.no_grad()
    def activate(self, optimizers: list[torch.optim.Optimizer]) -> int | None:
        """Switch on the next slot: Xavier-normal weight, zero bias, no optimiser state.

        Returns:
            The slot's index, or None when all `capacity` slots are in use.
        """
        slot = self.active_count
        if slot >= self.capacity:
            return None
        nn.init.xavier_normal_(self.weight[slot])
        self.bias[slot].zero_()
        reset_optimizer_state(optimizers, (self.weight[slot], self.bias[slot]))
        self.active.fill_(slot + 1)
        self.active_count = slot + 1
        return slot


class BoostedLogits(NamedTuple):
    """Logits of one modality's boosted classifier."""

    logits: Tensor
    """`base + Σ_k add_k` [n, K]."""
    previous: Tensor | None
    """The logits without the last active slot's term [n, K]; None without active slots."""
    last: Tensor | None
    """The last active slot's term `add_last` [n, K]; None without active slots."""


class AUGModel(FusionModel):
    """Per-modality classifiers sharing `fc_out`, grown by sustained boosting on the weaker modality.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].

    `f_e = TransformerEHR(x)` [B, d]; `f_c = Linear(CNN(cxr[idx]))` [n_c, d]. Per modality m:
    `base_m = fc_out(ReLU(E_m f_m))`, `add_{m,k} = fc_out(ReLU(A_{m,k} f_m + b_{m,k}))` for its active
    slots, `logits_m = base_m + Σ_k add_{m,k}` [·, K]. Prediction: `α·logits_e + (1 − α)·logits_c` on
    paired rows, `logits_e` on rows without a CXR (their CXR classifier has nothing to read). A batch
    without CXRs never runs the CNN.

    Training (`training_step`) optimises the two modalities one after the other with their own
    optimisers; `on_epoch_end` adds a slot to the weaker modality (ACA).
    """

    conditional_parameters: ClassVar[tuple[str, ...]] = ("ehr_slots", "cxr_slots")
    """Boosting slots get gradients only once ACA has activated them."""

    def __init__(self, task: TaskSpec, config: AUGConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.alpha = config.alpha
        self.lam, self.delta, self.t_check = config.lam, config.delta, config.t_check
        self.ehr_encoder = TransformerEHR.from_config(config)
        self.cxr_branch = ProjectedCXR(config)
        self.ehr_embed = nn.Linear(d, d)
        self.cxr_embed = nn.Linear(d, d)
        self.fc_out = nn.Linear(d, task.num_outputs)
        self.ehr_slots = BoostingSlots(config.max_slots, d)
        self.cxr_slots = BoostingSlots(config.max_slots, d)

    def boosted_logits(self, features: Tensor, embed: nn.Linear, slots: BoostingSlots) -> BoostedLogits:
        """One modality's classifier on its features [n, d]."""
        base = self.fc_out(F.relu(embed(features)))
        hidden = slots.hidden(features)
        if hidden is None:
            return BoostedLogits(base, None, None)
        added = self.fc_out(hidden)  # [n, active, K]
        logits = base + added.sum(dim=1)
        last = added[:, -1]
        return BoostedLogits(logits, logits - last, last)

    def boosting_loss(self, output: BoostedLogits, y: Tensor) -> Tensor:
        """ℓ(logits, y), plus with active slots `ℓ(prev, y) + ℓ(last, y) − 0.5·ℓ_soft(last, y ⊙ p(prev))`.

        `ℓ_soft` is BCE with soft targets (binary, multilabel) or soft-target cross-entropy over the
        one-hot labels (multiclass), as in the authors' code; `p(prev)` is detached.
        """
        loss = self.task.loss(output.logits, y)
        if output.previous is None or output.last is None:
            return loss
        soft = self.task.one_hot(y) * self.task.proba(output.previous).detach()
        last = output.last.float()
        if self.task.kind == "multiclass":
            soft_loss = -(soft * F.log_softmax(last, dim=1)).sum(dim=1).mean()
        else:
            soft_loss = F.binary_cross_entropy_with_logits(last, soft)
        return loss + self.task.loss(output.previous, y) + self.task.loss(output.last, y) - 0.5 * soft_loss

    def forward(self, batch: Batch) -> ModelOutput:
        """Mixed logits [B, K] (EHR logits alone on rows without a CXR)."""
        idx = paired_index(batch)
        ehr_logits = self.boosted_logits(
            self.ehr_encoder(ehr_input(batch)), self.ehr_embed, self.ehr_slots
        ).logits
        cxr = self.cxr_branch.encode_rows(batch["cxr"], idx)
        if cxr is None:
            return ModelOutput(ehr_logits.float())
        cxr_logits = self.boosted_logits(cxr, self.cxr_embed, self.cxr_slots).logits
        mixed = self.alpha * ehr_logits.index_select(0, idx) + (1 - self.alpha) * cxr_logits
        return ModelOutput(scatter_rows(ehr_logits, idx, mixed).float())

    def _modality_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        ehr = (self.ehr_encoder, self.ehr_embed, self.fc_out, self.ehr_slots)
        cxr = (self.cxr_branch, self.cxr_embed, self.fc_out, self.cxr_slots)
        return (
            [p for module in ehr for p in module.parameters()],
            [p for module in cxr for p in module.parameters()],
        )

    def configure_optimizers(self, train_cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        """Two AdamW: the EHR side and the CXR side.

        EHR: encoder, E_e, fc_out, EHR slots; CXR: CNN, projection, E_c, fc_out, CXR slots. All slots
        are registered from the start; an inactive slot has no gradient, so AdamW leaves it alone.
        """
        ehr, cxr = self._modality_parameters()
        return [adamw(ehr, train_cfg), adamw(cxr, train_cfg)]

    def training_step(
        self, batch: Batch, optimizers: list[torch.optim.Optimizer], state: TrainState
    ) -> StepLog:
        """Encode both modalities once, then step the EHR side, then the CXR side.

        1. `L_e` = boosting loss of the EHR classifier on all rows → optimiser 0 steps;
        2. the CXR logits are computed from the same `f_c` with the *updated* `fc_out`; `L_c` =
           boosting loss on the paired rows → optimiser 1 steps (skipped without paired rows).

        The confidence of each modality on the paired rows is summed on device for ACA. Logs
        `loss` = α·L_e + (1 − α)·L_c (L_e alone without paired rows), `ehr` and `cxr`.
        """
        ehr_optimizer, cxr_optimizer = optimizers
        y = batch["y"]
        idx = paired_index(batch)
        ehr_features = self.ehr_encoder(ehr_input(batch))
        cxr_features = self.cxr_branch.encode_rows(batch["cxr"], idx)
        ehr_parameters, cxr_parameters = self._modality_parameters()

        ehr_optimizer.zero_grad(set_to_none=True)
        ehr_output = self.boosted_logits(ehr_features, self.ehr_embed, self.ehr_slots)
        ehr_loss = self.boosting_loss(ehr_output, y)
        ehr_loss.backward()
        if state.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(ehr_parameters, state.max_grad_norm)
        ehr_optimizer.step()
        logs: StepLog = {"loss": ehr_loss.detach(), "ehr": ehr_loss.detach()}
        if cxr_features is None:
            return logs

        cxr_optimizer.zero_grad(set_to_none=True)
        cxr_output = self.boosted_logits(cxr_features, self.cxr_embed, self.cxr_slots)
        paired_y = y.index_select(0, idx)
        cxr_loss = self.boosting_loss(cxr_output, paired_y)
        cxr_loss.backward()
        if state.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(cxr_parameters, state.max_grad_norm)
        cxr_optimizer.step()

        with torch.no_grad():
            ehr_confidence = self.task.correct_label_proba(ehr_output.logits.index_select(0, idx), paired_y)
            cxr_confidence = self.task.correct_label_proba(cxr_output.logits, paired_y)
            sums = torch.stack(
                [
                    ehr_confidence.sum(),
                    cxr_confidence.sum(),
                    torch.tensor(float(idx.numel()), device=y.device),
                ]
            )
            previous = state.extra.get(CONFIDENCE_KEY)
            state.extra[CONFIDENCE_KEY] = sums if previous is None else previous + sums
        logs["cxr"] = cxr_loss.detach()
        logs["loss"] = self.alpha * ehr_loss.detach() + (1 - self.alpha) * cxr_loss.detach()
        return logs

    def on_epoch_start(self, state: TrainState) -> None:
        """Start the epoch's confidence sums afresh."""
        state.extra.pop(CONFIDENCE_KEY, None)

    def on_epoch_end(self, state: TrainState, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """Adaptive classifier assignment from the confidence ratio (one sync per epoch).

        r = S_ehr / S_cxr over the epoch's paired rows; at a check epoch, r > λ + δ adds a CXR slot
        and r < λ − δ an EHR slot.

        Logs `aug_ratio` (when the epoch had paired rows), `aug_ehr_slots` and `aug_cxr_slots`.
        """
        logs: dict[str, float] = {}
        sums = state.extra.pop(CONFIDENCE_KEY, None)
        if sums is not None:
            ehr_sum, cxr_sum, rows = (float(value) for value in sums.tolist())
            if rows > 0 and cxr_sum > 0:
                ratio = ehr_sum / cxr_sum
                logs["aug_ratio"] = ratio
                if state.epoch == 0 or (state.epoch + 1) % self.t_check == 0:
                    self._assign(ratio, optimizers)
        logs["aug_ehr_slots"] = float(self.ehr_slots.active_count)
        logs["aug_cxr_slots"] = float(self.cxr_slots.active_count)
        return logs

    def _assign(self, ratio: float, optimizers: list[torch.optim.Optimizer]) -> None:
        if ratio > self.lam + self.delta:
            name, slots = "cxr", self.cxr_slots
        elif ratio < self.lam - self.delta:
            name, slots = "ehr", self.ehr_slots
        else:
            return
        slot = slots.activate(optimizers)
        if slot is None:
            logger.info(
                "aug: all %d %s boosting slots are in use; ratio %.4f adds none", slots.capacity, name, ratio
            )
        else:
            logger.info("aug: confidence ratio %.4f activates %s boosting slot %d", ratio, name, slot)


@register_model("aug", paper="arXiv:2502.20120", group="imbalance")
def aug(task: TaskSpec, config: AUGConfig | None = None) -> AUGModel:
    """AUG: sustained boosting of the weaker modality's classifier, assigned by confidence ratio."""
    return AUGModel(task, config or AUGConfig())
