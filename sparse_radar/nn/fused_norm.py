"""Per-sample group normalisation of sparse rows as one autograd op built from fused segment kernels.

Rows are sorted by sample (coords are key-sorted), so a sample is a CSR segment. On the triton backend the forward is
two launches (the statistics with the affine coefficients, two passes inside one program: no E[x^2] - E[x]^2
cancellation; the affine map, with the SiLU that follows it in a ResBlock fused in) and the backward two (the
gradient's sums with dx's coefficients; dx with dW and db). It keeps the input as it came (often bf16) and
per-(sample, channel) statistics, never the SiLU's input.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels.segment import norm_backward, norm_forward


class SegmentGroupNormFunction(torch.autograd.Function):
    """y = ((x - mean) * rstd * weight + bias) * mod_scale + mod_shift, statistics per (sample, channel group) over
    the sample's rows; the modulation [B, C] (a ResBlock's (1 + scale, shift) from the embedding) is optional."""

    @staticmethod
    def forward(ctx, rows, weight, bias, mod_scale, mod_shift, segment, row_ptr, groups: int, center: bool,
                eps: float, silu: bool):
        out, mean, rstd, scale, offset = norm_forward(rows, weight, bias, segment, row_ptr, groups, center, eps,
                                                      mod_scale, mod_shift, silu)
        ctx.save_for_backward(rows, weight, bias, mod_scale, segment, row_ptr, mean, rstd,
                              *((scale, offset) if silu else ()))
        ctx.groups, ctx.center, ctx.silu = groups, center, silu
        ctx.dtypes = [None if t is None else t.dtype for t in (weight, bias, mod_scale, mod_shift)]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        rows, weight, bias, mod_scale, segment, row_ptr, mean, rstd, *affine = ctx.saved_tensors
        grads = norm_backward(grad_y, rows, weight, bias, segment, row_ptr, mean, rstd, ctx.groups, ctx.center,
                              mod_scale, ctx.silu, *affine)
        rest = [g.to(dtype) if dtype is not None and need else None
                for g, dtype, need in zip(grads[1:], ctx.dtypes, ctx.needs_input_grad[1:5])]
        return (grads[0] if ctx.needs_input_grad[0] else None, *rest, None, None, None, None, None, None)


def segment_group_norm(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       segment: torch.Tensor, row_ptr: torch.Tensor, groups: int, center: bool = True,
                       eps: float = 1e-5, mod_scale: Optional[torch.Tensor] = None,
                       mod_shift: Optional[torch.Tensor] = None, silu: bool = False) -> torch.Tensor:
    """Group norm of rows [N, C] sorted by sample (segment [N], CSR row_ptr [B + 1]) and channel group, with a
    per-channel affine, then optionally y * mod_scale + mod_shift per (sample, channel) ([B, C] each), then
    optionally SiLU."""
    if (mod_scale is None) != (mod_shift is None):
        raise ValueError("mod_scale and mod_shift come together")
    return SegmentGroupNormFunction.apply(rows, weight, bias, mod_scale, mod_shift, segment, row_ptr, groups, center,
                                          eps, silu)
