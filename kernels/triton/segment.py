"""Triton backend of the sorted-segment sums and affine maps: one launch each, deterministic sums."""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from ..backends import as_dtype
from .launch import cdiv, launch_tuned, next_pow2, out_buffer, pow2_block, row_splits
from .norm_kernels import (norm_apply_kernel, norm_grad_statistics_kernel, norm_input_grad_kernel,
                           norm_statistics_kernel)
from .segment_kernels import segment_affine_kernel, sorted_segment_sums_kernel


def _partials(u, row_ptr, v, shift, shift_u) -> Tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """Per-split column sums [n_split, S, C] of a (and a * b, given v) in fp32, and n_split (see the kernel)."""
    n, channels = u.shape
    n_seg = row_ptr.numel() - 1
    block_c = pow2_block(channels, 16, 128)
    col_tiles = cdiv(channels, block_c)
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


@functools.lru_cache(maxsize=None)
def _norm_constants(channels: int, groups: int):
    """(group size, its power-of-two lanes, the channel tile of the row kernels, their number): once per shape."""
    size = channels // groups
    block_c = pow2_block(channels, 16, 128)
    return size, next_pow2(size), block_c, cdiv(channels, block_c)


# each kernel's constexprs from its launch key (asked on a key's first launch): the key's flags, and its tiles
def _statistics_constants(channels, size, rows_dtype, weight_dtype, center, has_bias, has_mod, block_g) -> dict:
    return dict(CENTER=center, HAS_BIAS=has_bias, MOD=has_mod, BLOCK_G=block_g)


def _row_constants(*key) -> dict:
    """The row kernels' (apply, input gradient): their keys end in (silu, drop, block_c)."""
    silu, drop, block_c = key[-3:]
    return dict(SILU=silu, DROP=drop, BLOCK_C=block_c)


def _grad_statistics_constants(channels, size, grad_dtype, rows_dtype, weight_dtype, center, has_bias, has_mod, silu,
                               drop, block_g) -> dict:
    return dict(CENTER=center, HAS_BIAS=has_bias, MOD=has_mod, SILU=silu, DROP=drop, BLOCK_G=block_g)


def norm_forward(rows, weight, bias, segment, row_ptr, groups: int, center: bool, eps: float, modulation=None,
                 silu: bool = False, dropout: float = 0.0):
    """See kernels.segment.norm_forward: two launches (statistics with the coefficients; the affine map), and one
    for the dropout's seed (drawn from torch's generator, so a checkpoint's recompute draws it again)."""
    n, channels = rows.shape
    n_seg = row_ptr.shape[0] - 1
    size, block_g, block_c, col_tiles = _norm_constants(channels, groups)
    dtype, device = rows.dtype, rows.device
    stats = torch.empty(4, n_seg, channels, dtype=torch.float32, device=device)  # mean, rstd, scale, offset
    has_mod, has_bias, drop = modulation is not None, bias is not None, bool(dropout)
    if n_seg:
        launch_tuned(
            norm_statistics_kernel, (channels, size, dtype, weight.dtype, center, has_bias, has_mod, block_g),
            _statistics_constants, None, (n_seg, groups),
            rows, row_ptr, weight, bias if has_bias else weight, modulation if has_mod else stats, stats,
            n_seg * channels, channels, size, float(eps), modulation.stride()[0] if has_mod else 0)
    out = out_buffer(n, channels, dtype, device)
    seed = torch.randint(0, 2 ** 31 - 1, (1,), device=device) if drop else None
    if n:
        launch_tuned(
            norm_apply_kernel, (channels, dtype, silu, drop, block_c), _row_constants, n, (col_tiles,),
            rows, stats, n_seg * channels, segment, out, seed if drop else stats, float(dropout), n, channels)
    return as_dtype(out, dtype), stats, seed


def norm_backward(grad_y, rows, weight, bias, segment, row_ptr, stats, groups: int, center: bool, modulation=None,
                  silu: bool = False, dropout: float = 0.0, drop_state=None):
    """See kernels.segment.norm_backward: two launches (the gradient's sums with dx's coefficients; dx, with dW and
    db summed over segments by its first row tile)."""
    n, channels = rows.shape
    n_seg = row_ptr.shape[0] - 1
    size, block_g, block_c, col_tiles = _norm_constants(channels, groups)
    dtype, grad_dtype, device = rows.dtype, grad_y.dtype, rows.device
    plane, has_mod, has_bias, drop = n_seg * channels, modulation is not None, bias is not None, bool(dropout)
    # one allocation (each is a dispatch): the work planes (dy_scale, x_scale, offset, and dW's and db's shares per
    # segment), dW, db and the modulation's gradient; zeros where no row writes dW and db
    sizes = (5 * plane, channels, channels, 2 * plane if has_mod else 0)
    work, grad_w, grad_b, grad_mod = (torch.empty if n else torch.zeros)(
        sum(sizes), dtype=torch.float32, device=device).split_with_sizes(sizes)
    grad_mod = grad_mod.view(n_seg, 2 * channels) if has_mod else None
    if n_seg:
        launch_tuned(
            norm_grad_statistics_kernel,
            (channels, size, grad_dtype, dtype, weight.dtype, center, has_bias, has_mod, silu, drop, block_g),
            _grad_statistics_constants, None, (n_seg, groups),
            grad_y, rows, row_ptr, stats, weight, bias if has_bias else weight,
            modulation if has_mod else stats, work, grad_mod if has_mod else work, drop_state if drop else stats,
            float(dropout), plane, channels, size, modulation.stride()[0] if has_mod else 0)
    grad_rows = out_buffer(n, channels, dtype, device)
    if n:
        launch_tuned(
            norm_input_grad_kernel, (channels, grad_dtype, dtype, silu, drop, block_c), _row_constants, n,
            (col_tiles,), grad_y, rows, segment, stats, work, plane, grad_w, grad_b, grad_rows,
            drop_state if drop else stats, float(dropout), n, n_seg, channels)
    return as_dtype(grad_rows, dtype), grad_w, grad_b, grad_mod


def segment_affine(u, scale, offset, segment, v, v_scale, out_dtype) -> torch.Tensor:
    """See kernels.segment.segment_affine."""
    n, channels = u.shape
    out = out_buffer(n, channels, out_dtype, u.device)
    if n:
        block_c = pow2_block(channels, 16, 128)
        segment_affine_kernel[(cdiv(n, 32), cdiv(channels, block_c))](
            u, scale, offset, segment, v if v is not None else u, v_scale if v_scale is not None else scale, out,
            n, channels, HAS_V=v is not None, BLOCK_N=32, BLOCK_C=block_c)
    return out.to(out_dtype)
