"""Kernel maps: the (input row, output row, kernel offset) pairs of sparse convolutions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .coords import (Triple, check_key_range, conv_output_shape, kernel_offsets, keys_to_coords, linear_keys,
                     lookup)


@dataclass(frozen=True)
class KernelMap:
    """Pairs grouped by kernel offset: offset k owns rows offset_ptr[k]:offset_ptr[k+1] of in_idx/out_idx."""

    in_idx: torch.Tensor  # [P] int64 rows of the input features
    out_idx: torch.Tensor  # [P] int64 rows of the output features
    offset_ptr: Tuple[int, ...]  # K + 1 boundaries, on the host
    n_in: int
    n_out: int
    identity_offset: Optional[int] = None  # offset whose pairs are exactly (i, i) for every row

    @property
    def kernel_volume(self) -> int:
        """Number of kernel offsets K."""
        return len(self.offset_ptr) - 1

    @property
    def num_pairs(self) -> int:
        """Total number of (input, output, offset) pairs."""
        return self.offset_ptr[-1]

    def transposed(self) -> "KernelMap":
        """The same pairs with inputs and outputs swapped (what an inverse conv and dX use)."""
        return KernelMap(self.out_idx, self.in_idx, self.offset_ptr, self.n_out, self.n_in, self.identity_offset)

    def pairs_of(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(in_idx, out_idx) of offset k."""
        lo, hi = self.offset_ptr[k], self.offset_ptr[k + 1]
        return self.in_idx[lo:hi], self.out_idx[lo:hi]


def _pack(ins: List[torch.Tensor], outs: List[torch.Tensor], n_in: int, n_out: int,
          identity_offset: Optional[int], device) -> KernelMap:
    counts = [int(t.numel()) for t in ins]
    ptr = [0]
    for c in counts:
        ptr.append(ptr[-1] + c)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    in_idx = torch.cat(ins) if ins else empty
    out_idx = torch.cat(outs) if outs else empty
    return KernelMap(in_idx, out_idx, tuple(ptr), n_in, n_out, identity_offset)


TABLE_MAX_CELLS = 1 << 25  # dense lookup tables up to 32M cells (128 MiB of int32); sorted search above


