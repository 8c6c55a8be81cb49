"""The body of a checkpointed sparse UNet3D (its ResBlocks, attention blocks, downsamples, upsamples and skip
concatenations, between the input conv and the output norm) as one autograd node.

The forward runs every op by hand (resblock_forward, attention_forward, the strided convs' kernels, torch.cat) and
records it on a tape; the backward walks the tape in reverse, each op differentiated by hand (resblock_grads,
attention_grads, the convs' vjp, a split of the concatenation's gradient). Each block keeps what its backward reads,
or recomputes it where its input is large (same RNG state, so the same dropout), exactly as a block of its own node
(recompute.keep / recompute.recompute) does. What goes is the node per block: on a lightweight step a block's
Function, its engine visit, its module call and the closures around it cost about 100 us of host time each, forward
and backward, against the block's own kernel calls.

The parameters' gradients reach autograd together at the end of the body's backward (DDP starts reducing them then,
not block by block).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

import torch
from torch import nn

from ..kernels.backends import as_dtype
from ..kernels.direct import kernels_for
from ..nn.attention import AttentionBlock
from ..nn.attention_by_hand import attention_by_hand, attention_forward, attention_grads
from ..nn.blocks import Downsample, ResBlock, Upsample
from ..nn.conv import SparseConv3d, SparseInverseConv3d, autocast_dtype
from ..nn.field_ops import cat_channels
from ..nn.parts import child, parametrized
from ..nn.recompute import _rng_state, keep, replayed_rng, trainable, worth_recomputing
from ..nn.resblock_by_hand import by_hand, conv_value_grads, conv_values, resblock_forward, resblock_grads
from ..voxels import SparseVoxels


def body_by_hand(model: nn.Module, h) -> Optional[tuple]:
    """The trainable parameters the body reads (what run_body hands gradients to) where run_body covers model's body
    on the field h, else None. It covers a training step with grad on, a sparse field, every block checkpointed,
    training and of the by-hand kinds, and no hooks on the body's modules or the strided convs (which the by-hand
    ops would skip; a block's own layers are called by hand in its own node too). A ResBlock's embedding projection
    is not read: its output, the modulation, is an input of the body. One walk of the body's modules does both."""
    if not (model.training and torch.is_grad_enabled() and isinstance(h, SparseVoxels)):
        return None
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks or hooks._global_backward_hooks \
            or hooks._global_backward_pre_hooks:
        return None
    params: list = []
    for module in body_modules(model):
        if _hooked(module):
            return None
        if isinstance(module, ResBlock):
            if not (module.use_checkpoint and module.training and by_hand(module, h)):
                return None
            params.extend(trainable(module, without=child(module, "emb")))
        elif isinstance(module, AttentionBlock):
            if not (module.use_checkpoint and module.training and attention_by_hand(module, h)):
                return None
            params.extend(trainable(module))
        elif isinstance(module, (Downsample, Upsample)):
            conv = child(module, "conv")
            if not isinstance(conv, (SparseConv3d, SparseInverseConv3d)) or parametrized(conv) or _hooked(conv):
                return None
            params.extend(trainable(module))
        elif not isinstance(module, nn.Identity):
            return None
    return tuple(params)


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def body_modules(model: nn.Module) -> List[nn.Module]:
    """Every block, attention (or Identity), downsample and upsample of the body."""
    modules = []
    for level in (*child(model, "encoder"), child(model, "middle"), *child(model, "decoder")):
        modules.extend(child(level, "blocks"))
        modules.extend(child(level, "attns"))
    modules.extend(child(model, "downs"))
    modules.extend(child(model, "ups"))
    return modules


class _Value(NamedTuple):
    """A field flowing through the body's walk, and its slot on the tape (where its gradient gathers)."""

    field: SparseVoxels
    slot: int


class _Op(NamedTuple):
    kind: str  # "block", "attn", "conv" or "cat"
    module: Optional[nn.Module]
    inputs: tuple  # the slots it reads
    output: int  # the slot it writes
    context: object  # a block's input structure; a conv's kernel map
    first: int  # its saved items: saved[first:first + count]
    count: int
    extra: object  # block: (its modulation's index, whether it recomputes); attn: whether it recomputes; conv: its
    # input's dtype; cat: (the first part's channels, the two parts' dtypes)


