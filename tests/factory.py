"""Random voxel fields for tests: a masked dense batch and the same voxels as SparseVoxels."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from sparse_radar import DenseVoxels, SparseVoxels


def random_mask(batch: int, shape: Sequence[int], occupancy, generator: torch.Generator) -> torch.Tensor:
    """bool [B, 1, D, H, W]; occupancy is one share for all samples or one per sample."""
    if not isinstance(occupancy, (list, tuple)):
        occupancy = [occupancy] * batch
    rows = [torch.rand(1, *shape, generator=generator) < p for p in occupancy]
    return torch.stack(rows)


def random_fields(batch: int, channels: int, shape: Sequence[int], occupancy, seed: int = 0,
                  dtype=torch.float32) -> Tuple[SparseVoxels, DenseVoxels]:
    """(SparseVoxels, DenseVoxels with mask) holding the same random features."""
    g = torch.Generator().manual_seed(seed)
    mask = random_mask(batch, shape, occupancy, g)
    data = torch.randn(batch, channels, *shape, generator=g, dtype=dtype) * mask
    dense = DenseVoxels(data, mask)
    return dense.to_sparse(), dense


def gather_dense(data: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Rows [N, C] of a dense [B, C, D, H, W] tensor at coords [N, 4]."""
    c = coords.long()
    return data[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
