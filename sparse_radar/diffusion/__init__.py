"""Diffusion: EDM preconditioning and loss, samplers, consistency distillation / training."""
from .consistency import cm_sigmas, consistency_loss, ct_schedule, ema_update
from .edm import (DiffusionConfig, Denoiser, consistency_scalings, edm_loss, edm_scalings, edm_weight,
                  karras_sigmas, sample_sigma)
from .samplers import sample_consistency, sample_euler, sample_heun

__all__ = ["DiffusionConfig", "Denoiser", "edm_scalings", "consistency_scalings", "edm_weight", "edm_loss",
           "sample_sigma", "karras_sigmas", "sample_euler", "sample_heun", "sample_consistency", "cm_sigmas",
           "consistency_loss", "ct_schedule", "ema_update"]
