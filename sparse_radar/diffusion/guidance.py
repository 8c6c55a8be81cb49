"""Classifier-free guidance (Ho & Salimans, 2022): the condition dropped for a share of the training samples, so one
network learns both D(x | radar) and D(x | nothing), and sampling extrapolates from the second to the first.

The "nothing" condition is every condition channel at -1: what the voxel-space condition (radar channels on the
support, -1 where no radar voxel is) and the latent one (the radar pooled onto the latent grid) both are for a scan
with no radar point.
"""
from __future__ import annotations

import torch

from .edm import Denoiser
from .fields import State, like, per_row, vals

NULL = -1.0  # the condition channels' value where there is no radar


def null_condition(condition: State) -> State:
    """The condition of a scan with no radar: every value NULL, on the same voxels."""
    return like(condition, torch.full_like(vals(condition), NULL))


def drop_condition(condition: State, dropped: torch.Tensor) -> State:
    """condition with the samples where dropped [B] (bool) is True replaced by the null condition."""
    v = vals(condition)
    rows = per_row(condition, dropped.to(device=v.device, dtype=v.dtype)) > 0.5
    return like(condition, torch.where(rows, torch.full_like(v, NULL), v))


class GuidedDenoiser:
    """D_w(x) = D(x | null) + w (D(x | c) - D(x | null)): Ho & Salimans (2022) eq. 6 written for the denoised
    estimate (a linear map of the noise prediction at fixed x and sigma). w = 1 is D(x | c), one network call."""

    def __init__(self, denoiser: Denoiser, scale: float):
        if not (isinstance(scale, (int, float)) and 0.0 <= float(scale) <= 20.0):
            raise ValueError(f"guidance must be a scale in [0, 20] (1.0 = off), got {scale!r}")
        if denoiser.condition is None and float(scale) != 1.0:
            raise ValueError("guidance needs a conditional denoiser")
        self.denoiser, self.scale = denoiser, float(scale)

    cfg = property(lambda self: self.denoiser.cfg)
    model = property(lambda self: self.denoiser.model)
    condition = property(lambda self: self.denoiser.condition)
    consistency = property(lambda self: self.denoiser.consistency)

    def with_condition(self, condition) -> "GuidedDenoiser":
        """The same guidance with another condition."""
        return GuidedDenoiser(self.denoiser.with_condition(condition), self.scale)

    def __call__(self, x: State, sigma: torch.Tensor) -> State:
        """The guided denoised estimate of x at noise level sigma."""
        conditional = self.denoiser(x, sigma)
        if self.scale == 1.0:
            return conditional
        unconditional = vals(self.denoiser.with_condition(null_condition(self.denoiser.condition))(x, sigma))
        return like(x, unconditional + self.scale * (vals(conditional) - unconditional))
