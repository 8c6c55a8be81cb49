"""Norms with statistics over each sample's active voxels: group, layer, instance, rms, adaptive."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.backends import HALF_DTYPES as HALF
from ..voxels import DenseVoxels, SparseVoxels
from .field_ops import Field, check_field, map_values, per_sample
from .fused_norm import segment_group_norm

NORM_TYPES = ("group", "layer", "instance", "rms", "adaptive")


def group_count(channels: int, num_groups: int) -> int:
    """GroupNorm groups: the largest divisor of channels that is <= num_groups (fewer when channels are few)."""
    return max(g for g in range(1, min(channels, num_groups) + 1) if channels % g == 0)


def _normalize_dense(x: DenseVoxels, groups: int, center: bool, eps: float) -> torch.Tensor:
    """Values of x normalised per sample and channel group over active voxels (no affine), in fp32 for halves."""
    data = x.masked_data()
    data = data.float() if data.dtype in HALF else data
    b, c = data.shape[:2]
    xg = data.reshape(b, groups, c // groups, -1)  # [B, G, C/G, DHW]
    mask = None if x.mask is None else x.mask.reshape(b, 1, 1, -1).to(data.dtype)
    cells = xg.shape[-1] if mask is None else mask.sum(dim=(2, 3))  # [B, 1] or int
    count = (cells.clamp_min(1) if mask is not None else cells) * (c // groups)
    if center:
        mean = xg.sum(dim=(2, 3)) / count  # [B, G]
        xg = xg - mean[:, :, None, None]
        if mask is not None:
            xg = xg * mask
    var = xg.square().sum(dim=(2, 3)) / count
    out = xg * torch.rsqrt(var + eps)[:, :, None, None]
    return out.reshape(data.shape)


def _dense_norm(x: DenseVoxels, groups: int, center: bool, eps: float, weight, bias) -> torch.Tensor:
    """Normalised and affine-mapped values of a dense field, in its dtype; torch's group_norm where no mask."""
    if x.mask is None and center:  # the plain dense model: the op the reference runs
        data = x.data.float() if x.data.dtype in HALF else x.data
        return F.group_norm(data, groups, weight.to(data.dtype), None if bias is None else bias.to(data.dtype),
                            eps).to(x.dtype)
    shape = (1, -1, 1, 1, 1)
    y = _normalize_dense(x, groups, center, eps) * weight.view(shape)
    y = y if bias is None else y + bias.view(shape)
    return (y if x.mask is None else y * x.mask.to(y.dtype)).to(x.dtype)


