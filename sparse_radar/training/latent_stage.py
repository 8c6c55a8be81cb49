"""The latent stages: --stage ldm (EDM in a trained VAE's latent, --vae) and --stage cd (consistency distillation
of an ldm run, --teacher). The denoiser is a dense UNet on the latent grid, conditioned on the radar by a learned
sparse encoder (which may read a frozen structure network's prediction too) or the radar pooled onto that grid
(--ldm_condition)."""
from __future__ import annotations

import dataclasses

import torch

from ..data.voxelize import RADAR_CHANNELS
from ..models.latent import LATENT_CONDITION_CHANNELS, LatentCodec, fit_scale
from ..models.radar_encoder import (attach_encoder, encoder_config, latent_condition, structure_condition,
                                    structure_radius)
from ..models.unet import UNet3D
from ..voxels import DenseVoxels, SparseVoxels
from .diffusion_stage import denoising_loss
from .frame_cache import frames_of, join_fields
from .stage_base import Stage
from .stages import load_codec, load_structure


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
            if state is not None:  # a run resumed keeps its precision (checkpoints before the latent fp32 default)
                model_cfg = dataclasses.replace(model_cfg, use_fp16=state["model_config"]["use_fp16"])
            if cfg.ldm_condition != "pooled":  # a resumed run keeps its checkpoint's encoder configuration
                self.encoder_config = state.get("radar_encoder") if state is not None else encoder_config(
                    len(RADAR_CHANNELS), self.codec, structure_radius=cfg.condition_radius()
                    if cfg.structure_conditioned_ldm else None)
            if state is None:  # the latents' scale, from the first 16 training samples (the same on every process)
                self.codec.scale = fit_scale(self.codec, [t.stream.pair(list(range(i, i + 4)))[1].to(self.device)
                                                          for i in range(0, 16, 4)], t.diffusion.sigma_data)
        if structure_radius(self.encoder_config) is not None:  # its structure network: a resumed ldm run's and a cd
            # run's come with the checkpoint they read
            source = teacher_state if cfg.objective == "cd" else (state if state is not None else cfg.structure)
            self.structure = load_structure(source, t.grid).to(self.device)
            self.structure.check_grid(t.grid_shape)
        torch.manual_seed(cfg.seed)
        self.model = attach_encoder(UNet3D(model_cfg).to(self.device), self.encoder_config)
        if cfg.stage == "cd" and self.encoder_config:  # the student conditions through the teacher's encoder
            self.model.radar_encoder.requires_grad_(False)
        return cfg

    def micro_step(self, positions, micro):
        t = self.trainer
        x0, radar = self.latents_and_condition(positions)  # [B, L, D', H', W'], what the encoder reads
        sigma, noises = t.stream.draws(positions, [x0.shape[1:]] * len(positions), t.diffusion, self.device)
        noise = torch.stack(noises).to(self.device, x0.dtype)
        encoder_owner = self.teacher if self.cfg.objective == "cd" else self.model  # cd: the frozen teacher's
        cond = DenseVoxels.wrap(latent_condition(encoder_owner, self.codec, radar), None)
        cond = t.stream.drop_condition(cond, positions, self.cfg.cond_drop)
        # made here (finite by construction): no validation read of the device
        loss = denoising_loss(self, DenseVoxels.wrap(x0, None), cond, sigma, DenseVoxels.wrap(noise, None), micro)
        return loss, {"latent_cells": x0[:, 0].numel()}

    def encoder_input(self, radar: SparseVoxels) -> SparseVoxels:
        """What the radar's condition is made from (on the device): the radar, or with a structure network the radar
        on its predicted support with its occupancy probability (structure_condition)."""
        radar = radar.to(self.device)
        if self.structure is None:
            return radar
        return structure_condition(self.structure, radar, structure_radius(self.encoder_config))

    def latents_and_condition(self, positions):
        """The frozen codec's scaled latents of the targets and the encoder's input (encoder_input) of a batch: the
        frozen networks' outputs are computed once per frame, each alone, and read back after (frame_cache.py;
        with a structure network a step whose frames are all kept loads none); with --frame_cache_mb 0, as one
        batch every step."""
        t = self.trainer
        if not self.cfg.frame_cache_mb:
            radar, target = t.stream.pair(positions)
            return self.codec.encode(target.to(self.device)), self.encoder_input(radar)
        if self.structure is None:  # the radar is read every step: load the batch once
            radar, target = t.stream.pair(positions)
            entries = self.frame_entries(positions, lambda: frames_of(target),
                                         lambda frame: (self.codec.encode(frame.to(self.device))[0],))
            return torch.stack([e[0] for e in entries]), radar.to(self.device)

        def frames():
            radar, target = t.stream.pair(positions)
            return list(zip(frames_of(radar), frames_of(target)))

        def compute(frame):
            cond = self.encoder_input(frame[0])
            return self.codec.encode(frame[1].to(self.device))[0], cond.structure.keys, cond.feats, cond.num_voxels
        entries = self.frame_entries(positions, frames, compute)
        return torch.stack([e[0] for e in entries]), join_fields([e[1:] for e in entries], t.grid_shape, self.device)

    def preview_sample(self, model, radar, target):
        g = torch.Generator().manual_seed(self.cfg.seed)
        cond = latent_condition(model, self.codec, self.encoder_input(radar))
        shape = (1, self.codec.config.latent_channels) + tuple(cond.shape[2:])
        x = DenseVoxels(torch.randn(shape, generator=g).to(self.device) * self.trainer.diffusion.sigma_max)
        out = self.sample_preview(model, x, DenseVoxels(cond))
        return self.codec.decode(out.data)
