"""VAE3D / VQVAE3D: sparse encoder vs masked dense encoder, sparse decoder vs its dense fallback, KL and VQ
against their formulas, presets, and a few training steps."""
import pytest
import torch

from sparse_radar.models.generative import flat_values
from sparse_radar.models.vae import (VAE3D, VAEConfig, VQVAE3D, autoencoder_loss, create_lightweight_vae_config,
                                     create_standard_vae_config)
from tests.factory import random_fields

SHAPE = (4, 8, 8)
SMALL = dict(base_channels=4, channel_mult=(1, 2, 2), num_groups=2, codebook_size=16)


def _target(seed=1, dtype=torch.float64):
    return random_fields(2, 4, SHAPE, 0.2, seed=seed, dtype=dtype)


@pytest.mark.parametrize("cls,changes", [(VAE3D, {}), (VQVAE3D, {"kind": "vqvae"}),
                                         (VAE3D, {"attention_type": "flash", "num_heads": 2, "num_res_blocks": 2})])
def test_sparse_and_masked_dense_paths_agree(cls, changes):
    torch.manual_seed(0)
    model = cls(VAEConfig(**SMALL, **changes)).double().eval()
    sparse, dense = _target()
    m_sparse, m_dense = model.moments(sparse), model.moments(dense)
    assert m_sparse.shape == (2, model.to_latent.out_channels, 1, 2, 2)
    assert torch.allclose(m_sparse, m_dense, atol=1e-10)
    a, b = model(sparse, sparse), model(dense, sparse)
    assert torch.allclose(a.latent, b.latent, atol=1e-10)
    for la, lb in zip(a.generation.levels, b.generation.levels):
        assert torch.allclose(la.logits, lb.logits, atol=1e-9) and torch.equal(la.labels, lb.labels)
    assert torch.equal(b.generation.field.to_sparse().coords, a.generation.field.coords)
    assert torch.allclose(flat_values(b.generation.field), a.generation.field.feats, atol=1e-9)
    loss_a, _ = autoencoder_loss(model, sparse, a)
    loss_b, _ = autoencoder_loss(model, sparse, b)
    assert torch.allclose(loss_a, loss_b, atol=1e-9)


def test_the_encoder_only_reads_active_voxels():
    torch.manual_seed(0)
    model = VAE3D(VAEConfig(**SMALL)).double().eval()
    sparse, dense = _target()
    noisy = dense.replace(dense.data + 100.0 * (~dense.mask).double())  # garbage at inactive cells
    assert torch.allclose(model.moments(noisy), model.moments(sparse), atol=1e-10)


def test_kl_matches_the_closed_form():
    torch.manual_seed(0)
    model = VAE3D(VAEConfig(**SMALL)).double().eval()
    sparse, _ = _target()
    moments = model.moments(sparse)
    mean, logvar = moments.chunk(2, dim=1)
    expected = sum(0.5 * (m * m + torch.exp(lv) - 1 - lv) for m, lv in zip(mean.flatten(), logvar.flatten()))
    z, kl = model.encode(sparse)
    assert torch.allclose(kl, expected / mean.numel())
    assert torch.equal(z, mean)  # eval: the mean
    model.train()  # training draws z = mean + exp(logvar / 2) * eps (the reparameterisation)
    torch.manual_seed(5)
    z1, _ = model.encode(sparse)
    torch.manual_seed(5)
    eps = torch.randn_like(mean)
    assert torch.allclose(z1, mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps)


