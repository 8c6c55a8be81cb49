"""Generative upsampling (every child of every active voxel) and pruning, on both field types."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..kernels import coords as kc
from ..kernels.backends import autocast_off
from ..voxels import DenseVoxels, SparseVoxels
from .conv import Field, _SparseConvBase


class GenerativeUpsample(_SparseConvBase):
    """Transposed conv with kernel = stride onto all children of the active voxels: child c*stride + j gets
    W[:, :, j] applied to its parent (the structure grows; prune afterwards). fine_shape clips the children."""

    def __init__(self, in_channels: int, out_channels: int, stride, fine_shape: Optional[Sequence[int]] = None,
                 bias: bool = True):
        st = kc.as_triple(stride, "stride")
        super().__init__(in_channels, out_channels, st, st, 0, 1, bias)
        self.fine_shape = None if fine_shape is None else tuple(int(n) for n in fine_shape)

    def _fine_shape(self, shape) -> tuple:
        return self.fine_shape or tuple(n * s for n, s in zip(shape, self.stride))

    def _sparse(self, x: SparseVoxels) -> SparseVoxels:
        kmap, fine = x.structure.children(self.stride, self._fine_shape(x.spatial_shape))
        return SparseVoxels.wrap(self._apply_kmap(x, kmap), fine)

    def _dense(self, x: DenseVoxels) -> DenseVoxels:
        data, weight, bias = self._cast(x.masked_data())
        with autocast_off(data.device.type):
            out = F.conv_transpose3d(data, weight.transpose(0, 1), bias, self.stride)
        d, h, w = self._fine_shape(x.spatial_shape)
        out = out[:, :, :d, :h, :w]
        if x.mask is None:
            return DenseVoxels.wrap(out, None)
        mask = x.mask
        for dim, s in zip((2, 3, 4), self.stride):
            mask = mask.repeat_interleave(s, dim=dim)
        mask = mask[:, :, :d, :h, :w]
        return DenseVoxels.wrap(out * mask.to(out.dtype), mask)


def keep_where(x: Field, keep: torch.Tensor) -> Field:
    """The field on the voxels where keep is True: keep is bool [N] (sparse) or [B, 1, D, H, W] (dense)."""
    if isinstance(x, SparseVoxels):
        return x.prune(keep)
    if keep.dtype != torch.bool or keep.shape != (x.batch_size, 1) + x.spatial_shape:
        raise ValueError(f"keep must be a bool tensor of shape {(x.batch_size, 1) + x.spatial_shape}, got "
                         f"{keep.dtype} {tuple(keep.shape)}")
    mask = keep if x.mask is None else x.mask & keep
    return DenseVoxels.wrap(x.data * mask.to(x.data.dtype), mask)
