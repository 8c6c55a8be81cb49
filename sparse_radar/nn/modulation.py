"""Every ResBlock's scale-shift from the time embedding in one matmul (ADM: each block projects the embedding to
[scale | shift] with its own linear layer; the layers stay, their weights are stacked per step).

One linear per block cost five launches a step (its forward, its recompute under checkpointing, and three in the
backward); stacked, the forward is three launches and the backward four, whatever the number of blocks.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from ..kernels.backends import autocast_off, records_graph
from .parts import param


class _StackedLinears(torch.autograd.Function):
    """(x @ W_i^T + b_i for each layer i) as column slices of x @ cat(W)^T + cat(b); backward: one matmul each for
    the input's and the stacked weights' gradients, one sum for the biases'."""

    @staticmethod
    def forward(ctx, x, sizes, *params):
        weight, outputs = _StackedLinears.compute(x, sizes, params)
        ctx.save_for_backward(x, weight)
        ctx.sizes = sizes
        return outputs

    @staticmethod
    def compute(x, sizes, params) -> tuple:
        """(the stacked weight, the layers' outputs as column slices of one matmul)."""
        weight, bias = torch.cat(params[:len(sizes)]), torch.cat(params[len(sizes):])
        return weight, torch.addmm(bias, x, weight.t()).split_with_sizes(sizes, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        x, weight = ctx.saved_tensors
        grad = torch.cat([g if g is not None else x.new_zeros(x.shape[0], size)
                          for g, size in zip(grads, ctx.sizes)], dim=1)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weights = (grad.t() @ x).split_with_sizes(ctx.sizes)
        grad_biases = grad.sum(0).split_with_sizes(ctx.sizes)
        return (grad_x, None, *grad_weights, *grad_biases)


def stacked_linears(x: torch.Tensor, layers: Sequence[nn.Linear]) -> List[torch.Tensor]:
    """[layer(x) for layer in layers] computed as one matmul (in x's dtype, autocast off), each a column slice."""
    if not layers:
        return []
    weights, biases = [param(layer, "weight") for layer in layers], [param(layer, "bias") for layer in layers]
    if any(bias is None for bias in biases) or any(layer.in_features != x.shape[-1] for layer in layers):
        raise ValueError("stacked_linears needs layers with a bias that all read x's features")
    sizes = [layer.out_features for layer in layers]
    params = weights + biases
    with autocast_off(x.device.type):
        if not records_graph(x, *params):  # sampling: no autograd node
            return list(_StackedLinears.compute(x, sizes, params)[1])
        return list(_StackedLinears.apply(x, sizes, *params))
