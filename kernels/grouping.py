"""Token groups for attention: window/column/patch ids, z-order codes, and padded buckets."""
from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import torch

from .backends import current, records_graph
from .coords import constant


class Buckets(NamedTuple):
    """Rows grouped into padded buckets: index [G, L] (row or -1), valid [G, L], slot [N], the flat position of
    each row in [G * L] (so scattering back is a gather, with no boolean mask), gather_index [G * L] (the row, or 0
    at padding) and a cache of per-dtype key biases."""

    index: torch.Tensor
    valid: torch.Tensor
    slot: torch.Tensor
    gather_index: torch.Tensor
    cache: dict

    def keep(self, dtype: torch.dtype) -> torch.Tensor:
        """[G * L] 1 at a bucket's rows, 0 at padding, in dtype (made once per dtype)."""
        if ("keep", dtype) not in self.cache:
            self.cache[("keep", dtype)] = self.valid.reshape(-1).to(dtype)
        return self.cache[("keep", dtype)]

    def key_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """[G, 1, 1, L] additive attention bias: 0 at a bucket's rows, the dtype's most negative value at padding
        (made once per dtype, so an attention call converts no boolean mask)."""
        if dtype not in self.cache:
            zero = torch.zeros((), dtype=dtype, device=self.valid.device)
            self.cache[dtype] = torch.where(self.valid, zero, torch.finfo(dtype).min)[:, None, None, :]
        return self.cache[dtype]


def bucketize(group_id: torch.Tensor) -> Buckets:
    """Rows grouped by id into padded buckets, without a loop (one host read: the longest bucket)."""
    n = group_id.numel()
    if n == 0:
        empty = torch.zeros(0, 0, dtype=torch.int64, device=group_id.device)
        none = torch.zeros(0, dtype=torch.int64, device=group_id.device)
        return Buckets(empty, empty.bool(), none, none, {})
    order = torch.argsort(group_id, stable=True)
    sorted_ids = group_id[order]
    first = torch.ones(n, dtype=torch.bool, device=group_id.device)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    group = torch.cumsum(first, 0) - 1  # [N] bucket of each sorted row
    start = torch.cummax(torch.where(first, torch.arange(n, device=group_id.device), 0), 0).values
    slot_sorted = torch.arange(n, device=group_id.device) - start  # [N] place inside its bucket
    stats = torch.stack([group[-1] + 1, slot_sorted.max() + 1]).tolist()  # the one host read: G and L
    groups, length = int(stats[0]), int(stats[1])
    flat = group * length + slot_sorted
    index = torch.full((groups * length,), -1, dtype=torch.int64, device=group_id.device)
    index = index.scatter(0, flat, order).view(groups, length)
    slot = torch.empty_like(flat).scatter_(0, order, flat)  # [N] in row order
    return Buckets(index, index >= 0, slot, index.clamp_min(0).reshape(-1), {})


def segment_buckets(row_ptr: torch.Tensor, counts, segment: torch.Tensor) -> Buckets:
    """Each segment of rows sorted by segment (CSR row_ptr [S + 1], segment ids [N]) as one bucket, given the
    segments' sizes as host ints (every size > 0): no host read. Equals bucketize(segment)."""
    if not counts or min(counts) <= 0:
        raise ValueError(f"segment_buckets needs every segment non-empty, got sizes {tuple(counts)}")
    n, length = segment.numel(), max(counts)
    lane = torch.arange(length, device=row_ptr.device)
    valid = lane[None, :] < (row_ptr[1:] - row_ptr[:-1])[:, None]  # [S, L]
    index = torch.where(valid, row_ptr[:-1, None] + lane[None, :], -1)
    slot = torch.arange(n, device=row_ptr.device) + (segment * length - row_ptr.index_select(0, segment))
    return Buckets(index, valid, slot, index.clamp_min(0).reshape(-1), {})


