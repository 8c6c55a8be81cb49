"""Voxelizer reducers, synthetic scans (determinism, realism), datasets and diffusion supports."""
import numpy as np
import pytest
import torch

from sparse_radar.data import (EMPTY, Channel, GridSpec, PointPairDataset, ReferenceVoxelDataset,
                               SyntheticDataset, collate, coverage, generate_scan, on_support, open_dataset,
                               split_seed, support_structure, voxelize)
from sparse_radar.data import formats
from sparse_radar.kernels import dilate_coords

GRID = GridSpec((0.0, 0.0, 0.0, 4.0, 4.0, 2.0), (1.0, 1.0, 1.0))  # 4 x 4 x 2 voxels (x, y, z)


def test_grid_shape_and_voxel_coords():
    assert GRID.shape == (2, 4, 4)
    coords, inside = GRID.voxel_coords(np.array([[0.5, 3.2, 1.9], [4.0, 0.0, 0.0], [-0.1, 1, 1]]))
    assert inside.tolist() == [True, False, False] and coords[0].tolist() == [1, 0, 3]
    np.testing.assert_allclose(GRID.voxel_centers(np.array([[1, 0, 3]])), [[0.5, 3.5, 1.5]])
    with pytest.raises(ValueError, match="point_range"):
        GridSpec((0, 0, 0, -1, 1, 1))


