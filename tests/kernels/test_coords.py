import pytest
import torch
import torch.nn.functional as F

from sparse_radar.kernels import coords as kc


def test_keys_round_trip_and_order():
    g = torch.Generator().manual_seed(0)
    shape = (5, 7, 11)
    coords = torch.stack([torch.randint(0, n, (500,), generator=g) for n in (3, *shape)], dim=1)
    keys = kc.linear_keys(coords, shape)
    assert torch.equal(kc.keys_to_coords(keys, shape).long(), coords)
    # lexicographic (b, z, y, x) order equals key order
    lex = ((coords[:, 0] * 100 + coords[:, 1]) * 100 + coords[:, 2]) * 100 + coords[:, 3]
    assert torch.equal(torch.argsort(keys, stable=True), torch.argsort(lex, stable=True))


def test_large_grid_keys_do_not_overflow():
    shape = (4096, 4096, 4096)
    kc.check_key_range(shape, 64)
    corner = torch.tensor([[63, 4095, 4095, 4095], [0, 0, 0, 1]])
    keys = kc.linear_keys(corner, shape)
    assert int(keys[0]) == 64 * 4096**3 - 1 and keys.dtype == torch.int64
    assert torch.equal(kc.keys_to_coords(keys, shape).long(), corner)
    with pytest.raises(ValueError, match="int64"):
        kc.check_key_range((2**21, 2**21, 2**21), 2)


def test_lookup_found_and_missing():
    keys = torch.tensor([2, 5, 9, 40])
    got = kc.lookup(keys, torch.tensor([9, 3, 2, 41, 40, -1]))
    assert got.tolist() == [2, -1, 0, -1, 3, -1]
    assert kc.lookup(torch.zeros(0, dtype=torch.int64), torch.tensor([1])).tolist() == [-1]


@pytest.mark.parametrize("k,s,p,d", [(3, 2, 1, 1), ((1, 2, 2), (1, 2, 2), 0, 1), (3, (1, 2, 2), 1, 1),
                                     (5, 3, 2, 2), ((2, 3, 1), (2, 1, 3), (0, 1, 0), (1, 2, 1))])
def test_conv_output_shape_matches_torch(k, s, p, d):
    x = torch.zeros(1, 1, 13, 10, 9)
    t = lambda v: kc.as_triple(v, "v")
    expected = F.conv3d(x, torch.zeros(1, 1, *t(k)), stride=s, padding=p, dilation=d).shape[2:]
    assert kc.conv_output_shape((13, 10, 9), t(k), t(s), t(p), t(d)) == tuple(expected)


def test_as_triple_rejects_bad_values():
    assert kc.as_triple(3, "k") == (3, 3, 3)
    assert kc.as_triple([1, 2, 2], "k") == (1, 2, 2)
    with pytest.raises(ValueError, match="k"):
        kc.as_triple((1, 2), "k")
    for bad in (True, "3", None, (1.5, 2, 2), (True, 1, 1)):
        with pytest.raises(TypeError, match="k"):
            kc.as_triple(bad, "k")


def test_dilate_coords_equals_dense_max_pool():
    g = torch.Generator().manual_seed(1)
    shape, radius = (6, 9, 8), (1, 2, 0)
    mask = torch.rand(2, 1, *shape, generator=g) < 0.05
    coords = torch.nonzero(mask[:, 0])
    got = kc.dilate_coords(coords, shape, radius)
    size = tuple(2 * r + 1 for r in radius)
    ref = F.max_pool3d(mask.float(), size, stride=1, padding=radius) > 0
    assert torch.equal(got.long(), torch.nonzero(ref[:, 0]))
