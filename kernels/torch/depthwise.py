"""Torch backend: depthwise sparse convolution (one kernel per channel), an autograd op saving only its inputs."""
from __future__ import annotations

import torch

from ..kernel_map import KernelMap
from .conv import HALF_DTYPES


def _accumulate(src: torch.Tensor, weight: torch.Tensor, src_idx: torch.Tensor, dst_idx: torch.Tensor,
                kmap: KernelMap, n_dst: int) -> torch.Tensor:
    """dst[dst_idx_k] += src[src_idx_k] * weight[k] per offset k, in fp32 for half inputs."""
    acc = torch.float32 if src.dtype in HALF_DTYPES else src.dtype
    w = weight.to(acc)
    if kmap.identity_offset is not None:
        out = src.to(acc) * w[kmap.identity_offset]
    else:
        out = torch.zeros(n_dst, src.shape[1], dtype=acc, device=src.device)
    for k in range(kmap.kernel_volume):
        lo, hi = kmap.offset_ptr[k], kmap.offset_ptr[k + 1]
        if k == kmap.identity_offset or lo == hi:
            continue
        out.index_add_(0, dst_idx[lo:hi], src.index_select(0, src_idx[lo:hi]).to(acc) * w[k])
    return out


class TorchDepthwiseConv(torch.autograd.Function):
    """out[o, c] = sum over pairs (i, o, k) of feats[i, c] * weight[k, c]."""

    @staticmethod
    def forward(ctx, feats, weight, kmap: KernelMap, settings=None):
        ctx.save_for_backward(feats, weight)
        ctx.kmap = kmap
        return _accumulate(feats, weight, kmap.in_idx, kmap.out_idx, kmap, kmap.n_out).to(feats.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        feats, weight = ctx.saved_tensors
        kmap = ctx.kmap
        grad_out = grad_out.contiguous()
        grad_feats = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_feats = _accumulate(grad_out, weight, kmap.out_idx, kmap.in_idx, kmap, kmap.n_in).to(feats.dtype)
        if ctx.needs_input_grad[1]:
            acc = torch.float32 if feats.dtype in HALF_DTYPES else feats.dtype
            grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            for k in range(kmap.kernel_volume):
                i, o = kmap.pairs_of(k)
                if i.numel():
                    grad_weight[k] = (feats.index_select(0, i).to(acc) * grad_out.index_select(0, o).to(acc)).sum(0)
            grad_weight = grad_weight.to(weight.dtype)
        return grad_feats, grad_weight, None, None
