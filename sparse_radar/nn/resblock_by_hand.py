"""A checkpointed sparse ResBlock by hand: its forward as direct kernel calls (no modules, no autograd Functions:
it runs without a graph anyway), and its backward as that forward recomputed, then each op's backward called in
reverse, the kernels autograd would call in the same order on the same operands.

Recomputing under autograd records the block's ops (two norms, two or three convs) as graph nodes and
then walks them with a nested engine call: about a third of a lightweight step's host time went to that bookkeeping.
It covers the common block, a sparse field with group-type norms (group, layer, instance, rms) and full submanifold
convs; any other block (dense field, adaptive norm, depthwise convs) runs its modules and recomputes under autograd.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from ..kernels.backends import as_dtype
from ..kernels.direct import Kernels, kernels_for
from ..kernels.segment import _rows_of_columns
from ..voxels import SparseVoxels
from .conv import SubMConv3d, autocast_dtype
from .norm import VoxelGroupNorm
from .parts import child, param, parametrized


def by_hand(block: nn.Module, x) -> bool:
    """Whether resblock_grads covers this ResBlock on this field."""
    parts = [child(block, name) for name in ("in_norm", "in_conv", "out_norm", "out_conv", "skip")]
    return (isinstance(x, SparseVoxels) and isinstance(parts[0], VoxelGroupNorm) and isinstance(parts[1], SubMConv3d)
            and isinstance(parts[2], VoxelGroupNorm) and isinstance(parts[3], SubMConv3d)
            and isinstance(parts[4], (SubMConv3d, nn.Identity)) and not parametrized(*parts))


def _norm(k: Kernels, norm: VoxelGroupNorm, x: SparseVoxels, rows: torch.Tensor, modulation=None,
          dropout: float = 0.0) -> tuple:
    """norm.sparse(x.replace(rows), modulation, silu=True, dropout)'s values, then its statistics and dropout state
    (what its backward reads)."""
    s = x.structure
    return k.norm_forward(rows, param(norm, "weight"), param(norm, "bias"), s.sample_ids(), s.row_ptr(), norm.groups,
                          norm.center, norm.eps, modulation, True, dropout)


def _norm_grads(k: Kernels, norm: VoxelGroupNorm, x: SparseVoxels, rows, modulation, stats, dropout: float,
                grad_y: torch.Tensor, grads: Dict) -> tuple:
    """(d rows, d modulation) of _norm (stats: its statistics and dropout state); the weight's and bias's gradients
    go into grads."""
    s, weight, bias = x.structure, param(norm, "weight"), param(norm, "bias")
    d_rows, d_w, d_b, d_mod = k.norm_backward(grad_y.contiguous(), rows, weight, bias, s.sample_ids(), s.row_ptr(),
                                              stats[0], norm.groups, norm.center, modulation, True, dropout, stats[1])
    grads[weight] = as_dtype(d_w, weight.dtype)
    if bias is not None:
        grads[bias] = as_dtype(d_b, bias.dtype)
    return d_rows, d_mod


def conv_values(k: Kernels, conv: nn.Module, kmap, values: torch.Tensor) -> torch.Tensor:
    """A sparse conv layer's output through kmap from its input values, already in the compute dtype (the weight
    and bias go in fp32: the op casts them, as conv.conv_operands hands them)."""
    return k.layer_conv(values, param(conv, "weight"), param(conv, "bias"), kmap)


def conv_value_grads(k: Kernels, conv: nn.Module, kmap, values, rows_dtype, grad_out: torch.Tensor,
                     grads: Dict) -> torch.Tensor:
    """d rows (in rows_dtype) of conv_values(values); the weight's and bias's gradients, in their Parameters'
    shapes, into grads."""
    weight, bias = param(conv, "weight"), param(conv, "bias")
    d_values, d_weight, d_bias = k.layer_conv_vjp(values, weight, bias is not None, kmap,
                                                  as_dtype(grad_out, values.dtype))
    grads[weight] = as_dtype(d_weight, weight.dtype)
    if bias is not None:
        grads[bias] = as_dtype(d_bias, bias.dtype)
    return as_dtype(d_values, rows_dtype)


def _conv(k: Kernels, conv: SubMConv3d, x: SparseVoxels, values: torch.Tensor) -> torch.Tensor:
    """conv_values of a submanifold conv on x's voxels."""
    return conv_values(k, conv, x.structure.submanifold_map(conv.kernel_size, conv.dilation), values)


