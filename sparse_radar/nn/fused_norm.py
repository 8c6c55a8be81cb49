"""Per-sample group normalisation of sparse rows as one autograd op built from fused segment kernels.

Rows are sorted by sample (coords are key-sorted), so a sample is a CSR segment. On the triton backend the forward is
five launches (column sums, group means, centred squares: two passes, no E[x^2] - E[x]^2 cancellation; the affine
coefficients; the affine map) and the backward three (the two sums the gradient needs, the coefficients with dW and
db, the affine map). It keeps the input as it came (often bf16) and per-(sample, channel) statistics.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels.segment import norm_backward, norm_forward


class SegmentGroupNormFunction(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias, statistics per (sample, channel group) over the sample's rows."""

    @staticmethod
    def forward(ctx, rows, weight, bias, segment, row_ptr, groups: int, center: bool, eps: float):
        out, mean, rstd = norm_forward(rows, weight, bias, segment, row_ptr, groups, center, eps)
        ctx.save_for_backward(rows, weight, segment, row_ptr, mean, rstd)
        ctx.groups, ctx.center, ctx.has_bias = groups, center, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        rows, weight, segment, row_ptr, mean, rstd = ctx.saved_tensors
        grad_rows, grad_w, grad_b = norm_backward(grad_y, rows, weight, segment, row_ptr, mean, rstd, ctx.groups,
                                                  ctx.center)
        grad_weight = grad_w.to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = grad_b.to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_rows if ctx.needs_input_grad[0] else None, grad_weight, grad_bias, None, None, None, None, None


def segment_group_norm(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       segment: torch.Tensor, row_ptr: torch.Tensor, groups: int, center: bool = True,
                       eps: float = 1e-5) -> torch.Tensor:
    """Group norm of rows [N, C] sorted by sample (segment [N], CSR row_ptr [B + 1]) and channel group,
    with a per-channel affine."""
    return SegmentGroupNormFunction.apply(rows, weight, bias, segment, row_ptr, groups, center, eps)
