"""AttentionBlock: norm, qkv, an attention core chosen by attention_type, zero-initialised projection."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..kernels import coords as kc
from ..voxels import SparseVoxels
from .attention_by_hand import attention_by_hand, attention_forward, attention_grads
from .attention_cores import (GlobalAttention, HeightAttention, LinearAttention, SerializedAttention,
                              TopKAttention, WindowAttention)
from .field_ops import Field, check_field, values
from .norm import build_norm
from .recompute import keep, recompute, trainable, worth_recomputing

ATTENTION_TYPES = ("flash", "window", "linear", "sparse", "height", "serialized", "none")


def build_attention_core(attention_type: str, num_heads: int, window_size=(4, 4, 4), shift=(0, 0, 0),
                         topk: int = 32, patch_size: int = 64, shifted: bool = False) -> nn.Module:
    """The attention core module of an attention_type (not 'none'); shifted moves serialized patch cuts."""
    if attention_type == "flash":
        return GlobalAttention()
    if attention_type == "window":
        return WindowAttention(num_heads, kc.as_triple(window_size, "window_size"), kc.as_triple(shift, "shift"))
    if attention_type == "linear":
        return LinearAttention()
    if attention_type == "sparse":
        return TopKAttention(topk)
    if attention_type == "height":
        return HeightAttention()
    if attention_type == "serialized":
        return SerializedAttention(patch_size, shifted)
    raise ValueError(f"unknown attention_type {attention_type!r}; expected one of {', '.join(ATTENTION_TYPES)}")


class AttentionBlock(nn.Module):
    """x + proj(attention(qkv(norm(x)))) over the active voxels (dense path: key-padding masks)."""

    def __init__(self, channels: int, attention_type: str = "flash", num_heads: int = 4, norm_type: str = "group",
                 num_groups: int = 32, window_size: Sequence[int] = (4, 4, 4), shift: Sequence[int] = (0, 0, 0),
                 topk: int = 32, patch_size: int = 64, use_checkpoint: bool = False, shifted: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.channels, self.num_heads, self.use_checkpoint = channels, num_heads, use_checkpoint
        self.norm = build_norm(norm_type, channels, num_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.core = build_attention_core(attention_type, num_heads, window_size, shift, topk, patch_size, shifted)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Field) -> Field:
        """Same field type and voxels, attention added as a residual (recomputed in backward when checkpointing,
        as ADM checkpoints its attention blocks)."""
        check_field(x, "AttentionBlock")
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            run = lambda v: values(self._forward(x.replace(v)))  # noqa: E731
            params, grads = trainable(self), None
            if attention_by_hand(self, x):  # the norm and the projections by hand, the core under autograd
                if not worth_recomputing(values(x)):  # a small field: keep the activations, one node
                    forward = lambda v: attention_forward(self, x.replace(v))  # noqa: E731
                    kept = lambda v, saved, g: self._grads_by_hand(x.replace(v), g, params, saved)  # noqa: E731
                    return x.replace(keep(forward, kept, (values(x),), params))
                run = lambda v: attention_forward(self, x.replace(v), with_graph=False)[0]  # noqa: E731
                grads = lambda v, g: self._grads_by_hand(x.replace(v), g, params)  # noqa: E731
            return x.replace(recompute(run, (values(x),), params, random=False, by_hand=grads))
        return self._forward(x)

    def _grads_by_hand(self, x: SparseVoxels, grad_out: torch.Tensor, params, saved=None) -> tuple:
        """For recompute and keep: the gradients of (x's values, *params) by attention_grads."""
        d_x, grads = attention_grads(self, x, grad_out, saved)
        return (d_x, *(grads[p] for p in params))

    def _forward(self, x: Field) -> Field:
        if isinstance(x, SparseVoxels):
            return x.replace(x.feats + self.proj(self._sparse_body(x)))
        h = self.norm(x)
        b, spatial = h.batch_size, h.spatial_shape
        qkv = self.qkv(h.data.movedim(1, -1)).movedim(-1, 1)  # [B, 3C, D, H, W]
        q, k, v = qkv.reshape(b, 3, self.num_heads, -1, *spatial).unbind(1)  # each [B, heads, d, D, H, W]
        out = self.core.dense(q, k, v, x.mask).reshape(b, self.channels, *spatial)
        out = self.proj(out.movedim(1, -1)).movedim(-1, 1)
        data = x.data + out
        return x.replace(data if x.mask is None else data * x.mask.to(data.dtype))

    def _sparse_body(self, x: SparseVoxels) -> torch.Tensor:
        """The attention's output [N, C] on the sparse path, before the output projection."""
        h = self.norm(x)
        n = h.num_voxels
        head_dim = self.channels // self.num_heads
        q, k, v = self.qkv(h.feats).view(n, 3, self.num_heads, head_dim).unbind(1)  # each [N, heads, d]
        return self.core.sparse(q, k, v, h).reshape(n, self.channels)  # [N, heads, d] -> [N, C]
