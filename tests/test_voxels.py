"""SparseVoxels / DenseVoxels: validation, sorting, exact round trips, empty samples, kernel-map cache."""
import numpy as np
import pytest
import torch

from sparse_radar import DenseVoxels, SparseVoxels
from sparse_radar.kernels import kmap_builders as km
from sparse_radar.nn import SparseConv3d, SubMConv3d
from sparse_radar.structure import VoxelStructure
from tests.factory import random_fields


def test_constructor_sorts_by_key_and_permutes_feats():
    coords = torch.tensor([[1, 0, 0, 0], [0, 2, 1, 0], [0, 0, 3, 1], [0, 2, 0, 5]])
    feats = torch.arange(4.0).unsqueeze(1)
    sv = SparseVoxels(feats, coords, (3, 4, 6), 2)
    assert sv.coords.tolist() == [[0, 0, 3, 1], [0, 2, 0, 5], [0, 2, 1, 0], [1, 0, 0, 0]]
    assert sv.feats.flatten().tolist() == [2.0, 3.0, 1.0, 0.0]
    assert sv.coords.dtype == torch.int32
    # numpy input works too
    sv2 = SparseVoxels(feats.numpy(), coords.numpy(), (3, 4, 6), 2)
    assert torch.equal(sv2.coords, sv.coords)


@pytest.mark.parametrize("feats,coords,shape,batch,error,match", [
    (torch.zeros(2, 1), torch.zeros(2, 4), (4, 4, 4), 1, ValueError, "integer"),
    (torch.zeros(2, 1), torch.zeros(2, 3, dtype=torch.long), (4, 4, 4), 1, ValueError, r"\[N, 4\]"),
    (torch.zeros(2, 1), torch.zeros(2, 4, dtype=torch.bool), (4, 4, 4), 1, ValueError, "integer"),
    (torch.zeros(2, 1), torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]]), (4, 4, 4), 1, ValueError, "duplicate"),
    (torch.zeros(1, 1), torch.tensor([[0, 1, 4, 1]]), (4, 4, 4), 1, ValueError, "outside"),
    (torch.zeros(1, 1), torch.tensor([[0, -1, 0, 1]]), (4, 4, 4), 1, ValueError, "outside"),
    (torch.zeros(1, 1), torch.tensor([[2, 1, 1, 1]]), (4, 4, 4), 2, ValueError, "batch"),
    (torch.zeros(3, 1), torch.tensor([[0, 1, 1, 1]]), (4, 4, 4), 1, ValueError, "rows"),
    (torch.tensor([[float("nan")]]), torch.tensor([[0, 1, 1, 1]]), (4, 4, 4), 1, ValueError, "non-finite"),
    (torch.zeros(1, dtype=torch.long), torch.tensor([[0, 1, 1, 1]]), (4, 4, 4), 1, ValueError, "floating"),
    (torch.zeros(1, 1), torch.tensor([[0, 1, 1, 1]]), (4, 4), 1, ValueError, "spatial_shape"),
    (torch.zeros(1, 1), torch.tensor([[0, 1, 1, 1]]), (4, 4, 4), 0, ValueError, "batch_size"),
    ([[0.0]], torch.tensor([[0, 1, 1, 1]]), (4, 4, 4), 1, TypeError, "feats"),
    (torch.zeros(1, 1), [[0, 1, 1, 1]], (4, 4, 4), 1, TypeError, "coords"),
])
def test_constructor_rejects_bad_input(feats, coords, shape, batch, error, match):
    with pytest.raises(error, match=match):
        SparseVoxels(feats, coords, shape, batch)


def test_constructor_reads_the_device_once(monkeypatch):
    # its three checks (inside the grid, finite, no duplicates) in one host read, which on a GPU drains the queue
    from torch.utils._python_dispatch import TorchDispatchMode
    reads = []

    class Scalars(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name in ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero"):
                reads.append(func._schema.name)
            return func(*args, **(kwargs or {}))
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append("tolist") or tolist(self))
    sv, _ = random_fields(2, 3, (4, 6, 6), [0.3, 0.5], seed=1)
    with Scalars():
        SparseVoxels(sv.feats, sv.coords, sv.spatial_shape, 2)
    assert reads == ["tolist"]
    # with several faults, the first check's error as before: outside, then non-finite, then duplicate
    bad = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [0, 9, 1, 1]])
    with pytest.raises(ValueError, match="outside"):
        SparseVoxels(torch.tensor([[1.0], [float("nan")], [0.0]]), bad, (4, 4, 4), 1)
    with pytest.raises(ValueError, match="non-finite"):
        SparseVoxels(torch.tensor([[1.0], [float("nan")]]), bad[:2], (4, 4, 4), 1)


