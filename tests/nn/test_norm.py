"""Norms against a float64 numpy reference computed over each sample's active voxels."""
import numpy as np
import pytest
import torch

from sparse_radar import DenseVoxels
from sparse_radar.nn.norm import build_norm, group_count, inactive_share
from tests.factory import random_fields


def reference(feats, batch, b, groups, center, eps, weight, bias):
    """Per sample and channel group: (x - mean) / sqrt(var + eps) over active voxels, then affine."""
    x = feats.astype(np.float64)
    out = np.zeros_like(x)
    c = x.shape[1]
    for s in range(b):
        rows = batch == s
        for g in range(groups):
            cols = slice(g * c // groups, (g + 1) * c // groups)
            block = x[rows, cols]
            if block.size == 0:
                continue
            mean = block.mean() if center else 0.0
            var = ((block - mean) ** 2).mean()
            out[rows, cols] = (block - mean) / np.sqrt(var + eps)
    out = out * weight
    return out + bias if bias is not None else out


CASES = {"group": (4, True, 1e-5), "layer": (1, True, 1e-5), "instance": (12, True, 1e-5), "rms": (1, False, 1e-6)}


@pytest.mark.parametrize("norm_type", list(CASES))
def test_norm_matches_float64_reference_on_both_paths(norm_type):
    sv, dv = random_fields(3, 12, (5, 6, 7), [0.05, 0.0, 0.3], seed=2)
    sv = sv.replace(sv.feats * 3 + 1.5)  # non-zero mean and scale
    dv = sv.to_dense()
    norm = build_norm(norm_type, 12, num_groups=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    groups, center, eps = CASES[norm_type]
    bias = None if norm.bias is None else norm.bias.detach().numpy()
    ref = reference(sv.feats.numpy(), sv.coords[:, 0].numpy(), 3, groups, center, eps,
                    norm.weight.detach().numpy(), bias)
    out_s = norm(sv).feats.detach().numpy()
    out_d = norm(dv)
    np.testing.assert_allclose(out_s, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out_d.to_sparse().feats.detach().numpy(), ref, rtol=1e-4, atol=1e-5)
    assert not bool(out_d.data[~dv.mask.expand_as(out_d.data)].any()), "inactive voxels must stay zero"


def test_adaptive_norm_switches_per_sample():
    # sample 0: 5% active (95% empty -> instance); sample 1: 90% active (10% empty -> group)
    sv, dv = random_fields(2, 8, (6, 6, 6), [0.05, 0.9], seed=4)
    share = inactive_share(sv)
    assert share[0] > 0.7 > share[1]
    torch.testing.assert_close(inactive_share(dv), share)
    norm = build_norm("adaptive", 8, num_groups=2)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    out = norm(sv).feats.detach()
    batch = sv.coords[:, 0]
    inst = norm.instance(sv).feats.detach()
    grp = norm.group(sv).feats.detach()
    assert torch.equal(out[batch == 0], inst[batch == 0]) and torch.equal(out[batch == 1], grp[batch == 1])
    assert not torch.allclose(inst[batch == 1], grp[batch == 1])
    torch.testing.assert_close(norm(dv).to_sparse().feats.detach(), out, rtol=1e-4, atol=1e-5)


def test_unmasked_dense_counts_all_zero_voxels_as_empty():
    data = torch.zeros(1, 2, 4, 4, 4)
    data[0, :, 0, 0, :2] = 1.0
    assert abs(float(inactive_share(DenseVoxels(data))[0]) - 62 / 64) < 1e-6


def test_group_count_and_errors():
    assert group_count(64, 32) == 32 and group_count(48, 32) == 24 and group_count(6, 32) == 6
    with pytest.raises(ValueError, match="norm_type"):
        build_norm("batch", 8)
    with pytest.raises(ValueError, match="channels"):
        build_norm("group", 8)(random_fields(1, 4, (3, 3, 3), 0.5)[0])
