"""Activation checkpointing of a block whose input and output are values on one field's voxels, and (keep) its
by-hand form that saves what its backward reads where recomputing would save too little memory to pay for itself.

torch's non-reentrant checkpoint wraps every tensor the block saves in a pack and an unpack hook (about 3,000 per
lightweight step); the reentrant form moves the parameter gradients outside the outer graph. This one is a single
autograd Function: forward without a graph, backward recomputes the block (same RNG state, same autocast) and hands
the gradients of its inputs and parameters back to the outer graph, where DDP's hooks see them as usual.
"""
from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from ..kernels.backends import autocast_off

# A checkpointed block whose input holds fewer bytes than this keeps its activations (keep) instead of recomputing
# them: its saved tensors are a few times its input, so at most a few MiB a block, while a recompute costs the
# block's launches again (a step on small fields is bound by launches, not memory). 0: always recompute.
MIN_RECOMPUTE_BYTES = 1 << 20


def worth_recomputing(values: torch.Tensor) -> bool:
    """Whether a checkpointed block with this input recomputes (MIN_RECOMPUTE_BYTES or more) or keeps."""
    return values.numel() * values.element_size() >= MIN_RECOMPUTE_BYTES


def _rng_state(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@contextlib.contextmanager
def replayed_rng(device: torch.device, state):
    """A recompute under the RNG state its forward drew from (a block that draws, dropout, draws the same again),
    the caller's state given back after; state None (a block that draws nothing): as it is."""
    if state is None:
        yield
        return
    current = _rng_state(device)
    _set_rng_state(device, state)
    try:
        yield
    finally:
        _set_rng_state(device, current)


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, vjp, by_hand, random, n_inputs, *tensors):
        inputs = tensors[:n_inputs]
        device = inputs[0].device
        ctx.run, ctx.vjp, ctx.by_hand, ctx.device = run, vjp, by_hand, device
        ctx.params = tensors[n_inputs:]
        ctx.autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        ctx.rng = _rng_state(device) if random else None  # a block that draws (dropout) draws the same again
        ctx.save_for_backward(*inputs)
        return run(*inputs)

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        device, (enabled, dtype) = ctx.device, ctx.autocast
        with replayed_rng(device, ctx.rng):
            # as the forward ran: autocast on with its dtype, or off (no context where it is off already)
            cast = torch.autocast(device.type, dtype=dtype) if enabled else autocast_off(device.type)
            if ctx.by_hand is not None:
                with cast:
                    grads = ctx.by_hand(*saved, grad_out)
                needs = ctx.needs_input_grad[5:]
                return (None,) * 5 + tuple(g if need else None for g, need in zip(grads, needs))
            inputs = [t.detach().requires_grad_(t.requires_grad) for t in saved]
            with torch.enable_grad(), cast:
                if ctx.vjp is None:
                    outs, out_grads = [ctx.run(*inputs)], [grad_out]
                else:  # the block's last ops by hand: tensors of the recomputed graph and their gradients
                    outs, out_grads = ctx.vjp(*inputs, grad_out)
        pairs = [(o, g) for o, g in zip(outs, out_grads) if g is not None and o.requires_grad]
        wanted = [t for t in (*inputs, *ctx.params) if t.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
                     if pairs else [None] * len(wanted))
        return (None,) * 5 + tuple(next(grads) if t.requires_grad else None for t in (*inputs, *ctx.params))


def recompute(run: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
              vjp: Optional[Callable] = None, random: bool = True, by_hand: Optional[Callable] = None) -> torch.Tensor:
    """run(*inputs) whose activations are recomputed in backward; params are the weights run reads (gradients flow).
    vjp(*inputs, grad_out) -> (tensors, their gradients), if given, replaces re-running the whole block: it recomputes
    the block up to its last ops and gives those ops' input gradients by hand (torch's checkpoint stops early
    in the same way: a last conv's forward is not needed for its backward). random=False: run draws no random
    numbers, so the RNG state is neither saved nor restored (a host copy of it each way on the CPU).
    by_hand(*inputs, grad_out) -> the gradients of (*inputs, *params), if given, is the whole backward: it recomputes
    and differentiates the block itself, with no autograd graph (then vjp is not used)."""
    return _Recompute.apply(run, vjp, by_hand, bool(random), len(inputs), *inputs, *params)


class Graph(NamedTuple):
    """A recorded autograd graph a kept block differentiates in its backward: its leaf inputs and its output. Kept
    as it is (the graph's own nodes save their tensors through autograd), not as a saved tensor: one unpacked
    by a hook would be cut from its graph."""

    inputs: tuple
    output: torch.Tensor


class _Kept(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, grads, n_inputs, *tensors):
        inputs = tensors[:n_inputs]
        device = inputs[0].device
        out, saved = run(*inputs)
        plain = [None if isinstance(item, Graph) else item for item in saved]
        ctx.graphs = [item if isinstance(item, Graph) else None for item in saved]
        ctx.save_for_backward(*inputs, *plain)  # autograd's saved tensors: hooks (offload, memory counts) see them
        ctx.grads, ctx.n_inputs, ctx.device = grads, n_inputs, device
        ctx.autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        kept = ctx.saved_tensors
        (enabled, dtype), device = ctx.autocast, ctx.device
        cast = torch.autocast(device.type, dtype=dtype) if enabled else autocast_off(device.type)
        with cast:
            saved = tuple(g if g is not None else t for g, t in zip(ctx.graphs, kept[ctx.n_inputs:]))
            grads = ctx.grads(*kept[:ctx.n_inputs], saved, grad_out)
        return (None,) * 3 + tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[3:]))


def keep(run: Callable, grads: Callable, inputs: Sequence[torch.Tensor], params: Sequence[torch.Tensor]):
    """A block run by hand as one autograd node that keeps what its backward reads (no recompute): run(*inputs) ->
    (output, saved: a tuple of tensors, None and Graphs), computed without a graph (but for its Graphs);
    grads(*inputs, saved, grad_out) -> the gradients of (*inputs, *params), under the forward's autocast."""
    return _Kept.apply(run, grads, len(inputs), *inputs, *params)


def trainable(module: torch.nn.Module, without: Optional[torch.nn.Module] = None) -> tuple:
    """The parameters of module that take gradients (what recompute must hand gradients back to), in the order of
    module.parameters(), leaving out the submodule `without`: a walk of the module dicts (parameters()' generators
    cost ~10 us a block, every step)."""
    found, seen = [], set()
    _collect(module, found, seen, without)
    return tuple(found)


def _collect(module: torch.nn.Module, found: list, seen: set, without) -> None:
    for param in module._parameters.values():
        if param is not None and param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            found.append(param)
    for child in module._modules.values():
        if child is not None and child is not without:
            _collect(child, found, seen, without)
