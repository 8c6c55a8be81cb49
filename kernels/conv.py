"""Sparse convolution: one entry point that checks its inputs and dispatches to a backend (the weight layouts
they read are kernels.weight_layout's, also importable from here)."""
from __future__ import annotations

from typing import Optional

import torch

from . import backends
from .direct import backend_kernels
from .kernel_map import KernelMap
from .weight_layout import from_spconv_weight, in_kernel_layout, to_spconv_weight, torch_to_kernel_weight

__all__ = ["sparse_conv", "sparse_conv_vjp", "depthwise_conv", "torch_to_kernel_weight", "in_kernel_layout",
           "to_spconv_weight", "from_spconv_weight"]


def sparse_conv(feats: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], kmap: KernelMap,
                settings: Optional[backends.KernelSettings] = None) -> torch.Tensor:
    """Sparse convolution of feats [N_in, Cin] with weight [K, Cin, Cout] over kmap -> [N_out, Cout] (a contiguous
    weight is read in place; another layout is copied once per call)."""
    if feats.dim() != 2 or feats.shape[0] != kmap.n_in:
        raise ValueError(f"feats must be [{kmap.n_in}, Cin] for this kernel map, got {tuple(feats.shape)}")
    if weight.dim() != 3 or weight.shape[0] != kmap.kernel_volume or weight.shape[1] != feats.shape[1]:
        raise ValueError(f"weight must be [{kmap.kernel_volume}, {feats.shape[1]}, Cout], got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[2],):
        raise ValueError(f"bias must be [{weight.shape[2]}], got {tuple(bias.shape)}")
    settings = settings or backends.current()
    name = backends.resolve_backend(settings.backend, feats)
    if not backends.records_graph(feats, weight, bias):  # no autograd node to build (a no-grad forward)
        return backend_kernels(name, settings).conv(feats.contiguous(), weight, bias, kmap)
    with backends.autocast_off(feats.device.type):  # the op chooses its own precision (fp32 sums)
        return backends.op(name, "conv").apply(feats.contiguous(), weight, bias, kmap, settings)


def sparse_conv_vjp(feats: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], kmap: KernelMap,
                    grad_out: torch.Tensor, settings: Optional[backends.KernelSettings] = None):
    """(dfeats, dweight, dbias or None) of sparse_conv(feats, weight, bias, kmap) for the output gradient grad_out,
    without running the conv: what its backward computes (activation checkpointing uses it to skip recomputing a
    block's last conv)."""
    settings = settings or backends.current()
    kernels = backend_kernels(backends.resolve_backend(settings.backend, feats), settings)
    return kernels.conv_vjp(feats.contiguous(), weight.contiguous(), bias is not None, kmap, grad_out, weight.stride())


def depthwise_conv(feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap,
                   settings: Optional[backends.KernelSettings] = None) -> torch.Tensor:
    """Depthwise sparse conv of feats [N_in, C] with weight [K, C] over kmap -> [N_out, C]."""
    if feats.dim() != 2 or feats.shape[0] != kmap.n_in:
        raise ValueError(f"feats must be [{kmap.n_in}, C] for this kernel map, got {tuple(feats.shape)}")
    if weight.shape != (kmap.kernel_volume, feats.shape[1]):
        raise ValueError(f"weight must be [{kmap.kernel_volume}, {feats.shape[1]}], got {tuple(weight.shape)}")
    settings = settings or backends.current()
    op = backends.op(backends.resolve_backend(settings.backend, feats), "depthwise")
    with backends.autocast_off(feats.device.type):
        return op.apply(feats.contiguous(), weight, kmap, settings)
