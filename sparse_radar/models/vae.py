"""VAE3D and VQVAE3D for latent diffusion: a sparse encoder from the target voxels to a dense latent grid
(default 4x4x4 smaller), and the generative sparse decoder from the latent back to occupied voxels with features.

KL term: Kingma & Welling 2014, eq. 10, -1/2 mean(1 + log s^2 - m^2 - s^2), the log-variance clamped to [-30, 20]
as the reference does. VQ: van den Oord et al. 2017, eq. 3: ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2 with the
straight-through gradient."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.coords import lookup
from ..nn.attention import ATTENTION_TYPES, AttentionBlock
from ..nn.conv import SubMConv3d
from ..nn.field_ops import Field
from ..nn.norm import NORM_TYPES
from ..structure import VoxelStructure
from ..voxels import DenseVoxels, SparseVoxels
from .config import dataclass_from_dict
from .generative import (Generation, GenerativeDecoder, SparseEncoder, candidate_keys, fill_grid, flat_values,
                         level_settings, level_shapes)
from .structure_net import occupancy_loss

Triple = Tuple[int, int, int]


@dataclass
class VAEConfig:
    """Autoencoder hyper-parameters; channels per level are base_channels * channel_mult (finest first)."""

    kind: str = "vae"
    in_channels: int = 4
    latent_channels: int = 4
    base_channels: int = 24
    channel_mult: Tuple[int, ...] = (1, 2, 3)
    num_res_blocks: int = 1
    strides: Tuple[Triple, ...] = ((2, 2, 2), (2, 2, 2))
    attention_type: str = "none"
    num_heads: int = 4
    norm_type: str = "group"
    num_groups: int = 8
    kl_weight: float = 1e-6
    codebook_size: int = 8192
    commitment: float = 0.25
    dice_weight: float = 1.0
    cap: int = 0

    def __post_init__(self):
        if self.kind not in ("vae", "vqvae"):
            raise ValueError(f"VAEConfig.kind: expected 'vae' or 'vqvae', got {self.kind!r}")
        self.channel_mult, self.strides = level_settings("VAEConfig", "channel_mult", self.channel_mult, self.strides)
        for name in ("in_channels", "latent_channels", "base_channels", "num_res_blocks", "num_heads", "num_groups",
                     "codebook_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"VAEConfig.attention_type: expected one of {', '.join(ATTENTION_TYPES)}")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"VAEConfig.norm_type: expected one of {', '.join(NORM_TYPES)}, got {self.norm_type!r}")
        if min(self.kl_weight, self.commitment, self.dice_weight, self.cap) < 0:
            raise ValueError("VAEConfig: kl_weight, commitment, dice_weight and cap must be >= 0")

    def channels(self) -> Tuple[int, ...]:
        """Channels of each level, finest first."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    def latent_shape(self, grid_shape) -> Triple:
        """The latent grid (D', H', W') of a voxel grid; ValueError when the strides do not divide it."""
        return level_shapes(grid_shape, self.strides)[-1]

    def to_dict(self) -> dict:
        """Plain dict (JSON and checkpoint safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "VAEConfig":
        """From a dict; unknown keys are an error."""
        return dataclass_from_dict(cls, values, "unknown VAE option(s):")


def create_lightweight_vae_config(**overrides) -> VAEConfig:
    """The reference's lightweight VAE: base 24, channel_mult (1, 2, 3), one block per level, no attention."""
    return VAEConfig.from_dict({**dict(base_channels=24, channel_mult=(1, 2, 3), num_res_blocks=1,
                                       attention_type="none"), **overrides})


def create_standard_vae_config(**overrides) -> VAEConfig:
    """The reference's standard VAE: base 64, channel_mult (1, 2, 4), two blocks per level, attention on the
    latent grid."""
    return VAEConfig.from_dict({**dict(base_channels=64, channel_mult=(1, 2, 4), num_res_blocks=2,
                                       attention_type="flash"), **overrides})


VAE_PRESETS = {"lightweight": create_lightweight_vae_config, "standard": create_standard_vae_config}


@dataclass
class AutoencoderOutput:
    """The decoded voxels (every level's candidates) and the latent with its regulariser (KL or VQ loss)."""

    generation: Generation
    latent: torch.Tensor  # [B, latent_channels, D', H', W']
    regulariser: torch.Tensor


def as_grid_tensor(x: Field) -> torch.Tensor:
    """[B, C, D, H, W] of a field that covers its whole grid."""
    if isinstance(x, DenseVoxels):
        return x.data
    return x.feats.reshape(x.batch_size, *x.spatial_shape, x.num_channels).movedim(-1, 1)


def latent_field(z: torch.Tensor, sparse: bool) -> Field:
    """A latent [B, C, D, H, W] as a field on every cell: SparseVoxels or an unmasked DenseVoxels."""
    if not sparse:
        return DenseVoxels(z)
    structure = VoxelStructure.full(z.shape[0], tuple(z.shape[2:]), z.device)
    return SparseVoxels.wrap(z.movedim(1, -1).reshape(-1, z.shape[1]), structure)


