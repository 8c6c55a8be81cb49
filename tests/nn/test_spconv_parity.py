"""Forward parity with spconv's CPU build (weights converted to its layout, bias=False).

Measured quirks of spconv 2.3.8's CPU build, which these tests work around rather than hide:
- with more than one torch thread its forward races: two calls on the same input differ in a few rows,
  so every test here runs spconv with one thread (fixture `one_thread`) and checks spconv against itself;
- a 1x1x1 kernel is read as a [Cin, Cout] matrix instead of its [Cout, 1, 1, 1, Cin] layout, so
  kernel 1 is checked against conv3d only (tests/nn/test_conv_layers.py).
"""
import pytest
import torch

from sparse_radar.kernels import linear_keys, to_spconv_weight
from sparse_radar.nn import SparseConv3d, SparseInverseConv3d, SubMConv3d
from tests.factory import random_fields

spconv = pytest.importorskip("spconv.pytorch", reason="spconv is installed by the dev extra")


def sorted_spconv(t):
    """spconv output rows in our key order: (feats, coords)."""
    order = torch.argsort(linear_keys(t.indices.long(), t.spatial_shape))
    return t.features[order], t.indices[order]


def to_spconv(sv):
    return spconv.SparseConvTensor(sv.feats, sv.coords, list(sv.spatial_shape), sv.batch_size)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_spconv_reference_is_repeatable():
    sv, _ = random_fields(2, 6, (9, 10, 11), [0.05, 0.3], seed=1)
    ref = spconv.SubMConv3d(6, 5, 3, bias=False, indice_key="subm")
    with torch.no_grad():
        first = ref(to_spconv(sv)).features
        assert all(torch.equal(ref(to_spconv(sv)).features, first) for _ in range(5))


@pytest.mark.parametrize("kernel,dilation", [(3, 1), ((3, 5, 3), (1, 1, 2)), (5, 1)])
def test_subm_matches_spconv(kernel, dilation):
    sv, _ = random_fields(2, 6, (9, 10, 11), [0.05, 0.3], seed=1)
    ours = SubMConv3d(6, 5, kernel, dilation=dilation, bias=False)
    ref = spconv.SubMConv3d(6, 5, kernel, dilation=dilation, bias=False, indice_key="subm")
    ref.weight.data = to_spconv_weight(ours.weight.data)
    with torch.no_grad():
        out, r = ours(sv), ref(to_spconv(sv))
    feats, coords = sorted_spconv(r)
    assert torch.equal(out.coords, coords)
    torch.testing.assert_close(out.feats, feats, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    (3, 2, 1, 1), ((1, 2, 2), (1, 2, 2), 0, 1), (3, (1, 2, 2), 1, 1), (2, 2, 0, 1), (3, 2, 0, 2),
    ((3, 3, 1), (2, 1, 3), (1, 0, 0), 1),
])
def test_strided_and_inverse_match_spconv(kernel, stride, padding, dilation):
    sv, _ = random_fields(2, 4, (9, 10, 11), [0.1, 0.4], seed=2)
    down = SparseConv3d(4, 6, kernel, stride, padding, dilation, bias=False)
    ref_down = spconv.SparseConv3d(4, 6, kernel, stride, padding, dilation, bias=False, indice_key="down")
    ref_down.weight.data = to_spconv_weight(down.weight.data)
    up = SparseInverseConv3d(6, 3, kernel, stride, padding, dilation, bias=False)
    ref_up = spconv.SparseInverseConv3d(6, 3, kernel, bias=False, indice_key="down")
    ref_up.weight.data = to_spconv_weight(up.weight.data)
    with torch.no_grad():
        coarse, r_coarse = down(sv), ref_down(to_spconv(sv))
        fine, r_fine = up(coarse), ref_up(r_coarse)
    assert coarse.spatial_shape == tuple(r_coarse.spatial_shape)
    for ours, r in ((coarse, r_coarse), (fine, r_fine)):
        feats, coords = sorted_spconv(r)
        assert torch.equal(ours.coords, coords)
        torch.testing.assert_close(ours.feats, feats, rtol=1e-5, atol=1e-5)
    assert torch.equal(fine.coords, sv.coords)
