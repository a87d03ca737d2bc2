"""`smil`: multimodal learning with severely missing modality (Ma et al., AAAI 2021).

Paper arXiv:2103.05677 (code `mengmenm/SMIL`). A reconstruction network predicts the missing CXR
feature as a weighted average of *modality priors* (k-means centres of training CXR features) from
the EHR; a regularisation network adds learned stochastic perturbations to the features; Bayesian
meta-learning takes an inner gradient step of the main network on modality-incomplete rows and an
outer step on complete rows that aligns reconstructed-and-perturbed features with the real ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from carebench_models.base import Batch, FusionModel, ModelOutput, StepLog, TrainState
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import paired_index, scatter_rows, split_index
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

logger = logging.getLogger(__name__)

INNER_PREFIXES = ("ehr_encoder.", "head_hidden.", "head_out.")
"""Parameters adapted by the inner step: the EHR encoder and the head (as the authors' code)."""
KMEANS_SEED = 0
"""Seed of the k-means++ initialisation of the priors."""


@dataclass(frozen=True, kw_only=True)
class SMILConfig(TransformerEHRConfig):
    """Configuration of `smil`.

    `paper`: d 256, 10 priors, head width 64, second-order meta-gradient; `quick`: d 32, 4 priors,
    head width 16, first-order inner step.

    The class defaults of the meta-learning settings are untuned starting points inside the search
    ranges; the bundled per-task defaults replace them in `carebench run`.
    """

    profile_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "paper": {"clusters": 10, "head_width": 64, "second_order": True},
        "quick": {"clusters": 4, "head_width": 16, "second_order": False},
    }

    clusters: int = 10
    """Number of modality priors (k-means centres of training CXR features)."""
    inner_steps: int = 1
    """T_inner, gradient steps of the inner loop on the rows without a CXR."""
    mc_samples: int = 10
    """M_MC, perturbation draws averaged in the noised loss (they only touch the head)."""
    inner_lr: float = 5e-4
    """η_in, learning rate of the inner step."""
    alpha: float = 0.1
    """Weight of the feature alignment MSE(z_clean, z_noised) in the outer loss."""
    beta: float = 0.1
    """Weight of the hidden-state alignment MSE(h_clean, h_noised) in the outer loss."""
    second_order: bool = True
    """Differentiate the outer loss through the inner step (create_graph); False is the first-order
    approximation (the inner update's gradient is treated as a constant), the CPU profile's choice."""
    head_width: int = 64
    """Width of the head's hidden layer h (W_h, W_r: 2d→width; W_o: width→K)."""
    reconstruction_dropout: float = 0.3
    """Dropout inside the reconstruction network."""
    prior_rows: int = 20000
    """At most this many training rows with a CXR feed the k-means."""
    kmeans_iterations: int = 100
    """Iteration cap of Lloyd's algorithm (it stops earlier when the assignment is stable)."""
    prior_refresh_every: int = 0
    """Recompute the priors after every this many epochs (0 = never)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "clusters",
            "inner_steps",
            "mc_samples",
            "head_width",
            "prior_rows",
            "kmeans_iterations",
        ):
            if getattr(self, name) < 1:
                raise CarebenchModelError(f"smil {name} must be >= 1, got {getattr(self, name)}")
        if self.inner_lr < 0 or self.alpha < 0 or self.beta < 0 or self.prior_refresh_every < 0:
            raise CarebenchModelError("smil inner_lr, alpha, beta and prior_refresh_every must be >= 0")
        if not 0.0 <= self.reconstruction_dropout < 1.0:
            raise CarebenchModelError(
                f"smil reconstruction_dropout must be in [0, 1), got {self.reconstruction_dropout}"
            )
        if self.prior_rows < self.clusters:
            raise CarebenchModelError("smil prior_rows must be >= clusters")


def kmeans(points: Tensor, clusters: int, *, iterations: int, seed: int = KMEANS_SEED) -> Tensor:
    """k-means++ seeding, then Lloyd's algorithm, in float32 on the points' device.

    Args:
        points: [N, d] with N >= clusters.
        clusters: k.
        iterations: at most this many Lloyd iterations (stops when the assignment no longer changes).
        seed: seeds the k-means++ draws (a CPU generator).

    Returns:
        Centres [k, d]; an empty cluster keeps its previous centre.
    """
    points = points.float()
    count = points.shape[0]
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(count, (1,), generator=generator))]
    nearest = (points - points[chosen[0]]).square().sum(dim=1)
    for _ in range(1, clusters):
        weights = nearest.cpu().double()
        if float(weights.sum()) <= 0:
            weights = torch.ones_like(weights)
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        nearest = torch.minimum(nearest, (points - points[chosen[-1]]).square().sum(dim=1))
    centres = points[chosen].clone()
    assignment: Tensor | None = None
    for _ in range(iterations):
        updated = torch.cdist(points, centres).argmin(dim=1)
        if assignment is not None and torch.equal(updated, assignment):
            break
        assignment = updated
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        sizes = torch.bincount(assignment, minlength=clusters).unsqueeze(1)
        centres = torch.where(sizes > 0, sums / sizes.clamp_min(1), centres)
    return centres


class HeadOutput(NamedTuple):
    """Intermediate results of the head."""

    z: Tensor
    """Head input [..., n, 2d] (perturbed on the noised path)."""
    h: Tensor
    """Hidden state [..., n, width]."""
    logits: Tensor
    """[..., n, K]."""


class SMILModel(FusionModel):
    """Reconstruction of the missing CXR feature from priors, learned perturbations, meta-learning.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].

    `E = TransformerEHR(x)` [B, d]; `X = Linear(CNN(cxr[idx]))` [n_c, d]. Reconstruction: `ω =
    softplus(R(E))` [B, k], `X̂ = Σ_k ω_k P(M_k) / Σ_k ω_k` [B, d] with the priors `M` [k, d] (a buffer
    filled by `prepare`) and the learned projection P. Noised path: `z = [E; X̂] + softplus(W_z E + ε)`,
    `h = ReLU(W_h z) + softplus(W_r z + ε')`; clean path: `z = [E; X]`, `h = ReLU(W_h z)`; logits =
    `W_o(Dropout(h))`. ε, ε' ~ N(0, I) in training, 0 in evaluation.

    Prediction: the clean path on paired rows, the noised (reconstructed, deterministically
    perturbed) path on rows without a CXR. A batch without CXRs never runs the CNN. The model
    refuses to run before `prepare` has computed the priors (or a trained state was loaded).
    """

    def __init__(self, task: TaskSpec, config: SMILConfig) -> None:
        super().__init__(task, config)
        d, width = config.d_model, config.head_width
        self.settings = config
        self.ehr_encoder = TransformerEHR.from_config(config)
        self.cxr_branch = ProjectedCXR(config)
        self.register_buffer("priors", torch.zeros(config.clusters, d))
        self.register_buffer("priors_ready", torch.zeros((), dtype=torch.bool))
        self.has_priors = False
        self.register_load_state_dict_post_hook(SMILModel._sync_priors_ready)
        self.prior_proj = nn.Linear(d, d)
        self.reconstruction = nn.Sequential(
            nn.Linear(d, d),
            nn.ReLU(),
            nn.Dropout(config.reconstruction_dropout),
            nn.Linear(d, d // 2),
            nn.ReLU(),
            nn.Linear(d // 2, d),
            nn.ReLU(),
            nn.Linear(d, config.clusters),
        )
        self.perturb_feature = nn.Linear(d, 2 * d)
        self.perturb_hidden = nn.Linear(2 * d, width)
        self.head_hidden = nn.Linear(2 * d, width)
        self.head_out = nn.Linear(width, task.num_outputs)
        self.head_dropout = nn.Dropout(config.dropout)
        self._prior_source: Iterable[Batch] | None = None

    @staticmethod
    def _sync_priors_ready(module: nn.Module, _incompatible_keys: object) -> None:
        assert isinstance(module, SMILModel)
        module.has_priors = bool(module.priors_ready)

    def _require_priors(self) -> None:
        if not self.has_priors:
            raise CarebenchModelError(
                "smil has no modality priors yet: call model.prepare(train_batches) before training or "
                "prediction (Trainer.fit does), or load the weights of a prepared model"
            )

    # priors ------------------------------------------------------------------------------------

    def prepare(self, train_batches: Iterable[Batch]) -> None:
        """Compute the priors: k-means of the CXR features of up to `prior_rows` training rows with a CXR.

        The CXR branch runs in eval mode without gradients on the batches as given (the trainer
        passes the training split in its fixed order, without augmentation).

        Raises:
            CarebenchModelError: fewer training rows with a CXR than `clusters`.
        """
        settings = self.settings
        training = self.training
        self.eval()
        features: list[Tensor] = []
        rows = 0
        try:
            with torch.no_grad():
                for batch in train_batches:
                    idx = paired_index(batch)[: settings.prior_rows - rows]
                    if idx.numel() == 0:
                        continue
                    features.append(self.cxr_branch(batch["cxr"].index_select(0, idx)).float())
                    rows += int(idx.numel())
                    if rows >= settings.prior_rows:
                        break
        finally:
            self.train(training)
        if rows < settings.clusters:
            raise CarebenchModelError(
                f"smil needs at least {settings.clusters} training rows with a CXR to compute its "
                f"{settings.clusters} modality priors, got {rows}"
            )
        centres = kmeans(torch.cat(features), settings.clusters, iterations=settings.kmeans_iterations)
        with torch.no_grad():
            self.priors.copy_(centres)
            self.priors_ready.fill_(True)
        self.has_priors = True
        if settings.prior_refresh_every:
            self._prior_source = train_batches
        logger.info("smil: %d modality priors from %d training rows with a CXR", settings.clusters, rows)

    def on_epoch_end(self, state: TrainState, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """Recompute the priors every `prior_refresh_every` epochs (when set)."""
        every = self.settings.prior_refresh_every
        if every and (state.epoch + 1) % every == 0:
            if self._prior_source is None:
                raise CarebenchModelError("smil prior_refresh_every needs prepare(train_batches) to have run")
            self.prepare(self._prior_source)
        return {}

    # building blocks ---------------------------------------------------------------------------

    def reconstruct(self, ehr: Tensor) -> Tensor:
        """X̂ [n, d] from E [n, d]: prior average weighted by `softplus(R(E))`."""
        weights = F.softplus(self.reconstruction(ehr))
        priors = self.prior_proj(self.priors.to(weights.dtype))
        return (weights @ priors.to(weights.dtype)) / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def _encode(self, x: Tensor, inner: Mapping[str, Tensor] | None) -> Tensor:
        if inner is None:
            return self.ehr_encoder(x)
        prefix = INNER_PREFIXES[0]
        weights = {
            name.removeprefix(prefix): value for name, value in inner.items() if name.startswith(prefix)
        }
        return functional_call(self.ehr_encoder, weights, (x,))

    def _linear(self, name: str, x: Tensor, inner: Mapping[str, Tensor] | None) -> Tensor:
        if inner is None:
            return getattr(self, name)(x)
        return F.linear(x, inner[f"{name}.weight"], inner[f"{name}.bias"])

    def _output(self, z: Tensor, h: Tensor, inner: Mapping[str, Tensor] | None) -> HeadOutput:
        return HeadOutput(z, h, self._linear("head_out", self.head_dropout(h), inner))

    def noised_head(
        self, ehr: Tensor, *, draws: int, noise: bool, inner: Mapping[str, Tensor] | None = None
    ) -> HeadOutput:
        """The noised path on reconstructed features, `draws` perturbations at once: [draws, n, ·].

        Args:
            ehr: E [n, d].
            draws: M_MC (1 at evaluation).
            noise: draw ε, ε' ~ N(0, I); False uses ε = ε' = 0 (the deterministic perturbation).
            inner: inner-loop values of the EHR encoder and head parameters (None = the module's own).
        """
        base = torch.cat([ehr, self.reconstruct(ehr).to(ehr.dtype)], dim=1).unsqueeze(0)
        feature_noise = self.perturb_feature(ehr).unsqueeze(0)
        if noise:
            feature_noise = feature_noise + torch.randn(
                draws, *feature_noise.shape[1:], device=ehr.device, dtype=feature_noise.dtype
            )
        z = base + F.softplus(feature_noise)
        hidden_noise = self.perturb_hidden(z)
        if noise:
            hidden_noise = hidden_noise + torch.randn_like(hidden_noise)
        h = F.relu(self._linear("head_hidden", z, inner)) + F.softplus(hidden_noise)
        return self._output(z, h, inner)

    def clean_head(self, ehr: Tensor, cxr: Tensor, inner: Mapping[str, Tensor] | None = None) -> HeadOutput:
        """The clean path on real features: E [n, d], X [n, d] → [n, ·]."""
        z = torch.cat([ehr, cxr.to(ehr.dtype)], dim=1)
        return self._output(z, F.relu(self._linear("head_hidden", z, inner)), inner)

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K]: clean path on paired rows, noised path (reconstruction) elsewhere."""
        self._require_priors()
        idx = paired_index(batch)
        ehr = self.ehr_encoder(ehr_input(batch))
        logits = self.noised_head(ehr, draws=1, noise=self.training).logits[0]
        cxr = self.cxr_branch.encode_rows(batch["cxr"], idx)
        if cxr is not None:
            logits = scatter_rows(logits, idx, self.clean_head(ehr.index_select(0, idx), cxr).logits)
        return ModelOutput(logits.float())

    # meta-learning -----------------------------------------------------------------------------

    def _draws_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Task loss averaged over the draws of logits [M, n, K] against y [n, ...]."""
        draws = logits.shape[0]
        return self.task.loss(logits.flatten(0, 1), y.repeat(draws, *([1] * (y.ndim - 1))))

    def inner_parameters(self) -> dict[str, Tensor]:
        """θ: the EHR encoder and head parameters, by name."""
        return {name: p for name, p in self.named_parameters() if name.startswith(INNER_PREFIXES)}

    def meta_objective(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """`L = L_tr + L_val` of one batch and its detached parts; gradients are left to the caller.

        `D_tr` = rows without a CXR (all paired rows with their CXR hidden when there are none);
        `D_val` = paired rows.

        1. `L_tr` = noised-path loss on D_tr (M_MC draws) with θ;
        2. `inner_steps` times `θ ← θ − η_in ∇_θ L_tr(θ)` by `torch.autograd.grad`, which never
           writes `.grad` (with `create_graph` when `second_order`, else the step is a constant);
        3. on D_val with the adapted θ': `L_val = ℓ(noised) + ℓ(clean) + α·MSE(z_clean, z_noised) +
           β·MSE(h_clean, h_noised)`, the CNN running once on the paired rows.

        Without paired rows `L = L_tr`.
        """
        settings = self.settings
        self._require_priors()
        paired, unpaired = split_index(batch)
        x, y = ehr_input(batch), batch["y"]
        train_rows = unpaired if unpaired.numel() > 0 else paired
        x_train, y_train = x.index_select(0, train_rows), y.index_select(0, train_rows)

        def train_loss(inner: Mapping[str, Tensor] | None) -> Tensor:
            ehr = self._encode(x_train, inner)
            noised = self.noised_head(ehr, draws=settings.mc_samples, noise=True, inner=inner)
            return self._draws_loss(noised.logits, y_train)

        outer_train_loss = train_loss(None)
        parts = {"inner": outer_train_loss.detach()}
        if paired.numel() == 0:
            return outer_train_loss, {"loss": outer_train_loss.detach(), **parts}

        inner = self.inner_parameters()
        step_loss = outer_train_loss
        for step in range(settings.inner_steps):
            if step > 0:
                step_loss = train_loss(inner)
            names = list(inner)
            grads = torch.autograd.grad(
                step_loss,
                [inner[name] for name in names],
                create_graph=settings.second_order,
                retain_graph=True if step == 0 else None,
                allow_unused=True,
            )
            used = [(name, grad) for name, grad in zip(names, grads, strict=True) if grad is not None]
            updated = torch._foreach_add(
                [inner[name] for name, _ in used], [grad for _, grad in used], alpha=-settings.inner_lr
            )
            inner = {**inner, **dict(zip([name for name, _ in used], updated, strict=True))}

        ehr = self._encode(x.index_select(0, paired), inner)
        cxr = self.cxr_branch(batch["cxr"].index_select(0, paired))
        paired_y = y.index_select(0, paired)
        noised = self.noised_head(ehr, draws=settings.mc_samples, noise=True, inner=inner)
        clean = self.clean_head(ehr, cxr, inner)
        noised_loss = self._draws_loss(noised.logits, paired_y)
        clean_loss = self.task.loss(clean.logits, paired_y)
        feature_gap = (noised.z.float() - clean.z.float().unsqueeze(0)).square().mean()
        hidden_gap = (noised.h.float() - clean.h.float().unsqueeze(0)).square().mean()
        outer_loss = noised_loss + clean_loss + settings.alpha * feature_gap + settings.beta * hidden_gap
        loss = outer_train_loss + outer_loss
        parts.update(
            outer=outer_loss.detach(),
            noised=noised_loss.detach(),
            clean=clean_loss.detach(),
            feature_gap=feature_gap.detach(),
            hidden_gap=hidden_gap.detach(),
        )
        return loss, {"loss": loss.detach(), **parts}

    def training_step(
        self, batch: Batch, optimizers: list[torch.optim.Optimizer], state: TrainState
    ) -> StepLog:
        """zero_grad, `meta_objective`, backward, one AdamW step over all parameters.

        The backward runs through the inner step when `second_order`. Logs `loss`, `inner`, and with
        paired rows `outer`, `noised`, `clean`, `feature_gap`, `hidden_gap`.
        """
        optimizer = optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        loss, logs = self.meta_objective(batch)
        loss.backward()
        if state.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters(), state.max_grad_norm)
        optimizer.step()
        return dict(logs)


@register_model("smil", paper="arXiv:2103.05677", group="missing")
def smil(task: TaskSpec, config: SMILConfig | None = None) -> SMILModel:
    """SMIL: prior-based reconstruction of a missing CXR feature, perturbations and meta-learning."""
    return SMILModel(task, config or SMILConfig())
