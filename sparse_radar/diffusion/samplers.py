"""Samplers over a denoiser D(x, sigma), x a tensor or a field: Euler, Heun with churn (EDM Algorithm 2),
one-step and multistep consistency sampling (Song et al. 2023, Algorithm 1)."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..nn.field_ops import values
from .fields import State, like, randn_like

Denoise = Callable[[State, torch.Tensor], State]


def _progress(iterable, show: bool, desc: str):
    if not show:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False)


def _d(denoise: Denoise, x: State, sigma: torch.Tensor) -> torch.Tensor:
    """ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3 with sigma(t) = t)."""
    return (values(x) - values(denoise(x, sigma))) / sigma


def sample_euler(denoise: Denoise, x: State, sigmas: torch.Tensor, progress: bool = False) -> State:
    """First-order Euler steps of the probability-flow ODE along sigmas (descending, ending at 0)."""
    for i in _progress(range(len(sigmas) - 1), progress, "euler"):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = like(x, values(x) + (s_next - s) * _d(denoise, x, s))
    return x


def sample_heun(denoise: Denoise, x: State, sigmas: torch.Tensor, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0, generator: Optional[torch.Generator] = None,
                progress: bool = False) -> State:
    """EDM Algorithm 2: Heun's 2nd-order steps, with optional stochastic churn; the last step is Euler."""
    n = len(sigmas) - 1
    for i in _progress(range(n), progress, "heun"):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= float(s) <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            eps = values(randn_like(x, generator)) * s_noise
            x = like(x, values(x) + (s_hat**2 - s**2).sqrt() * eps)
        d = _d(denoise, x, s_hat)
        x_next = like(x, values(x) + (s_next - s_hat) * d)
        if float(s_next) > 0:
            d2 = _d(denoise, x_next, s_next)
            x_next = like(x, values(x) + (s_next - s_hat) * 0.5 * (d + d2))
        x = x_next
    return x


def sample_consistency(denoise: Denoise, x: State, sigmas: Sequence[float], sigma_min: float,
                       generator: Optional[torch.Generator] = None, progress: bool = False) -> State:
    """Multistep consistency sampling (CM Algorithm 1): x starts at noise level sigmas[0]; one entry = one step."""
    x = denoise(x, torch.tensor(float(sigmas[0])))
    for s in _progress(list(sigmas[1:]), progress, "consistency"):
        noise = values(randn_like(x, generator))
        x_t = like(x, values(x) + math.sqrt(max(float(s) ** 2 - sigma_min**2, 0.0)) * noise)
        x = denoise(x_t, torch.tensor(float(s)))
    return x
