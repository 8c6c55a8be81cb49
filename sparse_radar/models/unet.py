"""UNet3D: the reference's ADM-style 3D UNet, one module tree for SparseVoxels and DenseVoxels."""
from __future__ import annotations

import contextlib
from typing import List, Union

import torch
from torch import nn

from ..kernels.backends import autocast_off
from ..nn.attention import AttentionBlock
from ..nn.blocks import Downsample, ResBlock, Upsample, timestep_embedding, zero_module
from ..nn.conv import SubMConv3d
from ..nn.field_ops import cat_channels, check_field
from ..nn.modulation import stacked_linears
from ..nn.norm import build_norm, norm_silu
from ..nn.parts import child
from ..voxels import DenseVoxels, SparseVoxels
from .config import UNetConfig
from .unet_by_hand import body_by_hand, run_body

Field = Union[SparseVoxels, DenseVoxels]


class _Level(nn.Module):
    """ResBlocks, each optionally followed by attention, of one encoder or decoder level."""

    def __init__(self, blocks: List[ResBlock], attns: List[nn.Module]):
        super().__init__()
        self.blocks, self.attns = nn.ModuleList(blocks), nn.ModuleList(attns)


class UNet3D(nn.Module):
    """model(x, noise_labels): x a field with in_channels, noise_labels [B]; returns the same field type with
    out_channels on the same voxels."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"UNet3D takes a UNetConfig, got {type(config).__name__}")
        self.config = c = config
        mc, emb_dim = c.model_channels, 4 * c.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_conv = SubMConv3d(c.in_channels, mc, 3)
        res = lambda i, o: ResBlock(i, o, emb_dim, c.norm_type, c.num_groups, c.dropout, c.use_depthwise,
                                    c.use_checkpoint)
        attn = lambda ch, ds: self._attention(ch) if ds in c.attention_resolutions else nn.Identity()
        strides = c.level_strides()
        self.encoder, self.downs, skips = nn.ModuleList(), nn.ModuleList(), [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(c.channel_mult):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(res(ch, mult * mc))
                ch = mult * mc
                attns.append(attn(ch, ds))
                skips.append(ch)
            self.encoder.append(_Level(blocks, attns))
            if level < len(strides):
                self.downs.append(Downsample(ch, strides[level]))
                skips.append(ch)
                ds *= 2
        self.middle = _Level([res(ch, ch), res(ch, ch)], [self._attention(ch)])
        self.decoder, self.ups = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(c.channel_mult))):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(res(ch + skips.pop(), c.channel_mult[level] * mc))
                ch = c.channel_mult[level] * mc
                attns.append(attn(ch, ds))
            self.decoder.append(_Level(blocks, attns))
            if level > 0:
                self.ups.append(Upsample(ch, strides[level - 1]))
                ds //= 2
        self.out_norm = build_norm(c.norm_type, ch, c.num_groups)
        self.out_conv = zero_module(SubMConv3d(ch, c.out_channels, 3))

    def _attention(self, ch: int) -> nn.Module:
        c = self.config
        if c.attention_type == "none":
            return nn.Identity()
        self._attention_blocks = getattr(self, "_attention_blocks", 0) + 1
        shifted = self._attention_blocks % 2 == 0  # every second block moves serialized attention's patch cuts
        return AttentionBlock(ch, c.attention_type, c.num_heads, c.norm_type, c.num_groups, c.window_size,
                              topk=c.topk, patch_size=c.patch_size, use_checkpoint=c.use_checkpoint,
                              shifted=shifted)

    def _autocast(self, device: torch.device):
        if not self.config.use_fp16:
            return contextlib.nullcontext()
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        return torch.autocast(device.type, dtype=dtype)

    def forward(self, x: Field, noise_labels: torch.Tensor) -> Field:
        """Denoiser network output F(x, c_noise) on the voxels of x."""
        check_field(x, "UNet3D")
        if x.num_channels != self.config.in_channels:
            raise ValueError(f"UNet3D expects {self.config.in_channels} input channels, got {x.num_channels}")
        if not isinstance(noise_labels, torch.Tensor) or noise_labels.shape != (x.batch_size,):
            shape = tuple(noise_labels.shape) if isinstance(noise_labels, torch.Tensor) else type(noise_labels)
            raise ValueError(f"noise_labels must be a tensor of shape [{x.batch_size}], got {shape}")
        self.config.check_grid(x.spatial_shape)
        weight = self.input_conv.weight
        if x.dtype != weight.dtype:
            raise TypeError(
                f"UNet3D: the input field is {x.dtype} but the model's weights are {weight.dtype}; cast one to the "
                f"other (x.to({weight.dtype}) or model.to({x.dtype})). For mixed precision keep fp32 inputs and "
                f"set UNetConfig.use_fp16=True (autocast)")
        with self._autocast(x.device):
            out = self._run(x, noise_labels)
        return out.replace((out.feats if isinstance(out, SparseVoxels) else out.data).to(x.dtype))

    def _run(self, x: Field, noise_labels: torch.Tensor) -> Field:
        if isinstance(x, SparseVoxels):
            self._build_levels(x)
        # the embedding and every block's scale-shift from it stay in the model's dtype under autocast: tiny [B, C]
        # matmuls, and the norm kernels read the modulation in fp32 anyway (no cast per block)
        with autocast_off(noise_labels.device.type):
            emb = self.time_embed(timestep_embedding(noise_labels, self.config.model_channels).to(x.dtype))
            emb = torch.nn.functional.silu(emb)  # what every ResBlock's projection reads: once here, not per block
        blocks = [b for level in (*self.encoder, self.middle, *self.decoder) for b in child(level, "blocks")]
        # every block's [scale | shift] in one matmul, in the order the blocks run
        modulations = iter(stacked_linears(emb, [child(b, "emb") for b in blocks]))
        h = self.input_conv(x)
        params = body_by_hand(self, h)
        if params is not None:  # a checkpointed sparse training step: the whole body as one autograd node
            h = run_body(self, h, list(modulations), params)
        else:
            h = self._body(h, modulations, _Modules)
        return self.out_conv(norm_silu(self.out_norm, h))

    def _build_levels(self, x: SparseVoxels) -> None:
        """Every strided level's voxels and kernel map, before any of the step's work: the one host read each level
        takes (its size and per-sample counts) then waits for the map builders alone, not for queued convs, norms and
        attention in the middle of the forward. The downsamples find them in the structures' caches."""
        structure = x.structure
        for down in self.downs:
            conv = child(down, "conv")
            _, structure = structure.downsample(conv.kernel_size, conv.stride, conv.padding, conv.dilation)

    def _body(self, h, modulations, step):
        """The blocks, downsamples, upsamples and skip concatenations between the input conv and the output norm,
        each applied by step (_Modules: the modules themselves; unet_by_hand's tape: by hand, recorded)."""
        skips = [h]
        for level, stage in enumerate(self.encoder):
            for block, attn in zip(child(stage, "blocks"), child(stage, "attns")):
                h = step.attn(attn, step.block(block, h, next(modulations)))
                skips.append(h)
            if level < len(self.downs):
                h = step.conv(self.downs[level], h)
                skips.append(h)
        middle = child(self, "middle")
        blocks = child(middle, "blocks")
        h = step.block(blocks[0], h, next(modulations))
        h = step.block(blocks[1], step.attn(child(middle, "attns")[0], h), next(modulations))
        for level, stage in enumerate(self.decoder):
            for block, attn in zip(child(stage, "blocks"), child(stage, "attns")):
                h = step.attn(attn, step.block(block, step.cat(h, skips.pop()), next(modulations)))
            if level < len(self.ups):
                h = step.conv(self.ups[level], h)
        return h


class _Modules:
    """UNet3D._body's steps as the modules' own calls."""

    @staticmethod
    def block(block: nn.Module, h: Field, modulation: torch.Tensor) -> Field:
        return block(h, modulation=modulation)

    @staticmethod
    def attn(module: nn.Module, h: Field) -> Field:
        return module(h)

    conv = attn
    cat = staticmethod(cat_channels)
