"""Weight layouts: torch's [Cout, Cin, kD, kH, kW], the kernels' [K, Cin, Cout] and spconv's [Cout, kD, kH, kW,
Cin]."""
from __future__ import annotations

import functools

import torch


def torch_to_kernel_weight(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, kD, kH, kW] (torch layout) -> [K, Cin, Cout] (kernel layout)."""
    cout, cin = weight.shape[:2]
    return weight.reshape(cout, cin, -1).permute(2, 1, 0)


@functools.lru_cache(maxsize=256)
def _kernel_layout_strides(shape: tuple) -> tuple:
    cout, cin, kd, kh, kw = shape
    return (1, cout, kh * kw * cin * cout, kw * cin * cout, cin * cout)


def in_kernel_layout(weight: torch.Tensor) -> bool:
    """Whether a [Cout, Cin, kD, kH, kW] weight's memory is [K, Cin, Cout] contiguous (nn.conv.kernel_layout's),
    so kernels can read it in place, without a view."""
    return kernel_layout_of(weight) is not None


def kernel_layout_of(weight: torch.Tensor):
    """(shape, strides) of a [Cout, Cin, kD, kH, kW] weight whose memory is [K, Cin, Cout] contiguous (see
    in_kernel_layout), else None: its metadata read once (each read is a dispatch), for the kernels to reuse."""
    shape = weight.shape
    if len(shape) != 5:
        return None
    strides = weight.stride()
    return (shape, strides) if strides == _kernel_layout_strides(shape) else None


def to_spconv_weight(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, kD, kH, kW] (torch layout) -> [Cout, kD, kH, kW, Cin] (spconv 2.x layout)."""
    if weight.dim() != 5:
        raise ValueError(f"expected a [Cout, Cin, kD, kH, kW] weight, got shape {tuple(weight.shape)}")
    return weight.permute(0, 2, 3, 4, 1).contiguous()


def from_spconv_weight(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, kD, kH, kW, Cin] (spconv 2.x layout) -> [Cout, Cin, kD, kH, kW] (torch layout)."""
    if weight.dim() != 5:
        raise ValueError(f"expected a [Cout, kD, kH, kW, Cin] weight, got shape {tuple(weight.shape)}")
    return weight.permute(0, 4, 1, 2, 3).contiguous()
