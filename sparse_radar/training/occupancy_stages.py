"""The stages that learn occupancy rather than denoise: --stage structure (where the scene is, from the radar)
and --stage vae (the autoencoder of latent diffusion). Each logs the finest level's kept voxels and their recall
of the target."""
from __future__ import annotations

import torch

from ..data.voxelize import RADAR_CHANNELS, TARGET_CHANNELS
from ..models.structure_net import occupancy_loss
from ..models.vae import autoencoder_loss
from ..voxels import SparseVoxels
from .config import given_flags
from .run_folder import ARCH_FLAGS
from .stage_base import Stage
from .stages import build_structure, build_vae


def _reject_unet_flags(cfg) -> None:
    unused = sorted(given_flags(cfg) & set(ARCH_FLAGS))
    if unused:
        raise ValueError(f"--stage {cfg.stage} trains a network of its own; the UNet flags "
                         f"{', '.join('--' + n for n in unused)} do not apply to it")


def occupancy_logs(logs: dict, levels, kept: str) -> dict:
    """The finest level's voxels with a positive logit (under `kept`) and their recall of the target."""
    recall = logs.get(f"recall_{len(levels) - 1}")
    return {kept: (levels[-1].logits > 0).sum(), "recall": 1.0 if recall is None else recall}


def _as_preview(kept) -> SparseVoxels:
    kept = kept if isinstance(kept, SparseVoxels) else kept.to_sparse()
    return kept.replace(kept.feats.new_ones(kept.num_voxels, 1))


class StructureStage(Stage):
    """The structure network: radar in, occupancy per level out (BCE + Dice, --dice_weight)."""

    columns = ("predicted_voxels", "recall")
    mean_columns = ("recall",)

    def build(self, cfg, state):
        _reject_unet_flags(cfg)
        torch.manual_seed(cfg.seed)
        self.model = build_structure(len(RADAR_CHANNELS), cfg.structure_cap, cfg.dice_weight).to(self.device)
        self.model.check_grid(self.trainer.grid_shape)
        return cfg

    def micro_step(self, positions, micro):
        t = self.trainer
        radar, target = (f.to(self.device) for f in t.stream.pair(positions))
        levels = t.net(self.on_field(radar), target).levels
        loss, logs = occupancy_loss(levels, self.cfg.dice_weight)
        return loss, occupancy_logs(logs, levels, "predicted_voxels")

    def preview_sample(self, model, radar, target):
        return _as_preview(model(self.on_field(radar.to(self.device))).field)


class VAEStage(Stage):
    """The VAE or VQ-VAE of latent diffusion: target in, target out through the latent."""

    columns = ("decoded_voxels", "recall")
    mean_columns = ("recall",)

    def build(self, cfg, state):
        _reject_unet_flags(cfg)
        torch.manual_seed(cfg.seed)
        self.model = build_vae(cfg, len(TARGET_CHANNELS), self.trainer.grid_shape).to(self.device)
        return cfg

    def micro_step(self, positions, micro):
        t = self.trainer
        target = t.stream.pair(positions)[1].to(self.device)
        out = t.net(self.on_field(target), target)
        loss, logs = autoencoder_loss(self.model, target, out)
        return loss, occupancy_logs(logs, out.generation.levels, "decoded_voxels")

    def preview_sample(self, model, radar, target):
        return _as_preview(model(self.on_field(target.to(self.device))).generation.field)
