"""Shared EHR encoders (models.md §3.1, §3.2).

Both read `x = concat(ehr, ehr_mask)` [B, T, 2F]: normalised imputed values followed by one
observed-indicator channel per feature (1 = measured in that hour).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from carebench_models.config import CommonConfig, TransformerEHRConfig


def ehr_input(batch: Mapping[str, Tensor]) -> Tensor:
    """EHR values and observed indicators side by side.

    Args:
        batch: with `ehr` float32 [B, T, F] and `ehr_mask` bool [B, T, F].

    Returns:
        float [B, T, 2F].
    """
    ehr = batch["ehr"]
    return torch.cat([ehr, batch["ehr_mask"].to(ehr.dtype)], dim=-1)


class TransformerEHR(nn.Module):
    """CareBench's shared EHR encoder: Linear(2F→d) + learned positions → post-LN Transformer layers.

    Position table [T, d] initialised U(−0.1, 0.1); layers use d, `heads`, FF `ff`, ReLU, dropout.
    T is fixed, so no padding mask is passed (fast SDPA path). 0.82 M parameters at d 256, F 27.

    Args:
        in_features: 2F input channels.
        steps: T.
        d_model: width d.
        layers: number of encoder layers.
        heads: attention heads.
        ff: feed-forward width.
        dropout: dropout inside the layers and on the pooled vector.
    """

    def __init__(
        self, *, in_features: int, steps: int, d_model: int, layers: int, heads: int, ff: int, dropout: float
    ) -> None:
        super().__init__()
        self.out_dim = d_model
        self.input_proj = nn.Linear(in_features, d_model)
        self.position = nn.Parameter(torch.empty(steps, d_model))
        nn.init.uniform_(self.position, -0.1, 0.1)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, heads, dim_feedforward=ff, dropout=dropout, activation="relu", batch_first=True
            )
            for _ in range(layers)
        )
        self.pool_dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, config: TransformerEHRConfig) -> TransformerEHR:
        """The encoder sized by a config's `ehr_*` fields, d_model and dropout."""
        return cls(
            in_features=2 * config.ehr_features,
            steps=config.ehr_steps,
            d_model=config.d_model,
            layers=config.ehr_layers,
            heads=config.ehr_heads,
            ff=config.ehr_ff,
            dropout=config.dropout,
        )

    def encode_sequence(self, x: Tensor) -> Tensor:
        """Per-step states.

        Args:
            x: [B, T, 2F] from `ehr_input`.

        Returns:
            seq [B, T, d].
        """
        seq = self.input_proj(x) + self.position[: x.shape[1]]
        for layer in self.layers:
            seq = layer(seq)
        return seq

    def pool(self, seq: Tensor) -> Tensor:
        """Mean over time, then dropout: [B, T, d] → [B, d]."""
        return self.pool_dropout(seq.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        """Pooled embedding [B, d] of `x` [B, T, 2F]."""
        return self.pool(self.encode_sequence(x))


class LSTMEHR(nn.Module):
    """Baseline EHR encoder: Linear(2F→d) → bidirectional LSTM(d) → [h_fwd; h_bwd] → Linear(2d→d).

    Dropout after the concatenated final states and after the projection. 1.20 M parameters at
    d 256, F 27.

    Args:
        in_features: 2F input channels.
        d_model: hidden width d of each LSTM direction and of the output.
        dropout: dropout probability.
    """

    def __init__(self, *, in_features: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.out_dim = d_model
        self.input_proj = nn.Linear(in_features, d_model)
        self.lstm = nn.LSTM(d_model, d_model, num_layers=1, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.output_proj = nn.Linear(2 * d_model, d_model)

    @classmethod
    def from_config(cls, config: CommonConfig) -> LSTMEHR:
        """The encoder sized by a config's ehr_features, d_model and dropout."""
        return cls(in_features=2 * config.ehr_features, d_model=config.d_model, dropout=config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Embedding [B, d] of `x` [B, T, 2F]."""
        _, (hidden, _) = self.lstm(self.input_proj(x))
        final = torch.cat([hidden[-2], hidden[-1]], dim=-1)
        return self.dropout(self.output_proj(self.dropout(final)))