def test_dense_constructor_rejects_bad_input():
    with pytest.raises(ValueError, match="mask"):
        DenseVoxels(torch.zeros(2, 3, 4, 4, 4), torch.zeros(2, 4, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        DenseVoxels(torch.zeros(2, 3, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="data"):
        DenseVoxels(torch.zeros(3, 4, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        DenseVoxels(torch.full((1, 1, 2, 2, 2), float("inf")))
    with pytest.raises(TypeError, match="data"):
        DenseVoxels("grid")


def test_round_trips_are_exact_with_empty_samples():
    sv, dv = random_fields(3, 4, (5, 6, 7), [0.2, 0.0, 0.4], seed=3)
    assert sv.batch_counts().tolist()[1] == 0
    back = sv.to_dense()
    assert torch.equal(back.data, dv.data) and torch.equal(back.mask, dv.mask)
    again = back.to_sparse()
    assert torch.equal(again.feats, sv.feats) and torch.equal(again.coords, sv.coords)
    # from_dense with an explicit mask keeps zero-valued active voxels
    data = dv.data.clone()
    data[dv.mask.expand_as(data)] = 0.0
    kept = SparseVoxels.from_dense(data, dv.mask)
    assert kept.num_voxels == int(dv.mask.sum()) and torch.equal(kept.feats, torch.zeros_like(kept.feats))
    # mask None = voxels with any nonzero channel
    assert torch.equal(SparseVoxels.from_dense(dv.data).coords, sv.coords)
    # the features at each coordinate are the dense values there
    c = sv.coords.long()
    assert torch.equal(sv.feats, dv.data[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]])


def test_entirely_empty_batch():
    dv = DenseVoxels(torch.zeros(2, 3, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4, dtype=torch.bool))
    sv = dv.to_sparse()
    assert sv.num_voxels == 0 and sv.feats.shape == (0, 3)
    out = SparseConv3d(3, 2, 3, 2, 1)(SubMConv3d(3, 3, 3)(sv))
    assert out.num_voxels == 0 and out.spatial_shape == (2, 2, 2)
    assert torch.equal(out.to_dense().data, torch.zeros(2, 2, 2, 2, 2))
    empty = SparseVoxels(torch.zeros(0, 1), torch.zeros(0, 4, dtype=torch.int32), (3, 3, 3), 1)
    assert torch.equal(empty.to_dense().mask, torch.zeros(1, 1, 3, 3, 3, dtype=torch.bool))


def test_unmasked_dense_to_sparse_is_fully_occupied():
    data = torch.randn(2, 3, 2, 3, 4)
    sv = DenseVoxels(data).to_sparse()
    assert sv.num_voxels == 2 * 2 * 3 * 4
    assert torch.equal(sv.to_dense().data, data)


def test_to_dense_is_differentiable():
    sv, _ = random_fields(2, 3, (4, 4, 4), 0.3, seed=4)
    feats = sv.feats.clone().requires_grad_(True)
    (sv.replace(feats).to_dense().data * 2).sum().backward()
    assert torch.equal(feats.grad, torch.full_like(feats, 2.0))


def test_replace_keeps_structure_and_validates():
    sv, dv = random_fields(1, 3, (4, 4, 4), 0.3)
    out = sv.replace(torch.zeros(sv.num_voxels, 7))
    assert out.structure is sv.structure and out.num_channels == 7
    with pytest.raises(ValueError, match="replace"):
        sv.replace(torch.zeros(sv.num_voxels + 1, 3))
    assert dv.replace(torch.zeros(1, 5, 4, 4, 4)).mask is dv.mask
    with pytest.raises(ValueError, match="replace"):
        dv.replace(torch.zeros(1, 5, 4, 4, 3))


def test_kernel_map_cache_is_shared_and_built_once(monkeypatch):
    sv, _ = random_fields(2, 4, (6, 6, 6), 0.3, seed=5)
    calls = {"subm": 0, "down": 0}
    real_subm, real_down = km.submanifold_kmap, km.strided_kmap_and_keys

    def count_subm(*a, **k):
        calls["subm"] += 1
        return real_subm(*a, **k)

    def count_down(*a, **k):
        calls["down"] += 1
        return real_down(*a, **k)

    monkeypatch.setattr(km, "submanifold_kmap", count_subm)
    monkeypatch.setattr(km, "strided_kmap_and_keys", count_down)
    a, b = SubMConv3d(4, 4, 3), SubMConv3d(4, 8, 3)
    down1, down2 = SparseConv3d(8, 8, 2, 2), SparseConv3d(8, 3, 2, 2)
    h = b(a(sv.replace(sv.feats * 2)))
    c1, c2 = down1(h), down2(h)
    assert calls == {"subm": 1, "down": 1}
    assert c1.structure is c2.structure


def test_prune_keeps_selected_voxels():
    sv, _ = random_fields(2, 3, (4, 5, 6), 0.4, seed=6)
    keep = sv.feats[:, 0] > 0
    pruned = sv.prune(keep)
    assert torch.equal(pruned.coords, sv.coords[keep]) and torch.equal(pruned.feats, sv.feats[keep])
    assert pruned.structure is not sv.structure


def test_to_device_and_dtype():
    sv, dv = random_fields(1, 2, (3, 3, 3), 0.5)
    half = sv.to(torch.float64)
    assert half.dtype == torch.float64 and half.structure is sv.structure
    assert dv.to(torch.float64).dtype == torch.float64
    assert np.isclose(float(half.feats.sum()), float(sv.feats.sum()))


def test_values_at_reads_features_by_key_and_fills_the_rest():
    sv, dense = random_fields(2, 3, (3, 4, 5), 0.4, seed=11)
    full = VoxelStructure.full(2, (3, 4, 5))
    assert torch.equal(full.coords.long(), torch.cartesian_prod(*(torch.arange(n) for n in (2, 3, 4, 5))))
    got = sv.values_at(full.keys, fill=-7.0)  # every cell, in key order
    data = dense.data.movedim(1, -1).reshape(-1, 3)
    expected = torch.where(dense.mask.reshape(-1, 1), data, torch.full_like(data, -7.0))
    assert torch.equal(got, expected)
    assert sv.values_at(full.keys[:0]).shape == (0, 3)
