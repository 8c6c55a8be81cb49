"""Triton backend of the sorted-segment sums and affine maps: one launch each, deterministic sums."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton

from .launch import out_buffer, pow2_block, row_splits
from .norm_kernels import group_mean_kernel, norm_backward_coefficients_kernel, norm_coefficients_kernel
from .segment_kernels import segment_affine_kernel, sorted_segment_sums_kernel


def _partials(u, row_ptr, v, shift, shift_u) -> Tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """Per-split column sums [n_split, S, C] of a (and a * b, given v) in fp32, and n_split (see the kernel)."""
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
    return sum_a, (sum_ab if v is not None else None), n_split


def sorted_segment_sums(u, row_ptr, segment, v, shift, shift_u, deterministic) -> Tuple[torch.Tensor,
                                                                                      Optional[torch.Tensor]]:
    """See kernels.segment.sorted_segment_sums (always deterministic here)."""
    sum_a, sum_ab, n_split = _partials(u, row_ptr, v, shift, shift_u)
    reduce = lambda t: t.sum(0) if n_split > 1 else t[0]
    return reduce(sum_a), (reduce(sum_ab) if v is not None else None)


def norm_forward(rows, weight, bias, segment, row_ptr, groups: int, center: bool, eps: float, mod_scale=None,
                 mod_shift=None):
    """See kernels.segment.norm_forward: five launches (sums, mean, centred squares, coefficients, affine)."""
    n, channels = rows.shape
    n_seg, size = row_ptr.numel() - 1, channels // groups
    block = triton.next_power_of_2(size)
    stats = lambda: torch.empty(n_seg, channels, dtype=torch.float32, device=rows.device)
    mean, rstd, scale, offset = stats(), stats(), stats(), stats()
    if center:
        part, _, n_split = _partials(rows, row_ptr, None, None, False)
        group_mean_kernel[(n_seg, groups)](part, row_ptr, mean, n_split, n_seg, channels, size, BLOCK_G=block)
    _, squares, n_split = _partials(rows, row_ptr, rows, mean if center else None, center)
    norm_coefficients_kernel[(n_seg, groups)](
        squares, row_ptr, mean, weight, bias if bias is not None else weight,
        mod_scale if mod_scale is not None else mean, mod_shift if mod_shift is not None else mean, rstd, scale,
        offset, n_split, n_seg, channels, size, float(eps), CENTER=center, HAS_BIAS=bias is not None,
        MOD=mod_scale is not None, BLOCK_G=block)
    return segment_affine(rows, scale, offset, segment, None, None, rows.dtype), mean, rstd


def norm_backward(grad_y, rows, weight, bias, segment, row_ptr, mean, rstd, groups: int, center: bool,
                  mod_scale=None):
    """See kernels.segment.norm_backward: three launches (sums; coefficients with dW, db and the modulation's
    gradients; the affine map)."""
    channels = rows.shape[1]
    n_seg, size = row_ptr.numel() - 1, channels // groups
    sum_dy, sum_dyxc, n_split = _partials(grad_y, row_ptr, rows, mean if center else None, False)
    stats = lambda: torch.empty(n_seg, channels, dtype=torch.float32, device=rows.device)
    dy_scale, x_scale, offset, grad_m, grad_t = stats(), stats(), stats(), stats(), stats()
    grad_w = torch.empty(channels, dtype=torch.float32, device=rows.device)
    grad_b = torch.empty_like(grad_w)
    norm_backward_coefficients_kernel[(groups,)](
        sum_dy, sum_dyxc, row_ptr, mean, rstd, weight, bias if bias is not None else weight,
        mod_scale if mod_scale is not None else mean, dy_scale, x_scale, offset, grad_w, grad_b, grad_m, grad_t,
        n_split, n_seg, channels, size, CENTER=center, HAS_BIAS=bias is not None, MOD=mod_scale is not None,
        BLOCK_G=triton.next_power_of_2(size))
    grad_rows = segment_affine(grad_y, dy_scale, offset, segment, rows, x_scale, rows.dtype)
    return (grad_rows, grad_w, grad_b) + ((grad_m, grad_t) if mod_scale is not None else (None, None))


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