def window_ids(coords: torch.Tensor, spatial_shape: Sequence[int], window: Sequence[int],
               shift: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Window id per voxel (windows of `window` cells on coords + shift) and the local position [N, 3]."""
    c = coords.to(torch.int64)
    w = constant(list(window), c.device)
    moved = c[:, 1:] + constant(list(shift), c.device)
    win, local = torch.div(moved, w, rounding_mode="floor"), moved % w
    counts = [(int(n) + int(s) + int(k) - 1) // int(k) + 1 for n, s, k in zip(spatial_shape, shift, window)]
    wid = ((c[:, 0] * counts[0] + win[:, 0]) * counts[1] + win[:, 1]) * counts[2] + win[:, 2]
    return wid, local


def column_ids(coords: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Id of each voxel's (batch, y, x) column, so that attention runs along Z."""
    c = coords.to(torch.int64)
    return (c[:, 0] * int(spatial_shape[1]) + c[:, 2]) * int(spatial_shape[2]) + c[:, 3]


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits between the low 21 bits of v (for 3D Morton codes)."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def zorder_codes(coords: torch.Tensor) -> torch.Tensor:
    """3D Morton (z-order) code of (z, y, x) per voxel, int64 [N] (axes up to 2^21)."""
    c = coords.to(torch.int64)
    return (_spread_bits(c[:, 1]) << 2) | (_spread_bits(c[:, 2]) << 1) | _spread_bits(c[:, 3])


def patch_ids(coords: torch.Tensor, patch_size: int, offset: int = 0) -> torch.Tensor:
    """Per sample, voxels in z-order cut into consecutive patches of patch_size: a global patch id [N].

    With an offset the cuts move: the voxel of z-order rank r is in patch (r + offset) // patch_size of its
    sample, so alternating offsets 0 and patch_size // 2 between blocks lets tokens attend across cuts."""
    c = coords.to(torch.int64)
    n = c.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=c.device)
    order = torch.argsort(zorder_codes(c), stable=True)
    order = order[torch.argsort(c[order, 0], stable=True)]  # sample-major, z-order inside a sample
    batch = c[order, 0]
    counts = torch.bincount(batch)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=c.device) - start[batch]
    patch_per_sample = (counts + offset + patch_size - 1) // patch_size
    first_patch = torch.cumsum(patch_per_sample, 0) - patch_per_sample
    ids = torch.empty(n, dtype=torch.int64, device=c.device)
    ids[order] = first_patch[batch] + (rank + offset) // patch_size
    return ids


class _DeterministicGather(torch.autograd.Function):
    """src.index_select(0, index) whose backward sums repeated rows in a fixed order (index_put_ with
    accumulate sorts the indices on CUDA), where index_select's index_add_ would race in atomics."""

    @staticmethod
    def forward(ctx, src, index):
        ctx.save_for_backward(index)
        ctx.rows = src.shape[0]
        return src.index_select(0, index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        out = grad.new_zeros((ctx.rows,) + tuple(grad.shape[1:]))
        return out.index_put_((index,), grad, accumulate=True), None


def gather_rows(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """src.index_select(0, index) [len(index), ...]; with deterministic kernel settings on CUDA, a backward
    that gives the same bits every run (on a CPU index_add_ already does)."""
    if src.is_cuda and current().deterministic and torch.is_grad_enabled() and src.requires_grad:
        return _DeterministicGather.apply(src, index)
    return src.index_select(0, index)


class _BucketGather(torch.autograd.Function):
    """rows [N, ...] -> buckets [G * L, ...]; backward gathers each row's gradient from its one slot (padding slots
    hold row 0 but their gradients are dropped: attention gives them none), with no zeros and no atomics."""

    @staticmethod
    def forward(ctx, src, gather_index, slot):
        ctx.save_for_backward(slot)
        return src.index_select(0, gather_index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (slot,) = ctx.saved_tensors
        return grad.index_select(0, slot), None, None


class _BucketScatter(torch.autograd.Function):
    """buckets [G * L, ...] -> rows [N, ...] (a gather by slot); backward gathers each slot's row gradient, zero at
    padding."""

    @staticmethod
    def forward(ctx, bucketed, gather_index, slot, keep):
        ctx.save_for_backward(gather_index, keep)
        return bucketed.index_select(0, slot)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        gather_index, keep = ctx.saved_tensors
        out = grad.index_select(0, gather_index)
        return out.mul_(keep.reshape(-1, *([1] * (grad.dim() - 1))).to(out.dtype)), None, None, None


def gather_buckets(src: torch.Tensor, buckets: Buckets) -> torch.Tensor:
    """Rows of src [N, ...] laid out as buckets [G, L, ...] (padding holds row 0; its gradient is dropped, so
    attend with padding masked); the backward is one gather, deterministic on every device."""
    g, length = buckets.index.shape
    if not records_graph(src):
        return src.index_select(0, buckets.gather_index).view(g, length, *src.shape[1:])
    return _BucketGather.apply(src, buckets.gather_index, buckets.slot).view(g, length, *src.shape[1:])


def scatter_buckets(bucketed: torch.Tensor, buckets: Buckets) -> torch.Tensor:
    """The inverse of gather_buckets: bucketed [G, L, ...] back to rows [N, ...] (a gather by slot)."""
    if not records_graph(bucketed):
        return bucketed.reshape(-1, *bucketed.shape[2:]).index_select(0, buckets.slot)
    return _BucketScatter.apply(bucketed.reshape(-1, *bucketed.shape[2:]), buckets.gather_index, buckets.slot,
                                buckets.keep(bucketed.dtype))
