"""`m3care`: missing-modality imputation from similar patients (Zhang et al., KDD 2022).

Paper arXiv:2210.17292. Task-guided, modality-adaptive kernels on the modalities two patients share
define a patient-similarity graph within the mini-batch; a graph convolution aggregates neighbours'
representations, which imputes the *representation* of a missing CXR from similar patients that
have one; an adaptive gate mixes own and aggregated information; a stability term keeps the
task-guided projections on the scale of the features they read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carebench_models.base import Batch, FusionModel, ModelOutput
from carebench_models.config import TransformerEHRConfig
from carebench_models.encoders.cxr import ProjectedCXR
from carebench_models.encoders.ehr import TransformerEHR, ehr_input
from carebench_models.errors import CarebenchModelError
from carebench_models.missing import MissingToken, paired_index, scatter_rows
from carebench_models.registry import register_model
from carebench_models.task import TaskSpec

KERNEL_BANDWIDTH_FACTORS = (0.5, 1.0, 2.0)
"""The kernel averages Gaussian kernels at these multiples of the batch's mean squared distance."""


@dataclass(frozen=True, kw_only=True)
class M3CareConfig(TransformerEHRConfig):
    """Configuration of `m3care` (`paper`: d 256; `quick`: d 32). Dropout 0.2 before the last layer."""

    lambda_stab: float = 0.1
    """Weight λ of the stability term (the base configuration's 0.1; per-task defaults are bundled)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_stab < 0:
            raise CarebenchModelError(f"m3care lambda_stab must be >= 0, got {self.lambda_stab}")


def similarity_kernel(features: Tensor) -> Tensor:
    """Multi-bandwidth Gaussian kernel of the rows of `features`, float32 [n, n] with ones on the diagonal.

    `K = mean over σ ∈ {bw/2, bw, 2bw} of exp(−‖z_i − z_j‖² / σ)`, bw = mean off-diagonal squared
    distance (1 when bw < 1e-3). Computed in float32 with autocast off; pairwise differences (not
    the expanded dot-product form) keep the diagonal exactly 0 with a zero gradient.

    Args:
        features: [n, d] with n >= 2.
    """
    with torch.autocast(features.device.type, enabled=False):
        z = features.float()
        rows = z.shape[0]
        squared = (z.unsqueeze(1) - z.unsqueeze(0)).square().sum(dim=-1)
        bandwidth = squared.sum() / (rows * (rows - 1))
        bandwidth = torch.where(bandwidth < 1e-3, torch.ones_like(bandwidth), bandwidth)
        kernels = [torch.exp(-squared / (factor * bandwidth)) for factor in KERNEL_BANDWIDTH_FACTORS]
        return torch.stack(kernels).mean(dim=0)


class GraphConvolution(nn.Module):
    """`H = ReLU(A (Z W) + b)`: one graph-convolution layer on a dense [B, B] adjacency.

    Args:
        width: input and output width d.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width, bias=False)
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, adjacency: Tensor, features: Tensor) -> Tensor:
        """[B, B] adjacency, [B, d] features → [B, d]."""
        transformed = self.linear(features)
        return F.relu(adjacency.to(transformed.dtype) @ transformed + self.bias.to(transformed.dtype))


def _projection(width: int) -> nn.Sequential:
    """P_m: MLP d→d→d→d with ReLU between the layers."""
    return nn.Sequential(
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
    )


