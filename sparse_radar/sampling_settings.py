"""Sampler settings and the checks of the numbers a user passes to sample (steps, seeds, thresholds)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch

from .diffusion.edm import DiffusionConfig

SAMPLERS = ("heun", "euler", "onestep", "multistep")
MAX_STEPS = 10_000  # sampler steps (EDM uses 18-256); memory and time grow with them
MAX_SEED = 2**40 - 1  # a frame's noise is seeded with seed * 1_000_003 + frame id, which must fit in int64
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SamplerSettings:
    """How to sample: sampler, steps, noise range, Heun churn and the occupancy threshold (channel 0 > it)."""

    sampler: str = "heun"
    steps: int = 18
    sigma_max: Optional[float] = None  # None: the checkpoint's
    sigma_min: Optional[float] = None
    s_churn: float = 0.0
    threshold: float = 0.0
    guidance: float = 1.0  # classifier-free guidance scale (1 = off; needs a model trained with --cond_drop > 0)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        self.steps = whole_number(self.steps, "steps", 1, MAX_STEPS)
        for name in ("sigma_max", "sigma_min"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, real_number(value, name, low=0.0, low_open=True))
        if self.sigma_min is not None and self.sigma_max is not None and not self.sigma_min < self.sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        self.s_churn = real_number(self.s_churn, "s_churn", low=0.0)
        self.guidance = real_number(self.guidance, "guidance", 0.0, 20.0, why=" (1.0 = off)")
        self.threshold = real_number(self.threshold, "threshold", -1.0, 1.0,
                                     why=" (occupancy is scaled to [-1, 1]; a voxel is kept where it is > threshold)")

    def sigmas(self, diffusion: DiffusionConfig) -> tuple:
        """(sigma_min, sigma_max): these settings', else the model's; refused unless 0 < sigma_min < sigma_max."""
        low = diffusion.sigma_min if self.sigma_min is None else self.sigma_min
        high = diffusion.sigma_max if self.sigma_max is None else self.sigma_max
        if not 0 < low < high:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {low} and {high} (the model's sigma range is "
                             f"{diffusion.sigma_min}..{diffusion.sigma_max})")
        return low, high


def whole_number(value, name: str, low: int, high: int) -> int:
    """value as an int in [low, high] (numpy integers too; bools, floats and None are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


def real_number(value, name: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
                why: str = "") -> float:
    """value as a finite float in [low, high) ((low, high) with low_open); NaN, inf and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value < low or (low_open and value == low) or value >= high:
        span = f"{'(' if low_open else '['}{low:g}, {high:g})"
        raise ValueError(f"{name} must be a finite number in {span}{why}, got {value}")
    return value
