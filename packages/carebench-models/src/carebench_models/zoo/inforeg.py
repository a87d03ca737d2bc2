"""`inforeg`: information-acquisition regulation in the prime learning window (Huang et al., CVPR 2025).

Paper arXiv:2503.18595 (code `GeWu-Lab/InfoReg_CVPR2025`). Early training is a *prime learning
window* in which the information-sufficient modality dominates what the network acquires. InfoReg
detects the window from the change of the per-epoch Fisher-information trace and, inside it, slows
the dominant modality's encoder with a proximal term that pulls its parameters towards their values
at the start of the epoch, with a coefficient that grows with the confidence gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, ModelOutput, StepLog, TrainState
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import MissingToken, paired_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

if TYPE_CHECKING:
    from collections.abc import Iterator

MODALITIES = ("ehr", "cxr")
WINDOW_KEY = "inforeg_window"
"""`TrainState.extra` key of the run's `WindowState`."""


@dataclass(frozen=True, kw_only=True)
class InfoRegConfig(TransformerEHRConfig):
    """Configuration of `inforeg` (`paper`: d 256; `quick`: d 32).

    The class defaults are the reference code's constants; the bundled per-task defaults replace
    k_thr, the coefficients and the window in `carebench run`.
    """

    k_thr: float = 0.04
    """The prime learning window is open while the relative change k of the Fisher trace exceeds it."""
    gamma_ehr: float = 0.95
    """γ_ehr, base coefficient of the proximal term when the EHR dominates."""
    gamma_cxr: float = 0.1
    """γ_cxr, base coefficient of the proximal term when the CXR dominates."""
    window: int = 10
    """H, the number of epochs averaged on each side of the Fisher-trace comparison."""
    window_modality: Literal["ehr", "cxr"] = "ehr"
    """Whose Fisher trace detects the window (the authors tracked their dominant modality)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise CarebenchModelError(f"inforeg window must be >= 1 epoch, got {self.window}")
        if self.gamma_ehr < 0 or self.gamma_cxr < 0:
            raise CarebenchModelError("inforeg gamma_ehr and gamma_cxr must be >= 0")
        if self.window_modality not in MODALITIES:
            raise CarebenchModelError(
                f"inforeg window_modality must be 'ehr' or 'cxr', got {self.window_modality!r}"
            )


def window_score(traces: Sequence[float], window: int) -> float:
    """k, the relative change of the Fisher trace: `(tr₁ − tr₂) / tr₁`.

    `tr₁` is the sum of the last `window` traces divided by `window`, `tr₂` the same over the
    `window` traces before those; entries that do not exist yet count 0. k = 1 before the first trace
    (epoch 0), and 0 when tr₁ is 0 (nothing learned, nothing to regulate).

    Example:
        >>> window_score([1.0, 2.0, 4.0, 4.0], 2)
        0.625
    """
    if not traces:
        return 1.0
    recent = sum(traces[-window:]) / window
    before = sum(traces[-2 * window : -window]) / window
    if recent <= 0:
        return 0.0
    return (recent - before) / recent


@dataclass
class WindowState:
    """Per-run statistics of InfoReg (kept in `TrainState.extra`, not in the model)."""

    anchors: dict[str, list[Tensor]] = field(default_factory=dict)
    """θ⁰ of each encoder: its parameters at the start of the epoch."""
    k: float = 1.0
    """The epoch's window score (`window_score`)."""
    fisher: Tensor | None = None
    """Running Σ_steps Σ_modules mean(grad²) of each encoder, float32 [2] on the model's device."""
    traces: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODALITIES})
    """Fisher trace of each encoder, one value per finished epoch."""


class InfoRegHeads(NamedTuple):
    """Logits of the three heads."""

    joint: Tensor
    """Joint head on [f_e; f_c or cxr_missing], float32 [B, K]."""
    ehr: Tensor
    """EHR head, [B, K]."""
    cxr: Tensor | None
    """CXR head on the paired rows, [n_c, K]; None without paired rows."""
    idx: Tensor
    """int64 [n_c] paired row indices."""


