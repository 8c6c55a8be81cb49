"""Latent diffusion's data side: a frozen autoencoder with the scale that brings its latents to the diffusion's
sigma_data (Rombach et al. 2022, sec. 4.3.2: latents rescaled by their standard deviation), and the radar
condition pooled onto the latent grid."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from ..kernels.coords import constant, linear_keys
from ..voxels import SparseVoxels
from .vae import VAEConfig, build_autoencoder

LATENT_CONDITION_CHANNELS = 5
EMPTY = -1.0  # a channel's value where there is no voxel (as in data.voxelize)
DENSE_COUNT = 8  # radar voxels per latent cell that read as "dense" in the count channel


def radar_to_latent(radar: SparseVoxels, factor: Sequence[int], latent_shape: Sequence[int]) -> torch.Tensor:
    """[B, 5, D', H', W'] per latent cell: +1 where it holds a radar voxel (else -1), the mean rcs, doppler and
    doppler variance of its radar voxels (-1 where none), and min(1, count / 8) mapped to [-1, 1]."""
    b, shape = radar.batch_size, tuple(int(n) for n in latent_shape)
    cells = b * shape[0] * shape[1] * shape[2]
    f = constant([1] + [int(v) for v in factor], radar.device)
    keys = linear_keys(radar.coords.to(torch.int64) // f, shape)
    count = radar.feats.new_zeros(cells).index_add_(0, keys, radar.feats.new_ones(keys.numel()))
    sums = radar.feats.new_zeros(cells, radar.num_channels).index_add_(0, keys, radar.feats)
    hit = count > 0
    mean = torch.where(hit[:, None], sums / count.clamp_min(1)[:, None], torch.full_like(sums, EMPTY))
    occupied = torch.where(hit, 1.0, EMPTY).to(sums.dtype)
    density = (count / DENSE_COUNT).clamp_max(1.0) * 2 - 1
    out = torch.cat([occupied[:, None], mean[:, 1:4], density[:, None]], dim=1)  # [cells, 5]
    return out.reshape(b, *shape, LATENT_CONDITION_CHANNELS).movedim(-1, 1)


def occupancy_logit(threshold: float) -> float:
    """The logit of the occupancy probability (1 + threshold) / 2, threshold in [-1, 1) (2p - 1, the voxel
    models' occupancy scale; -1: -inf, every candidate)."""
    if not -1.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold must be in [-1, 1) (occupancy 2p - 1), got {threshold!r}")
    return -math.inf if threshold == -1.0 else math.log((1.0 + threshold) / (1.0 - threshold))


class LatentCodec:
    """A frozen VAE3D / VQVAE3D and its latent scale: encode target voxels to scaled latents, decode them back."""

    def __init__(self, autoencoder: torch.nn.Module, scale: float = 1.0):
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale = float(scale)
        strides = autoencoder.config.strides
        self.factor = tuple(math.prod(s[i] for s in strides) for i in range(3))  # full-res voxels per latent cell

    @property
    def config(self) -> VAEConfig:
        """The autoencoder's config."""
        return self.autoencoder.config

    def to(self, device) -> "LatentCodec":
        """Move the autoencoder (in place) and return self."""
        self.autoencoder.to(device)
        return self

    def latent_shape(self, grid_shape) -> Tuple[int, int, int]:
        """(D', H', W') of a voxel grid."""
        return self.config.latent_shape(grid_shape)

    @torch.no_grad()
    def encode(self, target: SparseVoxels) -> torch.Tensor:
        """Scaled latents [B, L, D', H', W'] of target voxels (the mean for a VAE, the codes for a VQ-VAE)."""
        z, _ = self.autoencoder.encode(target, sample=False)
        return z * self.scale

    @torch.no_grad()
    def decode(self, x: torch.Tensor, cap: Optional[int] = None, threshold: float = 0.0) -> SparseVoxels:
        """The voxels and features decoded from scaled latents (sparse path, no teacher forcing). threshold: on
        the occupancy scale of the voxel models, 2p - 1 in (-1, 1): the decoder keeps a voxel (at every level)
        where its occupancy probability p exceeds (1 + threshold) / 2; 0 keeps p > 1/2."""
        return self.autoencoder.decode(x / self.scale, cap=cap, keep_logit=occupancy_logit(threshold)).field

    def condition(self, radar: SparseVoxels) -> torch.Tensor:
        """The radar pooled onto the latent grid [B, 5, D', H', W']."""
        return radar_to_latent(radar, self.factor, self.latent_shape(radar.spatial_shape))

    def record(self) -> dict:
        """{'config', 'weights', 'scale'}: what a latent-diffusion checkpoint stores of its codec."""
        weights = {k: v.detach().cpu() for k, v in self.autoencoder.state_dict().items()}
        return {"config": self.config.to_dict(), "weights": weights, "scale": self.scale}

    @classmethod
    def from_record(cls, record: dict) -> "LatentCodec":
        """Rebuild a codec from record()."""
        autoencoder = build_autoencoder(VAEConfig.from_dict(record["config"]))
        autoencoder.load_state_dict(record["weights"])
        return cls(autoencoder, record.get("scale", 1.0))


def fit_scale(codec: LatentCodec, targets: Sequence[SparseVoxels], sigma_data: float) -> float:
    """The scale that gives the unscaled latents of these batches a standard deviation of sigma_data."""
    codec.scale = 1.0
    latents = torch.cat([codec.encode(t).flatten() for t in targets])
    std = float(latents.float().std())
    if not std > 0:
        raise ValueError("the autoencoder's latents are constant on these batches; train the VAE longer")
    return sigma_data / std
