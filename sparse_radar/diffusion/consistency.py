"""Consistency distillation and consistency training (Song et al. 2023, "Consistency Models")."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .edm import DiffusionConfig, Denoiser
from ..nn.field_ops import per_sample, values
from .fields import State, like, nonempty_mean, per_sample_mean, randn_like


def cm_sigmas(n: int, cfg: DiffusionConfig, device=None) -> torch.Tensor:
    """The N ascending boundaries sigma_1 = sigma_min < ... < sigma_N = sigma_max (CM eq. 5, Karras spacing)."""
    i = torch.arange(n, dtype=torch.float64, device=device)
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    return ((lo + i / (n - 1) * (hi - lo)) ** cfg.rho).float()


def ct_schedule(k: int, total: int, s0: int = 2, s1: int = 150, mu0: float = 0.9) -> Tuple[int, float]:
    """Consistency-training N(k) and EMA decay mu(k) at step k of `total` (CM Appendix C, eq. for N and mu)."""
    n = math.ceil(math.sqrt(k / max(total, 1) * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1
    mu = math.exp(s0 * math.log(mu0) / n)
    return n, mu


def _heun_step(teacher: Denoiser, x: State, s: torch.Tensor, s_next: torch.Tensor) -> State:
    """One Heun step of the teacher's probability-flow ODE from s to s_next (per-sample sigmas [B])."""
    v = values(x)
    ds, dn = per_sample(x, s).to(v.dtype), per_sample(x, s_next).to(v.dtype)
    d = (v - values(teacher(x, s))) / ds
    x_euler = like(x, v + (dn - ds) * d)
    d2 = (values(x_euler) - values(teacher(x_euler, s_next))) / dn
    return like(x, v + (dn - ds) * 0.5 * (d + d2))


def _fork_dropout_rng():
    """The CPU/CUDA RNG state now, so the target pass can replay the student's dropout masks."""
    return torch.random.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _restore_rng(state) -> None:
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def consistency_loss(student: Denoiser, target: Denoiser, x0: State, n_steps: int,
                     teacher: Optional[Denoiser] = None, generator: Optional[torch.Generator] = None
                     ) -> torch.Tensor:
    """CD (teacher given: x_n from a Heun step of the teacher) or CT (no teacher: x_n = x0 + sigma_n z) loss.

    Per sample an index n ~ U{0..N-2}; loss = mean |f_student(x_{n+1}, s_{n+1}) - f_target(x_n, s_n)|^2 (L2,
    uniform weight); student and target passes see the same dropout masks.
    """
    v0 = values(x0)
    b = v0.shape[0] if not hasattr(x0, "batch_size") else x0.batch_size
    sig = cm_sigmas(n_steps, student.cfg, device=v0.device)
    idx = torch.randint(0, n_steps - 1, (b,), generator=generator,
                        device=generator.device if generator is not None else None).to(v0.device)
    s_n, s_next = sig[idx], sig[idx + 1]
    z = values(randn_like(x0, generator))
    x_next = like(x0, v0 + per_sample(x0, s_next).to(v0.dtype) * z)
    if teacher is not None:
        with torch.no_grad():
            x_n = _heun_step(teacher, x_next, s_next, s_n)
    else:
        x_n = like(x0, v0 + per_sample(x0, s_n).to(v0.dtype) * z)
    rng = _fork_dropout_rng()
    pred = values(student(x_next, s_next))
    _restore_rng(rng)
    with torch.no_grad():
        ref = values(target(x_n, s_n))
    return nonempty_mean(x0, per_sample_mean(x0, (pred.float() - ref.float()).square()))


@torch.no_grad()
def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model over all parameters at once (a multi-tensor op; buffers copied)."""
    ema_params = list(ema_model.parameters())
    params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters())]
    if ema_params:
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    ema_buffers, buffers = list(ema_model.buffers()), list(model.buffers())
    if ema_buffers:
        torch._foreach_copy_(ema_buffers, buffers)
