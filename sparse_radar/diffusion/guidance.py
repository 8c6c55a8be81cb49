"""Classifier-free guidance (Ho & Salimans, 2022): the condition dropped for a share of the training samples, so one
network learns both D(x | radar) and D(x | nothing), and sampling extrapolates from the second to the first.

The "nothing" condition is every condition channel at -1: what the voxel-space condition (radar channels on the
support, -1 where no radar voxel is) and the latent one (the radar pooled onto the latent grid) both are for a scan
with no radar point.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

import torch

from ..voxels import SparseVoxels
from .edm import Denoiser
from ..nn.field_ops import values
from .fields import State, like

NULL = -1.0  # the condition channels' value where there is no radar


def null_condition(condition: State) -> State:
    """The condition of a scan with no radar: every value NULL, on the same voxels."""
    return like(condition, torch.full_like(values(condition), NULL))


def dropped_samples(seed: int, positions: Sequence[int], rate: float) -> list:
    """Per sample, whether its condition is dropped (probability rate), decided on the host from the run's seed and
    the sample's stream position: the same on any process layout, and no device work."""
    return [random.Random((seed * 1_000_003 + pos) * 7919 + 104_729).random() < rate for pos in positions]


def drop_condition(condition: State, dropped: Sequence[bool], counts: Optional[Sequence[int]] = None) -> State:
    """condition with the samples whose dropped flag (a host list, one per sample) is True replaced by the null
    condition; a sparse condition needs its per-sample row counts (host ints: its rows are sorted by sample). No
    launch when nothing is dropped, one fill per dropped sample otherwise, and no host sync."""
    if not any(dropped):
        return condition
    v = values(condition).clone()
    if isinstance(condition, SparseVoxels):
        if counts is None:
            raise ValueError("drop_condition needs the per-sample row counts of a sparse condition")
        starts = [0]
        for n in counts:
            starts.append(starts[-1] + int(n))
        for b, drop in enumerate(dropped):
            if drop:
                v[starts[b]:starts[b + 1]].fill_(NULL)
    else:
        for b, drop in enumerate(dropped):
            if drop:
                v[b].fill_(NULL)
    return like(condition, v)


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
        unconditional = values(self.denoiser.with_condition(null_condition(self.denoiser.condition))(x, sigma))
        return like(x, unconditional + self.scale * (values(conditional) - unconditional))
