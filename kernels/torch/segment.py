"""Torch backend of the sorted-segment sums and affine maps (the reference for the triton backend)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..segment import accumulation_dtype


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.to(accumulation_dtype(t.dtype))


def _sums(values: torch.Tensor, row_ptr: torch.Tensor, segment: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """[S, C] sums of the rows of each segment; slice by slice when deterministic (index_add_ on CUDA races)."""
    n_seg = row_ptr.numel() - 1
    if not deterministic:
        return values.new_zeros(n_seg, values.shape[1]).index_add_(0, segment, values)
    bounds = row_ptr.tolist()
    return torch.stack([values[lo:hi].sum(0) for lo, hi in zip(bounds[:-1], bounds[1:])]) if n_seg else \
        values.new_zeros(0, values.shape[1])


def sorted_segment_sums(u, row_ptr, segment, v, shift, shift_u, deterministic) -> Tuple[torch.Tensor,
                                                                                      Optional[torch.Tensor]]:
    """See kernels.segment.sorted_segment_sums."""
    a = _acc(u)
    per_row = None if shift is None else _acc(shift).index_select(0, segment)  # [N, C]
    if shift_u and per_row is not None:
        a = a - per_row
    s_a = _sums(a, row_ptr, segment, deterministic)
    if v is None:
        return s_a, None
    b = _acc(v) if per_row is None else _acc(v) - per_row
    return s_a, _sums(a * b, row_ptr, segment, deterministic)


def segment_affine(u, scale, offset, segment, v, v_scale, out_dtype) -> torch.Tensor:
    """See kernels.segment.segment_affine."""
    out = _acc(u) * scale.index_select(0, segment) + offset.index_select(0, segment)
    if v is not None:
        out = out + _acc(v) * v_scale.index_select(0, segment)
    return out.to(out_dtype)
