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

from ..kernels.backends import as_dtype, records_graph
from ..kernels.segment import norm_backward, norm_forward


class SegmentGroupNormFunction(torch.autograd.Function):
    """y = ((x - mean) * rstd * weight + bias) * (1 + scale) + shift, then optionally SiLU; statistics per (sample,
    channel group) over the sample's rows; the modulation [B, 2C] = [scale | shift] (a ResBlock's, from the
    embedding) is optional."""

    @staticmethod
    def forward(ctx, rows, weight, bias, modulation, segment, row_ptr, groups: int, center: bool, eps: float,
                silu: bool, dropout: float):
        out, stats, drop_state = norm_forward(rows, weight, bias, segment, row_ptr, groups, center, eps, modulation,
                                              silu, dropout)
        ctx.save_for_backward(rows, weight, bias, modulation, stats)
        # index tensors of the structure and the dropout's seed: never written in place, and kept alive by their
        # owners anyway, so they skip the saved-tensor hooks (each costs host time under checkpointing)
        ctx.index = segment, row_ptr, drop_state
        ctx.groups, ctx.center, ctx.silu, ctx.dropout = groups, center, silu, dropout
        ctx.dtypes = [None if t is None else t.dtype for t in (weight, bias, modulation)]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        rows, weight, bias, modulation, stats = ctx.saved_tensors
        segment, row_ptr, drop_state = ctx.index
        grads = norm_backward(grad_y, rows, weight, bias, segment, row_ptr, stats, ctx.groups, ctx.center,
                              modulation, ctx.silu, ctx.dropout, drop_state)
        rest = [as_dtype(g, dtype) if dtype is not None and need else None
                for g, dtype, need in zip(grads[1:], ctx.dtypes, ctx.needs_input_grad[1:4])]
        return (grads[0] if ctx.needs_input_grad[0] else None, *rest, None, None, None, None, None, None, None)


def segment_group_norm(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       segment: torch.Tensor, row_ptr: torch.Tensor, groups: int, center: bool = True,
                       eps: float = 1e-5, modulation: Optional[torch.Tensor] = None,
                       silu: bool = False, dropout: float = 0.0) -> torch.Tensor:
    """Group norm of rows [N, C] sorted by sample (segment [N], CSR row_ptr [B + 1]) and channel group, with a
    per-channel affine, then optionally y * (1 + scale) + shift per (sample, channel) ([scale | shift] =
    modulation [B, 2C], ADM's scale-shift), then optionally SiLU, then dropout of rate `dropout` (in [0, 1))."""
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if modulation is not None and modulation.shape != (row_ptr.numel() - 1, 2 * rows.shape[1]):
        raise ValueError(f"modulation must be [{row_ptr.numel() - 1}, {2 * rows.shape[1]}] (scale then shift per "
                         f"sample), got {tuple(modulation.shape)}")
    if not records_graph(rows, weight, bias, modulation):  # a no-grad forward: the kernels alone
        return norm_forward(rows, weight, bias, segment, row_ptr, groups, center, eps, modulation, silu,
                            float(dropout))[0]
    return SegmentGroupNormFunction.apply(rows, weight, bias, modulation, segment, row_ptr, groups, center, eps,
                                          silu, float(dropout))
