"""One backend's conv and norm kernels called directly, for code that resolves the backend once per block (the
by-hand blocks): none of the entry points' per-call backend resolution and operand checks, whose operands their
callers build themselves (kernels.conv.sparse_conv and kernels.segment.norm_forward are the checked entries)."""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import torch

from . import backends
from .kernel_map import KernelMap


class Kernels(NamedTuple):
    """A backend's kernels, without autograd: conv(feats, weight [K, Cin, Cout], bias, kmap) -> [N_out, Cout];
    conv_vjp(feats, weight, has_bias, kmap, grad_out, layout) -> (dfeats, dweight in layout, dbias); norm_forward
    and norm_backward as kernels.segment's (modulation columns adjacent, rows contiguous)."""

    conv: Callable
    conv_vjp: Callable
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

    return Kernels(run_conv, run_conv_vjp, segment.norm_forward, segment.norm_backward)