def test_vq_snaps_to_the_nearest_code_with_straight_through_gradient():
    torch.manual_seed(0)
    model = VQVAE3D(VAEConfig(**SMALL, kind="vqvae")).double()
    z_e = torch.randn(2, 4, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    z_q, loss, index = model.quantize(z_e)
    codes = model.codebook.weight.detach()
    for b in range(2):
        for j in range(2):
            for k in range(2):
                vec = z_e[b, :, 0, j, k].detach()
                nearest = int(torch.argmin(((codes - vec) ** 2).sum(1)))
                assert int(index[b, 0, j, k]) == nearest
                assert torch.allclose(z_q[b, :, 0, j, k], codes[nearest])
    expected = 1.25 * ((z_q.detach() - z_e.detach()) ** 2).mean()
    assert torch.allclose(loss, expected)
    z_q.sum().backward()
    assert torch.equal(z_e.grad, torch.ones_like(z_e))


def test_decoding_without_forcing_keeps_positive_logits_and_the_loss_needs_forcing():
    torch.manual_seed(0)
    model = VAE3D(VAEConfig(**SMALL)).double().eval()
    sparse, _ = _target()
    out = model(sparse)
    for lv in out.generation.levels:
        assert lv.labels is None and torch.equal(lv.keep, lv.logits > 0)
    with pytest.raises(ValueError, match="labelled|teacher forcing"):
        autoencoder_loss(model, sparse, out)
    with pytest.raises(ValueError, match="latent"):
        model.decode(torch.zeros(2, 3, 1, 2, 2, dtype=torch.float64))


def test_the_occupancy_threshold_sets_the_decoders_keep_logit():
    """LatentCodec.decode(threshold t) keeps, at every level, the candidates whose probability exceeds (1 + t) / 2
    (the voxel models' occupancy scale); t = 0 is the decoder's own p > 1/2."""
    import math

    from sparse_radar.models.latent import LatentCodec, occupancy_logit
    torch.manual_seed(0)
    model = VAE3D(VAEConfig(**SMALL)).double().eval()
    z = model.encode(_target()[0], sample=False)[0]
    assert occupancy_logit(0.0) == 0.0 and occupancy_logit(-1.0) == -math.inf
    assert occupancy_logit(-0.6) == pytest.approx(math.log(0.2 / 0.8))
    for t in (-0.6, 0.0, 0.5):
        generation = model.decode(z, keep_logit=occupancy_logit(t))
        for lv in generation.levels:
            assert torch.equal(lv.keep, lv.logits > occupancy_logit(t))
    codec = LatentCodec(model)
    sizes = [codec.decode(z * codec.scale, threshold=t).num_voxels for t in (-0.9, -0.6, 0.0, 0.6)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]  # a lower threshold keeps more
    assert torch.equal(codec.decode(z * codec.scale).coords, model.decode(z).field.coords)  # the default: p > 1/2
    with pytest.raises(ValueError, match="threshold must be in"):
        occupancy_logit(1.0)


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = VAE3D(VAEConfig(**SMALL))
    sparse, _ = _target(dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss, logs = autoencoder_loss(model, sparse, model(sparse, sparse))
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0] and set(logs) >= {"occupancy", "feature_mse", "regulariser"}


def test_presets_and_validation():
    light, standard = create_lightweight_vae_config(), create_standard_vae_config()
    assert (light.base_channels, light.channel_mult, light.num_res_blocks) == (24, (1, 2, 3), 1)
    assert (standard.base_channels, standard.channel_mult, standard.num_res_blocks) == (64, (1, 2, 4), 2)
    assert light.latent_channels == standard.latent_channels == 4 and light.kl_weight == 1e-6
    assert light.latent_shape((32, 128, 128)) == (8, 32, 32)  # the reference's 4x4x4 compression
    assert create_lightweight_vae_config(kind="vqvae").codebook_size == 8192
    for changes, match in ((dict(kind="gan"), "kind"), (dict(channel_mult=(1, 2)), "channel_mult"),
                           (dict(strides=((2, 2),) * 2), "strides"), (dict(kl_weight=-1.0), "kl_weight"),
                           (dict(attention_type="global"), "attention_type")):
        with pytest.raises(ValueError, match=match):
            VAEConfig(**changes)
    with pytest.raises(ValueError, match="not divisible"):
        light.latent_shape((6, 64, 64))
    with pytest.raises(TypeError, match="VAEConfig"):
        VAE3D({"kind": "vae"})


def test_vq_codes_start_from_the_first_training_batch():
    torch.manual_seed(0)
    model = VQVAE3D(VAEConfig(**SMALL, kind="vqvae")).double()
    z_e = torch.randn(2, 4, 1, 2, 2, dtype=torch.float64)
    model.eval()
    model.quantize(z_e)
    assert not bool(model.initialised)  # evaluation never moves the codes
    model.train()
    model.quantize(z_e)
    flat = z_e.movedim(1, -1).reshape(-1, 4)
    assert bool(model.initialised)
    assert all(any(torch.equal(code, row) for row in flat) for code in model.codebook.weight.detach())
    before = model.codebook.weight.detach().clone()
    model.quantize(z_e * 3)
    assert torch.equal(model.codebook.weight.detach(), before)  # only once
