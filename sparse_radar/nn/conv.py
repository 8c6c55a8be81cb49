"""SubMConv3d, SparseConv3d, SparseInverseConv3d: one weight, a sparse path and a dense (masked) path."""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import coords as kc
from ..kernels.backends import as_dtype, autocast_off
from ..kernels.conv import sparse_conv, sparse_conv_vjp, torch_to_kernel_weight
from ..voxels import DenseVoxels, SparseVoxels
from .field_ops import check_field

Field = Union[SparseVoxels, DenseVoxels]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def kernel_layout(weight: torch.Tensor) -> torch.Tensor:
    """The values of a [Cout, Cin, kD, kH, kW] weight, same shape, with memory laid out [kD, kH, kW, Cin, Cout]: the
    kernels' [K, Cin, Cout] is then a contiguous view of it (no copy per step)."""
    return weight.permute(2, 3, 4, 1, 0).contiguous().permute(4, 3, 0, 1, 2)


def set_weight_layout(module: nn.Module, layout: str) -> nn.Module:
    """Lay every sparse conv weight of module out for the sparse kernels ("kernel", the default of a new layer) or
    contiguous for conv3d ("torch", what a model run only on dense fields wants); values and Parameters unchanged.
    Call it before an optimizer holds state for the weights."""
    if layout not in ("kernel", "torch"):
        raise ValueError(f"layout must be 'kernel' or 'torch', got {layout!r}")
    for layer in module.modules():
        if isinstance(layer, _SparseConvBase):
            with torch.no_grad():
                w = layer.weight
                w.data = kernel_layout(w.data) if layout == "kernel" else w.data.contiguous()
    return module


def autocast_dtype(device: torch.device):
    """The autocast dtype in force for this device type, or None when autocast is off."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def cast_for_compute(values: torch.Tensor, weight: torch.Tensor, bias):
    """(values, weight, bias) in the autocast dtype when autocast is on, else in the values' dtype."""
    dtype = autocast_dtype(values.device) or values.dtype
    return values.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


class _SparseConvBase(nn.Module):
    """Weight [Cout, Cin, kD, kH, kW] (memory in the kernels' layout, see kernel_layout) and bias [Cout],
    initialised as torch.nn.Conv3d does."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = kc.as_triple(kernel_size, "kernel_size")
        self.stride = kc.as_triple(stride, "stride")
        self.padding = kc.as_triple(padding, "padding")
        self.dilation = kc.as_triple(dilation, "dilation")
        for name in ("kernel_size", "stride", "dilation"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if min(self.padding) < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        self.weight = nn.Parameter(kernel_layout(torch.empty(out_channels, in_channels, *self.kernel_size)))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight and uniform bias, as torch.nn.Conv3d (the same values, whatever the layout)."""
        weight = torch.empty(self.weight.shape, dtype=self.weight.dtype, device=self.weight.device)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        with torch.no_grad():
            self.weight.copy_(weight)
        if self.bias is not None:
            fan_in = self.in_channels * math.prod(self.kernel_size)
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}")

    def forward(self, x: Field) -> Field:
        """Apply the layer to a SparseVoxels (sparse path) or a DenseVoxels (dense path)."""
        check_field(x, type(self).__name__)
        if x.num_channels != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} channels, got {x.num_channels}")
        return self._sparse(x) if isinstance(x, SparseVoxels) else self._dense(x)

    def _cast(self, values: torch.Tensor):
        """(values, weight, bias) in the compute dtype (see cast_for_compute)."""
        return cast_for_compute(values, self.weight, self.bias)

    def _sparse_operands(self, x: SparseVoxels) -> tuple:
        """(feats in the compute dtype, weight [K, Cin, Cout], bias) as the sparse op takes them: the fp32 weight
        and bias, which the op casts inside, so dW and dbias come back in fp32 (an fp16 dW could overflow under a
        GradScaler); in the kernel layout the [K, Cin, Cout] view is contiguous, read in place."""
        feats = as_dtype(x.feats, autocast_dtype(x.feats.device) or x.feats.dtype)
        return feats, torch_to_kernel_weight(self.weight), self.bias

    def _apply_kmap(self, x: SparseVoxels, kmap) -> torch.Tensor:
        return sparse_conv(*self._sparse_operands(x), kmap)  # [N_out, Cout]

    def _dense_conv(self, data: torch.Tensor, padding) -> torch.Tensor:
        data, weight, bias = self._cast(data)
        with autocast_off(data.device.type):
            return F.conv3d(data, weight, bias, self.stride, padding, self.dilation)