class InfoRegModel(FusionModel):
    """Joint and unimodal heads; a proximal term slows the dominant encoder inside the learning window.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].

    `f_e = TransformerEHR(x)` [B, d]; `f_c = Linear(CNN(cxr[idx]))` [n_c, d]; joint logits =
    Linear(2d→K)([f_e; f_c]) with the learned `cxr_missing` [d] on rows without a CXR; unimodal heads
    Linear(d→K) on f_e and on f_c. Loss `L_joint + L_ehr + L_cxr` (L_cxr on the paired rows). The
    prediction is the joint head. A batch without CXRs never runs the CNN.
    """

    def __init__(self, task: TaskSpec, config: InfoRegConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.k_thr, self.window = config.k_thr, config.window
        self.window_modality = config.window_modality
        self.gammas = {"ehr": config.gamma_ehr, "cxr": config.gamma_cxr}
        self.ehr_encoder = TransformerEHR.from_config(config)
        self.cxr_branch = ProjectedCXR(config)
        self.cxr_missing = MissingToken(d)
        self.head = nn.Linear(2 * d, task.num_outputs)
        self.ehr_head = nn.Linear(d, task.num_outputs)
        self.cxr_head = nn.Linear(d, task.num_outputs)

    def encoders(self) -> dict[str, nn.Module]:
        """The regulated encoder of each modality (the CXR encoder includes its projection)."""
        return {"ehr": self.ehr_encoder, "cxr": self.cxr_branch}

    def heads(self, batch: Batch) -> InfoRegHeads:
        """All three heads' logits; see `InfoRegHeads` for the shapes."""
        idx = paired_index(batch)
        ehr = self.ehr_encoder(ehr_input(batch))
        cxr_rows = self.cxr_branch.encode_rows(batch["cxr"], idx)
        cxr = self.cxr_missing.fill(idx, cxr_rows, ehr.shape[0])
        joint = self.head(torch.cat([ehr, cxr.to(ehr.dtype)], dim=1)).float()
        cxr_logits = None if cxr_rows is None else self.cxr_head(cxr_rows)
        return InfoRegHeads(joint, self.ehr_head(ehr), cxr_logits, idx)

    def losses(self, heads: InfoRegHeads, y: Tensor) -> dict[str, Tensor]:
        """`task` (joint), `ehr_head` and, with paired rows, `cxr_head` task losses (unit weights)."""
        losses = {"task": self.task.loss(heads.joint, y), "ehr_head": self.task.loss(heads.ehr, y)}
        if heads.cxr is not None:
            losses["cxr_head"] = self.task.loss(heads.cxr, y.index_select(0, heads.idx))
        return losses

    def forward(self, batch: Batch) -> ModelOutput:
        """Joint logits [B, K]; with `y`, the unimodal head losses as aux terms."""
        heads = self.heads(batch)
        aux: dict[str, Tensor] = {}
        if "y" in batch:
            aux = {name: value for name, value in self.losses(heads, batch["y"]).items() if name != "task"}
        return ModelOutput(heads.joint, aux)

    def window_state(self, state: TrainState) -> WindowState:
        """The run's `WindowState`, created (with θ⁰ = the current parameters) on first use."""
        window = state.extra.get(WINDOW_KEY)
        if window is None:
            window = WindowState()
            state.extra[WINDOW_KEY] = window
            self._snapshot(window)
        return window

    def _snapshot(self, window: WindowState) -> None:
        with torch.no_grad():
            for name, encoder in self.encoders().items():
                parameters = [p.detach() for p in encoder.parameters()]
                if name in window.anchors:
                    torch._foreach_copy_(window.anchors[name], parameters)
                else:
                    window.anchors[name] = [p.clone() for p in parameters]

    def on_epoch_start(self, state: TrainState) -> None:
        """Snapshot θ⁰ of both encoders and compute the epoch's window score k."""
        window = self.window_state(state)
        self._snapshot(window)
        window.k = window_score(window.traces[self.window_modality], self.window)

    def training_step(
        self, batch: Batch, optimizers: list[torch.optim.Optimizer], state: TrainState
    ) -> StepLog:
        """Backward `L`, the proximal term inside the window, Fisher accumulation, one optimiser step.

        Inside the window (`k > k_thr`) and with paired rows: `s_m` = Σ over the paired rows of the
        unimodal head's probability of the correct label; the dominant modality m = argmax s gets
        `β_m = γ_m·exp(tanh(s_m − s_o))` and every gradient of its encoder `+ β_m(θ − θ⁰)` (heads
        untouched). Both modalities are processed with β = 0 for the other, so the choice needs no
        host sync. Then `Σ mean(grad²)` over the Conv/Linear weights of each encoder is added to its
        Fisher accumulator. Logs `loss`, `task`, the head losses and `beta_ehr`, `beta_cxr`.
        """
        optimizer = optimizers[0]
        window = self.window_state(state)
        y = batch["y"]
        optimizer.zero_grad(set_to_none=True)
        heads = self.heads(batch)
        losses = self.losses(heads, y)
        loss = torch.stack(list(losses.values())).sum()
        loss.backward()
        logs: StepLog = {"loss": loss.detach(), **{name: value.detach() for name, value in losses.items()}}
        if window.k > self.k_thr and heads.cxr is not None:
            betas = self._proximal_step(window, heads, y)
            logs.update({f"beta_{name}": beta for name, beta in betas.items()})
        self._accumulate_fisher(window)
        if state.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters(), state.max_grad_norm)
        optimizer.step()
        return logs

    @torch.no_grad()
    def _proximal_step(self, window: WindowState, heads: InfoRegHeads, y: Tensor) -> dict[str, Tensor]:
        assert heads.cxr is not None
        paired_y = y.index_select(0, heads.idx)
        confidence = {
            "ehr": self.task.correct_label_proba(heads.ehr.index_select(0, heads.idx), paired_y).sum(),
            "cxr": self.task.correct_label_proba(heads.cxr, paired_y).sum(),
        }
        ehr_dominates = confidence["ehr"] >= confidence["cxr"]
        betas = {}
        for name, encoder in self.encoders().items():
            other = "cxr" if name == "ehr" else "ehr"
            dominant = ehr_dominates if name == "ehr" else ~ehr_dominates
            gap = confidence[name] - confidence[other]
            beta = dominant.float() * self.gammas[name] * torch.exp(torch.tanh(gap))
            betas[name] = beta
            pairs = [
                (p, a)
                for p, a in zip(encoder.parameters(), window.anchors[name], strict=True)
                if p.grad is not None
            ]
            if not pairs:
                continue
            parameters, anchors = zip(*pairs, strict=True)
            pulls = torch._foreach_sub(list(parameters), list(anchors))
            torch._foreach_mul_(pulls, beta)
            torch._foreach_add_([p.grad for p in parameters], pulls)  # type: ignore[misc]
        return betas

    @torch.no_grad()
    def _accumulate_fisher(self, window: WindowState) -> None:
        sums = []
        for encoder in self.encoders().values():
            grads = [
                module.weight.grad for module in _weighted_modules(encoder) if module.weight.grad is not None
            ]
            if not grads:
                sums.append(torch.zeros((), device=self.head.weight.device))
                continue
            norms = torch.stack(torch._foreach_norm(grads)).float()
            sizes = torch.tensor([grad.numel() for grad in grads], dtype=torch.float32, device=norms.device)
            sums.append((norms.square() / sizes).sum())
        step = torch.stack(sums)
        window.fisher = step if window.fisher is None else window.fisher + step

    def on_epoch_end(self, state: TrainState, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """Append each encoder's Fisher trace of the epoch (one sync) and start the accumulators afresh.

        Logs `inforeg_k` (the epoch's window score), `fisher_trace_ehr` and `fisher_trace_cxr`.
        """
        window = self.window_state(state)
        traces = [0.0, 0.0] if window.fisher is None else [float(v) for v in window.fisher.tolist()]
        window.fisher = None
        logs = {"inforeg_k": window.k}
        for name, trace in zip(MODALITIES, traces, strict=True):
            window.traces[name].append(trace)
            logs[f"fisher_trace_{name}"] = trace
        return logs


def _weighted_modules(encoder: nn.Module) -> Iterator[nn.Linear | nn.Conv2d]:
    """The Linear and Conv2d layers of an encoder (whose weights enter the Fisher trace)."""
    for module in encoder.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            yield module


@register_model("inforeg", paper="arXiv:2503.18595", group="imbalance")
def inforeg(task: TaskSpec, config: InfoRegConfig | None = None) -> InfoRegModel:
    """InfoReg: a proximal term slows the dominant modality's encoder in the prime learning window."""
    return InfoRegModel(task, config or InfoRegConfig())
