"""Dense paths of the attention cores: q, k, v [B, heads, d, D, H, W], key mask [B, 1, D, H, W] or None.

Inactive keys are excluded with key-padding masks (a large negative score), so at active queries these
compute what the sparse paths compute over the active voxels; outputs at inactive voxels are discarded.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..kernels.backends import current as kernel_settings_now
from ..kernels.coords import kernel_offsets
from ..kernels.grouping import gather_rows, zorder_codes


def sdpa(q, k, v, attn_mask=None) -> torch.Tensor:
    """F.scaled_dot_product_attention; in deterministic kernel settings on CUDA, its math backend (plain
    matmuls and softmax), since the fused backwards may sum in a varying order."""
    if q.is_cuda and kernel_settings_now().deterministic:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel([SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def key_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where a key may be attended, the dtype's most negative value where it may not."""
    zero = torch.zeros((), dtype=dtype, device=valid.device)
    return torch.where(valid, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=valid.device))


def _valid(q: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is not None:
        return mask
    return torch.ones(q.shape[0], 1, *q.shape[3:], dtype=torch.bool, device=q.device)


def dense_global(q, k, v, mask) -> torch.Tensor:
    """Softmax attention over every active voxel of the sample."""
    b, h, d = q.shape[:3]
    flat = lambda t: t.reshape(b, h, d, -1).transpose(2, 3)  # [B, h, L, d]
    bias = None if mask is None else key_bias(mask.reshape(b, 1, 1, -1), q.dtype)
    out = sdpa(flat(q), flat(k), flat(v), attn_mask=bias)
    return out.transpose(2, 3).reshape(q.shape)


def dense_window(q, k, v, mask, window: Sequence[int], shift: Sequence[int], table: torch.Tensor,
                 span: Sequence[int]) -> torch.Tensor:
    """Window attention: the grid padded by `shift` below and to a multiple of the window above."""
    b, h, d = q.shape[:3]
    spatial = q.shape[3:]
    pads = [(s, (-(n + s)) % w) for n, s, w in zip(spatial, shift, window)]
    flat_pad = [p for pair in reversed(pads) for p in pair]  # F.pad order: W, H, D
    padded = [n + lo + hi for n, (lo, hi) in zip(spatial, pads)]
    counts = [p // w for p, w in zip(padded, window)]
    wd, wh, ww = window

    def windows(t):  # [B, c1, c2, Dp, Hp, Wp] -> [B * nWin, c1, L, c2]
        c1, c2 = t.shape[1:3]
        t = t.reshape(b, c1, c2, counts[0], wd, counts[1], wh, counts[2], ww)
        return t.permute(0, 3, 5, 7, 1, 4, 6, 8, 2).reshape(-1, c1, wd * wh * ww, c2)

    qw, kw, vw = (windows(F.pad(t, flat_pad)) for t in (q, k, v))
    valid = windows(F.pad(_valid(q, mask)[:, :, None], flat_pad, value=False))  # [Bn, 1, L, 1]
    pos = kernel_offsets(tuple(window), q.device)  # [L, 3] local positions in window order
    rel = pos[:, None, :] - pos[None, :, :] + torch.tensor(window, device=q.device) - 1
    idx = (rel[..., 0] * span[1] + rel[..., 1]) * span[2] + rel[..., 2]  # [L, L]
    bias = table.index_select(0, idx.reshape(-1)).view(*idx.shape, -1).permute(2, 0, 1).to(q.dtype)  # [h, L, L]
    attn = bias[None] + key_bias(valid.transpose(2, 3), q.dtype)  # [Bn, h, L, L]
    out = sdpa(qw, kw, vw, attn_mask=attn)  # [Bn, h, L, d]
    out = out.reshape(b, counts[0], counts[1], counts[2], h, wd, wh, ww, d)
    out = out.permute(0, 4, 8, 1, 5, 2, 6, 3, 7).reshape(b, h, d, *padded)
    (d0, _), (h0, _), (w0, _) = pads
    return out[..., d0:d0 + spatial[0], h0:h0 + spatial[1], w0:w0 + spatial[2]]


def dense_height(q, k, v, mask) -> torch.Tensor:
    """Attention along Z within each (y, x) column."""
    b, h, d, depth, rows, cols = q.shape
    col = lambda t: t.permute(0, 4, 5, 1, 3, 2).reshape(b * rows * cols, h, depth, d)  # [BHW, h, D, d]
    valid = _valid(q, mask).permute(0, 3, 4, 1, 2).reshape(b * rows * cols, 1, 1, depth)
    out = sdpa(col(q), col(k), col(v), attn_mask=key_bias(valid, q.dtype))
    return out.reshape(b, rows, cols, h, depth, d).permute(0, 3, 5, 4, 1, 2)


def dense_linear(q, k, v, mask) -> torch.Tensor:
    """elu+1 kernel attention with inactive keys' features zeroed."""
    b, h, d = q.shape[:3]
    fq = (F.elu(q) + 1).reshape(b, h, d, -1)
    fk = F.elu(k) + 1
    if mask is not None:
        fk = fk * mask[:, :, None].to(fk.dtype)
    fk = fk.reshape(b, h, d, -1)
    kv = torch.einsum("bhdn,bhen->bhde", fk, v.reshape(b, h, d, -1))
    num = torch.einsum("bhdn,bhde->bhen", fq, kv)
    den = torch.einsum("bhdn,bhd->bhn", fq, fk.sum(-1))
    return (num / den.clamp_min(1e-6)[:, :, None, :]).reshape(q.shape)


def topk_softmax(q, k, v, keep: int, budget: int, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[H, Lq, d]: softmax over each query's `keep` highest-scoring keys (q [H, Lq, d], k, v [H, Lk, d]; H may be
    samples x heads).

    The keys are chosen without autograd, query chunk by query chunk (at most `budget` scores at once), then
    their scores are recomputed from gathered keys: the gradient is the same (top-k passes gradient only to
    the chosen scores) but backward never builds a full [H, Lk, d] key gradient per chunk, which made a grid
    of L cells cost O(L^3). Keys where `valid` ([Lk], or [H, Lk] per row) is False are never attended: where
    a row has fewer valid keys than `keep`, its extra picks get zero weight."""
    heads, length, d = k.shape
    if q.shape[1] == 0 or keep == 0:
        return torch.zeros_like(q)
    scale = 1.0 / math.sqrt(d)
    chunk = max(1, budget // max(1, length * heads))
    with torch.no_grad():
        bias = None if valid is None else key_bias(valid, q.dtype).view(-1 if valid.dim() == 2 else 1, 1, length)
        picks = []
        for start in range(0, q.shape[1], chunk):
            scores = torch.matmul(q[:, start:start + chunk], k.transpose(1, 2))
            picks.append((scores if bias is None else scores + bias).topk(keep, dim=-1).indices)
        local = torch.cat(picks, 1)  # [H, Lq, keep]
        picked_ok = None if valid is None else valid.expand(heads, length).gather(
            1, local.reshape(heads, -1)).view(local.shape)
        idx = local + (torch.arange(heads, device=q.device) * length)[:, None, None]
    # gather_rows, not fancy indexing: its backward is deterministic (index_add_ on CPU, sorted on CUDA)
    kp, vp = (gather_rows(t.reshape(heads * length, d), idx.reshape(-1)).view(*idx.shape, d) for t in (k, v))
    scores = torch.einsum("hqkd,hqd->hqk", kp, q) * scale
    if picked_ok is not None:
        scores = scores.masked_fill(~picked_ok, torch.finfo(scores.dtype).min)
    return torch.einsum("hqk,hqkd->hqd", torch.softmax(scores, dim=-1), vp)


def dense_topk(q, k, v, mask, topk: int, budget: int) -> torch.Tensor:
    """Top-k attention over each sample's active keys, for every cell of the grid (all samples at once)."""
    b, h, d = q.shape[:3]
    flat = lambda t: t.reshape(b * h, d, -1).transpose(1, 2)  # [B*h, L, d]
    qf, kf, vf = flat(q), flat(k), flat(v)
    valid = _valid(q, mask).reshape(b, 1, -1).expand(b, h, -1).reshape(b * h, -1)
    keep = min(topk, int(valid.sum(1).max())) if valid.numel() else 0
    out = topk_softmax(qf, kf, vf, keep, budget, valid)  # [B*h, L, d]
    return out.transpose(1, 2).reshape(q.shape)


def dense_serialized(q, k, v, mask, patch_size: int, offset: int) -> torch.Tensor:
    """Serialized attention on the grid: every cell in z-order, active cells ranked per sample, patches of
    patch_size ranks (moved by offset), softmax within a patch over its active keys."""
    b, h, d = q.shape[:3]
    spatial = q.shape[3:]
    cells = spatial[0] * spatial[1] * spatial[2]
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, device=q.device) for n in spatial), indexing="ij"), -1)
    curve = torch.argsort(zorder_codes(torch.cat([grid.new_zeros(cells, 1), grid.reshape(-1, 3)], 1)))  # [L]
    active = _valid(q, mask).reshape(b, cells)[:, curve]  # [B, L] in curve order
    slot = torch.cumsum(active.long(), 1) - 1 + offset  # [B, L]: position in the sample's patch sequence
    n_patches = (cells + offset + patch_size - 1) // patch_size
    spare = n_patches * patch_size  # one column past the patches, where inactive cells go
    slot = torch.where(active, slot, spare)
    cell_of_slot = torch.full((b, spare + 1), cells, dtype=torch.long, device=q.device)  # cells: a zero token
    cell_of_slot.scatter_(1, slot, curve.expand(b, cells).contiguous())
    cell_of_slot = cell_of_slot[:, :spare]  # [B, nP * P]
    filled = cell_of_slot < cells

    def patches(t):  # [B, h, d, D, H, W] -> [B * nP, h, P, d]
        flat = torch.cat([t.reshape(b, h, d, cells), t.new_zeros(b, h, d, 1)], 3)
        taken = torch.gather(flat, 3, cell_of_slot[:, None, None, :].expand(b, h, d, spare))
        return taken.reshape(b, h, d, n_patches, patch_size).permute(0, 3, 1, 4, 2).reshape(-1, h, patch_size, d)

    keys = key_bias(filled.reshape(b * n_patches, 1, 1, patch_size), q.dtype)
    out = sdpa(patches(q), patches(k), patches(v), attn_mask=keys)  # [B * nP, h, P, d]
    out = out.reshape(b, n_patches, h, patch_size, d).permute(0, 2, 4, 1, 3).reshape(b, h, d, spare)
    full = out.new_zeros(b, h, d, cells + 1)
    full.scatter_(3, cell_of_slot[:, None, None, :].expand(b, h, d, spare), out)  # each active cell once
    return full[..., :cells].reshape(q.shape)
