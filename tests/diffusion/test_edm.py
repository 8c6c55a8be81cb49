"""EDM preconditioning, loss and noise sampling against the formulas of Karras et al. 2022."""
import math

import pytest
import torch

from sparse_radar.diffusion import (DiffusionConfig, Denoiser, consistency_scalings, edm_loss, edm_scalings,
                                    edm_weight, karras_sigmas, sample_sigma)
from tests.factory import random_fields


def test_edm_scalings_at_known_points():
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor([1.0, 0.5]), 0.5)
    torch.testing.assert_close(c_skip, torch.tensor([0.25 / 1.25, 0.5]))
    torch.testing.assert_close(c_out, torch.tensor([0.5 / math.sqrt(1.25), 0.25 / math.sqrt(0.5)]))
    torch.testing.assert_close(c_in, torch.tensor([1 / math.sqrt(1.25), 1 / math.sqrt(0.5)]))
    torch.testing.assert_close(c_noise, torch.tensor([0.0, math.log(0.5) / 4]))
    torch.testing.assert_close(edm_weight(torch.tensor([1.0]), 0.5), torch.tensor([1.25 / 0.25]))


def test_consistency_scalings_satisfy_the_boundary_condition():
    c_skip, c_out, _, _ = consistency_scalings(torch.tensor([0.002, 1.0]), 0.5, 0.002)
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
    torch.testing.assert_close(c_skip[1], torch.tensor(0.25 / (0.998**2 + 0.25)))
    torch.testing.assert_close(c_out[1], torch.tensor(0.998 * 0.5 / math.sqrt(1.25)))


class Recorder(torch.nn.Module):
    """F(x, c_noise) = 2 * first channels + c_noise, remembering its inputs."""

    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x, c_noise):
        self.seen = (x, c_noise)
        if hasattr(x, "feats"):
            per = c_noise.index_select(0, x.coords[:, 0].long())[:, None]
            return x.replace(2 * x.feats[:, :self.out_channels] + per)
        if hasattr(x, "data"):
            return x.replace(2 * x.data[:, :self.out_channels] + c_noise[:, None, None, None, None])
        return 2 * x[:, :self.out_channels] + c_noise[:, None]


def test_denoiser_applies_preconditioning_and_concatenates_radar_after_c_in():
    sv, _ = random_fields(2, 3, (4, 5, 6), [0.3, 0.5], seed=1)
    radar = sv.replace(torch.randn(sv.num_voxels, 2, generator=torch.Generator().manual_seed(0)))
    model = Recorder(3)
    sigma = torch.tensor([0.7, 3.0])
    out = Denoiser(model, DiffusionConfig(), radar)(sv, sigma)
    c_skip, c_out, c_in, c_noise = (c.index_select(0, sv.coords[:, 0].long())[:, None]
                                    for c in edm_scalings(sigma, 0.5))
    seen, labels = model.seen
    torch.testing.assert_close(seen.feats, torch.cat([sv.feats * c_in, radar.feats], 1))
    torch.testing.assert_close(labels, sigma.log() / 4)
    torch.testing.assert_close(out.feats, c_skip * sv.feats + c_out * (2 * c_in * sv.feats + c_noise))


def test_edm_loss_matches_hand_computation_on_both_fields():
    sv, dv = random_fields(2, 3, (4, 5, 6), [0.3, 0.5], seed=2)
    noise_s = sv.replace(torch.randn(sv.feats.shape, generator=torch.Generator().manual_seed(5)))
    sigma = torch.tensor([0.3, 2.0])
    den = Denoiser(Recorder(3), DiffusionConfig())
    loss = edm_loss(den, sv, sigma, noise_s)
    seg = sv.coords[:, 0].long()
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, 0.5)
    expected = 0.0
    for b in range(2):
        y, n = sv.feats[seg == b], noise_s.feats[seg == b]
        x = y + sigma[b] * n
        d = c_skip[b] * x + c_out[b] * (2 * c_in[b] * x + c_noise[b])
        expected += edm_weight(sigma[b], 0.5) * (d - y).square().mean() / 2
    torch.testing.assert_close(loss, expected)
    loss_dense = edm_loss(den, dv, sigma, noise_s.to_dense())
    torch.testing.assert_close(loss_dense, expected)


def test_training_sigmas_are_log_normal():
    cfg = DiffusionConfig()
    s = sample_sigma(200_000, cfg, torch.Generator().manual_seed(0))
    assert abs(float(s.log().mean()) - cfg.p_mean) < 0.01 and abs(float(s.log().std()) - cfg.p_std) < 0.01


def test_karras_sigmas_formula():
    s = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert s.shape == (19,) and float(s[-1]) == 0.0
    torch.testing.assert_close(s[0], torch.tensor(80.0))
    torch.testing.assert_close(s[17], torch.tensor(0.002))
    i = 5
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(s[i], torch.tensor(expected, dtype=torch.float32))
    assert bool((s[1:] < s[:-1]).all())


def test_bad_diffusion_config():
    with pytest.raises(ValueError, match="sigma_min"):
        DiffusionConfig(sigma_min=100.0)
    with pytest.raises(ValueError, match="sigma_data"):
        DiffusionConfig(sigma_data=0.0)


def test_per_sample_mean_uses_sorted_sums_without_atomics_or_syncs(monkeypatch):
    """The loss's per-sample sums are sorted-segment sums (repeatable bits on CUDA), not index_add_ (atomics), and
    take counts from row_ptr, not bincount (a host sync); values against a float64 loop, gradient included."""
    from sparse_radar.diffusion.fields import per_sample_mean
    from sparse_radar.voxels import SparseVoxels
    torch.manual_seed(0)
    mask = torch.rand(3, 1, 4, 6, 6) < 0.3
    mask[1] = False  # an empty sample
    x = SparseVoxels.from_dense(torch.randn(3, 2, 4, 6, 6), mask)
    values = torch.randn(x.num_voxels, 2, dtype=torch.float64, requires_grad=True)

    from sparse_radar.kernels.backends import kernel_settings

    def refuse(*args, **kwargs):
        raise AssertionError("atomics or a host sync in the per-sample loss")
    results = []
    for backend in ("triton", "torch"):  # the torch backend under deterministic settings
        for name in ("index_add", "index_add_", "bincount"):
            monkeypatch.setattr(torch.Tensor, name, refuse, raising=False)
        monkeypatch.setattr(torch, "bincount", refuse)
        with kernel_settings(backend=backend, deterministic=True):
            results.append(per_sample_mean(x, values.float() if backend == "triton" else values))
        monkeypatch.undo()
    got = results[1]
    torch.testing.assert_close(results[0].double(), got, rtol=1e-6, atol=1e-6)
    ids = x.coords[:, 0]
    expected = torch.stack([values[ids == b].mean() if (ids == b).any() else values.new_zeros(()) for b in range(3)])
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    counts = torch.stack([(ids == b).sum() for b in range(3)]).clamp_min(1)
    torch.testing.assert_close(values.grad, (1.0 / (counts[ids] * 2)).double()[:, None].expand(-1, 2))
