"""Attention cores. Each has a sparse path (q, k, v [N, heads, d] over a SparseVoxels' voxels) and a dense
path (q, k, v [B, heads, d, D, H, W] with a key mask [B, 1, D, H, W] or None) computing the same function."""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional, Sequence

from .attention_dense import (dense_global, dense_height, dense_linear, dense_serialized, dense_topk,
                              dense_window, sdpa, topk_softmax)

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import grouping
from ..kernels.coords import constant
from ..voxels import SparseVoxels

TOPK_QUERY_ELEMENTS = 1 << 22  # scores per query chunk when top-k attention picks its keys (no autograd)
# Global and top-k attention run every sample in one padded call on CUDA (launches do not grow with the batch)
# and one call per sample on the CPU, where that is faster (measured on a tiny-preset step, 2 samples of
# unequal size: global 0.33 s vs 0.43 s, top-k 1.13 s vs 1.27 s). True: one call everywhere (tests).
ALL_SAMPLES_AT_ONCE_ON_CPU = False


def _all_samples_at_once(q: torch.Tensor) -> bool:
    return q.is_cuda or ALL_SAMPLES_AT_ONCE_ON_CPU


def _sample_slices(x: SparseVoxels):
    """(start, end) rows of each sample: tokens are sample-major because coords are key-sorted."""
    ends = torch.cumsum(x.batch_counts(), 0).tolist()
    return list(zip([0] + ends[:-1], ends))


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, buckets: grouping.Buckets,
                      bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention where each token attends to the tokens of its own bucket (padded)."""
    if q.shape[0] == 0:
        return q.clone()
    qg, kg, vg = (t.transpose(1, 2) for t in gather_qkv(q, k, v, buckets))  # each [G, h, L, d]
    out = sdpa(qg, kg, vg, attn_mask=bucket_mask(buckets, bias, qg.dtype))  # [G, h, L, d]
    return grouping.scatter_buckets(out.transpose(1, 2), buckets)


def bucket_mask(buckets: grouping.Buckets, bias: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask of padded buckets: 0 for keys that exist ([G, 1, 1, L]), or the bias [G, h, L, L]
    with the padding's keys at the dtype's most negative value."""
    if bias is None:
        return buckets.key_bias(dtype)
    return bias.to(dtype).masked_fill(~buckets.valid[:, None, None, :], torch.finfo(dtype).min)


def gather_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, buckets: grouping.Buckets):
    """(q, k, v) [N, h, d] each laid out as buckets [G, L, h, d]: one gather when they are the three slices of one
    [N, 3, h, d] projection (an AttentionBlock's), else one each."""
    stacked = _stacked(q, k, v)
    if stacked is None:
        return tuple(grouping.gather_buckets(t, buckets) for t in (q, k, v))
    return grouping.gather_buckets(stacked, buckets).unbind(2)


def _stacked(q, k, v) -> Optional[torch.Tensor]:
    """The [N, 3, h, d] tensor whose unbind(1) is exactly (q, k, v), or None."""
    base = q._base
    if base is None or k._base is not base or v._base is not base or not base.is_contiguous() \
            or base.numel() != 3 * q.numel():
        return None
    stacked = base.view(q.shape[0], 3, *q.shape[1:])
    for i, t in enumerate((q, k, v)):
        part = stacked[:, i]
        if t.shape != part.shape or t.stride() != part.stride() or t.storage_offset() != part.storage_offset():
            return None
    return stacked


def sample_buckets(x: SparseVoxels) -> grouping.Buckets:
    """Each sample's rows as one bucket (cached on the structure; built without a host read where the structure
    knows its per-sample counts and none is empty)."""
    s = x.structure

    def build():
        counts = s.host_counts()
        if counts and min(counts) > 0:
            return grouping.segment_buckets(s.row_ptr(), counts, s.sample_ids())
        return grouping.bucketize(s.sample_ids())
    return s.memo(("buckets", "sample"), build)