class VoxelGroupNorm(nn.Module):
    """Normalise over (channel group, active voxels) of each sample, then a per-channel affine."""

    def __init__(self, channels: int, groups: int, center: bool = True, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        self.channels, self.groups, self.center, self.eps = channels, groups, center, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def extra_repr(self) -> str:
        return f"{self.channels}, groups={self.groups}, center={self.center}, eps={self.eps}"

    def forward(self, x: Field) -> Field:
        """Normalised field, same voxels."""
        if isinstance(x, SparseVoxels):
            return self.sparse(x)
        self._check(x)
        return x.replace(_dense_norm(x, self.groups, self.center, self.eps, self.weight, self.bias))

    def sparse(self, x: SparseVoxels, modulation=None, silu: bool = False, dropout: float = 0.0) -> SparseVoxels:
        """The sparse path in one op, optionally followed by y * (1 + scale) + shift per (sample, channel) ([scale |
        shift] = modulation [B, 2C]), then optionally by SiLU, then by dropout of rate `dropout`."""
        self._check(x)
        s = x.structure
        return x.replace(segment_group_norm(x.feats, self.weight, self.bias, s.sample_ids(), s.row_ptr(),
                                            self.groups, self.center, self.eps, modulation, silu, dropout))

    def _check(self, x: Field) -> None:
        check_field(x, type(self).__name__)
        if x.num_channels != self.channels:
            raise ValueError(f"{type(self).__name__} expects {self.channels} channels, got {x.num_channels}")


def norm_and_modulate(norm: nn.Module, x: Field, modulation: torch.Tensor, silu: bool = False,
                      dropout: Optional[nn.Dropout] = None) -> Field:
    """norm(x) * (1 + scale) + shift per (sample, channel) ([scale | shift] = modulation [B, 2C]), then SiLU if
    silu, then the dropout module if given: on the sparse path of a VoxelGroupNorm one op (the modulation folded into
    the norm's affine, SiLU and dropout into its output), else one op after another."""
    if isinstance(norm, VoxelGroupNorm) and isinstance(x, SparseVoxels):
        rate = dropout.p if dropout is not None and dropout.training else 0.0
        return norm.sparse(x, modulation, silu, rate)
    scale, shift = modulation.chunk(2, dim=1)
    h = norm(x)
    s, b = per_sample(h, scale), per_sample(h, shift)
    h = map_values(h, lambda v: v * (1 + s.to(v.dtype)) + b.to(v.dtype))
    h = map_values(h, F.silu) if silu else h
    if dropout is None or not dropout.training or dropout.p == 0:
        return h
    # native_dropout: one kernel each way on every device (F.dropout is three ops on the CPU), as CUDA runs it
    return map_values(h, lambda v: torch.native_dropout(v, dropout.p, True)[0])


def norm_silu(norm: nn.Module, x: Field) -> Field:
    """silu(norm(x)): one op on the sparse path of a VoxelGroupNorm, else the norm and then SiLU."""
    if isinstance(norm, VoxelGroupNorm) and isinstance(x, SparseVoxels):
        return norm.sparse(x, silu=True)
    return map_values(norm(x), F.silu)


def inactive_share(x: Field) -> torch.Tensor:
    """Per sample, the share of grid voxels that are empty [B]: inactive (sparse/masked) or all-zero (unmasked)."""
    cells = float(x.spatial_shape[0] * x.spatial_shape[1] * x.spatial_shape[2])
    if isinstance(x, SparseVoxels):
        row_ptr = x.structure.row_ptr()
        active = (row_ptr[1:] - row_ptr[:-1]).to(torch.float32)
    elif x.mask is not None:
        active = x.mask.reshape(x.batch_size, -1).sum(1).to(torch.float32)
    else:
        active = (x.data != 0).any(dim=1).reshape(x.batch_size, -1).sum(1).to(torch.float32)
    return 1.0 - active / cells


class AdaptiveNorm(nn.Module):
    """Per sample: instance norm when more than `threshold` of its grid is empty, else group norm."""

    def __init__(self, channels: int, num_groups: int, threshold: float = 0.7, eps: float = 1e-5):
        super().__init__()
        self.threshold = threshold
        self.instance = VoxelGroupNorm(channels, channels, eps=eps)
        self.group = VoxelGroupNorm(channels, group_count(channels, num_groups), eps=eps)

    def forward(self, x: Field) -> Field:
        """Instance- or group-normalised per sample."""
        use_instance = inactive_share(x) > self.threshold  # [B]
        a, b = self.instance(x), self.group(x)
        choose = per_sample(x, use_instance[:, None].to(torch.float32)).bool()
        if isinstance(x, SparseVoxels):
            return x.replace(torch.where(choose, a.feats, b.feats))
        return x.replace(torch.where(choose, a.data, b.data))


def build_norm(norm_type: str, channels: int, num_groups: int = 32) -> nn.Module:
    """The norm module for a norm_type of NORM_TYPES."""
    if norm_type == "group":
        return VoxelGroupNorm(channels, group_count(channels, num_groups))
    if norm_type == "layer":
        return VoxelGroupNorm(channels, 1)
    if norm_type == "instance":
        return VoxelGroupNorm(channels, channels)
    if norm_type == "rms":
        return VoxelGroupNorm(channels, 1, center=False, eps=1e-6, bias=False)
    if norm_type == "adaptive":
        return AdaptiveNorm(channels, num_groups)
    raise ValueError(f"unknown norm_type {norm_type!r}; expected one of {', '.join(NORM_TYPES)}")
