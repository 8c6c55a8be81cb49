"""Arithmetic that treats a field (SparseVoxels / DenseVoxels) and a plain tensor alike, for samplers."""
from __future__ import annotations

from typing import Union

import torch

from ..kernels.segment import segment_total
from ..nn.field_ops import values
from ..voxels import DenseVoxels, SparseVoxels

State = Union[torch.Tensor, SparseVoxels, DenseVoxels]


def like(x: State, values: torch.Tensor) -> State:
    """values wrapped like x (same voxels/mask for fields); inactive dense voxels are kept at zero."""
    if isinstance(x, SparseVoxels):
        return x.replace(values)
    if isinstance(x, DenseVoxels):
        return x.replace(values if x.mask is None else values * x.mask.to(values.dtype))
    return values


def batch_size(x: State) -> int:
    """B of a field, or the first dim of a tensor."""
    return x.batch_size if isinstance(x, (SparseVoxels, DenseVoxels)) else x.shape[0]


def randn_like(x: State, generator=None) -> State:
    """Standard normal noise on x's voxels (deterministic given the generator)."""
    v = values(x)
    noise = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device if generator is None
                        else generator.device)
    return like(x, noise.to(v.device))


def per_sample_mean(x: State, values: torch.Tensor) -> torch.Tensor:
    """Mean of values (laid out like x) over each sample's active voxels and channels -> [B]."""
    b = batch_size(x)
    if isinstance(x, SparseVoxels):  # sorted segment sums: no atomics, no host sync (per-sample counts from row_ptr)
        s = x.structure
        count = x.batch_counts().to(values.dtype) * values.shape[1]
        return segment_total(values, s.row_ptr(), s.sample_ids()).sum(1).to(values.dtype) / count.clamp_min(1)
    if isinstance(x, DenseVoxels) and x.mask is not None:
        m = x.mask.to(values.dtype)
        count = m.reshape(b, -1).sum(1) * values.shape[1]
        return (values * m).reshape(b, -1).sum(1) / count.clamp_min(1)
    return values.reshape(b, -1).mean(1)


def has_voxels(x: State) -> torch.Tensor:
    """bool [B]: which samples of x hold at least one active voxel (every sample of a tensor or unmasked field)."""
    b = batch_size(x)
    if isinstance(x, SparseVoxels):
        return x.batch_counts() > 0
    if isinstance(x, DenseVoxels) and x.mask is not None:
        return x.mask.reshape(b, -1).any(1)
    return torch.ones(b, dtype=torch.bool, device=values(x).device)


def nonempty_mean(x: State, per_sample: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample values [B] over the samples of x that hold active voxels (a sample with none is
    skipped; with no such sample the result is a zero that still depends on per_sample, for DDP's backward)."""
    has = has_voxels(x).to(per_sample.dtype)
    return (per_sample * has).sum() / has.sum().clamp_min(1)
