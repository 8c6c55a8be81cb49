"""Every reader on small files the tests write; malformed files raise DataFormatError naming the file."""
import numpy as np
import pytest

from sparse_radar.data import formats as F


@pytest.fixture
def points():
    return np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)


def test_voxel_npz_and_dense_npy_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    shape = (6, 5, 4, 3)  # H, W, Z, C
    dense = np.zeros(shape, dtype=np.float32)
    xyz = np.unique(rng.integers(0, [6, 5, 4], size=(20, 3)), axis=0)
    dense[xyz[:, 0], xyz[:, 1], xyz[:, 2]] = rng.uniform(0.1, 1.0, size=(len(xyz), 3))
    np.savez(tmp_path / "a.npz", coords=xyz, features=dense[xyz[:, 0], xyz[:, 1], xyz[:, 2]], shape=np.array(shape))
    np.save(tmp_path / "a.npy", dense)
    for coords, feats, grid in (F.read_voxel_npz(tmp_path / "a.npz"), F.read_voxel_npy(tmp_path / "a.npy")):
        assert grid == (4, 6, 5)
        order = np.lexsort(coords.T[::-1])
        z, x, y = coords[order].T
        rebuilt = np.zeros(shape, dtype=np.float32)
        rebuilt[x, y, z] = feats[order]
        np.testing.assert_array_equal(rebuilt, dense)


def test_voxel_npz_errors(tmp_path):
    np.savez(tmp_path / "m.npz", coords=np.zeros((2, 3)), features=np.zeros((2, 1)))
    with pytest.raises(F.DataFormatError, match=r"m\.npz.*missing.*shape"):
        F.read_voxel_npz(tmp_path / "m.npz")
    np.savez(tmp_path / "o.npz", coords=np.array([[9, 0, 0]]), features=np.zeros((1, 1)), shape=np.array([4, 4, 4, 1]))
    with pytest.raises(F.DataFormatError, match=r"o\.npz.*outside"):
        F.read_voxel_npz(tmp_path / "o.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(F.DataFormatError, match=r"junk\.npz"):
        F.read_voxel_npz(tmp_path / "junk.npz")


@pytest.mark.parametrize("reader,columns", [(F.read_vod_radar, 7), (F.read_vod_lidar, 4), (F.read_coloradar, 5)])
def test_bin_readers(tmp_path, reader, columns):
    data = np.random.default_rng(2).normal(size=(30, columns)).astype(np.float32)
    data.tofile(tmp_path / "p.bin")
    np.testing.assert_array_equal(reader(tmp_path / "p.bin"), data)
    data[:, :].reshape(-1)[:-1].tofile(tmp_path / "bad.bin")
    with pytest.raises(F.DataFormatError, match=rf"bad\.bin.*{columns}-value points"):
        reader(tmp_path / "bad.bin")


def test_point_arrays(tmp_path, points):
    np.save(tmp_path / "p.npy", points)
    np.savez(tmp_path / "p.npz", points=points, other=np.zeros(3))
    np.savez(tmp_path / "q.npz", cloud=points)
    for name in ("p.npy", "p.npz", "q.npz"):
        np.testing.assert_array_equal(F.read_points(tmp_path / name), points)
    np.savez(tmp_path / "r.npz", a=points, b=points)
    with pytest.raises(F.DataFormatError, match=r"r\.npz.*'points'"):
        F.read_points(tmp_path / "r.npz")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(F.DataFormatError, match=r"flat\.npy.*\[N, F>=3\]"):
        F.read_points(tmp_path / "flat.npy")


@pytest.mark.parametrize("binary", [False, True])
def test_ply_round_trip(tmp_path, points, binary):
    names = ["x", "y", "z", "intensity", "velocity"]
    F.write_ply(tmp_path / "p.ply", points, names, binary)
    got, got_names = F.read_ply(tmp_path / "p.ply")
    assert got_names == names
    np.testing.assert_allclose(got, points, rtol=1e-6)
    np.testing.assert_allclose(F.read_points(tmp_path / "p.ply"), points, rtol=1e-6)


def test_ply_big_endian_mixed_types_and_errors(tmp_path):
    rec = np.array([(1.5, -2.0, 3.25, 7), (0.0, 1.0, -1.0, 255)],
                   dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f8"), ("i", "u1")])
    header = ("ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
              "property double z\nproperty uchar i\nelement face 0\nproperty list uchar int vertex_indices\n"
              "end_header\n")
    (tmp_path / "be.ply").write_bytes(header.encode() + rec.tobytes())
    got, names = F.read_ply(tmp_path / "be.ply")
    assert names == ["x", "y", "z", "i"]
    np.testing.assert_array_equal(got, [[1.5, -2.0, 3.25, 7], [0.0, 1.0, -1.0, 255]])
    (tmp_path / "short.ply").write_bytes(header.encode() + rec.tobytes()[:10])
    with pytest.raises(F.DataFormatError, match=r"short\.ply.*bytes"):
        F.read_ply(tmp_path / "short.ply")
    (tmp_path / "nop.ply").write_bytes(b"hello\n")
    with pytest.raises(F.DataFormatError, match=r"nop\.ply.*'ply'"):
        F.read_ply(tmp_path / "nop.ply")


@pytest.mark.parametrize("binary", [False, True])
def test_pcd_round_trip(tmp_path, points, binary):
    names = ["x", "y", "z", "rcs", "v"]
    F.write_pcd(tmp_path / "p.pcd", points, names, binary)
    got, got_names = F.read_pcd(tmp_path / "p.pcd")
    assert got_names == names
    np.testing.assert_allclose(got, points, rtol=1e-6)


def test_pcd_nuscenes_style_mixed_fields_and_errors(tmp_path):
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("dyn_prop", "i1"), ("id", "<i2"), ("rcs", "<f4")]
    rec = np.array([(1.0, 2.0, 0.5, 3, 12, 7.5), (4.0, -1.0, 0.0, 1, 13, -2.0)], dtype=fields)
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z dyn_prop id rcs\nSIZE 4 4 4 1 2 4\nTYPE F F F I I F\n"
              "COUNT 1 1 1 1 1 1\nWIDTH 2\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA binary\n")
    (tmp_path / "r.pcd").write_bytes(header.encode() + rec.tobytes())
    got, names = F.read_pcd(tmp_path / "r.pcd")
    assert names == ["x", "y", "z", "dyn_prop", "id", "rcs"]
    np.testing.assert_array_equal(got, [[1, 2, 0.5, 3, 12, 7.5], [4, -1, 0, 1, 13, -2]])
    (tmp_path / "c.pcd").write_bytes(header.replace("binary", "binary_compressed").encode())
    with pytest.raises(F.DataFormatError, match=r"c\.pcd.*binary_compressed"):
        F.read_pcd(tmp_path / "c.pcd")
    (tmp_path / "h.pcd").write_bytes(b"VERSION 0.7\nFIELDS x y\nDATA ascii\n")
    with pytest.raises(F.DataFormatError, match=r"h\.pcd.*incomplete"):
        F.read_pcd(tmp_path / "h.pcd")


def test_read_points_dispatch_errors(tmp_path):
    with pytest.raises(F.DataFormatError, match="pass --data_format vod"):
        F.read_points(tmp_path / "x.bin")
    with pytest.raises(F.DataFormatError, match="unknown point format"):
        F.read_points(tmp_path / "x.las")
    with pytest.raises(F.DataFormatError, match="no such file"):
        F.read_points(tmp_path / "x.ply")