class GlobalAttention(nn.Module):
    """`flash`: every active voxel of a sample attends to all of them (SDPA; flash-attn varlen on CUDA)."""

    def sparse(self, q, k, v, x: SparseVoxels) -> torch.Tensor:
        """[N, h, d] outputs."""
        if _takes_flash_attn(q):
            out = _flash_attn_varlen(q, k, v, x)
            if out is not None:
                return out
        split = self.bucketed(q, x)
        if split is not None:  # one padded, masked call
            return grouped_attention(q, k, v, *split)
        outs = [sdpa(*(t[lo:hi].transpose(0, 1)[None] for t in (q, k, v)))[0].transpose(0, 1)
                for lo, hi in _sample_slices(x)]  # one unpadded, unmasked call per sample
        return torch.cat(outs) if outs else q.clone()

    def bucketed(self, q: torch.Tensor, x: SparseVoxels):
        """(buckets, bias None) where sparse() is grouped_attention over them (every sample in one padded call), or
        None where it takes another path (flash-attn's varlen kernel, one call per sample on the CPU)."""
        if _takes_flash_attn(q) or not _all_samples_at_once(q):
            return None
        return sample_buckets(x), None

    def dense(self, q, k, v, mask) -> torch.Tensor:
        """[B, h, d, D, H, W] outputs."""
        return dense_global(q, k, v, mask)


def _takes_flash_attn(q: torch.Tensor) -> bool:
    """Whether global attention on q runs flash-attn's varlen kernel (CUDA halves, flash-attn installed)."""
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_attn_installed()


@functools.lru_cache(maxsize=None)
def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _flash_attn_varlen(q, k, v, x: SparseVoxels):
    """flash-attn's varlen kernel over the per-sample segments (tokens are sample-major), if installed."""
    try:  # optional: the `cuda` extra (pip install 'sparse-radar[cuda]'); without it SDPA runs instead
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    counts = x.batch_counts()
    cu = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=q.device)
    cu[1:] = torch.cumsum(counts, 0)
    longest = int(counts.max()) if counts.numel() else 0
    return flash_attn_varlen_func(q, k, v, cu, cu, longest, longest)


