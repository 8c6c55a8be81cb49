"""DepthwiseSubMConv3d: one 3D kernel per channel on the submanifold (groups = channels)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import coords as kc
from ..kernels.backends import autocast_off
from ..kernels.conv import depthwise_conv
from ..voxels import DenseVoxels, SparseVoxels
from .conv import cast_for_compute
from .field_ops import Field, check_field


class DepthwiseSubMConv3d(nn.Module):
    """Submanifold depthwise conv: out[p, c] = sum_k w[c, k] x[p + k - k//2, c]; weight [C, 1, kD, kH, kW]."""

    def __init__(self, channels: int, kernel_size=3, bias: bool = True):
        super().__init__()
        self.channels = channels
        self.kernel_size = kc.as_triple(kernel_size, "kernel_size")
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"DepthwiseSubMConv3d needs an odd kernel_size, got {self.kernel_size}")
        self.weight = nn.Parameter(torch.empty(channels, 1, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(math.prod(self.kernel_size))
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Field) -> Field:
        """Same voxels, same channels."""
        check_field(x, "DepthwiseSubMConv3d")
        if x.num_channels != self.channels:
            raise ValueError(f"DepthwiseSubMConv3d expects {self.channels} channels, got {x.num_channels}")
        values = x.feats if isinstance(x, SparseVoxels) else x.masked_data()
        values, weight, bias = cast_for_compute(values, self.weight, self.bias)
        if isinstance(x, DenseVoxels):
            pad = tuple(k // 2 for k in self.kernel_size)
            with autocast_off(values.device.type):
                out = F.conv3d(values, weight, bias, 1, pad, 1, self.channels)
            return x.replace(out if x.mask is None else out * x.mask.to(out.dtype))
        kmap = x.structure.submanifold_map(self.kernel_size, (1, 1, 1))
        out = depthwise_conv(values, self.weight.reshape(self.channels, -1).t(), kmap)  # [N, C]; fp32 dW
        if self.bias is None:
            return x.replace(out)
        # the bias added in fp32, so its gradient is summed in fp32 (an fp16 sum over every voxel can overflow)
        return x.replace(out + self.bias if out.dtype == self.bias.dtype else (out.float() + self.bias).to(out.dtype))
