"""Kernel-map builders: submanifold, strided, inverse and generative (children) maps, as neighbour tables.

Every builder works on whole tensors (no loop over rows, no host sync) except where the number of output
sites must be known: strided and children maps read that one count back.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .coords import (Triple, check_inverse_geometry, check_key_range, constant, conv_output_shape, kernel_offsets, keys_to_coords,
                     linear_keys, lookup, offset_keys, row_blocks)
from . import backends
from .kernel_map import KernelMap


TABLE_MAX_CELLS = 1 << 25  # dense lookup tables up to 32M cells (128 MiB of int32); sorted search above


def _padded_keys(coords: torch.Tensor, padded_shape: Sequence[int], margin: Triple) -> torch.Tensor:
    """Keys of coords shifted by margin inside a grid enlarged by margin on every side."""
    shifted = coords.to(torch.int64) + constant([0, *margin], coords.device)
    return linear_keys(shifted, padded_shape)


def submanifold_kmap(coords: torch.Tensor, spatial_shape: Sequence[int], batch_size: int, kernel_size: Triple,
                     dilation: Triple) -> KernelMap:
    """Submanifold map: output sites = input sites; out p reads in p + (k - k//2) * dilation.

    Keys are taken in a grid padded by the kernel radius, so a neighbour's key is the site's key plus a
    constant per offset and neighbours outside the grid fall on padding, where no site is.
    """
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(f"submanifold convolution needs an odd kernel_size, got {kernel_size}")
    device = coords.device
    n = coords.shape[0]
    margin = tuple(d * (k // 2) for k, d in zip(kernel_size, dilation))
    padded = tuple(int(s) + 2 * m for s, m in zip(spatial_shape, margin))
    check_key_range(padded, batch_size)
    identity = centre_offset(kernel_size)
    cells = batch_size * padded[0] * padded[1] * padded[2]
    if cells <= TABLE_MAX_CELLS and backends.index_kernels_on_triton(coords.device):
        from .triton.kmap_builders import submanifold_table
        table = submanifold_table(coords, padded, batch_size, margin, kernel_size, dilation)
        return KernelMap(n, n, table.shape[1], identity, table=table, trusted=True, mirrored=True)
    keys = _padded_keys(coords, padded, margin)  # [N], ascending when coords are key-sorted
    rel = (kernel_offsets(kernel_size, device) - constant([k // 2 for k in kernel_size], device)) \
        * constant(list(dilation), device)  # [K, 3]
    deltas = (rel[:, 0] * padded[1] + rel[:, 1]) * padded[2] + rel[:, 2]  # [K]
    site_of_cell = None
    if cells <= TABLE_MAX_CELLS:
        site_of_cell = torch.full((cells,), -1, dtype=torch.int32, device=device)
        site_of_cell[keys] = torch.arange(n, dtype=torch.int32, device=device)
    table = torch.empty(n, deltas.numel(), dtype=torch.int32, device=device)  # [N, K]
    rows_per_block = max(1, (1 << 24) // max(n, 1))  # bound the [k, N] query block
    for first in range(0, deltas.numel(), rows_per_block):
        query = keys[None, :] + deltas[first:first + rows_per_block, None]  # [k, N]
        found = site_of_cell[query] if site_of_cell is not None else lookup(keys, query)
        table[:, first:first + query.shape[0]] = found.t().to(torch.int32)
    return KernelMap(n, n, deltas.numel(), identity, table=table, trusted=True, mirrored=True)


def centre_offset(kernel_size: Triple) -> int:
    """Row-major index of the centre of an odd kernel (the identity offset of a submanifold map)."""
    kd, kh, kw = kernel_size
    return ((kd // 2) * kh + kh // 2) * kw + kw // 2


def _strided_candidates(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Triple,
                        stride: Triple, padding: Triple, dilation: Triple, batch_size: Optional[int]):
    """Per input and offset, the key in the output grid of the cell it reaches, or -1: ([N, K] int64, grid)."""
    device = coords.device
    out_shape = conv_output_shape(spatial_shape, kernel_size, stride, padding, dilation)
    if any(o <= 0 for o in out_shape):
        raise ValueError(
            f"convolution (kernel {kernel_size}, stride {stride}, padding {padding}, dilation {dilation}) "
            f"leaves no output cell on grid {tuple(spatial_shape)}"
        )
    if batch_size is None:
        batch_size = int(coords[:, 0].max()) + 1 if coords.shape[0] else 1
    check_key_range(out_shape, batch_size)  # padding can make the output grid larger than the input's
    if backends.index_kernels_on_triton(device):
        from .triton.kmap_builders import strided_candidates
        return strided_candidates(coords, kernel_size, stride, padding, dilation, out_shape), out_shape
    c64 = coords.to(torch.int64)
    pad, dil, st, limit = (constant(list(v), device) for v in (padding, dilation, stride, out_shape))
    offsets = kernel_offsets(kernel_size, device)
    blocks = []
    for rows in row_blocks(c64.shape[0], offsets.shape[0]):  # every offset at once, rows in bounded blocks
        num = c64[rows, None, 1:] + pad - offsets[None] * dil  # [n, K, 3] = out * stride when aligned
        q = torch.div(num, st, rounding_mode="floor")
        ok = ((num % st) == 0).all(dim=2) & (num >= 0).all(dim=2) & (q < limit).all(dim=2)  # [n, K]
        blocks.append(torch.where(ok, offset_keys(c64[rows, 0], q, out_shape), -1))
    keys = blocks[0] if len(blocks) == 1 else torch.cat(blocks) if blocks else c64.new_zeros(0, offsets.shape[0])
    return keys, out_shape


def _rows_of_keys(sorted_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """int32 row of each key in sorted_keys, -1 for a key < 0 or absent."""
    if backends.index_kernels_on_triton(keys.device):
        from .triton.kmap_builders import rows_of_keys
        return rows_of_keys(sorted_keys, keys)
    rows = lookup(sorted_keys, keys)
    return torch.where(keys >= 0, rows, -1).to(torch.int32)


def _valid_sorted(keys: torch.Tensor) -> torch.Tensor:
    """The distinct keys >= 0 of keys [N, K], sorted; one host sync (the size of torch.unique's result).

    A miss (-1) is replaced by the largest key, which is a real output cell whenever there is one, so the misses
    need no count of their own; only a result of one key can be a lone -1 (no output at all), checked then."""
    flat = keys.reshape(-1)
    if flat.numel() == 0:
        return flat
    out = torch.unique(torch.where(flat >= 0, flat, flat.max()))  # sorted
    if out.numel() == 1 and int(out[0]) < 0:  # only here: every candidate missed
        return out[:0]
    return out


def strided_kmap(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Triple, stride: Triple,
                 padding: Triple, dilation: Triple,
                 batch_size: Optional[int] = None) -> Tuple[KernelMap, torch.Tensor, Triple]:
    """Regular sparse conv (spconv semantics): outputs = cells whose window holds an input.

    Returns the map, the output coords [M, 4] (key-sorted) and the output grid size.
    """
    kmap, _, out_coords, out_shape, _ = strided_kmap_and_keys(coords, spatial_shape, kernel_size, stride,
                                                              padding, dilation, batch_size)
    return kmap, out_coords, out_shape


def strided_kmap_and_keys(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Triple, stride: Triple,
                          padding: Triple, dilation: Triple, batch_size: Optional[int] = None):
    """strided_kmap's (map, output keys [M] int64 ascending, output coords [M, 4], output grid size), then, given
    batch_size, the output sites per sample as host ints (read with the count: one host read in all), else None."""
    keys, out_shape = _strided_candidates(coords, spatial_shape, kernel_size, stride, padding, dilation,
                                          batch_size)
    counts = None
    if batch_size is None:
        out_keys = _valid_sorted(keys)
    else:
        out_keys, counts = distinct_with_counts(keys, out_shape[0] * out_shape[1] * out_shape[2], batch_size)
    kmap = KernelMap(coords.shape[0], out_keys.numel(), keys.shape[1], table_t=_rows_of_keys(out_keys, keys),
                     trusted=True)
    return kmap, out_keys, keys_to_coords(out_keys, out_shape), out_shape, counts


def distinct_with_counts(keys: torch.Tensor, cells_per_sample: int, batch_size: int):
    """(the distinct keys >= 0 of keys, ascending; how many fall in each sample's key range [b * cells, (b + 1) *
    cells), as host ints) with one host read, which gives both the output size and the per-sample counts."""
    flat = keys.reshape(-1)
    # the sample bounds' constant first, also for no keys: made on this shape's first call, not on the first call
    # that has keys (a later step, where the copy of a host list would wait for the device)
    sample_bounds = constant([b * cells_per_sample for b in range(batch_size + 1)], flat.device)
    if flat.numel() == 0:
        return flat, (0,) * batch_size
    ordered = torch.sort(flat).values
    first = ordered >= 0
    first[1:] &= ordered[1:] != ordered[:-1]
    seen = torch.cumsum(first, 0)  # distinct keys up to each position
    bounds = torch.searchsorted(ordered, sample_bounds)
    totals = torch.cat([seen.new_zeros(1), seen])[bounds].tolist()  # the one host read
    counts = tuple(b - a for a, b in zip(totals[:-1], totals[1:]))
    size = totals[-1]
    # keys past the last sample's range (none from a conv of this grid) land, with the misses, on the spare slot
    out = flat.new_empty(size + 1).scatter_(0, torch.where(first, seen - 1, size).clamp_max(size), ordered)
    return out[:size], counts


def inverse_kmap(fine_coords: torch.Tensor, fine_shape: Sequence[int], coarse_keys: torch.Tensor,
                 coarse_shape: Sequence[int], kernel_size: Triple, stride: Triple, padding: Triple,
                 dilation: Triple, batch_size: Optional[int] = None) -> KernelMap:
    """Transposed conv from a coarse site set back onto a given fine site set (in = coarse, out = fine)."""
    check_inverse_geometry(fine_shape, coarse_shape, kernel_size, stride, padding, dilation)
    keys, out_shape = _strided_candidates(fine_coords, fine_shape, kernel_size, stride, padding, dilation,
                                          batch_size)
    table = _rows_of_keys(coarse_keys, keys)  # [N_fine, K]: the coarse row feeding each fine site
    return KernelMap(coarse_keys.numel(), fine_coords.shape[0], keys.shape[1], table=table, trusted=True)


def children_kmap(coords: torch.Tensor, spatial_shape: Sequence[int], stride: Triple,
                  fine_shape: Optional[Sequence[int]] = None,
                  batch_size: Optional[int] = None) -> Tuple[KernelMap, torch.Tensor, Triple]:
    """Generative upsampling: every child c*stride + j (j < stride) of each site, inside fine_shape.

    Returns the map (offset j of a [s_d, s_h, s_w] kernel), the child coords (key-sorted) and fine_shape.
    """
    if fine_shape is None:
        fine_shape = tuple(int(n) * s for n, s in zip(spatial_shape, stride))
    fine_shape = tuple(int(n) for n in fine_shape)
    device = coords.device
    if batch_size is None:
        batch_size = int(coords[:, 0].max()) + 1 if coords.shape[0] else 1
    check_key_range(fine_shape, batch_size)
    c64 = coords.to(torch.int64)
    st, limit = constant(list(stride), device), constant(list(fine_shape), device)
    child = c64[:, None, 1:] * st + kernel_offsets(stride, device)[None]  # [N, S, 3]
    ok = (child < limit).all(dim=2)
    keys = torch.where(ok, offset_keys(c64[:, 0], child, fine_shape), -1)  # [N, S]
    out_keys = _valid_sorted(keys)
    kmap = KernelMap(coords.shape[0], out_keys.numel(), keys.shape[1], table_t=_rows_of_keys(out_keys, keys),
                     trusted=True)
    return kmap, keys_to_coords(out_keys, fine_shape), fine_shape  # type: ignore[return-value]


def prune(coords: torch.Tensor, keep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep the rows where keep [N] bool is True; returns (kept coords, kept row indices)."""
    if keep.dtype != torch.bool or keep.shape != coords.shape[:1]:
        raise ValueError(f"keep must be a bool tensor of shape [{coords.shape[0]}], got {keep.dtype} {tuple(keep.shape)}")
    rows = torch.nonzero(keep, as_tuple=False).flatten()
    return coords[rows], rows
