"""A learned radar encoder for latent diffusion: sparse convolutions take the radar voxels to the latent grid, in place
of the radar pooled onto it (models.latent.radar_to_latent), and train with the latent denoiser.

It rides on the latent UNet as its `radar_encoder` submodule, so the optimizer, the EMA and the checkpoint's weights
hold it with the denoiser; the checkpoint's `radar_encoder` entry records its configuration. With
--ldm_condition structure it reads the radar on a frozen structure network's predicted support, with the network's
occupancy probability as one more channel (as the voxel denoiser on that support does): its configuration then
records the support's dilation, and the checkpoint carries the network.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..data.support import on_support
from ..nn.conv import SparseConv3d, SubMConv3d
from ..nn.field_ops import cat_channels
from ..nn.norm import build_norm, norm_silu
from ..voxels import SparseVoxels
from .latent import LATENT_CONDITION_CHANNELS, LatentCodec
from .structure_net import StructureNet, predicted_support

NULL = -1.0  # a latent cell without radar (and the dropped condition of classifier-free guidance)


class RadarLatentEncoder(nn.Module):
    """Radar voxels [N, C] -> [B, 5, D', H', W'] on the latent grid: a submanifold conv, a strided conv whose kernel
    is the latent cell (each radar voxel feeds exactly its cell), a 1x1x1 conv and tanh; cells without radar NULL."""

    def __init__(self, radar_channels: int, factor: Sequence[int], width: int = 32,
                 structure_radius: Optional[Sequence[int]] = None):
        super().__init__()
        self.radar_channels, self.factor, self.width = int(radar_channels), tuple(int(f) for f in factor), int(width)
        # reading structure_condition's field (dilated by this radius) rather than the radar alone
        self.structure_radius = None if structure_radius is None else tuple(int(r) for r in structure_radius)
        self.stem = SubMConv3d(self.radar_channels, self.width, 3)
        self.stem_norm = build_norm("group", self.width, 8)
        self.pool = SparseConv3d(self.width, self.width, self.factor, stride=self.factor)
        self.pool_norm = build_norm("group", self.width, 8)
        self.head = SubMConv3d(self.width, LATENT_CONDITION_CHANNELS, 1)

    def forward(self, radar: SparseVoxels, latent_shape: Sequence[int]) -> torch.Tensor:
        """The radar's condition on a latent grid of latent_shape (D', H', W'): [B, 5, D', H', W']."""
        h = self.pool(norm_silu(self.stem_norm, self.stem(radar)))
        h = self.head(norm_silu(self.pool_norm, h))
        if tuple(h.spatial_shape) != tuple(latent_shape):
            raise ValueError(f"the radar encoder's grid {tuple(h.spatial_shape)} is not the latent grid "
                             f"{tuple(latent_shape)}")
        dense = h.replace(torch.tanh(h.feats)).to_dense()
        return torch.where(dense.mask, dense.data, torch.full_like(dense.data, NULL))

    def config(self) -> dict:
        """What rebuilds it (a checkpoint's `radar_encoder`)."""
        config = {"radar_channels": self.radar_channels, "factor": list(self.factor), "width": self.width}
        if self.structure_radius is not None:
            config["structure_radius"] = list(self.structure_radius)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "RadarLatentEncoder":
        """From config()."""
        return cls(config["radar_channels"], config["factor"], config["width"], config.get("structure_radius"))


def encoder_config(radar_channels: int, codec: LatentCodec, width: int = 32,
                   structure_radius: Optional[Sequence[int]] = None) -> dict:
    """The configuration of a new encoder onto codec's latent grid (its cell is the strided conv's kernel); with
    structure_radius (z, y, x) it reads a structure network's prediction (structure_condition) too."""
    reads_structure = structure_radius is not None
    config = {"radar_channels": int(radar_channels) + (1 if reads_structure else 0),  # + the probability channel
              "factor": list(codec.factor), "width": int(width)}
    if reads_structure:
        config["structure_radius"] = [int(r) for r in structure_radius]
    return config


def structure_radius(config: Optional[dict]) -> Optional[Tuple[int, int, int]]:
    """The support dilation of an encoder that reads a structure network's prediction, else None."""
    radius = (config or {}).get("structure_radius")
    return None if radius is None else tuple(int(r) for r in radius)  # type: ignore[return-value]


def structure_condition(net: StructureNet, radar: SparseVoxels, radius=(0, 0, 0)) -> SparseVoxels:
    """The radar on the network's predicted support (its voxels with the radar's, dilated by radius), then the
    network's occupancy probability on it as one more channel."""
    support, prob = predicted_support(net, radar, radius, probability=True)
    return cat_channels(on_support(radar, support), prob)


def attach_encoder(unet: nn.Module, config: Optional[dict]) -> nn.Module:
    """unet with a RadarLatentEncoder of config as its `radar_encoder` submodule (config None: unchanged)."""
    if config:
        unet.radar_encoder = RadarLatentEncoder.from_config(config).to(next(unet.parameters()).device)
    return unet


def latent_condition(unet: nn.Module, codec: LatentCodec, radar: SparseVoxels) -> torch.Tensor:
    """The latent denoiser's condition [B, 5, D', H', W']: its learned encoder's, else the pooled radar."""
    encoder = getattr(unet, "radar_encoder", None)
    shape: Tuple[int, int, int] = codec.latent_shape(radar.spatial_shape)
    return codec.condition(radar) if encoder is None else encoder(radar, shape)
