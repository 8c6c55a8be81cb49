"""Kernel maps against an independent numpy construction from dense index volumes."""
import numpy as np
import pytest
import torch

from sparse_radar.kernels import coords as kc
from sparse_radar.kernels import kmap_builders as km


def index_volume(mask: np.ndarray) -> np.ndarray:
    """Row number of every active cell in (b, z, y, x) order, -1 elsewhere."""
    vol = np.full(mask.shape, -1, dtype=np.int64)
    vol[mask] = np.arange(int(mask.sum()))
    return vol


def reference_pairs(mask, kernel, stride, padding, dilation, submanifold=False):
    """[(offset, out_row, in_row)] sorted, and the active output mask, by strided slicing of a padded volume."""
    vol = index_volume(mask)
    shape = mask.shape[1:]
    out_shape = kc.conv_output_shape(shape, kernel, stride, padding, dilation)
    padded = np.pad(vol, [(0, 0)] + [(p, p) for p in padding], constant_values=-1)
    taps = []
    for off in np.ndindex(*kernel):
        sl = tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(off, dilation, stride, out_shape))
        taps.append(padded[(slice(None),) + sl])  # [B, *out_shape] input row feeding each output cell
    out_mask = mask if submanifold else np.any(np.stack(taps) >= 0, axis=0)
    out_vol = index_volume(out_mask)
    pairs = []
    for k, tap in enumerate(taps):
        ok = (tap >= 0) & out_mask
        pairs.append(np.stack([np.full(ok.sum(), k), out_vol[ok], tap[ok]], axis=1))
    return np.concatenate(pairs), out_mask


def our_pairs(kmap: km.KernelMap) -> np.ndarray:
    rows = []
    for k in range(kmap.kernel_volume):
        i, o = kmap.pairs_of(k)
        rows.append(np.stack([np.full(i.numel(), k), o.numpy(), i.numpy()], axis=1))
    return np.concatenate(rows)


def sort_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def coords_of(mask):
    return torch.from_numpy(np.argwhere(mask)).to(torch.int32)


@pytest.fixture(scope="module")
def big_mask():
    rng = np.random.default_rng(0)
    mask = rng.random((1, 40, 160, 160)) < 0.2
    assert mask.sum() > 200_000
    return mask


def assert_same_pairs(ours: np.ndarray, ref: np.ndarray):
    ours, ref = sort_rows(ours), sort_rows(ref)
    assert len(np.unique(ours, axis=0)) == len(ours), "a pair occurs twice"
    assert ours.shape == ref.shape, f"{len(ours)} pairs, expected {len(ref)}"
    assert np.array_equal(ours, ref)


def test_submanifold_kmap_200k_every_pair_once(big_mask):
    coords = coords_of(big_mask)
    kmap = km.submanifold_kmap(coords, big_mask.shape[1:], 1, (3, 3, 3), (1, 1, 1))
    ref, _ = reference_pairs(big_mask, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), submanifold=True)
    assert_same_pairs(our_pairs(kmap), ref)
    assert kmap.identity_offset == 13
    i, o = kmap.pairs_of(13)
    assert torch.equal(i, o) and i.numel() == coords.shape[0]


def test_strided_kmap_200k_every_pair_once(big_mask):
    coords = coords_of(big_mask)
    kmap, out_coords, out_shape = km.strided_kmap(coords, big_mask.shape[1:], (3, 3, 3), (2, 2, 2), (1, 1, 1),
                                                  (1, 1, 1))
    ref, out_mask = reference_pairs(big_mask, (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))
    assert out_shape == out_mask.shape[1:]
    assert torch.equal(out_coords, coords_of(out_mask))
    assert_same_pairs(our_pairs(kmap), ref)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((1, 2, 2), (1, 2, 2), (0, 0, 0), (1, 1, 1)),
    ((3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1)),
    ((2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1)),
    ((3, 1, 5), (2, 1, 3), (2, 0, 1), (1, 1, 2)),
    ((3, 3, 3), (3, 2, 1), (0, 2, 1), (2, 1, 1)),
])
@pytest.mark.parametrize("occupancy", [0.01, 0.3])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_strided_kmap_any_geometry(kernel, stride, padding, dilation, occupancy, backend):
    """Both builders (triton: candidate keys, binary-searched rows, coords and the inverted table, a launch each)
    give the reference pairs and output coords, and keys that are the output coords' linear keys."""
    from sparse_radar.kernels.backends import kernel_settings
    if backend == "triton":
        pytest.importorskip("triton")
    rng = np.random.default_rng(1)
    mask = rng.random((3, 9, 12, 14)) < occupancy
    mask[1] = False  # an empty sample inside the batch
    with kernel_settings(backend=backend):
        kmap, keys, out_coords, shape, counts = km.strided_kmap_and_keys(coords_of(mask), mask.shape[1:], kernel,
                                                                         stride, padding, dilation, 3)
        pairs = our_pairs(kmap)
        table = kmap.table
    ref, out_mask = reference_pairs(mask, kernel, stride, padding, dilation)
    assert torch.equal(out_coords, coords_of(out_mask))
    assert torch.equal(keys, kc.linear_keys(out_coords, shape))
    assert counts == tuple(int(out_mask[b].sum()) for b in range(3))  # read with the size, per sample
    assert_same_pairs(pairs, ref)
    from sparse_radar.kernels.kernel_map import invert_table
    with kernel_settings(backend="torch"):
        assert torch.equal(table, invert_table(kmap.table_t, kmap.n_out))


