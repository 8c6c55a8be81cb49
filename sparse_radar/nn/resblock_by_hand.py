"""A checkpointed sparse ResBlock by hand: its forward as direct kernel calls (no modules, no autograd Functions:
it runs without a graph anyway), and its backward as that forward recomputed, then each op's backward called in
reverse, the kernels autograd would call in the same order on the same operands.

Recomputing under autograd records the block's ops (two norms, two or three convs) as graph nodes and
then walks them with a nested engine call: about a third of a lightweight step's host time went to that bookkeeping.
It covers the common block, a sparse field with group-type norms (group, layer, instance, rms) and full submanifold
convs; any other block (dense field, adaptive norm, depthwise convs) runs its modules and recomputes under autograd.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..kernels.backends import as_dtype
from ..kernels.conv import sparse_conv, sparse_conv_vjp
from ..kernels.segment import norm_backward, norm_forward
from ..voxels import SparseVoxels
from .conv import SubMConv3d
from .norm import VoxelGroupNorm


def by_hand(block: nn.Module, x) -> bool:
    """Whether resblock_grads covers this ResBlock on this field."""
    return (isinstance(x, SparseVoxels) and isinstance(block.in_norm, VoxelGroupNorm)
            and isinstance(block.out_norm, VoxelGroupNorm) and isinstance(block.in_conv, SubMConv3d)
            and isinstance(block.out_conv, SubMConv3d) and isinstance(block.skip, (SubMConv3d, nn.Identity)))


def _norm(norm: VoxelGroupNorm, x: SparseVoxels, rows: torch.Tensor, modulation=None, dropout: float = 0.0):
    """norm.sparse(x.replace(rows), modulation, silu=True, dropout)'s values, and what its backward needs."""
    s = x.structure
    out, mean, rstd, scale, offset, seed = norm_forward(rows, norm.weight, norm.bias, s.sample_ids(), s.row_ptr(),
                                                        norm.groups, norm.center, norm.eps, modulation, True, dropout)
    return out, (rows, modulation, mean, rstd, scale, offset, dropout, seed)


def _norm_grads(norm: VoxelGroupNorm, x: SparseVoxels, saved, grad_y: torch.Tensor, grads: Dict) -> tuple:
    """(d rows, d modulation) of _norm; the weight's and bias's gradients go into grads."""
    rows, modulation, mean, rstd, scale, offset, dropout, seed = saved
    s = x.structure
    d_rows, d_w, d_b, d_mod = norm_backward(grad_y, rows, norm.weight, norm.bias, s.sample_ids(), s.row_ptr(), mean,
                                            rstd, norm.groups, norm.center, modulation, True, scale, offset, dropout,
                                            seed)
    grads[norm.weight] = as_dtype(d_w, norm.weight.dtype)
    if norm.bias is not None:
        grads[norm.bias] = as_dtype(d_b, norm.bias.dtype)
    return d_rows, d_mod


def _conv(conv: SubMConv3d, x: SparseVoxels, operands: tuple) -> torch.Tensor:
    """conv's output on x's voxels from its operands (conv.conv_operands: values cast as forward casts them, the
    weight's kernel view, the bias)."""
    return sparse_conv(*operands, x.structure.submanifold_map(conv.kernel_size, conv.dilation))


def _conv_grads(conv: SubMConv3d, x: SparseVoxels, operands, rows_dtype, grad_out: torch.Tensor,
                grads: Dict) -> torch.Tensor:
    """d rows (in rows_dtype) of _conv; the weight's and bias's gradients, in their Parameters' shapes, into grads."""
    values, weight, bias = operands
    kmap = x.structure.submanifold_map(conv.kernel_size, conv.dilation)
    d_values, d_weight, d_bias = sparse_conv_vjp(values, weight, bias, kmap, as_dtype(grad_out, values.dtype))
    # [K, Cin, Cout] back to [Cout, Cin, kD, kH, kW]: the inverse of the view the forward reads
    grads[conv.weight] = as_dtype(d_weight.permute(2, 1, 0).reshape(conv.weight.shape), conv.weight.dtype)
    if conv.bias is not None:
        grads[conv.bias] = as_dtype(d_bias, conv.bias.dtype)
    return as_dtype(d_values, rows_dtype)


def resblock_forward(block: nn.Module, x: SparseVoxels, modulation: torch.Tensor, tail: bool = True) -> tuple:
    """(block._forward(x, modulation)'s values, what resblock_grads reads of its ops) by direct kernel calls, without
    autograd (the same ops on the same operands as the modules run). tail=False stops before the last conv and the
    skip (their backward needs only their operands): the values are then None."""
    rows = x.feats
    h1, in_saved = _norm(block.in_norm, x, rows)
    in_ops = block.in_conv.conv_operands(x.replace(h1))
    h2 = _conv(block.in_conv, x, in_ops)
    rate = block.dropout.p if block.dropout.training else 0.0
    h3, out_saved = _norm(block.out_norm, x, h2, modulation, rate)
    out_ops = block.out_conv.conv_operands(x.replace(h3))
    skip_ops = None if isinstance(block.skip, nn.Identity) else block.skip.conv_operands(x)
    saved = in_saved, in_ops, h1, out_saved, out_ops, h3, skip_ops
    if not tail:
        return None, saved
    h = _conv(block.out_conv, x, out_ops)
    skip = rows if skip_ops is None else _conv(block.skip, x, skip_ops)
    return as_dtype(skip, h.dtype) + h, saved


def resblock_grads(block: nn.Module, x: SparseVoxels, modulation: torch.Tensor, grad_out: torch.Tensor,
                   saved=None) -> tuple:
    """(d x values, d modulation, {parameter: gradient}) of block._forward(x, modulation)'s values for grad_out,
    without autograd, from resblock_forward's saved ops, or (None) recomputing them (then call under the forward's
    RNG state and autocast, as recompute does)."""
    grads: Dict[torch.Tensor, torch.Tensor] = {}
    rows = x.feats
    if saved is None:
        _, saved = resblock_forward(block, x, modulation, tail=False)
    in_saved, in_ops, h1, out_saved, out_ops, h3, skip_ops = saved
    d_h3 = _conv_grads(block.out_conv, x, out_ops, h3.dtype, grad_out, grads)
    d_h2, d_mod = _norm_grads(block.out_norm, x, out_saved, d_h3, grads)
    d_h1 = _conv_grads(block.in_conv, x, in_ops, h1.dtype, d_h2, grads)
    d_rows, _ = _norm_grads(block.in_norm, x, in_saved, d_h1, grads)
    if skip_ops is None:
        d_rows = d_rows + as_dtype(grad_out, d_rows.dtype)
    else:
        d_rows = d_rows + _conv_grads(block.skip, x, skip_ops, rows.dtype, grad_out, grads)
    return d_rows, as_dtype(d_mod, modulation.dtype), grads