def _conv_grads(k: Kernels, conv: SubMConv3d, x: SparseVoxels, values, rows_dtype, grad_out: torch.Tensor,
                grads: Dict) -> torch.Tensor:
    """conv_value_grads of a submanifold conv on x's voxels."""
    kmap = x.structure.submanifold_map(conv.kernel_size, conv.dilation)
    return conv_value_grads(k, conv, kmap, values, rows_dtype, grad_out, grads)


def resblock_forward(block: nn.Module, x: SparseVoxels, modulation: torch.Tensor, tail: bool = True) -> tuple:
    """(block._forward(x, modulation)'s values, what resblock_grads reads of its ops: a flat tuple of tensors and
    None) by direct kernel calls, without autograd (the same ops on the same operands as the modules run).
    tail=False stops before the last conv and the skip (their backward needs only their operands): the values are
    then None."""
    k = kernels_for(x.feats)
    rows = x.feats.contiguous()
    modulation = _rows_of_columns(modulation)
    compute = autocast_dtype(rows.device) or rows.dtype  # what a conv's values are cast to (conv_operands)
    h1, *in_stats = _norm(k, child(block, "in_norm"), x, rows)
    h1 = as_dtype(h1, compute)
    h2 = _conv(k, child(block, "in_conv"), x, h1)
    dropout, skip_conv = child(block, "dropout"), child(block, "skip")
    h3, *out_stats = _norm(k, child(block, "out_norm"), x, h2, modulation, dropout.p if dropout.training else 0.0)
    h3 = as_dtype(h3, compute)
    skip_in = None if isinstance(skip_conv, nn.Identity) else as_dtype(rows, compute)
    saved = (h1, *in_stats, h2, *out_stats, h3, skip_in)
    if not tail:
        return None, saved
    h = _conv(k, child(block, "out_conv"), x, h3)
    skip = rows if skip_in is None else _conv(k, skip_conv, x, skip_in)
    return as_dtype(skip, h.dtype) + h, saved


def resblock_grads(block: nn.Module, x: SparseVoxels, modulation: torch.Tensor, grad_out: torch.Tensor,
                   saved: Optional[tuple] = None) -> tuple:
    """(d x values, d modulation, {parameter: gradient}) of block._forward(x, modulation)'s values for grad_out,
    without autograd, from resblock_forward's saved ops, or (None) recomputing them (then call under the forward's
    RNG state and autocast, as recompute does)."""
    grads: Dict[torch.Tensor, torch.Tensor] = {}
    k = kernels_for(x.feats)
    rows = x.feats.contiguous()
    modulation = _rows_of_columns(modulation)
    if saved is None:
        _, saved = resblock_forward(block, x, modulation, tail=False)
    h1, in_stats, h2, out_stats, h3, skip_in = saved[0], saved[1:3], saved[3], saved[4:6], saved[6], saved[7]
    # the forward drew a dropout state iff it dropped
    rate = child(block, "dropout").p if out_stats[1] is not None else 0.0
    d_h3 = _conv_grads(k, child(block, "out_conv"), x, h3, h3.dtype, grad_out, grads)
    d_h2, d_mod = _norm_grads(k, child(block, "out_norm"), x, h2, modulation, out_stats, rate, d_h3, grads)
    d_h1 = _conv_grads(k, child(block, "in_conv"), x, h1, h1.dtype, d_h2, grads)
    d_rows, _ = _norm_grads(k, child(block, "in_norm"), x, rows, None, in_stats, 0.0, d_h1, grads)
    if skip_in is None:
        d_rows = d_rows + as_dtype(grad_out, d_rows.dtype)
    else:
        d_rows = d_rows + _conv_grads(k, child(block, "skip"), x, skip_in, rows.dtype, grad_out, grads)
    return d_rows, as_dtype(d_mod, modulation.dtype), grads
