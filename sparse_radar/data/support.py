"""Where voxel-space sparse diffusion runs: the support, and the radar/target fields laid on it."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from ..kernels.segment import segment_total
from ..kernels.coords import dilate_coords, linear_keys, lookup
from ..structure import VoxelStructure
from ..voxels import DenseVoxels, SparseVoxels
from .voxelize import EMPTY

SUPPORT_TYPES = ("full", "radar_dilated", "oracle")


def support_structure(kind: str, radar: SparseVoxels, target: SparseVoxels,
                      radius: Sequence[int] = (1, 2, 2)) -> VoxelStructure:
    """full: every grid voxel (the dense equivalent); radar_dilated: radar voxels dilated by per-axis radius
    (z, x, y); oracle: target voxels dilated (an upper bound, for evaluation only)."""
    shape, b = radar.spatial_shape, radar.batch_size
    if kind == "full":
        return VoxelStructure.full(b, shape, radar.device)
    if kind == "radar_dilated":
        coords = dilate_coords(radar.coords, shape, tuple(radius))
    elif kind == "oracle":
        coords = dilate_coords(target.coords, shape, tuple(radius))
    else:
        raise ValueError(f"unknown support {kind!r}; expected one of {', '.join(SUPPORT_TYPES)}")
    return VoxelStructure(coords, linear_keys(coords, shape), shape, b, trusted=True)


def on_support(field: SparseVoxels, support: VoxelStructure) -> SparseVoxels:
    """field's features at the support voxels, EMPTY (-1) on every channel where field has no voxel."""
    return SparseVoxels.wrap(field.values_at(support.keys, EMPTY), support)


def coverage(support: VoxelStructure, target: SparseVoxels) -> torch.Tensor:
    """Per sample, the share of target voxels inside the support [B] (1 where a sample has no target)."""
    inside = lookup(support.keys, target.structure.keys) >= 0
    s = target.structure
    hits = segment_total(inside.float()[:, None], s.row_ptr(), s.sample_ids())[:, 0]
    count = target.batch_counts().float()
    return torch.where(count > 0, hits / count.clamp_min(1), torch.ones_like(count))


def training_fields(kind: str, radar: SparseVoxels, target: SparseVoxels,
                    radius: Sequence[int] = (1, 2, 2)) -> Tuple[SparseVoxels, SparseVoxels, torch.Tensor]:
    """(target on the support, radar condition on the support, coverage [B]) for one batch."""
    support = support_structure(kind, radar, target, radius)
    return on_support(target, support), on_support(radar, support), coverage(support, target)


def on_field_path(field, path: str, support: str):
    """field on the path a model runs (--field): itself on "sparse"; on "dense" the dense field, masked by its
    voxels, or unmasked for the full support (every cell active). A dense field passes through."""
    if path == "sparse" or not isinstance(field, SparseVoxels):
        return field
    dense = field.to_dense()
    return DenseVoxels(dense.data) if support == "full" else dense
