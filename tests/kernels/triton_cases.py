"""Small kernel maps of every kind, for checking the triton backend against the torch backend."""
import torch

from sparse_radar.kernels import coords as kc
from sparse_radar.kernels import kmap_builders as km
from tests.factory import random_fields

GEOMETRY = ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs Triton in its interpreter


def _field(seed=1, shape=(5, 6, 7), occupancy=(0.25, 0.1)):
    sv, _ = random_fields(2, 1, shape, list(occupancy), seed=seed)
    return sv.to(DEVICE)


def subm(sv):
    return km.submanifold_kmap(sv.coords, sv.spatial_shape, sv.batch_size, (3, 3, 3), (1, 1, 1))


def subm_dilated(sv):
    return km.submanifold_kmap(sv.coords, sv.spatial_shape, sv.batch_size, (3, 1, 3), (1, 1, 2))


def strided(sv):
    return km.strided_kmap(sv.coords, sv.spatial_shape, *GEOMETRY, sv.batch_size)[0]


def strided_2x2(sv):
    return km.strided_kmap(sv.coords, sv.spatial_shape, (2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1))[0]


def inverse(sv):
    """The inverse conv of `strided`, built by its own builder (in = coarse, out = fine)."""
    _, out_coords, out_shape = km.strided_kmap(sv.coords, sv.spatial_shape, *GEOMETRY, sv.batch_size)
    return km.inverse_kmap(sv.coords, sv.spatial_shape, kc.linear_keys(out_coords, out_shape), out_shape, *GEOMETRY)


def transposed(sv):
    return strided(sv).transposed()


def children(sv):
    return km.children_kmap(sv.coords, sv.spatial_shape, (1, 2, 2))[0]


MAPS = {f.__name__: f for f in (subm, subm_dilated, strided, strided_2x2, inverse, transposed, children)}


def make_map(name, **field):
    return MAPS[name](_field(**field))


def random_inputs(kmap, c_in, c_out, dtype, seed=0, depthwise=False):
    """(feats, weight, bias, grad_out) in float64 on the CPU; cast them for the run under test."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(kmap.n_in, c_in, generator=g, dtype=torch.float64)
    shape = (kmap.kernel_volume, c_in) if depthwise else (kmap.kernel_volume, c_in, c_out)
    weight = torch.randn(*shape, generator=g, dtype=torch.float64) / (kmap.kernel_volume * c_in) ** 0.5
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    grad = torch.randn(kmap.n_out, c_in if depthwise else c_out, generator=g, dtype=torch.float64)
    return feats, weight, bias, grad
