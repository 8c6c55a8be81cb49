"""The latent stages: --stage ldm (EDM in a trained VAE's latent, --vae) and --stage cd (consistency distillation
of an ldm run, --teacher). The denoiser is a dense UNet on the latent grid, conditioned on the radar by a learned
sparse encoder or the radar pooled onto that grid (--ldm_condition)."""
from __future__ import annotations

import torch

from ..data.voxelize import RADAR_CHANNELS
from ..models.latent import LATENT_CONDITION_CHANNELS, LatentCodec, fit_scale
from ..models.radar_encoder import attach_encoder, encoder_config, latent_condition
from ..models.unet import UNet3D
from ..voxels import DenseVoxels
from .diffusion_stage import denoising_loss
from .frame_cache import frames_of
from .stage_base import Stage
from .stages import load_codec


class LatentStage(Stage):
    """Scaled latents of the targets in, the radar's condition on the latent grid."""

    columns = ("latent_cells",)

    def build(self, cfg, state):
        t = self.trainer
        if cfg.objective == "cd":  # latent cd: the teacher's codec and radar encoder
            cfg, model_cfg, teacher_state = self.load_teacher(cfg, state)
            self.codec = LatentCodec.from_record(teacher_state["latent"]).to(self.device)
        else:  # ldm: a resumed run keeps the VAE and scale its checkpoint carries
            self.codec = load_codec(cfg.vae, t.grid) if state is None else LatentCodec.from_record(state["latent"])
            self.codec.to(self.device)
            latent = self.codec.config.latent_channels
            model_cfg = cfg.model_config(self.codec.latent_shape(t.grid_shape), latent + LATENT_CONDITION_CHANNELS,
                                         latent)
            if cfg.ldm_condition == "learned":  # a resumed run keeps its checkpoint's encoder configuration
                self.encoder_config = state.get("radar_encoder") if state is not None else encoder_config(
                    len(RADAR_CHANNELS), self.codec)
            if state is None:  # the latents' scale, from the first 16 training samples (the same on every process)
                self.codec.scale = fit_scale(self.codec, [t.stream.pair(list(range(i, i + 4)))[1].to(self.device)
                                                          for i in range(0, 16, 4)], t.diffusion.sigma_data)
        torch.manual_seed(cfg.seed)
        self.model = attach_encoder(UNet3D(model_cfg).to(self.device), self.encoder_config)
        if cfg.stage == "cd" and self.encoder_config:  # the student conditions through the teacher's encoder
            self.model.radar_encoder.requires_grad_(False)
        return cfg

    def micro_step(self, positions, micro):
        t = self.trainer
        radar, target = t.stream.pair(positions)
        radar = radar.to(self.device)
        x0 = self.latents(positions, target)  # [B, L, D', H', W']
        sigma, noises = t.stream.draws(positions, [x0.shape[1:]] * len(positions), t.diffusion, self.device)
        noise = torch.stack(noises).to(self.device, x0.dtype)
        encoder_owner = self.teacher if self.cfg.objective == "cd" else self.model  # cd: the frozen teacher's
        cond = DenseVoxels.wrap(latent_condition(encoder_owner, self.codec, radar), None)
        cond = t.stream.drop_condition(cond, positions, self.cfg.cond_drop)
        # made here (finite by construction): no validation read of the device
        loss = denoising_loss(self, DenseVoxels.wrap(x0, None), cond, sigma, DenseVoxels.wrap(noise, None), micro)
        return loss, {"latent_cells": x0[:, 0].numel()}

    def latents(self, positions, target) -> torch.Tensor:
        """The frozen codec's scaled latents of the targets (host batch), encoded once per frame, each alone, and read
        back after (frame_cache.py); with --frame_cache_mb 0, as one batch every step."""
        if not self.cfg.frame_cache_mb:
            return self.codec.encode(target.to(self.device))
        entries = self.frame_entries(positions, lambda: frames_of(target),
                                     lambda frame: (self.codec.encode(frame.to(self.device))[0],))
        return torch.stack([e[0] for e in entries])

    def preview_sample(self, model, radar, target):
        g = torch.Generator().manual_seed(self.cfg.seed)
        cond = latent_condition(model, self.codec, radar.to(self.device))
        shape = (1, self.codec.config.latent_channels) + tuple(cond.shape[2:])
        x = DenseVoxels(torch.randn(shape, generator=g).to(self.device) * self.trainer.diffusion.sigma_max)
        out = self.sample_preview(model, x, DenseVoxels(cond))
        return self.codec.decode(out.data)