def test_voxelize_reducers_against_hand_values():
    pts = np.array([[0.2, 0.2, 0.2, 10.0, 1.0], [0.7, 0.4, 0.6, 20.0, 3.0], [3.5, 3.5, 1.5, 40.0, -2.0],
                    [9.0, 0.0, 0.0, 0.0, 0.0]])
    channels = [Channel("occ", "occupancy"), Channel("mean", "mean", 0, 0.0, 40.0),
                Channel("var", "var", 1, 0.0, 4.0), Channel("max", "max", 0, 0.0, 40.0)]
    coords, feats = voxelize(pts, GRID, channels)
    assert coords.tolist() == [[0, 0, 0], [1, 3, 3]]
    s = lambda v, lo, hi: 2 * np.clip((v - lo) / (hi - lo), 0, 1) - 1
    np.testing.assert_allclose(feats[0], [1.0, s(15.0, 0, 40), s(1.0, 0, 4), s(20.0, 0, 40)], rtol=1e-6)
    np.testing.assert_allclose(feats[1], [1.0, 1.0, -1.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="columns"):
        voxelize(pts[:, :4], GRID, channels)


def test_synthetic_scans_are_deterministic_and_realistic():
    a, b = generate_scan(split_seed("val", 3)), generate_scan(split_seed("val", 3))
    assert np.array_equal(a["radar"], b["radar"]) and np.array_equal(a["lidar"], b["lidar"])
    c = generate_scan(split_seed("val", 4))
    assert not np.array_equal(a["lidar"][:100], c["lidar"][:100])
    assert {split_seed(s, 5) for s in ("train", "val", "test")} == {5, 1_000_005, 2_000_005}
    for scan in (a, c):
        assert 100 <= len(scan["radar"]) <= 1500, len(scan["radar"])
        assert 10_000 <= len(scan["lidar"]) <= 100_000, len(scan["lidar"])
        lidar = scan["lidar"].astype(np.float64)
        ground = np.abs(lidar[:, 2] + 1.7) < 0.05  # ground hits: static, Doppler = -v_ego * cos(angle to x)
        unit = lidar[ground, :3] / np.linalg.norm(lidar[ground, :3], axis=1, keepdims=True)
        static = np.abs(lidar[ground, 4] + scan["ego_speed"] * unit[:, 0]) < 0.05
        assert static.mean() > 0.99  # the rest: lowest centimetres of moving objects standing on the ground
        assert np.all((lidar[:, 3] >= 0) & (lidar[:, 3] <= 1))
    with pytest.raises(ValueError, match="split"):
        split_seed("training", 0)


def test_synthetic_dataset_and_collate():
    ds = SyntheticDataset("test", 2)
    radar, target = collate([ds[0], ds[1]], ds.grid_shape)
    assert radar.batch_size == 2 and radar.num_channels == 4 and target.num_channels == 4
    assert bool((radar.feats >= -1).all() and (radar.feats <= 1).all())
    assert set(radar.coords[:, 0].tolist()) == {0, 1}
    with pytest.raises(IndexError):
        ds[2]


def test_supports_and_coverage():
    ds = SyntheticDataset("val", 2)
    radar, target = collate([ds[0], ds[1]], ds.grid_shape)
    full = support_structure("full", radar, target)
    assert full.num_voxels == 2 * np.prod(ds.grid_shape)
    dil = support_structure("radar_dilated", radar, target, (1, 2, 2))
    assert torch.equal(dil.coords, dilate_coords(radar.coords, radar.spatial_shape, (1, 2, 2)))
    oracle = support_structure("oracle", radar, target, (0, 0, 0))
    assert torch.equal(coverage(oracle, target), torch.ones(2))
    cov = coverage(dil, target)
    inside = set(map(tuple, dil.coords.tolist()))
    for b in range(2):
        rows = [tuple(c) for c in target.coords.tolist() if c[0] == b]
        assert abs(float(cov[b]) - sum(r in inside for r in rows) / len(rows)) < 1e-6
    placed = on_support(target, dil)
    keys = {tuple(c): i for i, c in enumerate(target.coords.tolist())}
    for row, c in enumerate(placed.coords.tolist()[:500]):
        expected = target.feats[keys[tuple(c)]] if tuple(c) in keys else torch.full((4,), EMPTY)
        assert torch.equal(placed.feats[row], expected)
    with pytest.raises(ValueError, match="support"):
        support_structure("everything", radar, target)


def test_reference_voxel_folder(tmp_path):
    rng = np.random.default_rng(0)
    for scene in ("s1", "s2"):
        for kind in ("radar_voxel", "target_voxel"):
            (tmp_path / scene / kind).mkdir(parents=True)
            for frame in ("000", "001"):
                xyz = np.unique(rng.integers(0, [16, 8, 4], size=(10, 3)), axis=0)
                np.savez(tmp_path / scene / kind / f"{frame}.npz", coords=xyz,
                         features=rng.uniform(0, 1, (len(xyz), 4)).astype(np.float32), shape=np.array([16, 8, 4, 4]))
    ds = open_dataset(str(tmp_path), "reference")
    assert isinstance(ds, ReferenceVoxelDataset) and len(ds) == 4 and ds.grid_shape == (4, 16, 8)
    radar, target = collate([ds[0], ds[3]], ds.grid_shape)
    assert radar.spatial_shape == (4, 16, 8) and bool((target.feats >= -1).all())
    with pytest.raises(ValueError, match="radar_voxel"):
        ReferenceVoxelDataset(str(tmp_path / "s1"))


def test_point_pair_folders(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "radar").mkdir()
    (tmp_path / "lidar").mkdir()
    for frame in ("a", "b"):
        radar = np.column_stack([rng.uniform(0, 40, (30, 1)), rng.uniform(-20, 20, (30, 1)),
                                 rng.uniform(-1, 3, (30, 1)), rng.normal(size=(30, 4))]).astype(np.float32)
        radar.tofile(tmp_path / "radar" / f"{frame}.bin")
        lidar = np.column_stack([rng.uniform(0, 40, (300, 1)), rng.uniform(-20, 20, (300, 1)),
                                 rng.uniform(-1, 3, (300, 1)), rng.uniform(0, 1, (300, 1))]).astype(np.float32)
        lidar.tofile(tmp_path / "lidar" / f"{frame}.bin")
    with pytest.raises(ValueError, match="not View-of-Delft's official tree.*--calibration none"):
        open_dataset(str(tmp_path), "vod")  # a flat layout has no calib files: no silent 2.5 m offset
    ds = open_dataset(str(tmp_path), "vod", calibration="none")
    assert isinstance(ds, PointPairDataset) and len(ds) == 2
    sample = ds[0]
    assert sample["radar_feats"].shape[1] == 4 and len(sample["target_coords"]) > 100
    with pytest.raises(ValueError, match="data_format"):
        open_dataset(str(tmp_path), "kitti")
    with pytest.raises(ValueError, match="existing folder"):
        open_dataset(str(tmp_path / "missing"))
    (tmp_path / "radar" / "a.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(formats.DataFormatError, match="a.bin"):
        ds[0]


def test_on_field_path_gives_the_field_each_path_runs_on():
    """sparse: the field itself; dense: the dense grid masked by the field's voxels, or unmasked (every cell
    active) for the full support; a dense field passes through."""
    from sparse_radar import DenseVoxels, SparseVoxels
    from sparse_radar.data.support import on_field_path
    mask = torch.rand(2, 1, 3, 4, 5) < 0.4
    data = torch.randn(2, 3, 3, 4, 5) * mask
    sv = SparseVoxels.from_dense(data, mask)
    assert on_field_path(sv, "sparse", "radar_dilated") is sv
    dense = on_field_path(sv, "dense", "radar_dilated")
    assert torch.equal(dense.data, data) and torch.equal(dense.mask, mask)
    full = on_field_path(sv, "dense", "full")
    assert torch.equal(full.data, data) and full.mask is None
    dv = DenseVoxels(data)
    assert on_field_path(dv, "dense", "full") is dv