class M3CareModel(FusionModel):
    """A within-batch patient graph imputes the CXR representation of rows without a CXR.

    Inputs: `ehr` [B, T, F], `ehr_mask` [B, T, F], `cxr` [B, 3, H, W], `has_cxr` [B].

    1. `E = TransformerEHR(x)` [B, d]; `X = Linear(CNN(cxr[idx]))` [n_c, d].
    2. Similarity (float32): `S_E = ((1 − σ(ε₀))·K(BN(ReLU(P_E E))) + σ(ε₀)) ⊙ K(BN(E))` [B, B]; `S_X`
       likewise with P_X, ε₁ on the pairs of paired rows (0 elsewhere); one BatchNorm1d for the four
       kernel inputs, each normalised over its own valid rows. `S = (S_E + S_X) / (1 + M_X)` with
       `M_X[i, j] = has_cxr_i·has_cxr_j` (the mean kernel over the modalities both rows have, so
       `S[i, i] = 1`), then `S ← ReLU(S − σ(τ)) + 1[S > σ(τ)]·σ(τ).detach()`.
    3. Two graph convolutions per modality: EHR on `A = S`; CXR on `A_X[i, j] = S[i, j]·has_cxr_j`,
       so every row, with or without a CXR, aggregates the CXR features of its neighbours that have
       one. A row without such a neighbour gets the learned `cxr_missing` [d] as `H_X`.
    4. Gates `w = σ(Lin H) / (σ(Lin H) + σ(Lin Z))` [·, 1]: `Ẽ = wH_E + (1 − w)E`; `X̃ = wH_X + (1 − w)X`
       on paired rows and `X̃ = H_X` (the imputation) elsewhere. Head: [Ẽ; X̃] → Linear(2d→d) → ReLU →
       Dropout → Linear(d→K).

    Aux loss `stability` = λ·(|‖P_E(E)‖_F − ‖E‖_F| + |‖P_X(X)‖_F − ‖X‖_F|) (CXR term on paired rows).
    Outputs depend on the other rows of the batch (graph and BatchNorm), in training and in
    evaluation, hence `eval_batch_dependent`. A batch without CXRs never runs the CNN.
    """

    eval_batch_dependent: ClassVar[bool] = True
    conditional_parameters: ClassVar[tuple[str, ...]] = ("ehr_mix", "cxr_mix", "kernel_norm", "cxr_missing")
    """ε₀, ε₁ and the kernel BatchNorm get gradients only through off-diagonal edges that pass the
    threshold (a self-loop's kernel is the constant 1); `cxr_missing` only when some row has no
    neighbour with a CXR."""

    def __init__(self, task: TaskSpec, config: M3CareConfig) -> None:
        super().__init__(task, config)
        d = config.d_model
        self.lambda_stab = config.lambda_stab
        self.ehr_encoder = TransformerEHR.from_config(config)
        self.cxr_branch = ProjectedCXR(config)
        self.ehr_projection = _projection(d)
        self.cxr_projection = _projection(d)
        self.kernel_norm = nn.BatchNorm1d(d)
        self.ehr_mix = nn.Parameter(torch.tensor(2.0))
        self.cxr_mix = nn.Parameter(torch.tensor(2.0))
        self.threshold = nn.Parameter(torch.tensor(2.0))
        self.ehr_graph = nn.ModuleList([GraphConvolution(d), GraphConvolution(d)])
        self.cxr_graph = nn.ModuleList([GraphConvolution(d), GraphConvolution(d)])
        self.ehr_gate_graph, self.ehr_gate_own = nn.Linear(d, 1), nn.Linear(d, 1)
        self.cxr_gate_graph, self.cxr_gate_own = nn.Linear(d, 1), nn.Linear(d, 1)
        self.cxr_missing = MissingToken(d)
        self.head = nn.Sequential(
            nn.Linear(2 * d, d), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(d, task.num_outputs)
        )

    def _modality_similarity(self, features: Tensor, projected: Tensor, mix: Tensor) -> Tensor:
        """`((1 − σ(ε))·K(BN(ReLU(P z))) + σ(ε)) ⊙ K(BN(z))`, float32 [n, n] (ones for n < 2)."""
        rows = features.shape[0]
        if rows < 2:
            return torch.ones(rows, rows, device=features.device)
        with torch.autocast(features.device.type, enabled=False):
            guided = similarity_kernel(self.kernel_norm(F.relu(projected.float())))
            own = similarity_kernel(self.kernel_norm(features.float()))
            weight = torch.sigmoid(mix)
            return ((1 - weight) * guided + weight) * own

    def similarity(
        self,
        ehr: Tensor,
        ehr_projected: Tensor,
        cxr: Tensor | None,
        cxr_projected: Tensor | None,
        idx: Tensor,
        has_cxr: Tensor,
    ) -> Tensor:
        """The thresholded patient similarity `S`, float32 [B, B] (see the class docstring).

        Args:
            ehr: E [B, d].
            ehr_projected: P_E(E) [B, d].
            cxr: X [n_c, d], or None without paired rows.
            cxr_projected: P_X(X) [n_c, d], or None.
            idx: int64 [n_c] paired row indices.
            has_cxr: bool [B].
        """
        similarity = self._modality_similarity(ehr, ehr_projected, self.ehr_mix)
        if cxr is not None and cxr_projected is not None:
            cxr_similarity = self._modality_similarity(cxr, cxr_projected, self.cxr_mix)
            placement = F.one_hot(idx, ehr.shape[0]).float().T  # [B, n_c]
            paired = has_cxr.float()
            both = paired.unsqueeze(1) * paired.unsqueeze(0)
            similarity = (similarity + placement @ cxr_similarity @ placement.T) / (1 + both)
        threshold = torch.sigmoid(self.threshold)
        return F.relu(similarity - threshold) + (similarity > threshold).float() * threshold.detach()

    @staticmethod
    def _gate(graph: Tensor, own: Tensor, gate_graph: nn.Linear, gate_own: nn.Linear) -> Tensor:
        """`w·H + (1 − w)·Z` with `w = σ(Lin H) / (σ(Lin H) + σ(Lin Z))` [n, 1]."""
        graph_weight, own_weight = torch.sigmoid(gate_graph(graph)), torch.sigmoid(gate_own(own))
        weight = graph_weight / (graph_weight + own_weight)
        return weight * graph + (1 - weight) * own.to(graph.dtype)

    def stability(
        self, ehr: Tensor, ehr_projected: Tensor, cxr: Tensor | None, cxr_projected: Tensor | None
    ) -> Tensor:
        """λ·(|‖P_E(E)‖_F − ‖E‖_F| + |‖P_X(X)‖_F − ‖X‖_F|), float32 scalar (no CXR term without paired rows)."""
        with torch.autocast(ehr.device.type, enabled=False):
            term = (ehr_projected.float().norm() - ehr.float().norm()).abs()
            if cxr is not None and cxr_projected is not None:
                term = term + (cxr_projected.float().norm() - cxr.float().norm()).abs()
        return self.lambda_stab * term

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits [B, K] and the `stability` aux loss."""
        idx = paired_index(batch)
        has_cxr = batch["has_cxr"].bool()
        ehr = self.ehr_encoder(ehr_input(batch))
        cxr = self.cxr_branch.encode_rows(batch["cxr"], idx)
        batch_size = ehr.shape[0]
        ehr_projected = self.ehr_projection(ehr)
        cxr_projected = None if cxr is None else self.cxr_projection(cxr)
        similarity = self.similarity(ehr, ehr_projected, cxr, cxr_projected, idx, has_cxr)

        ehr_graph = ehr
        for layer in self.ehr_graph:
            ehr_graph = layer(similarity, ehr_graph)
        ehr_fused = self._gate(ehr_graph, ehr, self.ehr_gate_graph, self.ehr_gate_own)

        missing = self.cxr_missing.expand(batch_size)
        if cxr is None:
            cxr_fused = missing.to(ehr_fused.dtype)
        else:
            adjacency = similarity * has_cxr.float().unsqueeze(0)
            cxr_graph = scatter_rows(torch.zeros_like(ehr), idx, cxr)
            for layer in self.cxr_graph:
                cxr_graph = layer(adjacency, cxr_graph)
            has_neighbour = (adjacency > 0).any(dim=1, keepdim=True)
            cxr_graph = torch.where(has_neighbour, cxr_graph, missing.to(cxr_graph.dtype))
            paired_fused = self._gate(
                cxr_graph.index_select(0, idx), cxr, self.cxr_gate_graph, self.cxr_gate_own
            )
            cxr_fused = scatter_rows(cxr_graph, idx, paired_fused)
        logits = self.head(torch.cat([ehr_fused, cxr_fused.to(ehr_fused.dtype)], dim=1))
        return ModelOutput(
            logits.float(), {"stability": self.stability(ehr, ehr_projected, cxr, cxr_projected)}
        )


@register_model("m3care", paper="arXiv:2210.17292", group="missing")
def m3care(task: TaskSpec, config: M3CareConfig | None = None) -> M3CareModel:
    """M3Care: a within-batch patient-similarity graph imputes the representation of a missing CXR."""
    return M3CareModel(task, config or M3CareConfig())
