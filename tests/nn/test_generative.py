"""GenerativeUpsample and keep_where: against a hand-written loop over children, and sparse vs masked dense."""
import itertools

import pytest
import torch

from sparse_radar import DenseVoxels, SparseVoxels
from sparse_radar.nn.generative import GenerativeUpsample, keep_where
from tests.factory import gather_dense, random_fields


def _children_by_loop(sv: SparseVoxels, weight: torch.Tensor, bias: torch.Tensor, stride):
    """{(b, z, y, x): value [Cout]} of every child, summed from its parent with W[:, :, j] (the definition)."""
    out = {}
    for coord, feat in zip(sv.coords.tolist(), sv.feats):
        for j in itertools.product(*(range(s) for s in stride)):
            child = (coord[0],) + tuple(c * s + o for c, s, o in zip(coord[1:], stride, j))
            out[child] = weight[:, :, j[0], j[1], j[2]] @ feat + bias
    return out


@pytest.mark.parametrize("stride", [(2, 2, 2), (1, 2, 2), (2, 1, 3)])
def test_generative_upsample_matches_the_definition_and_the_dense_path(stride):
    sv, dense = random_fields(2, 3, (3, 4, 5), 0.3, seed=1, dtype=torch.float64)
    layer = GenerativeUpsample(3, 4, stride).double()
    out = layer(sv)
    expected = _children_by_loop(sv, layer.weight.detach(), layer.bias.detach(), stride)
    assert out.num_voxels == len(expected) == sv.num_voxels * stride[0] * stride[1] * stride[2]
    assert out.spatial_shape == tuple(n * s for n, s in zip(sv.spatial_shape, stride))
    for coord, feat in zip(out.coords.tolist(), out.feats):
        assert torch.allclose(feat, expected[tuple(coord)])
    dense_out = layer(dense)
    assert torch.equal(dense_out.mask, out.to_dense().mask)
    assert torch.allclose(gather_dense(dense_out.data, out.coords), out.feats)
    assert float(dense_out.data.detach()[~dense_out.mask.expand_as(dense_out.data)].abs().max()) == 0


def test_generative_upsample_gradients_agree_between_paths():
    sv, dense = random_fields(2, 2, (2, 3, 3), 0.5, seed=2, dtype=torch.float64)
    layer = GenerativeUpsample(2, 3, (2, 2, 2)).double()
    torch.autograd.gradcheck(lambda f: layer(sv.replace(f)).feats, (sv.feats.clone().requires_grad_(),))
    layer(sv).feats.square().sum().backward()
    sparse_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    layer(dense).data.square().sum().backward()
    assert torch.allclose(layer.weight.grad, sparse_grad)


def test_keep_where_on_both_fields_and_bad_masks():
    sv, dense = random_fields(2, 2, (2, 3, 3), 0.6, seed=3)
    keep = sv.feats[:, 0] > 0
    kept = keep_where(sv, keep)
    assert torch.equal(kept.coords, sv.coords[keep])
    dense_keep = (dense.data[:, :1] > 0)
    kept_dense = keep_where(dense, dense_keep)
    assert torch.equal(kept_dense.to_sparse().coords, kept.coords)
    assert torch.equal(kept_dense.to_sparse().feats, kept.feats)
    unmasked = keep_where(DenseVoxels(dense.data), dense_keep)
    assert torch.equal(unmasked.mask, dense_keep)
    with pytest.raises(ValueError, match="keep must be a bool tensor"):
        keep_where(dense, dense_keep[:, 0])
