"""Per-sample group normalisation of sparse rows as one autograd op that keeps only its input and statistics.

The composed version (cast, centre, square, scale, affine) keeps about four fp32 copies of the rows for its
backward; this op keeps the input as it came (often bf16), the per-(sample, group) mean and inverse standard
deviation, and recomputes the normalised rows in the backward.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels.torch.conv import HALF_DTYPES as HALF
from ..kernels.segment import segment_counts, segment_sum


def _grouped(rows: torch.Tensor, groups: int) -> torch.Tensor:
    """fp32 (for halves) view [N, G, C/G] of rows [N, C]."""
    rows = rows.float() if rows.dtype in HALF else rows
    return rows.view(rows.shape[0], groups, rows.shape[1] // groups)


def _per_row(stat: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Per-(sample, group) statistics [B, G] broadcast to the rows: [N, G, 1]."""
    return stat.index_select(0, seg)[:, :, None]


def _centred(xg: torch.Tensor, seg: torch.Tensor, mean: Optional[torch.Tensor]) -> torch.Tensor:
    """x - mean of each row's sample and group (x itself without centring)."""
    return xg if mean is None else xg - _per_row(mean, seg)


class SegmentGroupNormFunction(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias, statistics per (sample, channel group) over the sample's rows."""

    @staticmethod
    def forward(ctx, rows, weight, bias, seg: torch.Tensor, batch: int, groups: int, center: bool, eps: float):
        n, c = rows.shape
        xg = _grouped(rows, groups)
        count = (segment_counts(seg, batch).clamp_min(1) * (c // groups)).to(xg.dtype)[:, None]  # [B, 1]
        mean = segment_sum(xg.sum(-1), seg, batch) / count if center else None  # [B, G]
        centred = _centred(xg, seg, mean)
        rstd = torch.rsqrt(segment_sum(centred.square().sum(-1), seg, batch) / count + eps)  # [B, G]
        y = (centred * _per_row(rstd, seg)).view(n, c) * weight
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(rows, weight, seg, count, rstd, *(() if mean is None else (mean,)))
        ctx.groups, ctx.batch, ctx.has_bias = groups, batch, bias is not None
        return y.to(rows.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        rows, weight, seg, count, rstd, *maybe_mean = ctx.saved_tensors
        mean = maybe_mean[0] if maybe_mean else None
        n, c = rows.shape
        g = ctx.groups
        xhat = _centred(_grouped(rows, g), seg, mean) * _per_row(rstd, seg)  # [N, G, C/G]
        dy = grad_y.to(xhat.dtype).view(n, g, c // g)
        grad_weight = (dy * xhat).sum(0).reshape(c).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = dy.sum(0).reshape(c).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_rows = None
        if ctx.needs_input_grad[0]:
            dxhat = dy * weight.to(dy.dtype).view(1, g, c // g)
            # d/dx of (x - mean) * rstd: rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) per segment
            proj = segment_sum((dxhat * xhat).sum(-1), seg, ctx.batch) / count  # [B, G]
            grad = dxhat - xhat * _per_row(proj, seg)
            if mean is not None:
                grad -= _per_row(segment_sum(dxhat.sum(-1), seg, ctx.batch) / count, seg)
            grad_rows = (grad * _per_row(rstd, seg)).view(n, c).to(rows.dtype)
        return grad_rows, grad_weight, grad_bias, None, None, None, None, None


def segment_group_norm(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], seg: torch.Tensor,
                       batch: int, groups: int, center: bool = True, eps: float = 1e-5) -> torch.Tensor:
    """Group norm of rows [N, C] per sample (seg [N] in [0, batch)) and channel group, with a per-channel affine."""
    return SegmentGroupNormFunction.apply(rows, weight, bias, seg, batch, groups, center, eps)
