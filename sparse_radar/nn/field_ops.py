"""Small helpers that let a layer treat SparseVoxels and DenseVoxels alike."""
from __future__ import annotations

from typing import Callable, Union

import torch

from ..kernels.segment import expand_segments
from ..voxels import DenseVoxels, SparseVoxels

Field = Union[SparseVoxels, DenseVoxels]


def check_field(x, owner: str) -> None:
    """Raise TypeError unless x is a SparseVoxels or DenseVoxels."""
    if not isinstance(x, (SparseVoxels, DenseVoxels)):
        raise TypeError(f"{owner} takes a SparseVoxels or DenseVoxels, got {type(x).__name__}")


def values(x: Union[Field, torch.Tensor]) -> torch.Tensor:
    """The tensor behind x: feats [N, C] of a sparse field, data [B, C, D, H, W] of a dense one, a tensor itself."""
    if isinstance(x, SparseVoxels):
        return x.feats
    if isinstance(x, DenseVoxels):
        return x.data
    if isinstance(x, torch.Tensor):
        return x
    raise TypeError(f"expected a tensor, SparseVoxels or DenseVoxels, got {type(x).__name__}")


def map_values(x: Field, fn: Callable[[torch.Tensor], torch.Tensor]) -> Field:
    """Apply a channel-wise function to the values; masked dense values stay zero where inactive."""
    if isinstance(x, SparseVoxels):
        return x.replace(fn(x.feats))
    out = fn(x.data)
    if x.mask is not None:
        out = out * x.mask.to(out.dtype)
    return x.replace(out)


def per_sample(x: Union[Field, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample rows [B, C] (or a per-sample vector [B], as one channel) to x's layout: [N, C] for a
    sparse field, [B, C, 1, ..., 1] for a dense field or a tensor."""
    rows = rows[:, None] if rows.dim() == 1 else rows
    if isinstance(x, SparseVoxels):
        return expand_segments(rows, x.structure.sample_ids(), x.structure.row_ptr())
    return rows.reshape(*rows.shape, *([1] * (values(x).dim() - 2)))


def cat_channels(a: Field, b: Field) -> Field:
    """Concatenate two fields on the same voxels along channels (UNet skips)."""
    if isinstance(a, SparseVoxels) and isinstance(b, SparseVoxels):
        if a.structure is not b.structure and not torch.equal(a.structure.keys, b.structure.keys):
            raise ValueError("cat_channels needs two sparse fields on the same voxels")
        return a.replace(torch.cat([a.feats, b.feats], dim=1))
    if isinstance(a, DenseVoxels) and isinstance(b, DenseVoxels):
        if a.spatial_shape != b.spatial_shape:
            raise ValueError(f"cat_channels needs equal grids, got {a.spatial_shape} and {b.spatial_shape}")
        return a.replace(torch.cat([a.data, b.data], dim=1))
    raise TypeError(f"cat_channels needs two fields of one type, got {type(a).__name__} and {type(b).__name__}")


