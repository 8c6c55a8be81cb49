"""Per-sample group normalisation of sparse rows as one autograd op built from fused segment kernels.

Rows are sorted by sample (coords are key-sorted), so a sample is a CSR segment. Forward: two column-sum
launches (mean, then centred squares: two passes, no E[x^2] - E[x]^2 cancellation) and one affine launch;
backward: one launch for the two sums the gradient needs and one affine launch. Between them only [B, C]
tensors are touched. It keeps the input as it came (often bf16) and per-(sample, channel) statistics.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels.segment import accumulation_dtype, segment_affine, sorted_segment_sums


def _group_total(per_channel: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, C] -> per-(sample, group) totals broadcast back to their channels, [B, C]."""
    b, c = per_channel.shape
    total = per_channel.view(b, groups, c // groups).sum(-1, keepdim=True)
    return total.expand(b, groups, c // groups).reshape(b, c)


class SegmentGroupNormFunction(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias, statistics per (sample, channel group) over the sample's rows."""

    @staticmethod
    def forward(ctx, rows, weight, bias, segment, row_ptr, groups: int, center: bool, eps: float):
        n, c = rows.shape
        acc = accumulation_dtype(rows.dtype)
        count = ((row_ptr[1:] - row_ptr[:-1]).clamp_min(1) * (c // groups)).to(acc)[:, None]  # [B, 1]
        b = row_ptr.numel() - 1
        mean = torch.zeros(b, c, dtype=acc, device=rows.device)
        if center:
            mean = _group_total(sorted_segment_sums(rows, row_ptr, segment)[0], groups) / count  # [B, C]
        _, squares = sorted_segment_sums(rows, row_ptr, segment, v=rows, shift=mean, shift_u=True)
        rstd = torch.rsqrt(_group_total(squares, groups) / count + eps)  # [B, C]
        scale = rstd * weight.to(acc)
        offset = -mean * scale if bias is None else bias.to(acc) - mean * scale
        ctx.save_for_backward(rows, weight, segment, row_ptr, count, mean, rstd)
        ctx.groups, ctx.center, ctx.has_bias = groups, center, bias is not None
        return segment_affine(rows, scale, offset, segment)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        rows, weight, segment, row_ptr, count, mean, rstd = ctx.saved_tensors
        g = ctx.groups
        w = weight.to(mean.dtype)
        sum_dy, sum_dy_xc = sorted_segment_sums(grad_y, row_ptr, segment, v=rows, shift=mean)  # sum dy, dy (x - m)
        dy_xhat = rstd * sum_dy_xc  # [B, C]: sum over the sample's rows of dy * xhat
        grad_weight = dy_xhat.sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.sum(0).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_rows = None
        if ctx.needs_input_grad[0]:
            # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * w, means per group
            proj = _group_total(w * dy_xhat, g) / count  # mean of dxhat * xhat
            x_scale = -rstd * rstd * proj  # multiplies (x - mean)
            offset = -mean * x_scale
            if ctx.center:
                offset = offset - rstd * _group_total(w * sum_dy, g) / count
            grad_rows = segment_affine(grad_y, rstd * w, offset, segment, v=rows, v_scale=x_scale,
                                       out_dtype=rows.dtype)
        return grad_rows, grad_weight, grad_bias, None, None, None, None, None


def segment_group_norm(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       segment: torch.Tensor, row_ptr: torch.Tensor, groups: int, center: bool = True,
                       eps: float = 1e-5) -> torch.Tensor:
    """Group norm of rows [N, C] sorted by sample (segment [N], CSR row_ptr [B + 1]) and channel group,
    with a per-channel affine."""
    return SegmentGroupNormFunction.apply(rows, weight, bias, segment, row_ptr, groups, center, eps)