class WindowAttention(nn.Module):
    """`window`: 3D windows of window_size cells, non-cyclic shift, Swin relative-position bias."""

    def __init__(self, num_heads: int, window_size: Sequence[int], shift: Sequence[int] = (0, 0, 0)):
        super().__init__()
        self.window_size, self.shift = tuple(window_size), tuple(shift)
        span = [2 * w - 1 for w in self.window_size]
        self.span = span
        self.bias_table = nn.Parameter(torch.zeros(span[0] * span[1] * span[2], num_heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)

    def sparse(self, q, k, v, x: SparseVoxels) -> torch.Tensor:
        """[N, h, d] outputs."""
        if q.shape[0] == 0:
            return q.clone()
        return grouped_attention(q, k, v, *self.bucketed(q, x))

    def bucketed(self, q: torch.Tensor, x: SparseVoxels):
        """(the windows' buckets, the position bias [G, h, L, L] from the bias table, recorded by autograd where
        grad is on): sparse() is grouped_attention over them."""
        buckets, flat = x.structure.memo(("window", self.window_size, self.shift), lambda: self._windows(x))
        bias = self.bias_table.index_select(0, flat.reshape(-1)).view(*flat.shape, -1).permute(0, 3, 1, 2)
        return buckets, bias

    def _windows(self, x: SparseVoxels):
        """(buckets of the windows, relative-position index [G, L, L] into the bias table)."""
        wid, local = grouping.window_ids(x.coords, x.spatial_shape, self.window_size, self.shift)
        buckets = grouping.bucketize(wid)
        pos = local[buckets.index.clamp_min(0)]  # [G, L, 3]
        rel = pos[:, :, None, :] - pos[:, None, :, :] + constant(list(self.window_size), pos.device) - 1
        return buckets, (rel[..., 0] * self.span[1] + rel[..., 1]) * self.span[2] + rel[..., 2]

    def dense(self, q, k, v, mask) -> torch.Tensor:
        """[B, h, d, D, H, W] outputs."""
        return dense_window(q, k, v, mask, self.window_size, self.shift, self.bias_table, self.span)


class HeightAttention(nn.Module):
    """`height`: attention along Z within each (batch, y, x) column."""

    def sparse(self, q, k, v, x: SparseVoxels) -> torch.Tensor:
        """[N, h, d] outputs."""
        return grouped_attention(q, k, v, *self.bucketed(q, x))

    def bucketed(self, q: torch.Tensor, x: SparseVoxels):
        """(the columns' buckets, no bias): sparse() is grouped_attention over them."""
        return x.structure.memo(("buckets", "column"), lambda: grouping.bucketize(
            grouping.column_ids(x.coords, x.spatial_shape))), None

    def dense(self, q, k, v, mask) -> torch.Tensor:
        """[B, h, d, D, H, W] outputs."""
        return dense_height(q, k, v, mask)


class SerializedAttention(nn.Module):
    """`serialized`: per sample, voxels in z-order attend within consecutive patches of patch_size; with
    shifted=True the cuts move by half a patch (blocks alternate, as PTv3 varies its serialization)."""

    def __init__(self, patch_size: int, shifted: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.offset = patch_size // 2 if shifted else 0

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, offset={self.offset}"

    def sparse(self, q, k, v, x: SparseVoxels) -> torch.Tensor:
        """[N, h, d] outputs."""
        return grouped_attention(q, k, v, *self.bucketed(q, x))

    def bucketed(self, q: torch.Tensor, x: SparseVoxels):
        """(the patches' buckets, no bias): sparse() is grouped_attention over them."""
        return x.structure.memo(("buckets", "patch", self.patch_size, self.offset), lambda: grouping.bucketize(
            grouping.patch_ids(x.coords, self.patch_size, self.offset))), None

    def dense(self, q, k, v, mask) -> torch.Tensor:
        """[B, h, d, D, H, W] outputs, computed on the grid in curve order."""
        return dense_serialized(q, k, v, mask, self.patch_size, self.offset)


class LinearAttention(nn.Module):
    """`linear`: O(N) kernel attention with feature map elu(x) + 1, per sample (Katharopoulos et al. 2020)."""

    def sparse(self, q, k, v, x: SparseVoxels) -> torch.Tensor:
        """[N, h, d] outputs; every sample at once over padded per-sample buckets (no loop over samples)."""
        if q.shape[0] == 0:
            return q.clone()
        buckets = sample_buckets(x)  # [S, L]: rows of each non-empty sample
        keep = buckets.valid[:, :, None, None]
        fq, fk, vv = gather_qkv(q, k, v, buckets)
        fq, fk = F.elu(fq) + 1, (F.elu(fk) + 1) * keep.to(fk.dtype)  # padded keys contribute nothing
        kv = torch.einsum("slhd,slhe->shde", fk, vv)  # [S, h, d, e]
        num = torch.einsum("slhd,shde->slhe", fq, kv)
        den = torch.einsum("slhd,shd->slh", fq, fk.sum(1))[..., None]
        return grouping.scatter_buckets(num / den.clamp_min(1e-6), buckets)

    def dense(self, q, k, v, mask) -> torch.Tensor:
        """[B, h, d, D, H, W] outputs."""
        return dense_linear(q, k, v, mask)


class TopKAttention(nn.Module):
    """`sparse`: each query attends to its topk highest-scoring keys of its sample, in query chunks."""

    def __init__(self, topk: int):
        super().__init__()
        self.topk = topk

    def sparse(self, q, k, v, x: SparseVoxels) -> torch.Tensor:
        """[N, h, d] outputs; memory O(N*topk*d + chunk*L)."""
        if q.shape[0] == 0:
            return q.clone()
        if not _all_samples_at_once(q):
            outs = [topk_softmax(*(t[lo:hi].transpose(0, 1) for t in (q, k, v)), min(self.topk, hi - lo),
                                 TOPK_QUERY_ELEMENTS).transpose(0, 1) for lo, hi in _sample_slices(x)]
            return torch.cat(outs)
        buckets = sample_buckets(x)  # [S, L]
        s, length = buckets.index.shape
        heads, d = q.shape[1:]
        qg, kg, vg = (t.transpose(1, 2).reshape(s * heads, length, d) for t in gather_qkv(q, k, v, buckets))
        per_row = buckets.valid[:, None, :].expand(s, heads, length).reshape(s * heads, length)
        out = topk_softmax(qg, kg, vg, min(self.topk, length), TOPK_QUERY_ELEMENTS, per_row)
        return grouping.scatter_buckets(out.view(s, heads, length, d).transpose(1, 2), buckets)

    def dense(self, q, k, v, mask) -> torch.Tensor:
        """[B, h, d, D, H, W] outputs, the same query chunking over the grid."""
        return dense_topk(q, k, v, mask, self.topk, TOPK_QUERY_ELEMENTS)
