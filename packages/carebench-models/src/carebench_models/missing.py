"""The missing-CXR execution rule shared by every model (models.md §3.4).

1. `idx = paired_index(batch)`: the rows with a CXR, with the one host sync allowed in `forward`.
2. No paired row: no CXR encoder runs; CXR-derived tensors come from the model's missing rule.
3. Otherwise the CXR encoder runs on `cxr[idx]` only and its rows are scattered into a `[B, ...]`
   tensor pre-filled by the missing rule (`MissingToken.fill`, `scatter_rows`).

A layer that runs on all B rows after the scatter normalises with statistics of the paired rows only
(`paired_batch_norm`), so BatchNorm never learns from the placeholders of the rows without a CXR.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carebench_models.errors import CarebenchModelError


def paired_index(batch: Mapping[str, Tensor]) -> Tensor:
    """Row indices of the batch that have a CXR, int64 [n_c] on the batch's device.

    Also checks that every row has its EHR (`has_ehr` all True, when the key is present): all
    models need it. Both checks share one device-to-host copy.

    Args:
        batch: a batch dict with `has_cxr` bool [B] and optionally `has_ehr` bool [B].

    Raises:
        CarebenchModelError: some row has no EHR.
    """
    flags = _host_cxr_flags(batch)
    return flags.nonzero().squeeze(1).to(batch["has_cxr"].device, non_blocking=True)


def split_index(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Row indices with and without a CXR, int64 ([n_c], [B − n_c]), from one device-to-host copy.

    Checks `has_ehr` as `paired_index` does.

    Raises:
        CarebenchModelError: some row has no EHR.
    """
    flags = _host_cxr_flags(batch)
    device = batch["has_cxr"].device
    return (
        flags.nonzero().squeeze(1).to(device, non_blocking=True),
        (~flags).nonzero().squeeze(1).to(device, non_blocking=True),
    )


def _host_cxr_flags(batch: Mapping[str, Tensor]) -> Tensor:
    """`has_cxr` as a CPU bool tensor [B], after checking `has_ehr` in the same copy."""
    has_cxr = batch["has_cxr"]
    has_ehr = batch.get("has_ehr")
    flags = has_cxr.bool() if has_ehr is None else torch.stack([has_cxr.bool(), has_ehr.bool()])
    flags = flags.cpu()
    if has_ehr is None:
        return flags
    if not bool(flags[1].all()):
        missing = int((~flags[1]).sum())
        raise CarebenchModelError(
            f"{missing} row(s) of the batch have has_ehr=False; carebench models require the EHR of every stay"
        )
    return flags[0]


def scatter_rows(base: Tensor, idx: Tensor, rows: Tensor | None) -> Tensor:
    """`base` [B, ...] with rows `idx` replaced by `rows` [n_c, ...] (out of place, differentiable).

    `rows` is cast to `base`'s dtype (bf16 encoder outputs under autocast into an fp32 buffer).
    `rows=None` (no paired row) returns `base` unchanged.
    """
    if rows is None:
        return base
    return base.index_copy(0, idx, rows.to(base.dtype))


class MissingToken(nn.Module):
    """A learned stand-in for the CXR feature of rows without a CXR (models.md §3.4.4).

    Initialised trunc-normal with std 0.02.

    Args:
        shape: shape of one row's feature, e.g. `d` for a `[B, d]` embedding.
    """

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.empty(*shape))
        nn.init.trunc_normal_(self.value, std=0.02)

    def expand(self, batch_size: int) -> Tensor:
        """The token repeated over the batch: [B, *shape]."""
        return self.value.unsqueeze(0).expand(batch_size, *self.value.shape)

    def fill(self, idx: Tensor, rows: Tensor | None, batch_size: int) -> Tensor:
        """[B, *shape]: `rows` [n_c, *shape] at `idx`, the token everywhere else."""
        return scatter_rows(self.expand(batch_size), idx, rows)


def require_ehr(batch: Mapping[str, Tensor]) -> None:
    """Raise `CarebenchModelError` unless every row has its EHR (for models that never read `cxr`)."""
    has_ehr = batch.get("has_ehr")
    if has_ehr is not None and not bool(has_ehr.all()):
        missing = int((~has_ehr.bool()).sum())
        raise CarebenchModelError(
            f"{missing} row(s) of the batch have has_ehr=False; carebench models require the EHR of every stay"
        )


def paired_batch_norm(norm: nn.modules.batchnorm._BatchNorm, x: Tensor, idx: Tensor) -> Tensor:
    """`norm` applied to every row of `x`, with training statistics from the rows `idx` only.

    In training mode the per-channel mean and (biased) variance come from `x[idx]` and update the
    running statistics exactly as `norm` would on that sub-batch (unbiased variance, `momentum`, or a
    cumulative average when it is None); every row, placeholders included, is then normalised with
    them. Placeholder rows (a learned stand-in for a missing CXR) therefore never shift the
    statistics. When the paired rows hold a single value per channel (no row, or one row of a
    `[B, C]` input) the running statistics normalise the batch and are left untouched. In eval mode
    this is `norm(x)`.

    Args:
        norm: a BatchNorm1d/2d (its affine parameters and running buffers are used).
        x: [B, C] or [B, C, H, W].
        idx: int64 [n_c] rows whose statistics count.

    Returns:
        Normalised `x`, same shape and dtype.
    """
    if not norm.training:
        return norm(x)
    values_per_channel = idx.numel() * (x[0, 0].numel() if x.ndim > 2 else 1)
    if values_per_channel <= 1:
        if norm.running_mean is None or norm.running_var is None:
            raise CarebenchModelError(
                "paired_batch_norm needs running statistics to normalise a batch with fewer than two paired values"
            )
        return F.batch_norm(
            x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
        )
    dims = [0, *range(2, x.ndim)]
    paired = x.index_select(0, idx).float()
    mean = paired.mean(dim=dims)
    var = paired.var(dim=dims, unbiased=False)
    if norm.track_running_stats and norm.running_mean is not None and norm.running_var is not None:
        count = paired.numel() // paired.shape[1]
        with torch.no_grad():
            if norm.num_batches_tracked is not None:
                norm.num_batches_tracked.add_(1)
            momentum = (
                1.0 / float(norm.num_batches_tracked)
                if norm.momentum is None and norm.num_batches_tracked is not None
                else float(norm.momentum or 0.0)
            )
            norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
            unbiased = var * (count / max(count - 1, 1))
            norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)
    shape = (1, -1, *([1] * (x.ndim - 2)))
    out = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + norm.eps)
    if norm.weight is not None and norm.bias is not None:
        out = out * norm.weight.float().view(shape) + norm.bias.float().view(shape)
    return out.to(x.dtype)