@pytest.mark.parametrize("m", [0, 1, 2, 7, 8, 9, 64])
def test_triton_binary_search_rows_against_searchsorted(m):
    pytest.importorskip("triton")
    from sparse_radar.kernels.triton.kmap_builders import rows_of_keys
    g = torch.Generator().manual_seed(m)
    sorted_keys = torch.unique(torch.randint(0, 4 * m + 1, (m,), generator=g)) if m else torch.zeros(0, dtype=torch.int64)
    queries = torch.cat([sorted_keys, torch.arange(-2, 4 * m + 3), sorted_keys.flip(0)]).view(-1, 1).repeat(1, 3)
    want = [sorted_keys.tolist().index(q) if q in sorted_keys.tolist() else -1 for q in queries.flatten().tolist()]
    assert rows_of_keys(sorted_keys, queries).flatten().tolist() == want


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kernel,dilation", [((3, 3, 3), (1, 1, 1)), ((5, 1, 3), (1, 1, 2)), ((1, 1, 1), (1, 1, 1))])
def test_submanifold_kmap_any_geometry(kernel, dilation, backend):
    """Both builders (torch ops; triton: a site table and one lookup launch) give the reference pairs, and the
    mirrored transposed table (offsets reversed) equals the inverted table."""
    from sparse_radar.kernels.backends import kernel_settings
    from sparse_radar.kernels.kernel_map import invert_table
    if backend == "triton":
        pytest.importorskip("triton")
    rng = np.random.default_rng(2)
    mask = rng.random((2, 7, 10, 9)) < 0.2
    with kernel_settings(backend=backend):
        kmap = km.submanifold_kmap(coords_of(mask), mask.shape[1:], 2, kernel, dilation)
    padding = tuple(d * (k // 2) for k, d in zip(kernel, dilation))
    ref, _ = reference_pairs(mask, kernel, (1, 1, 1), padding, dilation, submanifold=True)
    assert_same_pairs(our_pairs(kmap), ref)
    assert kmap.mirrored and torch.equal(kmap.table_t, invert_table(kmap.table, kmap.n_in))


def test_submanifold_search_path_equals_table_path(monkeypatch):
    rng = np.random.default_rng(3)
    mask = rng.random((2, 8, 9, 10)) < 0.2
    coords = coords_of(mask)
    table = our_pairs(km.submanifold_kmap(coords, mask.shape[1:], 2, (3, 3, 3), (1, 2, 1)))
    monkeypatch.setattr(km, "TABLE_MAX_CELLS", 0)
    search = our_pairs(km.submanifold_kmap(coords, mask.shape[1:], 2, (3, 3, 3), (1, 2, 1)))
    assert np.array_equal(table, search)


def test_submanifold_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        km.submanifold_kmap(torch.zeros(1, 4, dtype=torch.int32), (4, 4, 4), 1, (2, 3, 3), (1, 1, 1))


def test_inverse_kmap_is_transposed_strided_map_and_respects_coarse_subset():
    rng = np.random.default_rng(4)
    mask = rng.random((2, 8, 10, 12)) < 0.15
    coords = coords_of(mask)
    geo = ((3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1))
    kmap, out_coords, out_shape = km.strided_kmap(coords, mask.shape[1:], *geo)
    out_keys = kc.linear_keys(out_coords, out_shape)
    inv = km.inverse_kmap(coords, mask.shape[1:], out_keys, out_shape, *geo)
    assert np.array_equal(sort_rows(our_pairs(inv)), sort_rows(our_pairs(kmap.transposed())))
    keep = torch.arange(out_keys.numel()) % 3 != 0  # drop a third of the coarse sites
    sub = km.inverse_kmap(coords, mask.shape[1:], out_keys[keep], out_shape, *geo)
    new_row = torch.cumsum(keep.long(), 0) - 1
    full = our_pairs(kmap)  # (k, coarse, fine)
    kept = full[keep.numpy()[full[:, 1]]]
    kept[:, 1] = new_row.numpy()[kept[:, 1]]
    # inverse map pairs are (k, out=fine, in=coarse)
    assert np.array_equal(sort_rows(our_pairs(sub)), sort_rows(kept[:, [0, 2, 1]]))
    with pytest.raises(ValueError, match="stride"):
        km.inverse_kmap(coords, mask.shape[1:], out_keys, out_shape, (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))


def test_children_kmap_and_prune():
    rng = np.random.default_rng(5)
    coarse = rng.random((2, 3, 4, 5)) < 0.3
    coords = coords_of(coarse)
    kmap, child_coords, fine_shape = km.children_kmap(coords, coarse.shape[1:], (1, 2, 2))
    fine = coarse.repeat(2, axis=2).repeat(2, axis=3)  # nearest upsampling of the mask
    assert fine_shape == fine.shape[1:]
    assert torch.equal(child_coords, coords_of(fine))
    pairs = our_pairs(kmap)  # (k, child, parent)
    assert len(pairs) == 4 * coords.shape[0]
    child = child_coords[pairs[:, 1]].long()
    parent = coords[pairs[:, 2]].long()
    assert torch.equal(child[:, 0], parent[:, 0])
    assert torch.equal(child[:, 1:] // torch.tensor([1, 2, 2]), parent[:, 1:])
    k_expected = (child[:, 2] % 2) * 2 + child[:, 3] % 2
    assert np.array_equal(pairs[:, 0], k_expected.numpy())
    # a clipped fine grid (odd size) drops the children that fall outside
    _, clipped, _ = km.children_kmap(coords, coarse.shape[1:], (1, 2, 2), fine_shape=(3, 7, 9))
    assert torch.equal(clipped, coords_of(fine[:, :, :7, :9]))
    keep = torch.from_numpy(rng.random(child_coords.shape[0]) < 0.5)
    kept, rows = km.prune(child_coords, keep)
    assert torch.equal(kept, child_coords[keep]) and torch.equal(rows, torch.nonzero(keep).flatten())
    with pytest.raises(ValueError, match="bool"):
        km.prune(child_coords, keep.long())


def test_output_grids_too_large_for_int64_keys_are_refused():
    """Padding enlarges a strided conv's output grid, and children multiply the grid: both are checked."""
    coords = torch.zeros(1, 4, dtype=torch.int32)
    side = 2 ** 20  # the input grid (2^60 cells) fits int64 keys
    with pytest.raises(ValueError, match="int64"):
        km.strided_kmap(coords, (side,) * 3, (1, 1, 1), (1, 1, 1), (side,) * 3, (1, 1, 1), batch_size=1)
    with pytest.raises(ValueError, match="int64"):
        km.children_kmap(coords, (side,) * 3, (4, 2, 2))  # 2^64 cells
    kmap, out, _ = km.strided_kmap(coords, (side,) * 3, (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1), batch_size=1)
    assert torch.equal(out, coords) and kmap.n_out == 1


def test_a_level_empty_on_its_first_call_makes_no_host_tensor_later():
    """distinct_with_counts makes its sample bounds' constant on a shape's first call even when there are no keys,
    so a later call with keys copies no host list to the device (a copy that would wait for the device)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Lifts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func.__name__.startswith("lift_fresh")
            return func(*args, **(kwargs or {}))
    cells = 7919  # a shape no other test uses, so its constant is made here
    empty, no_counts = km.distinct_with_counts(torch.zeros(0, 3, dtype=torch.int64), cells, 2)
    assert empty.numel() == 0 and no_counts == (0, 0)
    keys = torch.tensor([[3, -1], [cells + 5, 3]])
    with Lifts() as lifts:
        out, counts = km.distinct_with_counts(keys, cells, 2)
    assert lifts.count == 0
    assert out.tolist() == [3, cells + 5] and counts == (1, 1)
