"""Triton backend of the sorted-segment sums and affine maps: one launch each, deterministic sums."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton

from .launch import out_buffer, pow2_block, row_splits
from .segment_kernels import segment_affine_kernel, sorted_segment_sums_kernel


def sorted_segment_sums(u, row_ptr, segment, v, shift, shift_u, deterministic) -> Tuple[torch.Tensor,
                                                                                      Optional[torch.Tensor]]:
    """See kernels.segment.sorted_segment_sums (always deterministic here)."""
    n, channels = u.shape
    n_seg = row_ptr.numel() - 1
    block_c = pow2_block(channels, 16, 128)
    col_tiles = triton.cdiv(channels, block_c)
    per, n_split = row_splits(n, 32, n_seg * col_tiles)
    sum_a = torch.empty(n_split, n_seg, channels, dtype=torch.float32, device=u.device)
    sum_ab = torch.empty_like(sum_a) if v is not None else sum_a
    if n_seg:
        sorted_segment_sums_kernel[(n_seg, col_tiles, n_split)](
            u, v if v is not None else u, shift.float().contiguous() if shift is not None else u, row_ptr,
            sum_a, sum_ab, n_seg, channels, per, HAS_V=v is not None, HAS_SHIFT=shift is not None,
            SHIFT_U=bool(shift_u and shift is not None), BLOCK_N=32, BLOCK_C=block_c)
    reduce = lambda t: t.sum(0) if n_split > 1 else t[0]
    return reduce(sum_a), (reduce(sum_ab) if v is not None else None)


def segment_affine(u, scale, offset, segment, v, v_scale, out_dtype) -> torch.Tensor:
    """See kernels.segment.segment_affine."""
    n, channels = u.shape
    out = out_buffer(n, channels, out_dtype, u.device)
    if n:
        block_c = pow2_block(channels, 16, 128)
        segment_affine_kernel[(triton.cdiv(n, 32), triton.cdiv(channels, block_c))](
            u, scale, offset, segment, v if v is not None else u, v_scale if v_scale is not None else scale, out,
            n, channels, HAS_V=v is not None, BLOCK_N=32, BLOCK_C=block_c)
    return out.to(out_dtype)
