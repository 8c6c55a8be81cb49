"""Per-sample (segment) reductions over rows [N, ...] sorted by segment (CSR row_ptr [S + 1]): sums, the fused
sums and affine maps that norms are made of, and the norms themselves, dispatched to a backend."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import backends


class _SegmentTotal(torch.autograd.Function):
    """[N, C] rows sorted by segment -> [S, C] sums (sorted_segment_sums: no atomics on the triton backend, nor on
    the torch one under deterministic settings); backward copies each segment's gradient to its rows."""

    @staticmethod
    def forward(ctx, values, row_ptr, segment):
        ctx.save_for_backward(segment)
        ctx.dtype = values.dtype
        return sorted_segment_sums(values, row_ptr, segment)[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (segment,) = ctx.saved_tensors
        return grad.to(ctx.dtype).index_select(0, segment), None, None


def segment_total(values: torch.Tensor, row_ptr: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """Per-segment column sums [S, C] of rows [N, C] sorted by segment (CSR row_ptr), in the accumulation dtype;
    differentiable, with no host sync and (on the triton backend, or deterministic settings) repeatable bits."""
    if not backends.records_graph(values):
        return sorted_segment_sums(values, row_ptr, segment)[0]
    return _SegmentTotal.apply(values, row_ptr, segment)


def row_pointers(sorted_segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """CSR offsets int64 [S + 1] of segment ids sorted ascending (no host sync)."""
    bounds = torch.arange(num_segments + 1, device=sorted_segment.device, dtype=sorted_segment.dtype)
    return torch.searchsorted(sorted_segment, bounds)


def sorted_segment_sums(u: torch.Tensor, row_ptr: torch.Tensor, segment: torch.Tensor,
                        v: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
                        shift_u: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per segment s and column c, in fp32 (fp64 for fp64 rows): (sum of a, sum of a * b) with b = v - shift[s] and a = u, or
    a = u - shift[s] when shift_u; rows sorted by segment. u, v [N, C]; shift [S, C]; second is None without v."""
    op = _backend_module(u)
    return op.sorted_segment_sums(u.contiguous(), row_ptr, segment, None if v is None else v.contiguous(),
                                  shift, shift_u, backends.current().deterministic)


def segment_affine(u: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, segment: torch.Tensor,
                   v: Optional[torch.Tensor] = None, v_scale: Optional[torch.Tensor] = None,
                   out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Rows u * scale[s] + v * v_scale[s] + offset[s] (per-segment [S, C] factors), in fp32 (fp64 for fp64)."""
    op = _backend_module(u)
    acc = backends.accumulation_dtype(u.dtype)
    return op.segment_affine(u.contiguous(), scale.to(acc).contiguous(), offset.to(acc).contiguous(), segment,
                             None if v is None else v.contiguous(),
                             None if v_scale is None else v_scale.to(acc).contiguous(), out_dtype or u.dtype)


def norm_forward(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], segment: torch.Tensor,
                 row_ptr: torch.Tensor, groups: int, center: bool, eps: float,
                 modulation: Optional[torch.Tensor] = None, silu: bool = False, dropout: float = 0.0):
    """Group norm of rows [N, C] sorted by segment, statistics per (segment, group of C // groups channels), then
    the per-channel affine, then (given modulation [S, 2C] = [scale | shift]) y * (1 + scale[s]) + shift[s], then
    (silu) SiLU, then dropout of rate `dropout`: (out [N, C] in rows' dtype, the statistics [4, S, C] in the
    accumulation dtype: mean, rstd, and the affine's scale and offset (one tensor: four are four allocations and
    launch arguments), then what the backward needs of the dropout or None)."""
    op = _backend_module(rows)
    cont = lambda t: None if t is None else t.contiguous()
    return op.norm_forward(rows.contiguous(), weight.contiguous(), cont(bias), segment, row_ptr, groups, center, eps,
                           _rows_of_columns(modulation), silu, float(dropout))


def norm_backward(grad_y: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  segment: torch.Tensor, row_ptr: torch.Tensor, stats: torch.Tensor, groups: int, center: bool,
                  modulation: Optional[torch.Tensor] = None, silu: bool = False, dropout: float = 0.0,
                  drop_state: Optional[torch.Tensor] = None):
    """(grad of rows [N, C], of weight [C], of bias [C], of modulation [S, 2C] or None) of norm_forward from its
    statistics (given dropout, its rate and state), all but the first in the accumulation dtype."""
    op = _backend_module(rows)
    return op.norm_backward(grad_y.contiguous(), rows, weight.contiguous(), None if bias is None else bias.contiguous(),
                            segment, row_ptr, stats, groups, center, _rows_of_columns(modulation), silu,
                            float(dropout), drop_state)


def _rows_of_columns(modulation: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """modulation [S, 2C] as the kernels read it: its columns adjacent, its rows at any stride (a column slice of
    every block's modulations, UNet3D's one matmul, is read in place)."""
    if modulation is None or modulation.stride()[1] == 1:
        return modulation
    return modulation.contiguous()


def _backend_module(tensor: torch.Tensor):
    return backends.op(backends.resolve_backend(backends.current().backend, tensor), "segment")


class _ExpandSegments(torch.autograd.Function):
    """rows [S, C] -> one copy per row of each segment [N, C]; backward sums per segment without atomics."""

    @staticmethod
    def forward(ctx, rows, segment, row_ptr):
        ctx.save_for_backward(segment, row_ptr)
        ctx.dtype = rows.dtype
        return rows.index_select(0, segment)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        segment, row_ptr = ctx.saved_tensors
        return sorted_segment_sums(grad, row_ptr, segment)[0].to(ctx.dtype), None, None


def expand_segments(rows: torch.Tensor, segment: torch.Tensor, row_ptr: torch.Tensor) -> torch.Tensor:
    """Per-segment rows [S, C] repeated for each row of sorted segments -> [N, C] (deterministic backward)."""
    if not backends.records_graph(rows):
        return rows.index_select(0, segment)
    return _ExpandSegments.apply(rows, segment, row_ptr)
