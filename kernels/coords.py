"""Linear keys, sorting and lookups for integer voxel coordinates (batch, z, y, x)."""
from __future__ import annotations

import itertools
import operator
from typing import Dict, Sequence, Tuple

import torch

from . import backends

INT64_MAX = 2**63 - 1
INT32_LIMIT = 2**31  # coords are stored as int32: every coordinate and the batch index must stay below it

Triple = Tuple[int, int, int]


def as_triple(value, name: str) -> Triple:
    """Turn an int or a sequence of three ints into a (d, h, w) tuple; TypeError/ValueError otherwise."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an int or three ints, got {value!r}")
    try:
        return (operator.index(value),) * 3  # type: ignore[return-value]
    except TypeError:
        pass
    try:
        items = list(value)
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        out = tuple(operator.index(v) for v in items)
    except TypeError:
        raise TypeError(f"{name} must be an int or three ints, got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name} must be an int or three ints (d, h, w), got {value!r}")
    return out  # type: ignore[return-value]


def check_key_range(spatial_shape: Sequence[int], batch_size: int) -> None:
    """Raise ValueError when the largest key, batch_size * D * H * W - 1, does not fit a signed int64."""
    volume = int(batch_size)
    for size in spatial_shape:
        volume *= int(size)
    if volume - 1 > INT64_MAX:
        raise ValueError(
            f"grid {tuple(spatial_shape)} x batch {batch_size} has {volume} cells, "
            f"more than int64 keys can index ({INT64_MAX})"
        )


def linear_keys(coords: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Map coords [N, 4] (b, z, y, x) to int64 keys ((b*D + z)*H + y)*W + x."""
    d, h, w = (int(s) for s in spatial_shape)
    c = coords.to(torch.int64)
    return ((c[:, 0] * d + c[:, 1]) * h + c[:, 2]) * w + c[:, 3]  # [N]


