"""UNet building blocks: timestep embedding, ResBlock (ADM scale-shift), Downsample, Upsample."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.backends import autocast_off
from .conv import SparseConv3d, SparseInverseConv3d, SubMConv3d
from .depthwise import DepthwiseSubMConv3d
from .field_ops import Field, values
from .norm import build_norm, norm_and_modulate, norm_silu
from .parts import child
from .recompute import keep, recompute, trainable, worth_recomputing
from .resblock_by_hand import by_hand, resblock_forward, resblock_grads


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of noise labels t [B] (ADM / transformer style: cos then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def conv3(in_ch: int, out_ch: int, use_depthwise: bool) -> nn.Module:
    """3x3x3 submanifold conv, or depthwise 3x3x3 + pointwise 1x1x1 when use_depthwise."""
    if use_depthwise:
        return nn.Sequential(DepthwiseSubMConv3d(in_ch, 3), SubMConv3d(in_ch, out_ch, 1))
    return SubMConv3d(in_ch, out_ch, 3)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of module to zero (ADM's zero-initialised last convs)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM residual block: norm-SiLU-conv, then norm(h)*(1+scale)+shift from the embedding, SiLU, dropout, conv."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, norm_type: str = "group", num_groups: int = 32,
                 dropout: float = 0.0, use_depthwise: bool = False, use_checkpoint: bool = False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.in_norm = build_norm(norm_type, in_ch, num_groups)
        self.in_conv = conv3(in_ch, out_ch, use_depthwise)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.out_norm = build_norm(norm_type, out_ch, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(conv3(out_ch, out_ch, use_depthwise))
        self.skip = SubMConv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Field, emb: Optional[torch.Tensor] = None, activated: bool = False,
                modulation: Optional[torch.Tensor] = None) -> Field:
        """Same voxels, out_ch channels; emb [B, emb_dim] (already through SiLU when activated: a UNet applies it
        once for all its blocks), or modulation [B, 2 out_ch], the block's [scale | shift] = self.emb(silu(emb))
        computed by the caller (a UNet computes every block's in one matmul: stacked_linears)."""
        if (emb is None) == (modulation is None):
            raise ValueError("ResBlock takes either emb or modulation (the block's [scale | shift] from it)")
        if modulation is None:
            with autocast_off(emb.device.type):  # [B, 2C]: scale, then shift, in emb's dtype
                modulation = self.emb(emb if activated else F.silu(emb))
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            run = lambda v, m: values(self._forward(x.replace(v), m))  # noqa: E731
            params, vjp, grads = self._recomputed_params(), None, None
            if by_hand(self, x):  # kernel calls without modules, then a backward by hand
                if not worth_recomputing(values(x)):  # a small field: keep the activations, one node
                    forward = lambda v, m: resblock_forward(self, x.replace(v), m)  # noqa: E731
                    kept = lambda v, m, saved, g: self._grads_by_hand(x.replace(v), m, g, params, saved)  # noqa: E731
                    return x.replace(keep(forward, kept, (values(x), modulation), params))
                run = lambda v, m: resblock_forward(self, x.replace(v), m)[0]  # noqa: E731
                grads = lambda v, m, g: self._grads_by_hand(x.replace(v), m, g, params)  # noqa: E731
            elif all(isinstance(m, (SubMConv3d, nn.Identity)) for m in (self.out_conv, self.skip)):
                vjp = lambda v, m, g: self._tail_vjp(x.replace(v), m, g)  # noqa: E731
            return x.replace(recompute(run, (values(x), modulation), params, vjp, child(self, "dropout").p > 0, grads))
        return self._forward(x, modulation)

    def _recomputed_params(self) -> tuple:
        """The trainable parameters a checkpointed block recomputes with: all but the embedding's projection,
        whose output (the modulation) is the block's input."""
        return trainable(self, without=child(self, "emb"))

    def _grads_by_hand(self, x: Field, modulation: torch.Tensor, grad_out: torch.Tensor, params, saved=None) -> tuple:
        """For recompute and keep: the gradients of (x's values, modulation, *params) by resblock_grads (no autograd
        graph; from the forward's saved ops, else recomputing them)."""
        d_x, d_mod, grads = resblock_grads(self, x, modulation, grad_out, saved)
        return (d_x, d_mod, *(grads[p] for p in params))

    def _forward(self, x: Field, modulation: torch.Tensor) -> Field:
        h = self.out_conv(self._body(x, modulation))
        skip = self.skip(x)
        return h.replace(values(skip).to(values(h).dtype) + values(h))

    def _body(self, x: Field, modulation: torch.Tensor) -> Field:
        """Everything before the last conv: its input."""
        h = self.in_conv(norm_silu(self.in_norm, x))
        # dropout(silu(out_norm(h) * (1 + scale) + shift)): one op on the sparse path
        return norm_and_modulate(self.out_norm, h, modulation, silu=True, dropout=self.dropout)

    def _tail_vjp(self, x: Field, modulation: torch.Tensor, grad_out: torch.Tensor):
        """For recompute: the body recomputed, and the output's gradient taken through the last conv and the skip by
        their backward alone (their forward, and the sum's, are not re-run): (tensors, their gradients)."""
        h = self._body(x, modulation)
        operands = list(self.out_conv.conv_operands(h))
        grads = list(self.out_conv.operand_grads(h, operands, grad_out))
        if isinstance(self.skip, nn.Identity):
            return operands + [values(x)], grads + [grad_out.to(values(x).dtype)]
        skip_operands = list(self.skip.conv_operands(x))
        skip_grads = self.skip.operand_grads(x, skip_operands, grad_out.to(skip_operands[0].dtype))
        return operands + skip_operands, grads + list(skip_grads)


class Downsample(nn.Module):
    """Strided sparse conv with kernel = stride (each voxel feeds exactly one coarse voxel)."""

    def __init__(self, channels: int, stride: Sequence[int]):
        super().__init__()
        self.stride = tuple(stride)
        self.conv = SparseConv3d(channels, channels, self.stride, self.stride)

    def forward(self, x: Field) -> Field:
        """Coarser field; remembers the fine voxels for the matching Upsample."""
        return self.conv(x)


class Upsample(nn.Module):
    """Inverse conv back onto the exact voxels of the matching Downsample's input (the skip's voxels)."""

    def __init__(self, channels: int, stride: Sequence[int]):
        super().__init__()
        self.stride = tuple(stride)
        self.conv = SparseInverseConv3d(channels, channels, self.stride, self.stride)

    def forward(self, x: Field) -> Field:
        """Finer field on the skip's voxels."""
        return self.conv(x)