class SubMConv3d(_SparseConvBase):
    """Submanifold conv: outputs exactly at the input's active voxels (odd kernel, stride 1, 'same' padding).

    As in spconv, padding is implied ('same'); 0 (the default) and the 'same' value are both accepted.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True):
        ks = kc.as_triple(kernel_size, "kernel_size")
        dil = kc.as_triple(dilation, "dilation")
        if any(k % 2 == 0 for k in ks):
            raise ValueError(f"SubMConv3d needs an odd kernel_size, got {ks}")
        if kc.as_triple(stride, "stride") != (1, 1, 1):
            raise ValueError(f"SubMConv3d keeps the input sites, so stride must be 1, got {stride!r}")
        same = tuple(d * (k // 2) for k, d in zip(ks, dil))
        if kc.as_triple(padding, "padding") not in ((0, 0, 0), same):
            raise ValueError(f"SubMConv3d always pads to keep the grid ('same' = {same}); padding must be 0 or "
                             f"{same}, got {padding!r}")
        super().__init__(in_channels, out_channels, ks, 1, same, dil, bias)

    def _sparse(self, x: SparseVoxels) -> SparseVoxels:
        kmap = x.structure.submanifold_map(self.kernel_size, self.dilation)
        return SparseVoxels.wrap(self._apply_kmap(x, kmap), x.structure)

    def _dense(self, x: DenseVoxels) -> DenseVoxels:
        out = self._dense_conv(x.masked_data(), self.padding)
        if x.mask is not None:
            out = out * x.mask.to(out.dtype)
        return DenseVoxels.wrap(out, x.mask, x.lineage)

    def conv_operands(self, x: Field) -> tuple:
        """(values, weight, bias) as forward(x) hands them to its op, through casts and views autograd records: with
        operand_grads, a backward that never runs the conv (recompute's vjp)."""
        return self._sparse_operands(x) if isinstance(x, SparseVoxels) else self._cast(x.masked_data())

    def operand_grads(self, x: Field, operands: tuple, grad_out: torch.Tensor) -> tuple:
        """The gradients of conv_operands(x) (None for an absent bias) given grad_out, that of forward(x)'s values:
        what the op's backward computes."""
        values, weight, bias = (None if t is None else t.detach() for t in operands)
        if isinstance(x, SparseVoxels):
            kmap = x.structure.submanifold_map(self.kernel_size, self.dilation)
            return sparse_conv_vjp(values, weight, bias, kmap, as_dtype(grad_out, values.dtype))
        if x.mask is not None:
            grad_out = grad_out * x.mask.to(grad_out.dtype)
        with autocast_off(values.device.type):
            return torch.ops.aten.convolution_backward(
                grad_out.to(values.dtype).contiguous(), values, weight, None if bias is None else [bias.shape[0]],
                list(self.stride), list(self.padding), list(self.dilation), False, [0, 0, 0], 1,
                [True, True, bias is not None])


class SparseConv3d(_SparseConvBase):
    """Strided sparse conv (spconv semantics): an output is active where its window holds an active input."""

    def _sparse(self, x: SparseVoxels) -> SparseVoxels:
        kmap, coarse = x.structure.downsample(self.kernel_size, self.stride, self.padding, self.dilation)
        return SparseVoxels.wrap(self._apply_kmap(x, kmap), coarse)

    def _dense(self, x: DenseVoxels) -> DenseVoxels:
        out = self._dense_conv(x.masked_data(), self.padding)
        lineage = x.lineage + ((x.mask, x.spatial_shape),)
        if x.mask is None:
            return DenseVoxels.wrap(out, None, lineage)
        ones = torch.ones(1, 1, *self.kernel_size, dtype=torch.float32, device=out.device)
        hits = F.conv3d(x.mask.to(torch.float32), ones, None, self.stride, self.padding, self.dilation)
        out_mask = hits > 0  # [B, 1, D', H', W']
        return DenseVoxels.wrap(out * out_mask.to(out.dtype), out_mask, lineage)


class SparseInverseConv3d(_SparseConvBase):
    """Inverse of a strided SparseConv3d: back onto that conv's exact input sites (pass the same geometry)."""

    def _sparse(self, x: SparseVoxels) -> SparseVoxels:
        kmap, fine = x.structure.inverse_map(self.kernel_size, self.stride, self.padding, self.dilation)
        return SparseVoxels.wrap(self._apply_kmap(x, kmap), fine)

    def _dense(self, x: DenseVoxels) -> DenseVoxels:
        if not x.lineage:
            raise ValueError(kc.NO_FINER_GRID)
        fine_mask, fine_shape = x.lineage[-1]
        kc.check_inverse_geometry(fine_shape, x.spatial_shape, self.kernel_size, self.stride, self.padding,
                                  self.dilation)
        data, weight, bias = self._cast(x.masked_data())
        size = [(n - 1) * s - 2 * p + d * (k - 1) + 1 for n, s, p, d, k in
                zip(x.spatial_shape, self.stride, self.padding, self.dilation, self.kernel_size)]
        extra = tuple(f - s for f, s in zip(fine_shape, size))
        with autocast_off(data.device.type):
            out = F.conv_transpose3d(data, weight.transpose(0, 1), bias, self.stride, self.padding, extra, 1,
                                     self.dilation)
        if fine_mask is not None:
            out = out * fine_mask.to(out.dtype)
        return DenseVoxels.wrap(out, fine_mask, x.lineage[:-1])

