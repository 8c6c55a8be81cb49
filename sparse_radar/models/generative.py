"""Sparse encoder (full resolution -> coarse grid) and generative sparse decoder (coarse grid -> occupied voxels,
coarse to fine: every kept voxel's children get an occupancy logit, those with logit > 0 are kept), on both fields.

Decisions are taken on flat per-candidate vectors in key order ((b, z, y, x) row-major), which a sparse field and
a masked dense field list alike, so the two paths keep the same voxels and are compared value by value."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..kernels.coords import linear_keys, lookup
from ..nn.conv import SparseConv3d, SubMConv3d
from ..nn.field_ops import Field, values
from ..nn.generative import GenerativeUpsample, keep_where
from ..nn.norm import build_norm, norm_silu
from ..structure import VoxelStructure
from ..voxels import DenseVoxels, SparseVoxels

Triple = Tuple[int, int, int]


class ConvBlock(nn.Module):
    """Residual norm-SiLU-SubMConv3d(3) block on the active voxels."""

    def __init__(self, channels: int, norm_type: str = "group", num_groups: int = 8):
        super().__init__()
        self.norm = build_norm(norm_type, channels, num_groups)
        self.conv = SubMConv3d(channels, channels, 3)

    def forward(self, x: Field) -> Field:
        """x + conv(silu(norm(x))), same voxels."""
        h = self.conv(norm_silu(self.norm, x))
        return x.replace(values(x) + values(h))


def conv_blocks(channels: int, depth: int, norm_type: str, num_groups: int) -> nn.Module:
    """One ConvBlock, or depth of them in sequence."""
    if depth == 1:
        return ConvBlock(channels, norm_type, num_groups)
    return nn.Sequential(*(ConvBlock(channels, norm_type, num_groups) for _ in range(depth)))


def level_settings(owner: str, name: str, per_level, strides) -> Tuple[Tuple[int, ...], Tuple[Triple, ...]]:
    """(per-level positive ints, (z, y, x) strides >= 1) of a config, one more level than strides; a ValueError
    naming owner.name or owner.strides otherwise."""
    strides = tuple(tuple(int(v) for v in s) for s in strides)
    if any(len(s) != 3 or min(s) < 1 for s in strides):
        raise ValueError(f"{owner}.strides: need (z, y, x) triples >= 1, got {strides}")
    per_level = tuple(int(v) for v in per_level)
    if len(per_level) != len(strides) + 1 or min(per_level) < 1:
        raise ValueError(f"{owner}.{name}: need {len(strides) + 1} positive ints (one per level), got {per_level}")
    return per_level, strides  # type: ignore[return-value]


def level_shapes(shape: Sequence[int], strides: Sequence[Triple]) -> List[Triple]:
    """Grid of each level, finest first; every stride must divide its level's grid exactly."""
    shapes = [tuple(int(n) for n in shape)]
    for stride in strides:
        if any(n % s for n, s in zip(shapes[-1], stride)):
            raise ValueError(f"grid {shapes[-1]} is not divisible by the stride {tuple(stride)}; pick strides that "
                             f"divide the grid {tuple(shape)} level by level")
        shapes.append(tuple(n // s for n, s in zip(shapes[-1], stride)))
    return shapes  # type: ignore[return-value]


class SparseEncoder(nn.Module):
    """Stem SubMConv3d, then per level a ConvBlock and a strided SparseConv3d (kernel = stride) to the next level.
    Returns the field of every level, finest first (the last is the coarse grid's active cells)."""

    def __init__(self, in_channels: int, channels: Sequence[int], strides: Sequence[Triple], norm_type: str = "group",
                 num_groups: int = 8, depth: int = 1):
        super().__init__()
        if len(channels) != len(strides) + 1:
            raise ValueError(f"need one channel count per level ({len(strides) + 1}), got {tuple(channels)}")
        self.strides = [tuple(s) for s in strides]
        self.stem = SubMConv3d(in_channels, channels[0], 3)
        self.blocks = nn.ModuleList(conv_blocks(c, depth, norm_type, num_groups) for c in channels)
        self.downs = nn.ModuleList(SparseConv3d(channels[i], channels[i + 1], s, s) for i, s in enumerate(strides))

    def forward(self, x: Field) -> List[Field]:
        """Fields of every level, finest first."""
        level_shapes(x.spatial_shape, self.strides)
        h = self.blocks[0](self.stem(x))
        out = [h]
        for down, block in zip(self.downs, self.blocks[1:]):
            h = block(down(h))
            out.append(h)
        return out


def fill_grid(x: Field) -> Field:
    """The field on every cell of its grid (zero where it had no voxel)."""
    if isinstance(x, DenseVoxels):
        return DenseVoxels.wrap(x.masked_data(), None)
    structure = VoxelStructure.full(x.batch_size, x.spatial_shape, x.device)
    return SparseVoxels.wrap(x.values_at(structure.keys), structure)


def candidate_keys(x: Field) -> torch.Tensor:
    """Linear keys of the active voxels, ascending [N]."""
    if isinstance(x, SparseVoxels):
        return x.structure.keys
    if x.mask is None:
        return torch.arange(x.batch_size * x.data[0, 0].numel(), device=x.device)
    return torch.nonzero(x.mask.reshape(-1), as_tuple=False).flatten()


def flat_values(x: Field) -> torch.Tensor:
    """Values at the active voxels in key order [N, C]."""
    if isinstance(x, SparseVoxels):
        return x.feats
    data = x.data.movedim(1, -1).reshape(-1, x.num_channels)  # [B*D*H*W, C]
    return data if x.mask is None else data[x.mask.reshape(-1)]


def add_onto(x: Field, source: Field) -> Field:
    """x plus source's values at x's voxels (source contributes zero where it has no voxel)."""
    if isinstance(x, SparseVoxels):
        return x.replace(x.feats + source.values_at(x.structure.keys).to(x.dtype))
    extra = source.masked_data().to(x.dtype)
    return x.replace(x.data + (extra if x.mask is None else extra * x.mask.to(x.dtype)))


def keep_flat(x: Field, keep: torch.Tensor) -> Field:
    """x on the active voxels whose flat (key-order) keep [N] is True."""
    if isinstance(x, SparseVoxels):
        return keep_where(x, keep)
    full = torch.zeros(x.batch_size * x.data[0, 0].numel(), dtype=torch.bool, device=x.device)
    full[candidate_keys(x)] = keep
    return keep_where(x, full.view(x.batch_size, 1, *x.spatial_shape))


def _warn_capped(dropped: List[torch.Tensor], cap: int) -> None:
    """Say (one host read for all levels) where the cap, not the logits, decided which voxels a generation kept."""
    counts = torch.stack(dropped).tolist() if dropped else []
    for level, count in enumerate(counts):
        if count:
            warnings.warn(f"the cap of {cap} voxels per sample and level dropped {count} voxel(s) with a positive "
                          f"occupancy logit at level {level}; raise it for this grid (--structure_cap, "
                          f"StructureConfig.cap, VAEConfig.cap)", stacklevel=3)


def cap_per_sample(keep: torch.Tensor, scores: torch.Tensor, samples: torch.Tensor, cap: int,
                   forced: Optional[torch.Tensor] = None) -> torch.Tensor:
    """keep [N] limited to the `cap` highest-scoring voxels of each sample; forced voxels always stay."""
    if cap <= 0 or keep.numel() == 0:
        return keep if forced is None else keep | forced
    rank_score = torch.where(keep, scores.float(), torch.full_like(scores, -torch.inf, dtype=torch.float32))
    order = torch.argsort(rank_score, descending=True, stable=True)
    order = order[torch.argsort(samples[order], stable=True)]  # by sample, best first within each sample
    starts = torch.searchsorted(samples[order], samples[order], right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - starts
    out = keep & (rank < cap)
    return out if forced is None else out | forced


def occupancy_keys(coords: torch.Tensor, factor: Triple, level_shape: Triple) -> torch.Tensor:
    """Sorted unique keys, on a level grid, of the cells (coords // factor) that hold a voxel of coords [N, 4]."""
    f = torch.tensor((1,) + tuple(factor), device=coords.device, dtype=torch.int64)
    return torch.unique(linear_keys(coords.to(torch.int64) // f, level_shape))


@dataclass
class LevelOutput:
    """One decoder level's candidates in key order: logits [N], labels [N] (float, or None), sample ids [N] of a
    batch of batch_size, which of them were kept (bool [N]), and their linear keys on the level's grid [N]."""

    logits: torch.Tensor
    labels: Optional[torch.Tensor]
    samples: torch.Tensor
    keep: torch.Tensor
    batch_size: int
    keys: Optional[torch.Tensor] = None


@dataclass
class Generation:
    """The decoded field on the kept voxels of the finest level, and every level's candidates."""

    field: Field
    levels: List[LevelOutput]


class GenerativeDecoder(nn.Module):
    """Coarse grid features -> kept voxels at full resolution (strides coarse to fine), with out_channels values."""

    def __init__(self, in_channels: int, channels: Sequence[int], strides: Sequence[Triple], out_channels: int = 0,
                 norm_type: str = "group", num_groups: int = 8, depth: int = 1,
                 coarse_module: Optional[nn.Module] = None):
        super().__init__()
        if len(channels) != len(strides) + 1:
            raise ValueError(f"need one channel count per level ({len(strides) + 1}), got {tuple(channels)}")
        self.strides = [tuple(s) for s in strides]
        self.stem = SubMConv3d(in_channels, channels[0], 3)
        self.coarse = coarse_module if coarse_module is not None else nn.Identity()  # e.g. attention on the grid
        self.blocks = nn.ModuleList(conv_blocks(c, depth, norm_type, num_groups) for c in channels)
        self.heads = nn.ModuleList(SubMConv3d(c, 1, 1) for c in channels)
        self.ups = nn.ModuleList(GenerativeUpsample(channels[i], channels[i + 1], s) for i, s in enumerate(strides))
        self.out = SubMConv3d(channels[-1], out_channels, 1) if out_channels else None

    def forward(self, coarse: Field, conditions: Optional[Sequence[Optional[Field]]] = None,
                target: Optional[SparseVoxels] = None, cap: int = 0, keep_logit: float = 0.0) -> Generation:
        """Decode coarse (its active cells are the first candidates). conditions: per level (coarse first) a field
        added at the candidates; target: full-resolution voxels kept at every level (teacher forcing) and the
        labels of the logits; cap: most voxels kept per sample and level (0: no cap); keep_logit: a candidate is
        kept where its occupancy logit exceeds it (0: probability 1/2)."""
        n_levels = len(self.blocks)
        conditions = list(conditions) if conditions is not None else [None] * n_levels
        if len(conditions) != n_levels:
            raise ValueError(f"need one condition (or None) per level ({n_levels}), got {len(conditions)}")
        factors = self._factors()
        h = self.coarse(self.stem(coarse))
        levels, dropped = [], []
        for i, block in enumerate(self.blocks):
            if conditions[i] is not None:
                h = add_onto(h, conditions[i])
            h = block(h)
            logits = flat_values(self.heads[i](h))[:, 0]
            keys = candidate_keys(h)
            samples = keys // (h.spatial_shape[0] * h.spatial_shape[1] * h.spatial_shape[2])
            labels = forced = None
            if target is not None:
                gt = occupancy_keys(target.coords, factors[i], h.spatial_shape)
                forced = lookup(gt, keys) >= 0
                labels = forced.to(logits.dtype)
            above = logits > keep_logit
            keep = cap_per_sample(above, logits.detach(), samples, cap, forced)
            if target is None and cap > 0:  # generating: counted on the device, read once after the last level
                dropped.append((above & ~keep).sum())
            levels.append(LevelOutput(logits, labels, samples, keep, h.batch_size, keys))
            h = keep_flat(h, keep)
            if dropped and isinstance(h, SparseVoxels) and h.num_voxels < cap:
                dropped.pop()  # the batch kept fewer than one sample's cap: no sample reached it, none dropped
            if i < len(self.ups):
                h = self.ups[i](h)
        if self.out is not None:
            h = self.out(h)
        _warn_capped(dropped, cap)
        return Generation(h, levels)

    def _factors(self) -> List[Triple]:
        """Per level (coarse first), how many full-resolution voxels one cell spans on each axis."""
        factors = [(1, 1, 1)]
        for stride in reversed(self.strides):
            factors.append(tuple(f * s for f, s in zip(factors[-1], stride)))
        return list(reversed(factors))  # type: ignore[return-value]
