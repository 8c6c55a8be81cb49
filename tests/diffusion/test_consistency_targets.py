"""The consistency losses pinned to hand-computed values: the teacher's Heun step, and the CD and CT targets
(Song et al. 2023, Algorithms 2 and 3), with denoisers whose outputs depend on sigma, so any swap of the
student's and the target's noise levels changes the numbers."""
import math

import pytest
import torch

from sparse_radar.diffusion.consistency import _heun_step, cm_sigmas, consistency_loss
from sparse_radar.diffusion.edm import DiffusionConfig

CFG = DiffusionConfig()


class Toy:
    """D(x, sigma) = scale * sigma * x (+ shift): analytic, sigma-dependent; records the sigmas it was given."""

    def __init__(self, scale, shift=0.0):
        self.cfg, self.scale, self.shift, self.calls = CFG, scale, shift, []

    def __call__(self, x, sigma):
        self.calls.append(float(sigma.reshape(-1)[0]))
        return x * self.scale * sigma.view(-1, 1) + self.shift


def test_heun_step_by_hand():
    # D = sigma x / 4, x = 2, from sigma 2 to 1:
    # d = (2 - 1) / 2 = 0.5; Euler x_e = 2 - 0.5 = 1.5; d2 = (1.5 - 0.375) / 1 = 1.125; x = 2 - (0.5 + 1.125) / 2
    teacher = Toy(0.25)
    out = _heun_step(teacher, torch.tensor([[2.0]]), torch.tensor([2.0]), torch.tensor([1.0]))
    assert out.item() == pytest.approx(1.1875, abs=1e-7)
    assert teacher.calls == [2.0, 1.0]


def test_cm_sigmas_are_the_karras_boundaries():
    lo, hi = CFG.sigma_min ** (1 / CFG.rho), CFG.sigma_max ** (1 / CFG.rho)
    expected = [(lo + i / 2 * (hi - lo)) ** CFG.rho for i in range(3)]
    assert cm_sigmas(3, CFG).tolist() == pytest.approx(expected, rel=1e-6)


def _draws(seed, n_steps):
    g = torch.Generator().manual_seed(seed)
    idx = int(torch.randint(0, n_steps - 1, (1,), generator=g))
    z = float(torch.randn((1, 1), generator=g))
    s = cm_sigmas(n_steps, CFG).tolist()
    return s[idx], s[idx + 1], z


@pytest.mark.parametrize("seed", [0, 3])
def test_consistency_distillation_target_by_hand(seed):
    n_steps, x0 = 3, 0.7
    s_n, s_next, z = _draws(seed, n_steps)
    student, target, teacher = Toy(0.5, 0.1), Toy(-0.3, 0.2), Toy(0.01)
    loss = consistency_loss(student, target, torch.tensor([[x0]]), n_steps, teacher,
                            torch.Generator().manual_seed(seed))
    x_next = x0 + s_next * z                       # the student's input, at the larger sigma
    d = (x_next - 0.01 * s_next * x_next) / s_next  # the teacher's Heun step from s_next down to s_n
    x_euler = x_next + (s_n - s_next) * d
    d2 = (x_euler - 0.01 * s_n * x_euler) / s_n
    x_n = x_next + (s_n - s_next) * (d + d2) / 2
    expected = (0.5 * s_next * x_next + 0.1 - (-0.3 * s_n * x_n + 0.2)) ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert student.calls == [pytest.approx(s_next, rel=1e-6)] and target.calls == [pytest.approx(s_n, rel=1e-6)]
    assert teacher.calls == [pytest.approx(s_next, rel=1e-6), pytest.approx(s_n, rel=1e-6)]


@pytest.mark.parametrize("seed", [1, 2])
def test_consistency_training_target_by_hand(seed):
    n_steps, x0 = 4, -0.4
    s_n, s_next, z = _draws(seed, n_steps)
    student, target = Toy(0.5, 0.1), Toy(-0.3, 0.2)
    loss = consistency_loss(student, target, torch.tensor([[x0]]), n_steps, None,
                            torch.Generator().manual_seed(seed))
    # CT: both points share the noise z, the target sees x0 + s_n z (CM Algorithm 3)
    expected = (0.5 * s_next * (x0 + s_next * z) + 0.1 - (-0.3 * s_n * (x0 + s_n * z) + 0.2)) ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert math.isclose(student.calls[0], s_next, rel_tol=1e-6) and math.isclose(target.calls[0], s_n, rel_tol=1e-6)
