"""The sampling a Densifier runs: seeded starting noise per frame, classifier-free guidance, the chosen sampler, and
the latent chain (sample latents, decode them to voxels)."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from .diffusion.edm import DiffusionConfig, Denoiser, karras_sigmas
from .diffusion.guidance import GuidedDenoiser
from .diffusion.samplers import sample_consistency, sample_euler, sample_heun
from .models.latent import LatentCodec
from .models.radar_encoder import latent_condition, structure_condition
from .sampling_settings import SamplerSettings
from .structure import VoxelStructure
from .voxels import DenseVoxels, SparseVoxels


def frame_noise(shapes, seed: int, frame_ids: Optional[Sequence[int]]) -> List[torch.Tensor]:
    """Unit noise of each sample's shape, drawn from (seed, its frame id; default its place in the batch), so a
    frame's noise does not depend on the other frames of its batch."""
    ids = list(range(len(shapes))) if frame_ids is None else list(frame_ids)
    if len(ids) != len(shapes):
        raise ValueError(f"frame_ids must name each of the {len(shapes)} samples, got {len(ids)}")
    return [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
            for i, shape in zip(ids, shapes)]


def support_noise(support: VoxelStructure, channels: int, seed: int,
                  frame_ids: Optional[Sequence[int]]) -> torch.Tensor:
    """Unit noise [N, channels] on the support, drawn per sample from (seed, frame id) (see frame_noise)."""
    row_ptr = support.row_ptr().cpu()
    parts = frame_noise([(int(n), channels) for n in row_ptr[1:] - row_ptr[:-1]], seed, frame_ids)
    return torch.cat(parts) if parts else torch.zeros(0, channels)


def guided(den: Denoiser, settings: SamplerSettings, cond_drop: float):
    """den, guided at settings.guidance (classifier-free, Ho & Salimans 2022) unless that is 1; a model trained
    without condition dropout (cond_drop 0) has no unconditional branch and is refused."""
    if settings.guidance == 1.0:
        return den
    if not cond_drop > 0:
        raise ValueError(f"guidance {settings.guidance:g} needs a model trained with condition dropout "
                         f"(--cond_drop > 0); this one was trained with --cond_drop 0, so it has no "
                         f"unconditional branch: sample with guidance 1")
    return GuidedDenoiser(den, settings.guidance)


def run_sampler(den, x, settings: SamplerSettings, diffusion: DiffusionConfig, seed: int, progress: bool,
                sigma_min: float, sigma_max: float, device: torch.device, autocast: Callable):
    """Run the chosen sampler from x (noise at sigma_max) under the autocast context autocast() gives."""
    g = torch.Generator(device=device).manual_seed(seed)
    with autocast():
        if settings.sampler in ("onestep", "multistep"):
            n = 1 if settings.sampler == "onestep" else settings.steps
            levels = karras_sigmas(n, sigma_min, sigma_max, diffusion.rho)[:-1].tolist()
            return sample_consistency(den, x, levels, diffusion.sigma_min, g, progress)
        sigmas = karras_sigmas(settings.steps, sigma_min, sigma_max, diffusion.rho).to(device)
        if settings.sampler == "heun":
            return sample_heun(den, x, sigmas, settings.s_churn, generator=g, progress=progress)
        return sample_euler(den, x, sigmas, progress)


def generate_latent(densifier, radar: SparseVoxels, settings: SamplerSettings, seed: int, frame_ids,
                    progress: bool, sigma_min: float, sigma_max: float) -> SparseVoxels:
    """A latent Densifier's sample: scaled latents conditioned on the radar (its learned encoder, else the pooled
    radar), decoded to voxels with features."""
    codec: LatentCodec = densifier.codec
    if densifier.structure is not None:  # an encoder that reads the structure network's prediction too
        radar = structure_condition(densifier.structure, radar, densifier.model.radar_encoder.structure_radius)
    cond = latent_condition(densifier.model, codec, radar)  # [B, 5, D', H', W']
    shape = (codec.config.latent_channels,) + tuple(cond.shape[2:])
    noise = torch.stack(frame_noise([shape] * radar.batch_size, seed, frame_ids)).to(densifier.device)
    den = guided(Denoiser(densifier.model, densifier.diffusion, DenseVoxels(cond), consistency=densifier.consistency),
                 settings, densifier.cond_drop)
    out = run_sampler(den, DenseVoxels(noise * sigma_max), settings, densifier.diffusion, seed, progress, sigma_min,
                      sigma_max, densifier.device, densifier._autocast)
    decoded = codec.decode(out.data.float(), threshold=settings.threshold)  # the decoder keeps 2p - 1 > threshold
    return decoded.replace(decoded.feats.float())
