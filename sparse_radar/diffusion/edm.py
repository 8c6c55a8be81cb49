"""EDM preconditioning, noise-level sampling and loss (Karras et al. 2022, "Elucidating the Design Space"),
conditional on radar: the radar features are concatenated on channels after c_in scaling."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional, Tuple

import torch

from ..nn.field_ops import cat_channels, per_sample, values
from .fields import State, batch_size, like, nonempty_mean, per_sample_mean


@dataclass
class DiffusionConfig:
    """EDM constants (EDM Table 1) and the consistency-model settings."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        for name in ("sigma_data", "sigma_min", "sigma_max", "rho", "p_std"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"DiffusionConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"DiffusionConfig.sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> Tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1 for noise levels sigma [B]."""
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1.0 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def consistency_scalings(sigma: torch.Tensor, sigma_data: float, sigma_min: float) -> Tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) with the consistency boundary condition f(x, sigma_min) = x (CM App. C)."""
    _, _, c_in, c_noise = edm_scalings(sigma, sigma_data)
    shifted = sigma - sigma_min
    c_skip = sigma_data**2 / (shifted**2 + sigma_data**2)
    c_out = shifted * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    return c_skip, c_out, c_in, c_noise


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 (EDM eq. 8)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(batch: int, cfg: DiffusionConfig, generator: Optional[torch.Generator] = None,
                 device=None) -> torch.Tensor:
    """Training noise levels: ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1)."""
    normal = torch.randn(batch, generator=generator, device=generator.device if generator else device)
    return (cfg.p_mean + cfg.p_std * normal).exp().to(device or normal.device)


class Denoiser:
    """D(x, sigma) = c_skip x + c_out F([c_in x, radar], c_noise): the preconditioned network (EDM eq. 7)."""

    def __init__(self, model: torch.nn.Module, cfg: DiffusionConfig, condition: Optional[State] = None,
                 consistency: bool = False):
        self.model, self.cfg, self.condition, self.consistency = model, cfg, condition, consistency

    def with_condition(self, condition: Optional[State]) -> "Denoiser":
        """The same denoiser with another radar condition."""
        return Denoiser(self.model, self.cfg, condition, self.consistency)

    def __call__(self, x: State, sigma: torch.Tensor) -> State:
        """Denoised estimate of x's clean target at noise level sigma (a scalar or [B])."""
        v = values(x)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=v.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(batch_size(x))
        if self.consistency:
            c_skip, c_out, c_in, c_noise = consistency_scalings(sigma, self.cfg.sigma_data, self.cfg.sigma_min)
        else:
            c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.cfg.sigma_data)
        scaled = like(x, v * per_sample(x, c_in).to(v.dtype))
        net_in = scaled if self.condition is None else cat_channels(scaled, self.condition)
        out = values(self.model(net_in, c_noise))
        return like(x, per_sample(x, c_skip).to(v.dtype) * v + per_sample(x, c_out).to(v.dtype) * out.to(v.dtype))


def edm_loss(denoiser: Callable, target: State, sigma: torch.Tensor, noise: State) -> torch.Tensor:
    """EDM loss (eq. 2 / Table 1): mean over the samples that have voxels of lambda(sigma) * mean over their
    active voxels of |D(y + sigma n) - y|^2."""
    y, n = values(target), values(noise)
    noisy = like(target, y + per_sample(target, sigma).to(y.dtype) * n)
    denoised = values(denoiser(noisy, sigma))
    err = (denoised.float() - y.float()).square()
    loss = per_sample_mean(target, err)  # [B]
    return nonempty_mean(target, edm_weight(sigma, denoiser.cfg.sigma_data) * loss)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device=None) -> torch.Tensor:
    """n noise levels from sigma_max down to sigma_min (EDM eq. 5), then a final 0: [n + 1]."""
    if n < 1:
        raise ValueError(f"karras_sigmas needs n >= 1 steps, got {n}")
    if n == 1:
        return torch.tensor([sigma_max, 0.0], device=device)
    i = torch.arange(n, dtype=torch.float64, device=device)
    inv = sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return torch.cat([inv**rho, torch.zeros(1, dtype=torch.float64, device=device)]).float()

