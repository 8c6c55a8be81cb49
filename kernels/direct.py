"""One backend's conv and norm kernels called directly, for code that resolves the backend once per block (the
by-hand blocks): none of the entry points' per-call backend resolution and operand checks, whose operands their
callers build themselves (kernels.conv.sparse_conv and kernels.segment.norm_forward are the checked entries)."""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import torch

from . import backends
from .kernel_map import KernelMap
from .weight_layout import in_kernel_layout, torch_to_kernel_weight


class Kernels(NamedTuple):
    """A backend's kernels, without autograd: conv(feats, weight [K, Cin, Cout], bias, kmap) -> [N_out, Cout];
    conv_vjp(feats, weight, has_bias, kmap, grad_out, layout) -> (dfeats, dweight in layout, dbias); layer_conv and
    layer_conv_vjp the same of a layer's torch-layout weight [Cout, Cin, kD, kH, kW] (dweight in its shape and
    strides); norm_forward and norm_backward as kernels.segment's (modulation columns adjacent, rows contiguous)."""

    conv: Callable
    conv_vjp: Callable
    layer_conv: Callable
    layer_conv_vjp: Callable
    norm_forward: Callable
    norm_backward: Callable


def kernels_for(tensor: torch.Tensor) -> Kernels:
    """The kernels of the backend that runs on tensor under the settings in force."""
    settings = backends.current()
    return backend_kernels(backends.resolve_backend(settings.backend, tensor), settings)


@functools.lru_cache(maxsize=16)
def backend_kernels(name: str, settings: backends.KernelSettings) -> Kernels:
    """The kernels of the backend called name, under settings (made once per pair)."""
    conv, segment = backends.op(name, "conv"), backends.op(name, "segment")

    def run_conv(feats: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], kmap: KernelMap):
        with backends.autocast_off(feats.device.type):  # the op's own precision, as sparse_conv
            return conv.forward_of(feats, weight, bias, kmap, settings)

    def run_conv_vjp(feats, weight, has_bias: bool, kmap: KernelMap, grad_out, layout):
        with backends.autocast_off(feats.device.type):
            return conv.backward_of(feats, weight, has_bias, kmap, settings, grad_out, layout=layout)

    in_place = hasattr(conv, "forward_of_param")  # the backend reads a weight in kernel layout without a view

    def run_layer_conv(feats: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], kmap: KernelMap):
        if in_place and in_kernel_layout(weight):
            with backends.autocast_off(feats.device.type):
                return conv.forward_of_param(feats, weight, bias, kmap, settings)
        return run_conv(feats, torch_to_kernel_weight(weight).contiguous(), bias, kmap)

    def run_layer_conv_vjp(feats, weight, has_bias: bool, kmap: KernelMap, grad_out):
        if in_place and in_kernel_layout(weight):
            with backends.autocast_off(feats.device.type):
                return conv.backward_of_param(feats, weight, has_bias, kmap, settings, grad_out)
        packed = torch_to_kernel_weight(weight)
        d_feats, d_packed, d_bias = run_conv_vjp(feats, packed.contiguous(), has_bias, kmap, grad_out, packed.stride())
        # [K, Cin, Cout] back to [Cout, Cin, kD, kH, kW]: the inverse of the view the forward reads
        return d_feats, d_packed.permute(2, 1, 0).reshape(weight.shape), d_bias

    return Kernels(run_conv, run_conv_vjp, run_layer_conv, run_layer_conv_vjp, segment.norm_forward,
                   segment.norm_backward)
