"""Triton backend of the submanifold kernel map: a dense site table of the padded grid, then one lookup launch."""
from __future__ import annotations

from typing import Sequence

import torch

from .kmap_builder_kernels import (invert_table_kernel, keys_to_coords_kernel, rows_of_keys_kernel, site_scatter_kernel,
                                   strided_candidates_kernel, submanifold_table_kernel)
from .launch import cdiv, next_pow2


def submanifold_table(coords: torch.Tensor, padded: Sequence[int], batch_size: int, margin: Sequence[int],
                      kernel_size: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    """int32 [N, K] neighbour table of a submanifold conv on coords [N, 4] (int32, key-sorted), in three launches:
    the -1 fill of the padded grid's site table, the sites' scatter, the lookups."""
    coords = coords.to(torch.int32).contiguous()
    n, k = coords.shape[0], kernel_size[0] * kernel_size[1] * kernel_size[2]
    table = torch.empty(n, k, dtype=torch.int32, device=coords.device)
    if n == 0:
        return table
    site = torch.full((batch_size * padded[0] * padded[1] * padded[2],), -1, dtype=torch.int32, device=coords.device)
    grid_args = (*padded, *margin)
    site_scatter_kernel[(cdiv(n, 256),)](coords, site, n, *grid_args, BLOCK=256)
    submanifold_table_kernel[(cdiv(n, 64),)](coords, site, table, n, *grid_args, *kernel_size, *dilation, k,
                                             BLOCK_N=64, BLOCK_K=next_pow2(k))
    return table


def strided_candidates(coords: torch.Tensor, kernel_size, stride, padding, dilation, out_shape) -> torch.Tensor:
    """int64 [N, K]: the output-grid key each input row reaches through each offset of a strided conv, or -1."""
    coords = coords.to(torch.int32).contiguous()
    n, k = coords.shape[0], kernel_size[0] * kernel_size[1] * kernel_size[2]
    keys = torch.empty(n, k, dtype=torch.int64, device=coords.device)
    if n:
        strided_candidates_kernel[(cdiv(n, 64),)](coords, keys, n, *kernel_size, *stride, *padding, *dilation,
                                                  *out_shape, k, BLOCK_N=64, BLOCK_K=next_pow2(k))
    return keys


def rows_of_keys(sorted_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """int32 row of each key (any shape) in sorted_keys (ascending, distinct), -1 for a key < 0 or absent."""
    keys = keys.contiguous()
    out = torch.empty(keys.shape, dtype=torch.int32, device=keys.device)
    total, m = keys.numel(), sorted_keys.numel()
    if total:
        rows_of_keys_kernel[(cdiv(total, 256),)](sorted_keys.contiguous(), m, keys, out, total,
                                                 max(1, m).bit_length(), BLOCK=256)
    return out


def keys_to_coords(keys: torch.Tensor, spatial_shape) -> torch.Tensor:
    """int32 coords [M, 4] (b, z, y, x) of int64 keys [M] of the grid spatial_shape."""
    out = torch.empty(keys.numel(), 4, dtype=torch.int32, device=keys.device)
    if keys.numel():
        keys_to_coords_kernel[(cdiv(keys.numel(), 256),)](keys.contiguous(), out, keys.numel(),
                                                          *spatial_shape, BLOCK=256)
    return out


def invert_table(table: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Given t[i, k] = j (or -1), the int32 table [n_rows, K] of u[j, k] = i: a -1 fill and one scatter launch."""
    n, k = table.shape
    out = torch.full((n_rows, k), -1, dtype=torch.int32, device=table.device)
    if n and n_rows:
        invert_table_kernel[(cdiv(n, 64),)](table.contiguous(), out, n, k, BLOCK_N=64, BLOCK_K=next_pow2(k))
    return out
