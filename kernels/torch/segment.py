"""Torch backend of the sorted-segment sums and affine maps (the reference for the triton backend)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import backends
from ..backends import accumulation_dtype


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


def _exact() -> bool:
    """Whether the kernel settings ask for deterministic sums."""
    return backends.current().deterministic


def _group_total(per_channel: torch.Tensor, groups: int) -> torch.Tensor:
    """[S, C] -> per-(segment, group) totals broadcast back to their channels, [S, C]."""
    s, c = per_channel.shape
    return per_channel.view(s, groups, c // groups).sum(-1, keepdim=True).expand(s, groups, c // groups).reshape(s, c)


def _count(row_ptr: torch.Tensor, channels: int, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """[S, 1] values per (segment, group): rows (at least 1) x channels per group."""
    return ((row_ptr[1:] - row_ptr[:-1]).clamp_min(1) * (channels // groups)).to(dtype)[:, None]


def norm_forward(rows, weight, bias, segment, row_ptr, groups: int, center: bool, eps: float, modulation=None,
                 silu: bool = False, dropout: float = 0.0):
    """See kernels.segment.norm_forward (two passes: the mean, then the centred squares; the dropout's mask drawn
    from torch's generator and kept for the backward)."""
    n_seg, channels = row_ptr.numel() - 1, rows.shape[1]
    acc = accumulation_dtype(rows.dtype)
    count = _count(row_ptr, channels, groups, acc)
    mean = torch.zeros(n_seg, channels, dtype=acc, device=rows.device)
    if center:
        mean = _group_total(sorted_segment_sums(rows, row_ptr, segment, None, None, False, _exact())[0], groups) / count
    squares = sorted_segment_sums(rows, row_ptr, segment, rows, mean if center else None, center, _exact())[1]
    rstd = torch.rsqrt(_group_total(squares, groups) / count + eps)
    scale = rstd * weight.to(acc)
    offset = -mean * scale if bias is None else bias.to(acc) - mean * scale
    if modulation is not None:  # y * (1 + m) + t per (segment, channel), [m | t] = modulation
        m, t = 1 + modulation[:, :channels].to(acc), modulation[:, channels:].to(acc)
        scale, offset = scale * m, offset * m + t
    y = segment_affine(rows, scale, offset, segment, None, None, acc)
    y = torch.nn.functional.silu(y) if silu else y
    keep = None
    if dropout:
        keep = torch.rand(y.shape, device=y.device) >= dropout
        y = y * keep / (1.0 - dropout)
    return y.to(rows.dtype), torch.stack([mean, rstd, scale, offset]), keep


def norm_backward(grad_y, rows, weight, bias, segment, row_ptr, stats, groups: int, center: bool, modulation=None,
                  silu: bool = False, dropout: float = 0.0, drop_state=None):
    """See kernels.segment.norm_backward."""
    channels = rows.shape[1]
    mean, rstd, fwd_scale, fwd_offset = stats.unbind(0)
    count = _count(row_ptr, channels, groups, mean.dtype)
    w = weight.to(mean.dtype)
    if dropout:  # through the kept mask
        grad_y = _acc(grad_y) * drop_state / (1.0 - dropout)
    if silu:  # through SiLU' of the recomputed affine output y
        y = segment_affine(rows, fwd_scale, fwd_offset, segment, None, None, mean.dtype)
        sig = torch.sigmoid(y)
        grad_y = _acc(grad_y) * sig * (1 + y * (1 - sig))
    raw_dy, raw_dy_xc = sorted_segment_sums(grad_y, row_ptr, segment, rows, mean if center else None, False, _exact())
    m = torch.ones_like(mean) if modulation is None else 1 + modulation[:, :channels].to(mean.dtype)
    sum_dy, dy_xhat = m * raw_dy, m * rstd * raw_dy_xc  # [S, C]: the gradient reaching the norm's output, summed
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * w, means per group
    x_scale = -rstd * rstd * _group_total(w * dy_xhat, groups) / count  # multiplies x
    offset = -mean * x_scale
    if center:
        offset = offset - rstd * _group_total(w * sum_dy, groups) / count
    grad_rows = segment_affine(grad_y, rstd * w * m, offset, segment, rows, x_scale, rows.dtype)
    grad_m = w * rstd * raw_dy_xc + (0.0 if bias is None else bias.to(mean.dtype)) * raw_dy  # sum of dy' * y
    return grad_rows, dy_xhat.sum(0), sum_dy.sum(0), torch.cat([grad_m, raw_dy], dim=1)