def _padded_keys(coords: torch.Tensor, padded_shape: Sequence[int], margin: Triple) -> torch.Tensor:
    """Keys of coords shifted by margin inside a grid enlarged by margin on every side."""
    shifted = coords.to(torch.int64) + torch.tensor((0, *margin), device=coords.device)
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
    keys = _padded_keys(coords, padded, margin)  # [N], ascending when coords are key-sorted
    rel = (kernel_offsets(kernel_size, device) - torch.tensor([k // 2 for k in kernel_size], device=device)) \
        * torch.tensor(dilation, device=device)  # [K, 3]
    deltas = (rel[:, 0] * padded[1] + rel[:, 1]) * padded[2] + rel[:, 2]  # [K]
    identity = int(torch.nonzero(deltas == 0)[0])
    cells = batch_size * padded[0] * padded[1] * padded[2]
    table = None
    if cells <= TABLE_MAX_CELLS:
        table = torch.full((cells,), -1, dtype=torch.int32, device=device)
        table[keys] = torch.arange(n, dtype=torch.int32, device=device)
    rows_per_block = max(1, (1 << 24) // max(n, 1))  # bound the [K, N] query block
    ins, outs = [], []
    for first in range(0, deltas.numel(), rows_per_block):
        query = keys[None, :] + deltas[first:first + rows_per_block, None]  # [k, N]
        found = table[query].long() if table is not None else lookup(keys, query)
        k_of, row = torch.nonzero(found >= 0, as_tuple=True)  # sorted by offset, then row
        counts = torch.bincount(k_of, minlength=query.shape[0]).tolist()
        ins.extend(torch.split(found[k_of, row], counts))
        outs.extend(torch.split(row, counts))
    return _pack(list(ins), list(outs), n, n, identity, device)


def _strided_candidates(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Triple,
                        stride: Triple, padding: Triple, dilation: Triple):
    """Per offset: rows of inputs that reach an output cell, and that cell's key in the output grid."""
    device = coords.device
    out_shape = conv_output_shape(spatial_shape, kernel_size, stride, padding, dilation)
    if any(o <= 0 for o in out_shape):
        raise ValueError(
            f"convolution (kernel {kernel_size}, stride {stride}, padding {padding}, dilation {dilation}) "
            f"leaves no output cell on grid {tuple(spatial_shape)}"
        )
    c64 = coords.to(torch.int64)
    pad = torch.tensor(padding, device=device)
    dil = torch.tensor(dilation, device=device)
    st = torch.tensor(stride, device=device)
    limit = torch.tensor(out_shape, device=device)
    rows = torch.arange(coords.shape[0], device=device)
    per_offset = []
    for off in kernel_offsets(kernel_size, device):
        num = c64[:, 1:] + pad - off * dil  # [N, 3] = out * stride when aligned
        ok = ((num % st) == 0).all(dim=1) & (num >= 0).all(dim=1)
        q = torch.div(num, st, rounding_mode="floor")
        ok &= (q < limit).all(dim=1)
        out_keys = linear_keys(torch.cat([c64[ok, :1], q[ok]], dim=1), out_shape)
        per_offset.append((rows[ok], out_keys))
    return per_offset, out_shape


def strided_kmap(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Triple, stride: Triple,
                 padding: Triple, dilation: Triple) -> Tuple[KernelMap, torch.Tensor, Triple]:
    """Regular sparse conv (spconv semantics): outputs = cells whose window holds an input.

    Returns the map, the output coords [M, 4] (key-sorted) and the output grid size.
    """
    per_offset, out_shape = _strided_candidates(coords, spatial_shape, kernel_size, stride, padding, dilation)
    device = coords.device
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    all_keys = torch.cat([k for _, k in per_offset]) if per_offset else empty
    out_keys = torch.unique(all_keys)  # sorted
    ins = [rows for rows, _ in per_offset]
    outs = [lookup(out_keys, keys) for _, keys in per_offset]
    kmap = _pack(ins, outs, coords.shape[0], out_keys.numel(), None, device)
    return kmap, keys_to_coords(out_keys, out_shape), out_shape


def inverse_kmap(fine_coords: torch.Tensor, fine_shape: Sequence[int], coarse_keys: torch.Tensor,
                 coarse_shape: Sequence[int], kernel_size: Triple, stride: Triple, padding: Triple,
                 dilation: Triple) -> KernelMap:
    """Transposed conv from a coarse site set back onto a given fine site set (in = coarse, out = fine)."""
    per_offset, out_shape = _strided_candidates(fine_coords, fine_shape, kernel_size, stride, padding, dilation)
    if tuple(out_shape) != tuple(coarse_shape):
        raise ValueError(
            f"an inverse conv with kernel {kernel_size}, stride {stride}, padding {padding}, dilation {dilation} "
            f"maps grid {tuple(fine_shape)} to {tuple(out_shape)}, not to the input's grid {tuple(coarse_shape)}: "
            "pass the kernel_size/stride/padding/dilation of the strided conv being inverted"
        )
    ins, outs = [], []
    for fine_rows, keys in per_offset:
        coarse_rows = lookup(coarse_keys, keys)
        ok = coarse_rows >= 0
        ins.append(coarse_rows[ok])
        outs.append(fine_rows[ok])
    return _pack(ins, outs, coarse_keys.numel(), fine_coords.shape[0], None, fine_coords.device)


def children_kmap(coords: torch.Tensor, spatial_shape: Sequence[int], stride: Triple,
                  fine_shape: Optional[Sequence[int]] = None) -> Tuple[KernelMap, torch.Tensor, Triple]:
    """Generative upsampling: every child c*stride + j (j < stride) of each site, inside fine_shape.

    Returns the map (offset j of a [s_d, s_h, s_w] kernel), the child coords (key-sorted) and fine_shape.
    """
    if fine_shape is None:
        fine_shape = tuple(int(n) * s for n, s in zip(spatial_shape, stride))
    fine_shape = tuple(int(n) for n in fine_shape)
    device = coords.device
    c64 = coords.to(torch.int64)
    st = torch.tensor(stride, device=device)
    limit = torch.tensor(fine_shape, device=device)
    rows = torch.arange(coords.shape[0], device=device)
    parents, child_keys = [], []
    for off in kernel_offsets(stride, device):
        child = c64[:, 1:] * st + off  # [N, 3]
        ok = (child < limit).all(dim=1)
        parents.append(rows[ok])
        child_keys.append(linear_keys(torch.cat([c64[ok, :1], child[ok]], dim=1), fine_shape))
    all_keys = torch.cat(child_keys) if child_keys else torch.zeros(0, dtype=torch.int64, device=device)
    out_keys = torch.sort(all_keys).values  # children of distinct parents never collide
    outs = [lookup(out_keys, keys) for keys in child_keys]
    kmap = _pack(parents, outs, coords.shape[0], out_keys.numel(), None, device)
    return kmap, keys_to_coords(out_keys, fine_shape), fine_shape  # type: ignore[return-value]


def prune(coords: torch.Tensor, keep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep the rows where keep [N] bool is True; returns (kept coords, kept row indices)."""
    if keep.dtype != torch.bool or keep.shape != coords.shape[:1]:
        raise ValueError(f"keep must be a bool tensor of shape [{coords.shape[0]}], got {keep.dtype} {tuple(keep.shape)}")
    rows = torch.nonzero(keep, as_tuple=False).flatten()
    return coords[rows], rows