class _Tape:
    """The body's ops, recorded as the UNet's walk (UNet3D._body) applies them by hand; differentiate() runs them
    backward. Holds structures and slots only: the tensors a backward reads go in `saved` (autograd's saved tensors)."""

    def __init__(self):
        self.ops: List[_Op] = []
        self.saved: list = []
        self.slots = 0
        self.blocks = 0

    def value(self, field: SparseVoxels) -> _Value:
        self.slots += 1
        return _Value(field, self.slots - 1)

    def _record(self, kind, module, inputs, context, items, extra, out_field) -> _Value:
        out = self.value(out_field)
        self.ops.append(_Op(kind, module, tuple(v.slot for v in inputs), out.slot, context, len(self.saved),
                            len(items), extra))
        self.saved.extend(items)
        return out

    # the walk's steps (UNet3D._body): each runs its op without autograd and records it

    def block(self, block: nn.Module, h: _Value, modulation: torch.Tensor) -> _Value:
        x = h.field
        index, self.blocks = self.blocks, self.blocks + 1
        recomputes = worth_recomputing(x.feats)
        if recomputes:  # recomputed in backward: its input and the RNG state its dropout draws from (or None)
            rng = _rng_state(x.feats.device) if child(block, "dropout").p > 0 else None
            out, _ = resblock_forward(block, x, modulation)
            items = (x.feats, rng)
        else:
            out, kept = resblock_forward(block, x, modulation)
            items = (x.feats, *kept)
        return self._record("block", block, (h,), x.structure, items, (index, recomputes), x.replace(out))

    def attn(self, attn: nn.Module, h: _Value) -> _Value:
        if isinstance(attn, nn.Identity):
            return h
        x = h.field
        recomputes = worth_recomputing(x.feats)
        if recomputes:
            out, items = attention_forward(attn, x, with_graph=False)[0], (x.feats,)
        else:
            out, kept = attention_forward(attn, x)
            items = (x.feats, *kept)
        return self._record("attn", attn, (h,), x.structure, items, recomputes, x.replace(out))

    def conv(self, module: nn.Module, h: _Value) -> _Value:
        x, conv = h.field, child(module, "conv")
        s = x.structure
        geometry = (conv.kernel_size, conv.stride, conv.padding, conv.dilation)
        kmap, out_structure = s.downsample(*geometry) if isinstance(conv, SparseConv3d) else s.inverse_map(*geometry)
        values = as_dtype(x.feats, autocast_dtype(x.feats.device) or x.feats.dtype)  # the conv's compute dtype
        out = conv_values(kernels_for(values), conv, kmap, values)
        return self._record("conv", conv, (h,), kmap, (values,), x.feats.dtype, SparseVoxels.wrap(out, out_structure))

    def cat(self, a: _Value, b: _Value) -> _Value:
        out = cat_channels(a.field, b.field)
        extra = (a.field.num_channels, a.field.feats.dtype, b.field.feats.dtype)
        return self._record("cat", None, (a, b), None, (), extra, out)

    def differentiate(self, modulations: tuple, saved: tuple, grad_out: torch.Tensor, out_slot: int) -> tuple:
        """(d input values, d modulations, {parameter: gradient}) of the recorded ops for grad_out, the gradient of
        the value in out_slot."""
        grads: List[Optional[torch.Tensor]] = [None] * self.slots
        grads[out_slot] = grad_out
        d_mods: List[Optional[torch.Tensor]] = [None] * len(modulations)
        params: Dict[torch.Tensor, torch.Tensor] = {}
        for op in reversed(self.ops):
            g, grads[op.output] = grads[op.output], None
            if g is None:
                continue
            items = saved[op.first:op.first + op.count]
            if op.kind == "cat":
                split, a_dtype, b_dtype = op.extra
                ins = (as_dtype(g[:, :split], a_dtype), as_dtype(g[:, split:], b_dtype))
            elif op.kind == "conv":
                values = items[0]
                ins = (conv_value_grads(kernels_for(values), op.module, op.context, values, op.extra, g, params),)
            elif op.kind == "block":
                (index, recomputes), x = op.extra, SparseVoxels.wrap(items[0], op.context)
                d_x, d_mod, block_grads = self._block_grads(op.module, x, modulations[index], g, items, recomputes)
                d_mods[index] = d_mod
                params.update(block_grads)
                ins = (d_x,)
            else:
                x = SparseVoxels.wrap(items[0], op.context)
                d_x, attn_grads = attention_grads(op.module, x, g, None if op.extra else items[1:])
                params.update(attn_grads)
                ins = (d_x,)
            for slot, d in zip(op.inputs, ins):
                grads[slot] = d if grads[slot] is None else grads[slot] + d
        return grads[0], d_mods, params

    @staticmethod
    def _block_grads(block: nn.Module, x: SparseVoxels, modulation, g, items, recomputes: bool) -> tuple:
        """resblock_grads from the block's kept ops (items: its input, then them), or recomputing them under the
        forward's RNG state (items: its input, the state or None)."""
        if not recomputes:
            return resblock_grads(block, x, modulation, g, items[1:])
        with replayed_rng(x.feats.device, items[1]):
            return resblock_grads(block, x, modulation, g)


def run_body(model: nn.Module, h: SparseVoxels, modulations: list, params: tuple) -> SparseVoxels:
    """model._body(h, modulations) as one autograd node (see the module docstring), params: the body's trainable
    parameters (body_by_hand gives them, and says when it covers the body)."""
    tape = _Tape()
    n_mods = len(modulations)
    result = {}

    def forward(values, *mods):
        start = tape.value(h.replace(values))
        out = model._body(start, iter(mods), tape)
        result["structure"], result["slot"] = out.field.structure, out.slot
        return out.field.feats, tuple(tape.saved)

    def backward(values, *rest):
        mods, saved, grad_out = rest[:n_mods], rest[n_mods], rest[n_mods + 1]
        d_values, d_mods, grads = tape.differentiate(mods, saved, grad_out, result["slot"])
        return (d_values, *d_mods, *(grads.get(p) for p in params))

    out = keep(forward, backward, (h.feats, *modulations), params)
    return SparseVoxels.wrap(out, result["structure"])
