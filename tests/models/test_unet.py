"""UNet3D and UNetConfig: strides per level, presets, config errors, fp16/bf16, checkpointing, depthwise."""
import math

import pytest
import torch
import torch.nn.functional as F

from sparse_radar import DenseVoxels, SparseVoxels
from sparse_radar.models import (UNet3D, UNetConfig, create_balanced_unet_config, create_lightweight_unet_config,
                                 create_tiny_unet_config, create_ultra_lightweight_unet_config)
from sparse_radar.nn import Downsample, Upsample
from sparse_radar.nn.blocks import timestep_embedding
from sparse_radar.nn.depthwise import DepthwiseSubMConv3d
from tests.factory import gather_dense, random_fields


@pytest.mark.parametrize("stride,expected", [
    ("xy_only", [(1, 2, 2)] * 3),
    ("full", [(2, 2, 2)] * 3),
    ("z_half", [(2, 2, 2), (1, 2, 2), (2, 2, 2)]),
    ("adaptive", [(2, 2, 2), (2, 2, 2), (1, 2, 2)]),  # Z: 16 -> 8 -> 4, then 4 is not > min_z_size
])
def test_level_strides_shapes_and_coords(stride, expected):
    cfg = UNetConfig(channel_mult=(1, 1, 1, 1), downsample_stride=stride, input_size=(16, 32, 32),
                     attention_type="none")
    assert cfg.level_strides() == expected
    sv, dv = random_fields(2, 3, (16, 32, 32), [0.02, 0.1], seed=1)
    x, d, shape = sv, dv, (16, 32, 32)
    ups = []
    for s in expected:
        down = Downsample(3, s)
        ups.append(Upsample(3, s))
        coarse, d = down(x), down(d)
        shape = tuple(n // k for n, k in zip(shape, s))
        assert coarse.spatial_shape == shape == d.spatial_shape
        pooled = x.coords.long() // torch.tensor([1, *s])  # kernel = stride: each voxel feeds its parent cell
        assert torch.equal(coarse.coords.long(), torch.unique(pooled, dim=0))
        assert torch.equal(d.mask, coarse.to_dense().mask)
        x = coarse
    for up in reversed(ups):
        x = up(x)
    assert torch.equal(x.coords, sv.coords)


def test_standard_downsampling_is_full_3d():
    cfg = UNetConfig(downsample_type="standard", downsample_stride="xy_only", input_size=(32, 128, 128))
    assert cfg.level_strides() == [(2, 2, 2)] * 3


def test_presets_have_the_reference_values_and_take_overrides():
    light = create_lightweight_unet_config()
    assert (light.model_channels, light.channel_mult, light.num_res_blocks, light.attention_type,
            light.attention_resolutions, light.num_heads, light.norm_type, light.downsample_stride, light.dropout,
            light.use_fp16, light.use_checkpoint) == (64, (1, 2, 2, 4), 2, "flash", (8, 4), 4, "group", "xy_only",
                                                      0.1, True, True)
    ultra = create_ultra_lightweight_unet_config()
    assert (ultra.model_channels, ultra.channel_mult, ultra.num_res_blocks, ultra.attention_type,
            ultra.attention_resolutions, ultra.norm_type, ultra.use_depthwise, ultra.num_heads, ultra.dropout) == \
        (48, (1, 2, 2, 2), 1, "linear", (4,), "instance", True, 2, 0.05)
    bal = create_balanced_unet_config()
    assert (bal.model_channels, bal.channel_mult, bal.attention_type, bal.attention_resolutions, bal.window_size,
            bal.downsample_stride) == (64, (1, 2, 3, 4), "window", (16, 8, 4), (4, 4, 4), "adaptive")
    assert create_tiny_unet_config(model_channels=8).model_channels == 8
    assert UNetConfig.from_dict(light.to_dict()) == light


@pytest.mark.parametrize("overrides,field", [
    (dict(attention_type="global"), "attention_type"),
    (dict(norm_type="batch"), "norm_type"),
    (dict(downsample_stride="z_only"), "downsample_stride"),
    (dict(downsample_type="fancy"), "downsample_type"),
    (dict(num_heads=3), "num_heads"),
    (dict(channel_mult=(1, 0)), "channel_mult"),
    (dict(channel_mult="a,b"), "channel_mult"),
    (dict(attention_resolutions=(3,)), "attention_resolutions"),
    (dict(dropout=1.5), "dropout"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(window_size=(4, 4)), "window_size"),
    (dict(input_size=(8, 7, 16)), "input_size"),
    (dict(model_channels=True), "model_channels"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"UNetConfig.{field}"):
        create_tiny_unet_config(**overrides)
    with pytest.raises(ValueError, match="unknown field"):
        UNetConfig.from_dict({"attention": "flash"})


def test_forward_input_errors():
    model = UNet3D(create_tiny_unet_config())
    sv, _ = random_fields(2, 8, (8, 16, 16), 0.1)
    with pytest.raises(ValueError, match="noise_labels"):
        model(sv, torch.zeros(3))
    with pytest.raises(ValueError, match="input channels"):
        model(sv.replace(sv.feats[:, :3]), torch.zeros(2))
    with pytest.raises(TypeError, match="SparseVoxels or DenseVoxels"):
        model(sv.feats, torch.zeros(2))
    bad, _ = random_fields(2, 8, (8, 15, 16), 0.1)
    with pytest.raises(ValueError, match="not divisible"):
        model(bad, torch.zeros(2))
    with pytest.raises(TypeError, match="UNetConfig"):
        UNet3D({"model_channels": 8})


def test_use_fp16_autocasts_both_paths_and_returns_float32():
    sv, dv = random_fields(2, 8, (8, 16, 16), [0.05, 0.2], seed=2)
    model = UNet3D(create_tiny_unet_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    t = torch.tensor([0.1, 0.5])
    with torch.no_grad():
        ref = model(sv, t).feats
        model.config.use_fp16 = True
        half_s, half_d = model(sv, t), model(dv, t)
    assert half_s.feats.dtype == torch.float32 and half_d.data.dtype == torch.float32
    tol = dict(rtol=0.1, atol=0.1 * float(ref.abs().max()))
    torch.testing.assert_close(half_s.feats, ref, **tol)
    torch.testing.assert_close(half_d.to_sparse().feats, ref, **tol)
    assert not torch.equal(half_s.feats, ref)  # bf16 really ran


def test_checkpointing_gives_the_same_gradients():
    sv, _ = random_fields(2, 8, (8, 16, 16), [0.05, 0.2], seed=3)
    t = torch.tensor([0.1, 0.5])
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = UNet3D(create_tiny_unet_config(use_checkpoint=ckpt, use_depthwise=True))
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.2)
        model(sv, t).feats.square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_strided_levels_are_built_before_any_of_the_forward(monkeypatch, checkpointing):
    # each strided level's host read (kmap_builders.distinct_with_counts) comes before the model's first op (its
    # input conv), so no conv, norm or attention waits on one in the middle of the forward; the same output
    import sparse_radar.kernels.kmap_builders as builders
    sv, _ = random_fields(2, 8, (8, 16, 16), [0.05, 0.2], seed=3)
    torch.manual_seed(0)
    model = UNet3D(create_lightweight_unet_config(model_channels=16, use_checkpoint=checkpointing))
    t = torch.tensor([0.1, 0.5])
    reference = model(SparseVoxels(sv.feats, sv.coords, sv.spatial_shape, 2), t).feats
    events, read = [], builders.distinct_with_counts

    def logged_read(*args, **kwargs):
        events.append("read")
        return read(*args, **kwargs)
    monkeypatch.setattr(builders, "distinct_with_counts", logged_read)
    model.input_conv.register_forward_pre_hook(lambda *_: events.append("input conv"))
    model.out_conv.register_forward_pre_hook(lambda *_: events.append("output conv"))
    out = model(SparseVoxels(sv.feats, sv.coords, sv.spatial_shape, 2), t)
    out.feats.square().sum().backward()
    assert events == ["read"] * len(model.downs) + ["input conv", "output conv"]
    torch.testing.assert_close(out.feats, reference, rtol=0, atol=0)


def test_depthwise_conv_matches_grouped_conv3d():
    sv, dv = random_fields(2, 6, (5, 6, 7), [0.1, 0.4], seed=4, dtype=torch.float64)
    layer = DepthwiseSubMConv3d(6, 3).double()
    feats = sv.feats.clone().requires_grad_(True)
    out = layer(sv.replace(feats))
    x = dv.data.clone().requires_grad_(True)
    ref = gather_dense(F.conv3d(x, layer.weight, layer.bias, padding=1, groups=6), sv.coords)
    torch.testing.assert_close(out.feats, ref)
    g = torch.randn(ref.shape, dtype=torch.float64)
    (out.feats * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(feats.grad, gather_dense(x.grad, sv.coords))
    torch.testing.assert_close(layer(dv).to_sparse().feats, out.feats.detach())


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 2.5])
    emb = timestep_embedding(t, 6)
    freqs = [math.exp(-math.log(10000.0) * i / 3) for i in range(3)]
    expected = [[math.cos(2.5 * f) for f in freqs] + [math.sin(2.5 * f) for f in freqs]]
    torch.testing.assert_close(emb[1:], torch.tensor(expected))
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))


def test_lightweight_preset_sparse_equals_masked_dense():
    cfg = create_lightweight_unet_config(use_fp16=False, use_checkpoint=False, input_size=(8, 32, 32))
    model = UNet3D(cfg).eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # randomise everything: the zero-initialised output conv would hide differences
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        sv, dv = random_fields(1, 8, (8, 32, 32), 0.02, seed=5)
        out, dense = model(sv, torch.tensor([0.3])), model(dv, torch.tensor([0.3]))
    assert isinstance(out, SparseVoxels) and isinstance(dense, DenseVoxels)
    assert torch.equal(out.coords, sv.coords) and out.feats.abs().max() > 1e-3
    torch.testing.assert_close(out.feats, dense.to_sparse().feats, rtol=1e-4, atol=1e-5)
