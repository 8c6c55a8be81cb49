"""A checkpointed sparse AttentionBlock's backward mostly by hand: the block recomputed without a graph around its
attention core, the output projection, the qkv projection and the norm differentiated by direct calls, and the core
alone (whose backward is attention's) under autograd.

The same ops on the same operands as autograd's backward of the block; what goes is the graph of the norm and the
two projections and their nodes in the nested engine call (about half of such a block's backward host time).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.backends import as_dtype
from ..kernels.segment import norm_backward, norm_forward
from ..voxels import SparseVoxels
from .conv import autocast_dtype
from .norm import VoxelGroupNorm
from .recompute import trainable


def attention_by_hand(block: nn.Module, x) -> bool:
    """Whether attention_grads covers this AttentionBlock on this field."""
    return isinstance(x, SparseVoxels) and x.num_voxels > 0 and isinstance(block.norm, VoxelGroupNorm)


def _linear_grads(layer: nn.Linear, inputs: torch.Tensor, grad: torch.Tensor, grads: Dict) -> torch.Tensor:
    """d inputs of F.linear(inputs, weight, bias) (operands already in the compute dtype) for grad; the weight's and
    bias's gradients, in the Parameters' dtypes, into grads."""
    weight = as_dtype(layer.weight, grad.dtype)
    grads[layer.weight] = as_dtype(grad.t() @ inputs, layer.weight.dtype)
    grads[layer.bias] = as_dtype(grad.sum(0), layer.bias.dtype)
    return grad @ weight


def attention_forward(block: nn.Module, x: SparseVoxels, with_graph: bool = True) -> tuple:
    """(block._forward(x)'s values, what attention_grads reads) by direct calls: the norm and the projections
    without a graph, the core under autograd (with_graph; its backward is attention's), or without one (a forward
    that keeps nothing)."""
    rows, norm, s = x.feats, block.norm, x.structure
    h, mean, rstd, _, _, _ = norm_forward(rows, norm.weight, norm.bias, s.sample_ids(), s.row_ptr(), norm.groups,
                                          norm.center, norm.eps)
    dtype = autocast_dtype(rows.device) or h.dtype  # what a linear layer computes in (autocast casts its operands)
    h_in = as_dtype(h, dtype)
    qkv = F.linear(h_in, as_dtype(block.qkv.weight, dtype), as_dtype(block.qkv.bias, dtype))
    n, heads = h.shape[0], block.num_heads
    with torch.set_grad_enabled(with_graph):
        qkv_leaf = qkv.detach().requires_grad_(with_graph)
        q, k, v = qkv_leaf.view(n, 3, heads, block.channels // heads).unbind(1)
        attended = block.core.sparse(q, k, v, x.replace(h)).reshape(n, block.channels)
    proj = F.linear(as_dtype(attended.detach(), dtype), as_dtype(block.proj.weight, dtype),
                    as_dtype(block.proj.bias, dtype))
    return rows + proj, (h, mean, rstd, h_in, qkv_leaf, attended)


def attention_grads(block: nn.Module, x: SparseVoxels, grad_out: torch.Tensor, saved=None) -> tuple:
    """(d x values, {parameter: gradient}) of block._forward(x)'s values for grad_out, from attention_forward's
    saved ops, or (None) recomputing them (call under the forward's autocast, as recompute does)."""
    grads: Dict[torch.Tensor, torch.Tensor] = {}
    rows, norm, s = x.feats, block.norm, x.structure
    if saved is None:
        _, saved = attention_forward(block, x)
    h, mean, rstd, h_in, qkv_leaf, attended = saved
    dtype = h_in.dtype
    core_params = trainable(block.core)
    g = as_dtype(grad_out, dtype)
    d_attended = _linear_grads(block.proj, as_dtype(attended.detach(), dtype), g, grads)
    d_qkv, *d_core = torch.autograd.grad(attended, [qkv_leaf, *core_params], as_dtype(d_attended, attended.dtype))
    grads.update(zip(core_params, d_core))
    d_h = _linear_grads(block.qkv, h_in, as_dtype(d_qkv, dtype), grads)
    d_rows, d_w, d_b, _ = norm_backward(as_dtype(d_h, h.dtype), rows, norm.weight, norm.bias, s.sample_ids(),
                                        s.row_ptr(), mean, rstd, norm.groups, norm.center)
    grads[norm.weight] = as_dtype(d_w, norm.weight.dtype)
    if norm.bias is not None:
        grads[norm.bias] = as_dtype(d_b, norm.bias.dtype)
    return d_rows + as_dtype(grad_out, d_rows.dtype), grads
