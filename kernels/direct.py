"""One backend's conv and norm kernels called directly, for code that resolves the backend once per block (the
by-hand blocks): none of the entry points' per-call backend resolution and operand checks, whose operands their
callers build themselves (kernels.conv.sparse_conv and kernels.segment.norm_forward are the checked entries)."""
from __future__ import annotations

import functools
from typing import Callable, Dict, NamedTuple, Optional

import torch

from . import backends
from .kernel_map import KernelMap
from .weight_layout import kernel_layout_of, torch_to_kernel_weight


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


_RESOLVED: Dict[tuple, tuple] = {}  # (id(settings), device, dtype) -> (those settings, their Kernels there)


def kernels_for(tensor: torch.Tensor) -> Kernels:
    """The kernels of the backend that runs on tensor under the settings in force (a named backend's resolved once
    per settings, device and dtype: the by-hand blocks ask for every block, every step)."""
    settings = backends.current()
    if settings.backend == "auto":  # resolved on every call: "auto" reads the environment
        return backend_kernels(backends.resolve_backend(settings.backend, tensor), settings)
    key = (id(settings), tensor.device, tensor.dtype)
    found = _RESOLVED.get(key)
    if found is not None and found[0] is settings:  # held here, so its id is not another's
        return found[1]
    kernels = backend_kernels(backends.resolve_backend(settings.backend, tensor), settings)
    if len(_RESOLVED) >= 64:  # settings are made per kernel_settings() block: keep the recent ones
        _RESOLVED.clear()
    _RESOLVED[key] = (settings, kernels)
    return kernels


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
    free = getattr(conv, "autocast_free", False)  # the op calls nothing autocast would cast: no context needed

    def run_layer_conv(feats: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], kmap: KernelMap):
        layout = kernel_layout_of(weight) if in_place else None
        if layout is not None:
            if free:
                return conv.forward_of_param(feats, weight, bias, kmap, settings, layout)
            with backends.autocast_off(feats.device.type):
                return conv.forward_of_param(feats, weight, bias, kmap, settings, layout)
        return run_conv(feats, torch_to_kernel_weight(weight).contiguous(), bias, kmap)

    def run_layer_conv_vjp(feats, weight, has_bias: bool, kmap: KernelMap, grad_out):
        layout = kernel_layout_of(weight) if in_place else None
        if layout is not None:
            if free:
                return conv.backward_of_param(feats, weight, has_bias, kmap, settings, grad_out, layout)
            with backends.autocast_off(feats.device.type):
                return conv.backward_of_param(feats, weight, has_bias, kmap, settings, grad_out, layout)
        packed = torch_to_kernel_weight(weight)
        d_feats, d_packed, d_bias = run_conv_vjp(feats, packed.contiguous(), has_bias, kmap, grad_out, packed.stride())
        # [K, Cin, Cout] back to [Cout, Cin, kD, kH, kW]: the inverse of the view the forward reads
        return d_feats, d_packed.permute(2, 1, 0).reshape(weight.shape), d_bias

    return Kernels(run_conv, run_conv_vjp, run_layer_conv, run_layer_conv_vjp, segment.norm_forward,
                   segment.norm_backward)
