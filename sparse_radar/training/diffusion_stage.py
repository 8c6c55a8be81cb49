"""The voxel-space diffusion stage (--stage diffusion): a UNet denoises the target on a support (the radar's
voxels dilated, the full grid, or a frozen structure network's prediction), by EDM, consistency distillation or
consistency training (--mode)."""
from __future__ import annotations

import torch

from ..data.support import training_fields
from ..diffusion.consistency import consistency_loss, ct_schedule
from ..diffusion.edm import Denoiser, edm_loss
from ..diffusion.fields import has_voxels
from ..diffusion.guidance import GuidedDenoiser
from ..models.radar_encoder import attach_encoder
from ..models.unet import UNet3D
from ..voxels import SparseVoxels
from .batches import host_counts
from .frame_cache import frames_of, join_support_fields, split_support_fields
from .stage_base import Stage
from .stages import load_structure, support_fields


class DiffusionStage(Stage):
    """Target + radar channels in (and the structure network's occupancy probability, where read)."""

    columns = ("support_voxels", "coverage", "skipped_samples")
    mean_columns = ("coverage",)

    def build(self, cfg, state):
        t = self.trainer
        if cfg.support == "predicted":  # a frozen structure network predicts where diffusion runs (a resumed run
            # keeps the one its checkpoint carries)
            self.structure = load_structure(state if state is not None else cfg.structure, t.grid).to(self.device)
            self.structure.check_grid(t.grid_shape)
        in_channels = 8 + int(cfg.structure_channel)
        if cfg.objective == "cd":
            cfg, model_cfg, _ = self.load_teacher(cfg, state)
            if model_cfg.in_channels != in_channels:
                raise ValueError(f"--teacher reads {model_cfg.in_channels} input channels but this run gives "
                                 f"{in_channels}: distil with the teacher's --support and --structure_prob")
        else:
            model_cfg = cfg.model_config(t.grid_shape, in_channels)
        torch.manual_seed(cfg.seed)
        self.model = attach_encoder(UNet3D(model_cfg).to(self.device), self.encoder_config)
        return cfg

    def support_fields(self, radar: SparseVoxels, target: SparseVoxels):
        """(target on the support, radar on it, coverage [B]) on the device, and the support voxels per sample (a
        list, taken on the host before the move; a predicted support is made on the device, its counts read with
        its size)."""
        cfg = self.cfg
        if self.structure is not None:
            tgt, cond, cov = support_fields(self.structure, radar.to(self.device), target.to(self.device),
                                            cfg.radius(), cfg.structure_channel)
            return tgt, cond, cov, host_counts(tgt)  # read with the support's size
        tgt, cond, cov = training_fields(cfg.support, radar, target, cfg.radius())
        return tgt.to(self.device), cond.to(self.device), cov, host_counts(tgt)

    def cached_support_fields(self, positions):
        """support_fields of the frames at these stream positions; a predicted support's are computed once per frame,
        each alone, and read back after without loading the frame (frame_cache.py; --frame_cache_mb 0: per batch)."""
        t = self.trainer
        if self.structure is None or not self.cfg.frame_cache_mb:
            return self.support_fields(*t.stream.pair(positions))

        def frames():
            radar, target = t.stream.pair(positions)
            return list(zip(frames_of(radar), frames_of(target)))
        entries = self.frame_entries(positions, frames,
                                     lambda frame: split_support_fields(*self.support_fields(*frame))[0])
        return join_support_fields(entries, t.grid_shape, self.device)

    def micro_step(self, positions, micro):
        t = self.trainer
        tgt, cond, cov, counts = self.cached_support_fields(positions)
        sigma, noises = t.stream.draws(positions, [(n, tgt.num_channels) for n in counts], t.diffusion, self.device)
        noise = tgt.replace(torch.cat(noises).to(self.device))
        logs = {"support_voxels": tgt.num_voxels, "coverage": cov.mean(),
                "skipped_samples": (~has_voxels(tgt)).sum()}  # empty samples: skipped by the loss
        # the condition lies on the target's support: the same counts
        cond = t.stream.drop_condition(cond, positions, self.cfg.cond_drop, counts)
        tgt, cond, noise = self.on_field(tgt), self.on_field(cond), self.on_field(noise)
        return denoising_loss(self, tgt, cond, sigma, noise, micro), logs

    def preview_sample(self, model, radar, target):
        g = torch.Generator().manual_seed(self.cfg.seed)
        tgt, cond, *_ = self.support_fields(radar, target)
        tgt = tgt.to("cpu")
        x = tgt.replace(torch.randn(tgt.feats.shape, generator=g) * self.trainer.diffusion.sigma_max).to(self.device)
        out = self.sample_preview(model, x, cond.to(self.device))
        return out if isinstance(out, SparseVoxels) else out.to_sparse()


def denoising_loss(stage: Stage, tgt, cond, sigma, noise, micro: int) -> torch.Tensor:
    """The stage's objective on one micro-batch, voxel or latent: EDM (Karras et al. 2022, eq. 2), consistency
    distillation of the guided teacher, or consistency training (Song et al. 2023, eq. 7 and 10)."""
    t, cfg = stage.trainer, stage.cfg
    if cfg.objective == "edm":
        return edm_loss(Denoiser(t.net, t.diffusion, cond), tgt, sigma, noise)
    g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + t.step) * 131 + micro * 17 + t.ctx.rank)
    student = Denoiser(t.net, t.diffusion, cond, consistency=True)
    target = Denoiser(t.cm_target, t.diffusion, cond, consistency=True)
    if cfg.objective == "cd":  # the teacher guided at --cd_guidance (1: unguided), recorded in the config
        teacher = GuidedDenoiser(Denoiser(stage.teacher, t.diffusion, cond), cfg.cd_guidance)
        return consistency_loss(student, target, tgt, cfg.cm_steps, teacher, g)
    n, _ = ct_schedule(t.step, cfg.steps)
    return consistency_loss(student, target, tgt, n, None, g)