def offset_keys(batch: torch.Tensor, cells: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """int64 keys [N, K] of cells [N, K, 3] (z, y, x) of the samples batch [N] (every offset of every row at once)."""
    d, h, w = (int(s) for s in spatial_shape)
    return ((batch.to(torch.int64)[:, None] * d + cells[..., 0]) * h + cells[..., 1]) * w + cells[..., 2]


def keys_to_coords(keys: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Inverse of linear_keys: int64 keys [N] -> int32 coords [N, 4] (one launch where index kernels run on triton)."""
    if backends.index_kernels_on_triton(keys.device):
        from .triton.kmap_builders import keys_to_coords as triton_keys_to_coords
        return triton_keys_to_coords(keys, spatial_shape)
    d, h, w = (int(s) for s in spatial_shape)
    x = keys % w
    rest = keys // w
    y = rest % h
    rest = rest // h
    z = rest % d
    b = rest // d
    return torch.stack([b, z, y, x], dim=1).to(torch.int32)  # [N, 4]


def sort_by_key(keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sort int64 keys ascending; returns (sorted keys, permutation)."""
    return torch.sort(keys)


def lookup(sorted_keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Index of each query key in sorted_keys, or -1 where it is absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(query, -1)
    pos = torch.searchsorted(sorted_keys, query)  # [Q]
    pos_clamped = pos.clamp_max(sorted_keys.numel() - 1)
    found = sorted_keys[pos_clamped] == query
    return torch.where(found, pos_clamped, torch.full_like(pos, -1))


_CONSTANTS: Dict[tuple, torch.Tensor] = {}


def constant(values, device=None) -> torch.Tensor:
    """An int64 tensor of these (nested) values on device, made once per process and device: a step reuses it
    instead of copying a host list to the device (which waits for the device)."""
    key = (repr(values), str(torch.device(device) if device is not None else "cpu"))
    found = _CONSTANTS.get(key)
    if found is None:
        found = _CONSTANTS[key] = torch.tensor(values, dtype=torch.int64, device=device)
    return found


def kernel_offsets(kernel_size: Triple, device=None) -> torch.Tensor:
    """All kernel positions [K, 3] (kd, kh, kw) in the row-major order of a [kD, kH, kW] weight (do not modify)."""
    key = ("offsets", tuple(int(k) for k in kernel_size), str(torch.device(device) if device is not None else "cpu"))
    found = _CONSTANTS.get(key)
    if found is None:
        grid = list(itertools.product(*(range(k) for k in key[1])))
        found = _CONSTANTS[key] = torch.tensor(grid, dtype=torch.int64, device=device).reshape(-1, 3)
    return found


def conv_output_shape(spatial_shape: Sequence[int], kernel_size: Triple, stride: Triple,
                      padding: Triple, dilation: Triple) -> Triple:
    """Output grid size of a strided convolution, as torch.nn.functional.conv3d computes it."""
    out = tuple(
        (int(n) + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(spatial_shape, kernel_size, stride, padding, dilation)
    )
    return out  # type: ignore[return-value]


NO_FINER_GRID = ("an inverse conv needs a field produced by a strided SparseConv3d (directly or after submanifold "
                 "layers); this field has no finer grid to return to")


def check_inverse_geometry(fine_shape: Sequence[int], coarse_shape: Sequence[int], kernel_size: Triple,
                           stride: Triple, padding: Triple, dilation: Triple) -> None:
    """Raise ValueError unless a strided conv of this geometry maps fine_shape to coarse_shape (the grid an inverse
    conv of the same geometry takes back to fine_shape)."""
    expected = tuple(conv_output_shape(fine_shape, kernel_size, stride, padding, dilation))
    if expected != tuple(coarse_shape):
        raise ValueError(
            f"an inverse conv with kernel {tuple(kernel_size)}, stride {tuple(stride)}, padding {tuple(padding)}, "
            f"dilation {tuple(dilation)} maps grid {tuple(fine_shape)} to {expected}, not to the input's grid "
            f"{tuple(coarse_shape)}: pass the kernel_size/stride/padding/dilation of the strided conv being inverted")


def dilate_coords(coords: torch.Tensor, spatial_shape: Sequence[int], radius: Triple) -> torch.Tensor:
    """All in-grid cells within per-axis radius (a box) of any input cell, unique and key-sorted."""
    return keys_to_coords(torch.unique(dilated_keys(coords, spatial_shape, radius)), spatial_shape)  # one sync


def dilated_keys(coords: torch.Tensor, spatial_shape: Sequence[int], radius: Triple) -> torch.Tensor:
    """Linear keys of the in-grid cells within per-axis radius (a box) of each input cell, repeats kept (no sync)."""
    shape = constant([int(s) for s in spatial_shape], coords.device)
    box = kernel_offsets(tuple(2 * r + 1 for r in radius), coords.device) - constant(list(radius), coords.device)
    c64 = coords.to(torch.int64)
    keys = []
    for rows in row_blocks(c64.shape[0], box.shape[0]):  # every offset at once, rows in bounded blocks
        moved = c64[rows, None, 1:] + box[None]  # [n, K, 3]
        inside = ((moved >= 0) & (moved < shape)).all(dim=2)  # [n, K]
        own = linear_keys(c64[rows], spatial_shape)[:, None]  # a cell outside the grid counts as its input cell
        keys.append(torch.where(inside, offset_keys(c64[rows, 0], moved, spatial_shape), own).reshape(-1))
    return torch.cat(keys) if keys else c64.new_zeros(0)


BLOCK_ENTRIES = 1 << 22  # rows x offsets per block of the vectorised offset loops (about 100 MB of int64 cells)


def row_blocks(rows: int, per_row: int):
    """Slices of at most BLOCK_ENTRIES // per_row rows covering range(rows) (one slice for a usual step)."""
    step = max(1, BLOCK_ENTRIES // max(per_row, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]