class _Autoencoder(nn.Module):
    """Shared encoder (to `moments` x latent_channels on the latent grid) and generative decoder."""

    def __init__(self, config: VAEConfig, moments: int):
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise TypeError(f"{type(self).__name__} takes a VAEConfig, got {type(config).__name__}")
        self.config = c = config
        ch = c.channels()
        attention = lambda: (nn.Identity() if c.attention_type == "none" else
                             AttentionBlock(ch[-1], c.attention_type, c.num_heads, c.norm_type, c.num_groups))
        self.encoder = SparseEncoder(c.in_channels, ch, c.strides, c.norm_type, c.num_groups, c.num_res_blocks)
        self.encoder_attention = attention()
        self.to_latent = SubMConv3d(ch[-1], moments * c.latent_channels, 1)
        self.decoder = GenerativeDecoder(c.latent_channels, ch[::-1], c.strides[::-1], c.in_channels, c.norm_type,
                                         c.num_groups, c.num_res_blocks, coarse_module=attention())

    def moments(self, x: Field) -> torch.Tensor:
        """Encoder output on the latent grid [B, moments * latent_channels, D', H', W']."""
        if x.num_channels != self.config.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.config.in_channels} channels, got {x.num_channels}")
        coarse = self.encoder(x)[-1]
        return as_grid_tensor(self.to_latent(self.encoder_attention(fill_grid(coarse))))

    def decode(self, z: torch.Tensor, target: Optional[SparseVoxels] = None, cap: Optional[int] = None,
               sparse: bool = True, keep_logit: float = 0.0) -> Generation:
        """Voxels and features decoded from a latent [B, latent_channels, D', H', W'] (target: teacher forcing;
        keep_logit: each level keeps the candidates whose occupancy logit exceeds it)."""
        if z.dim() != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected a latent [B, {self.config.latent_channels}, D, H, W], got {tuple(z.shape)}")
        cap = self.config.cap if cap is None else cap
        return self.decoder(latent_field(z, sparse), None, target, cap, keep_logit)

    def forward(self, x: Field, target: Optional[SparseVoxels] = None) -> AutoencoderOutput:
        """Encode x, decode on the same field type (teacher-forced on target when given)."""
        z, reg = self.encode(x)
        return AutoencoderOutput(self.decode(z, target, sparse=isinstance(x, SparseVoxels)), z, reg)


class VAE3D(_Autoencoder):
    """Gaussian latent: encode gives z = mean + std * noise (mean alone when sample=False) and the KL term."""

    def __init__(self, config: VAEConfig):
        super().__init__(config, 2)

    def encode(self, x: Field, sample: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(latent [B, L, D', H', W'], KL divergence to N(0, I), mean over latent elements)."""
        mean, logvar = self.moments(x).chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        kl = -0.5 * torch.mean(1 + logvar - mean.square() - logvar.exp())
        if not (sample and self.training):
            return mean, kl
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean), kl


class VQVAE3D(_Autoencoder):
    """Vector-quantised latent: each latent cell snaps to its nearest of codebook_size code vectors."""

    def __init__(self, config: VAEConfig):
        super().__init__(config, 1)
        self.codebook = nn.Embedding(config.codebook_size, config.latent_channels)
        nn.init.uniform_(self.codebook.weight, -1.0 / config.codebook_size, 1.0 / config.codebook_size)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def _init_codes(self, flat: torch.Tensor) -> None:
        """Data-dependent start: the codes become encoder outputs of the first training batch (drawn with
        replacement), so no code starts far from every latent and dies unused."""
        pick = torch.randint(0, flat.shape[0], (self.codebook.num_embeddings,), device=flat.device)
        self.codebook.weight.copy_(flat[pick].to(self.codebook.weight.dtype))
        self.initialised.fill_(True)

    def quantize(self, z_e: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantised latent with straight-through gradient, VQ loss, code indices [B, D', H', W'])."""
        flat = z_e.movedim(1, -1).reshape(-1, z_e.shape[1])  # [M, L]
        if self.training and not bool(self.initialised):
            self._init_codes(flat.detach())
        codes = self.codebook.weight
        dist = flat.square().sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.square().sum(1)[None]
        index = dist.argmin(dim=1)
        z_q = codes[index].reshape(*z_e.shape[:1], *z_e.shape[2:], z_e.shape[1]).movedim(-1, 1)
        loss = F.mse_loss(z_q, z_e.detach()) + self.config.commitment * F.mse_loss(z_e, z_q.detach())
        return z_e + (z_q - z_e).detach(), loss, index.reshape(z_e.shape[0], *z_e.shape[2:])

    def encode(self, x: Field, sample: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(quantised latent, VQ loss)."""
        z_q, loss, _ = self.quantize(self.moments(x))
        return z_q, loss


def build_autoencoder(config: VAEConfig) -> _Autoencoder:
    """VAE3D or VQVAE3D, as config.kind says."""
    return VAE3D(config) if config.kind == "vae" else VQVAE3D(config)


def autoencoder_loss(model: _Autoencoder, target: SparseVoxels,
                     out: AutoencoderOutput) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Occupancy (BCE + Dice per level) + feature MSE at the target voxels + KL weight * KL (VAE) or the VQ loss;
    out must be decoded with teacher forcing on target."""
    occ, logs = occupancy_loss(out.generation.levels, model.config.dice_weight)
    field = out.generation.field
    rows = lookup(candidate_keys(field), target.structure.keys.to(field.device))
    if bool((rows < 0).any()):
        raise ValueError("autoencoder_loss needs the output decoded with teacher forcing on this target")
    feature = F.mse_loss(flat_values(field)[rows].float(), target.feats.float())
    weight = model.config.kl_weight if isinstance(model, VAE3D) else 1.0
    logs.update(occupancy=occ.detach(), feature_mse=feature.detach(), regulariser=out.regulariser.detach())
    return occ + feature + weight * out.regulariser, logs
