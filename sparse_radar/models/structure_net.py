"""StructureNet: where the scene is, predicted from the radar coarse to fine (sparse structure generation, as in
XCube / TRELLIS): a sparse radar encoder down to a coarse dense grid, then the generative decoder keeps, level by
level, the children whose occupancy logit is > 0. Its finest level is the predicted support."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.coords import dilated_keys, linear_keys, lookup
from ..kernels.kmap_builders import distinct_with_counts
from ..nn.norm import NORM_TYPES
from ..structure import VoxelStructure
from ..voxels import SparseVoxels
from .config import dataclass_from_dict
from .generative import (Generation, GenerativeDecoder, LevelOutput, SparseEncoder, fill_grid, level_settings,
                         level_shapes)


@dataclass
class StructureConfig:
    """Channels per level (finest first), strides between levels (finest first), norm, cap and loss weights."""

    in_channels: int = 4
    channels: Tuple[int, ...] = (16, 32, 48, 64)
    strides: Tuple[Tuple[int, int, int], ...] = ((2, 2, 2), (2, 2, 2), (2, 2, 2))
    norm_type: str = "group"
    num_groups: int = 8
    cap: int = 20000
    dice_weight: float = 1.0

    def __post_init__(self):
        self.channels, self.strides = level_settings("StructureConfig", "channels", self.channels, self.strides)
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"StructureConfig.norm_type: expected one of {', '.join(NORM_TYPES)}, "
                             f"got {self.norm_type!r}")
        if self.cap < 0 or self.dice_weight < 0:
            raise ValueError(f"StructureConfig: cap and dice_weight must be >= 0, got {self.cap}, {self.dice_weight}")

    def to_dict(self) -> dict:
        """Plain dict (JSON and checkpoint safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "StructureConfig":
        """From a dict; unknown keys are an error."""
        return dataclass_from_dict(cls, values, "unknown structure option(s):")


class StructureNet(nn.Module):
    """net(radar, target=None) -> Generation: kept voxels of every level; with target, teacher-forced and labelled."""

    def __init__(self, config: StructureConfig):
        super().__init__()
        if not isinstance(config, StructureConfig):
            raise TypeError(f"StructureNet takes a StructureConfig, got {type(config).__name__}")
        self.config = c = config
        self.encoder = SparseEncoder(c.in_channels, c.channels, c.strides, c.norm_type, c.num_groups)
        self.decoder = GenerativeDecoder(c.channels[-1], c.channels[::-1], c.strides[::-1], 0, c.norm_type,
                                         c.num_groups)

    def check_grid(self, shape) -> None:
        """ValueError unless every stride divides the grid level by level."""
        level_shapes(shape, self.config.strides)

    def forward(self, radar, target: Optional[SparseVoxels] = None, cap: Optional[int] = None) -> Generation:
        """Occupancy logits level by level (coarse first) and the kept finest voxels; cap None: the config's."""
        if radar.num_channels != self.config.in_channels:
            raise ValueError(f"StructureNet expects {self.config.in_channels} radar channels, got {radar.num_channels}")
        feats = self.encoder(radar)  # finest first
        conditions = [None] + feats[-2::-1]  # coarse first; the coarse grid itself starts from feats[-1]
        return self.decoder(fill_grid(feats[-1]), conditions, target, self.config.cap if cap is None else cap)


def occupancy_loss(levels: List[LevelOutput],
                   dice_weight: float = 1.0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Sum over levels of BCE(logits, labels) (mean over candidates) + dice_weight * soft Dice loss (per sample,
    averaged); returns the loss and per-level logs as detached scalars (bce, dice, and the recall of the voxels
    whose logit is > 0), read back only by whoever needs them."""
    total, logs = None, {}
    for i, lv in enumerate(levels):
        if lv.labels is None:
            raise ValueError("occupancy_loss needs labelled levels: pass the target to the network")
        if lv.logits.numel() == 0:
            continue
        dtype = torch.promote_types(lv.logits.dtype, torch.float32)  # halves are scored in fp32
        logits, labels = lv.logits.to(dtype), lv.labels.to(dtype)
        bce = F.binary_cross_entropy_with_logits(logits, labels)
        prob = torch.sigmoid(logits)
        inter = prob.new_zeros(lv.batch_size).index_add_(0, lv.samples, prob * labels)
        both = prob.new_zeros(lv.batch_size).index_add_(0, lv.samples, prob + labels)
        dice = (1 - (2 * inter + 1) / (both + 1)).mean()
        level_loss = bce + dice_weight * dice
        total = level_loss if total is None else total + level_loss
        hit = ((lv.logits > 0) & (lv.labels > 0)).sum()
        logs[f"bce_{i}"], logs[f"dice_{i}"] = bce.detach(), dice.detach()
        logs[f"recall_{i}"] = hit / lv.labels.sum().clamp_min(1)
    if total is None:
        total = torch.zeros((), device=levels[0].logits.device if levels else None)
    return total, logs


def _generate(net: StructureNet, radar: SparseVoxels, cap: Optional[int]):
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net(radar, cap=cap)
    net.train(was_training)
    return out


def _probability_at(generation, support: VoxelStructure) -> SparseVoxels:
    """The finest level's occupancy probability at the support's voxels as one channel in [-1, 1] (2 p - 1), -1 where
    the network did not consider a voxel (dilation, radar voxels outside its candidates)."""
    finest = generation.levels[-1]
    if finest.logits.numel() == 0:  # the network considered no voxel at all
        return SparseVoxels.wrap(torch.full((support.num_voxels, 1), -1.0, device=support.keys.device), support)
    row = lookup(finest.keys, support.keys)
    p = torch.sigmoid(finest.logits.float())
    values = torch.where(row >= 0, 2 * p[row.clamp_min(0)] - 1, torch.full_like(row, -1, dtype=torch.float32))
    return SparseVoxels.wrap(values[:, None], support)


def occupancy_probability(net: StructureNet, radar: SparseVoxels, support: VoxelStructure,
                          cap: Optional[int] = None) -> SparseVoxels:
    """What the structure network believes of each support voxel: its occupancy probability as a channel in
    [-1, 1] (-1 where it did not consider the voxel), for a denoiser's condition on any support."""
    return _probability_at(_generate(net, radar, cap), support.to(radar.device))


def predicted_support(net: StructureNet, radar: SparseVoxels, radius=(0, 0, 0), cap: Optional[int] = None,
                      probability: bool = False):
    """The predicted voxels with the radar's own voxels, dilated by radius (z, y, x); on the radar's device. With
    probability, (that support, occupancy_probability on it) from the same network pass."""
    generation = _generate(net, radar, cap)
    kept = generation.field
    coords = torch.cat([kept.coords, radar.coords]).to(torch.int64)
    shape, b = radar.spatial_shape, radar.batch_size
    keys = dilated_keys(coords, shape, tuple(radius)) if any(radius) else linear_keys(coords, shape)
    # one read for the support's size and its voxels per sample (what a step's per-sample noise draws need)
    keys, counts = distinct_with_counts(keys, shape[0] * shape[1] * shape[2], b)
    support = VoxelStructure.from_keys(keys, shape, b)
    support.cache["host_counts"] = counts
    return (support, _probability_at(generation, support)) if probability else support
