"""model(sparse) == model(dense with the same mask) at active voxels, outputs and parameter gradients.

Coverage is pairwise: every (attention_type, norm_type) pair, with downsample_stride cycling so that every
stride value meets every attention type and every norm type at least once.
"""
import itertools

import pytest
import torch

from sparse_radar import DenseVoxels
from sparse_radar.models import UNet3D, create_tiny_unet_config
from sparse_radar.nn.attention import ATTENTION_TYPES
from sparse_radar.nn.norm import NORM_TYPES
from tests.factory import gather_dense, random_fields

STRIDES = ("xy_only", "z_half", "full", "adaptive")
CASES = [(a, n, STRIDES[(i + j) % len(STRIDES)])
         for (i, a), (j, n) in itertools.product(enumerate(ATTENTION_TYPES), enumerate(NORM_TYPES))]


def test_cases_cover_every_pair():
    pairs = lambda x, y: {(c[x], c[y]) for c in CASES}
    assert len(pairs(0, 2)) == len(ATTENTION_TYPES) * len(STRIDES)
    assert len(pairs(1, 2)) == len(NORM_TYPES) * len(STRIDES)
    assert len(pairs(0, 1)) == len(ATTENTION_TYPES) * len(NORM_TYPES)


def small_model(**overrides):
    cfg = create_tiny_unet_config(in_channels=5, out_channels=3, model_channels=8, channel_mult=(1, 2, 2),
                                  attention_resolutions=(2, 4), num_heads=2, num_groups=4, window_size=(2, 2, 2),
                                  topk=4, patch_size=8, min_z_size=4, input_size=(8, 8, 8), **overrides)
    model = UNet3D(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random non-zero parameters: zero-initialised convs would hide differences
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def outputs_and_grads(model, field, t, g_out):
    model.zero_grad()
    out = model(field, t)
    if isinstance(out, DenseVoxels):
        loss = (out.data * g_out).sum()
        feats = out.to_sparse().feats
    else:
        loss = (out.feats * gather_dense(g_out, out.coords)).sum()
        feats = out.feats
    loss.backward()
    return out, feats.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("attention_type,norm_type,downsample_stride", CASES)
def test_sparse_equals_masked_dense(attention_type, norm_type, downsample_stride):
    model = small_model(attention_type=attention_type, norm_type=norm_type, downsample_stride=downsample_stride)
    sv, dv = random_fields(2, 5, (8, 8, 8), [0.04, 0.3], seed=1)
    t = torch.tensor([0.25, -1.5])
    g_out = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(2)) * dv.mask
    out_s, feats_s, grads_s = outputs_and_grads(model, sv, t, g_out)
    out_d, feats_d, grads_d = outputs_and_grads(model, dv, t, g_out)
    assert torch.equal(out_s.coords, sv.coords) and torch.equal(out_d.mask, dv.mask)
    assert feats_s.abs().max() > 1e-3, "the model output is trivially zero"
    torch.testing.assert_close(feats_s, feats_d, rtol=1e-4, atol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), grads_s, grads_d):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("attention_type,norm_type", list(zip(ATTENTION_TYPES, NORM_TYPES * 2)))
def test_fully_occupied_sparse_equals_unmasked_dense(attention_type, norm_type):
    model = small_model(attention_type=attention_type, norm_type=norm_type)
    data = torch.randn(2, 5, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    dense = DenseVoxels(data)
    t = torch.tensor([0.1, 0.9])
    with torch.no_grad():
        out_d = model(dense, t)
        out_s = model(dense.to_sparse(), t)
    assert out_d.mask is None
    torch.testing.assert_close(out_s.to_dense().data, out_d.data, rtol=1e-4, atol=1e-5)
