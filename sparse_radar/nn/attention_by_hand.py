"""A checkpointed sparse AttentionBlock mostly by hand: its forward as direct calls, its attention core alone
recorded by autograd (and of a core over padded buckets, SDPA alone: the buckets' gather and scatter by hand); its
backward the output projection, the core, the qkv projection and the norm differentiated in turn, from the forward's
kept ops (recompute.keep) or recomputing them (recompute).

The same ops on the same operands as autograd's backward of the block; what goes is the graph of the norm, the
two projections and the buckets and their nodes in the engine.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.backends import as_dtype
from ..kernels.segment import norm_backward, norm_forward
from ..voxels import SparseVoxels
from .attention_cores import bucket_mask
from .attention_dense import sdpa
from .conv import autocast_dtype
from .norm import VoxelGroupNorm
from .parts import child, param, parametrized
from .recompute import Graph, trainable


def attention_by_hand(block: nn.Module, x) -> bool:
    """Whether attention_grads covers this AttentionBlock on this field (an empty one too)."""
    return isinstance(x, SparseVoxels) and isinstance(child(block, "norm"), VoxelGroupNorm) and not parametrized(
        *(child(block, name) for name in ("norm", "qkv", "core", "proj")))


def _linear_grads(layer: nn.Linear, inputs: torch.Tensor, grad: torch.Tensor, grads: Dict) -> torch.Tensor:
    """d inputs of F.linear(inputs, weight, bias) (operands already in the compute dtype) for grad; the weight's and
    bias's gradients, in the Parameters' dtypes, into grads."""
    weight, bias = param(layer, "weight"), param(layer, "bias")
    grads[weight] = as_dtype(grad.t() @ inputs, weight.dtype)
    grads[bias] = as_dtype(grad.sum(0), bias.dtype)
    return grad @ as_dtype(weight, grad.dtype)


def _linear_operands(layer: nn.Linear, dtype: torch.dtype) -> tuple:
    """(weight, bias) of a linear layer in the compute dtype."""
    return as_dtype(param(layer, "weight"), dtype), as_dtype(param(layer, "bias"), dtype)


def attention_forward(block: nn.Module, x: SparseVoxels, with_graph: bool = True) -> tuple:
    """(block._forward(x)'s values, what attention_grads reads) by direct calls: the norm and the projections
    without a graph, the core under autograd (with_graph; its backward is attention's: SDPA's alone where the core
    is padded buckets, their gathers by hand), or without one (a forward that keeps nothing)."""
    rows, norm, s = x.feats, child(block, "norm"), x.structure
    h, stats, _ = norm_forward(rows, param(norm, "weight"), param(norm, "bias"), s.sample_ids(), s.row_ptr(),
                               norm.groups, norm.center, norm.eps)
    dtype = autocast_dtype(rows.device) or h.dtype  # what a linear layer computes in (autocast casts its operands)
    h_in = as_dtype(h, dtype)
    qkv = F.linear(h_in, *_linear_operands(child(block, "qkv"), dtype))
    attended, core = _core_forward(block, qkv, x.replace(h), with_graph)
    proj = F.linear(as_dtype(attended, dtype), *_linear_operands(child(block, "proj"), dtype))
    return rows + proj, (h, stats, h_in, attended, *core)


def _core_forward(block: nn.Module, qkv: torch.Tensor, h: SparseVoxels, with_graph: bool) -> tuple:
    """(the core's output [N, C] without a graph, (its Graph, then the buckets' gather index, slot and padding keep,
    None where the core is not padded buckets)) of the projections qkv [N, 3C]."""
    n, heads = qkv.shape[0], block.num_heads
    head_dim = block.channels // heads
    if n == 0:  # an empty field (a strided level of empty samples): nothing to attend, no graph to record
        return qkv.new_empty(0, block.channels), (None, None, None, None)
    with torch.set_grad_enabled(with_graph):
        core = child(block, "core")
        split = core.bucketed(qkv, h) if hasattr(core, "bucketed") else None
        if split is None:  # the core's own sparse() under autograd
            leaf = qkv.detach().requires_grad_(with_graph)
            q, k, v = leaf.view(n, 3, heads, head_dim).unbind(1)
            out = core.sparse(q, k, v, h).reshape(n, block.channels)
            return out.detach(), (Graph((leaf,), out), None, None, None)
        buckets, bias = split  # grouped_attention, its gathers by hand: SDPA alone under autograd, its one node
        g, length = buckets.index.shape
        gathered = qkv.view(n, 3, heads, head_dim).index_select(0, buckets.gather_index)  # no graph: qkv has none
        leaves = tuple(t.transpose(1, 2).requires_grad_(with_graph)  # q, k, v [G, h, L, d]: views, and leaves
                       for t in gathered.view(g, length, 3, heads, head_dim).unbind(2))
        out = sdpa(*leaves, attn_mask=bucket_mask(buckets, bias, leaves[0].dtype))  # [G, h, L, d]
    rows = out.detach().transpose(1, 2).reshape(g * length, heads, head_dim).index_select(0, buckets.slot)
    return rows.reshape(n, block.channels), (Graph(leaves, out), buckets.gather_index, buckets.slot,
                                             buckets.keep(out.dtype))


def node_backward(out: torch.Tensor, leaves: tuple, grad: torch.Tensor) -> tuple:
    """torch.autograd.grad(out, leaves, grad): where out's node reads exactly the leaves (SDPA's own node, whatever
    kernel it recorded; its other inputs take no gradient), that node's backward called directly, without a pass of
    the engine (about 70 us of host time a call); else through the engine."""
    node = out.grad_fn
    edges = node.next_functions if node is not None else ()
    direct = len(edges) >= len(leaves) and all(
        getattr(edge[0], "variable", None) is leaf for edge, leaf in zip(edges, leaves)) and all(
        edge[0] is None for edge in edges[len(leaves):])
    if not direct:
        return torch.autograd.grad(out, leaves, grad)
    return tuple(node(grad)[:len(leaves)])


def _core_grads(block: nn.Module, core: tuple, d_attended: torch.Tensor, grads: Dict) -> torch.Tensor:
    """d qkv [N, 3C] of _core_forward for d_attended [N, C]; the core's own parameters' gradients into grads."""
    graph, gather_index, slot, keep = core
    core_params = trainable(child(block, "core"))
    if graph is None:  # an empty field's: a parameter of the core (window attention's bias) is unused
        grads.update((p, None) for p in core_params)
        return d_attended.new_empty(0, 3 * block.channels)
    out = graph.output
    if gather_index is None:
        leaf = graph.inputs[0]
        d_leaf, *d_core = torch.autograd.grad(out, [leaf, *core_params], as_dtype(d_attended, out.dtype),
                                              allow_unused=True)
        grads.update(zip(core_params, d_core))
        return d_leaf.reshape(d_attended.shape[0], 3 * block.channels)
    g, heads, length, head_dim = out.shape
    # the scatter's backward: each slot's row gradient, zero at padding; then SDPA's; then the gather's
    d_out = as_dtype(d_attended, out.dtype).view(-1, heads, head_dim).index_select(0, gather_index)
    d_out = d_out.mul_(keep[:, None, None]).view(g, length, heads, head_dim).transpose(1, 2)
    if core_params:
        d_q, d_k, d_v, *d_core = torch.autograd.grad(out, [*graph.inputs, *core_params], d_out)
        grads.update(zip(core_params, d_core))
    else:
        d_q, d_k, d_v = node_backward(out, graph.inputs, d_out)
    d_gathered = torch.stack([d_q, d_k, d_v], dim=1).permute(0, 3, 1, 2, 4)  # [G, L, 3, h, d], as gathered
    return d_gathered.reshape(g * length, 3 * block.channels).index_select(0, slot)


def attention_grads(block: nn.Module, x: SparseVoxels, grad_out: torch.Tensor, saved=None) -> tuple:
    """(d x values, {parameter: gradient}) of block._forward(x)'s values for grad_out, from attention_forward's
    saved ops, or (None) recomputing them (call under the forward's autocast, as recompute does)."""
    grads: Dict[torch.Tensor, torch.Tensor] = {}
    rows, norm, s = x.feats, child(block, "norm"), x.structure
    if saved is None:
        _, saved = attention_forward(block, x)
    h, stats, h_in, attended, *core = saved
    dtype = h_in.dtype
    g = as_dtype(grad_out, dtype)
    d_attended = _linear_grads(child(block, "proj"), as_dtype(attended, dtype), g, grads)
    d_qkv = _core_grads(block, core, d_attended, grads)
    d_h = _linear_grads(child(block, "qkv"), h_in, as_dtype(d_qkv, dtype), grads)
    weight, bias = param(norm, "weight"), param(norm, "bias")
    d_rows, d_w, d_b, _ = norm_backward(as_dtype(d_h, h.dtype), rows, weight, bias, s.sample_ids(), s.row_ptr(),
                                        stats, norm.groups, norm.center)
    grads[weight] = as_dtype(d_w, weight.dtype)
    if bias is not None:
        grads[bias] = as_dtype(d_b, bias.dtype)
    return d_rows + as_dtype(grad_out, d_rows.dtype), grads
