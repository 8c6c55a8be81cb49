"""Rows about folder datasets and file formats: start-up validation, malformed files, field names, pairing."""
import os
import re
import shutil
import struct

import numpy as np
import pytest

from sparse_radar.data import formats, open_dataset
from sparse_radar.data.validate import validate_dataset
from sparse_radar.train import run

from . import SMALL, row


def _reference_folder(root, frames=("000", "001"), seed=0):
    rng = np.random.default_rng(seed)
    for kind in ("radar_voxel", "target_voxel"):
        (root / "s0" / kind).mkdir(parents=True, exist_ok=True)
        for frame in frames:
            xyz = np.unique(rng.integers(0, [16, 8, 4], size=(10, 3)), axis=0)
            np.savez(root / "s0" / kind / f"{frame}.npz", coords=xyz,
                     features=rng.uniform(0, 1, (len(xyz), 4)).astype(np.float32), shape=np.array([16, 8, 4, 4]))
    return root


@row("empty-frames")
def empty_frames(request, tmp_path, capsys):
    root = _reference_folder(tmp_path / "d", ("000", "001", "002"))
    np.savez(root / "s0" / "radar_voxel" / "001.npz", coords=np.zeros((0, 3), np.int64),
             features=np.zeros((0, 4), np.float32), shape=np.array([16, 8, 4, 4]))
    with pytest.warns(UserWarning, match=r"1 of 3 frame\(s\) have no radar or no target voxel.*001.npz"):
        ds = validate_dataset(open_dataset(str(root), "reference"))
    assert [os.path.basename(r) for r, _ in ds.pairs] == ["000.npz", "002.npz"]
    for frame in ("000", "002"):
        shutil.copy(root / "s0" / "radar_voxel" / "001.npz", root / "s0" / "radar_voxel" / f"{frame}.npz")
    assert run(SMALL + ["--data", str(root), "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    assert "every one of the 3 frame(s) has an empty" in capsys.readouterr().err


@row("validated-at-start")
def validated_at_start(request, tmp_path, capsys):
    root = _reference_folder(tmp_path / "d", [f"{i:03d}" for i in range(6)])
    bad = root / "s0" / "target_voxel" / "004.npz"
    np.savez(bad, coords=np.array([[1.0, 2.0, np.nan]]), features=np.zeros((1, 4), np.float32),
             shape=np.array([16, 8, 4, 4]))
    assert run(SMALL + ["--data", str(root), "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "NaN" in err and not (tmp_path / "r").exists()  # refused before the run started
    monkeypatch = request.getfixturevalue("monkeypatch")
    np.savez(bad, coords=np.array([[1, 2, 3]]), features=np.zeros((1, 4), np.float32), shape=np.array([16, 8, 4, 4]))
    ds = validate_dataset(open_dataset(str(root), "reference"))  # fixed file: new mtime/size, validated again
    assert len(ds) == 6
    calls = []
    monkeypatch.setattr(type(ds), "inspect", lambda self, i: calls.append(i))
    assert len(validate_dataset(open_dataset(str(root), "reference"))) == 6 and calls == []  # cached


# ----- file formats ---------------------------------------------------------------------------------------
def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@row("nan-values")
def nan_values(request, tmp_path, capsys):
    base = dict(coords=np.array([[0, 0, 0], [1, 1, 1]]), features=np.full((2, 4), 0.5, np.float32),
                shape=np.array([4, 4, 4, 4]))
    bad_feats = _npz(tmp_path / "f.npz", **{**base, "features": np.array([[0.5] * 4, [np.nan] * 4], np.float32)})
    bad_coords = _npz(tmp_path / "c.npz", **{**base, "coords": np.array([[0.0, 0, 0], [np.nan, 1, 1]])})
    for path in (bad_feats, bad_coords):
        with pytest.raises(formats.DataFormatError, match=re.escape(str(path)) + ".*NaN"):
            formats.read_voxel_npz(path)
    formats.write_pcd(tmp_path / "r.pcd", np.array([[1, 2, 0, np.nan, 1.0]]), ["x", "y", "z", "rcs", "doppler"])
    from sparse_radar.data.point_fields import radar_columns
    with pytest.raises(formats.DataFormatError, match=r"r\.pcd: 1 radar point\(s\) hold NaN"):
        radar_columns(tmp_path / "r.pcd", *formats.read_point_fields(tmp_path / "r.pcd"))


@row("duplicate-coords")
def duplicate_coords(request, tmp_path, capsys):
    path = _npz(tmp_path / "d.npz", coords=np.array([[1, 2, 3], [0, 0, 0], [1, 2, 3]]),
                features=np.zeros((3, 4), np.float32), shape=np.array([4, 4, 4, 4]))
    with pytest.raises(formats.DataFormatError, match=r"d\.npz: 1 duplicate coordinate.*\[1, 2, 3\]"):
        formats.read_voxel_npz(path)


@row("voxel-shape")
def voxel_shape(request, tmp_path, capsys):
    ok = dict(coords=np.array([[0, 0, 0]]), features=np.zeros((1, 4), np.float32), shape=np.array([4, 4, 4, 4]))
    cases = {"scalar": dict(shape=np.array(4)), "fractional": dict(shape=np.array([4.7, 4, 4, 4])),
             "strings": dict(features=np.array([["a"] * 4])), "string-coords": dict(coords=np.array([["0", "0", "0"]])),
             "float-coords": dict(coords=np.array([[0.5, 0, 0]])), "outside": dict(coords=np.array([[4, 0, 0]])),
             "beyond-int32": dict(coords=np.array([[2**31 + 1, 0, 0]]), shape=np.array([2**31 + 8, 4, 4, 4]))}
    for name, change in cases.items():
        path = _npz(tmp_path / f"{name}.npz", **{**ok, **change})
        with pytest.raises(formats.DataFormatError, match=re.escape(str(path))):
            formats.read_voxel_npz(path)
    coords, _, grid = formats.read_voxel_npz(_npz(tmp_path / "ok.npz", **{**ok, "coords": np.array([[1.0, 2.0, 3.0]])}))
    assert coords.tolist() == [[3, 1, 2]] and grid == (4, 4, 4)  # whole-number float coords are fine


@row("ply-header")
def ply_header(request, tmp_path, capsys):
    def ply(name, count_line, body=b"1 2 3\n"):
        path = tmp_path / f"{name}.ply"
        header = ["ply", "format ascii 1.0"] + ([count_line] if count_line else []) + \
            ["property float x", "property float y", "property float z", "end_header"]
        path.write_bytes(("\n".join(header) + "\n").encode() + body)
        return path
    cases = [("neg", "element vertex -1", "negative"), ("abc", "element vertex abc", "not a whole number"),
             ("missing", None, "element vertex"), ("huge", "element vertex 1000000000000", "exceeds"),
             ("text", "element vertex 1", "non-numeric")]
    for name, line, message in cases:
        path = ply(name, line, b"1 two 3\n" if name == "text" else b"1 2 3\n")
        with pytest.raises(formats.DataFormatError, match=re.escape(str(path)) + ".*" + message):
            formats.read_ply(path)
    binary = tmp_path / "huge_bin.ply"
    binary.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000000\nproperty double x\n"
                       b"property double y\nproperty double z\nend_header\n" + b"\0" * 24)
    with pytest.raises(formats.DataFormatError, match="exceeds"):
        formats.read_ply(binary)


@row("ply-element-order")
def ply_element_order(request, tmp_path, capsys):
    points = np.array([[1.5, -2.0, 0.25], [3.0, 4.0, -1.0]], dtype=np.float32)
    head = ["ply", "FORMAT", "element camera 1", "property float fov", "element face 2",
            "property list uchar int vertex_indices", "element vertex 2", "property float x", "property float y",
            "property float z", "end_header"]
    text = "\n".join(head).replace("FORMAT", "format ascii 1.0") + "\n60\n3 0 1 0\n4 1 0 1 0\n" + \
        "".join(" ".join(f"{v:g}" for v in p) + "\n" for p in points)
    (tmp_path / "a.ply").write_text(text)
    for order, fmt in (("<", "binary_little_endian"), (">", "binary_big_endian")):
        body = struct.pack(order + "f", 60.0)  # the camera
        body += struct.pack(order + "B3i", 3, 0, 1, 0) + struct.pack(order + "B4i", 4, 1, 0, 1, 0)  # two faces
        body += points.astype(order + "f4").tobytes()
        (tmp_path / f"{fmt}.ply").write_bytes(("\n".join(head).replace("FORMAT", f"format {fmt} 1.0") + "\n")
                                              .encode() + body)
    for name in ("a", "binary_little_endian", "binary_big_endian"):
        got, names = formats.read_ply(tmp_path / f"{name}.ply")
        assert names == ["x", "y", "z"] and np.array_equal(got, points), name
    cut = tmp_path / "cut.ply"  # a face list that runs past the end of the file
    cut.write_bytes(("\n".join(head).replace("FORMAT", "format binary_little_endian 1.0") + "\n").encode() +
                    struct.pack("<fB", 60.0, 200))
    with pytest.raises(formats.DataFormatError, match="cut.ply.*inside element 'face'"):
        formats.read_ply(cut)


@row("raw-bin-extension")
def raw_bin_extension(request, tmp_path, capsys):
    ply = tmp_path / "radar.ply"
    formats.write_ply(ply, np.ones((431, 5), np.float32), ["x", "y", "z", "rcs", "doppler"])
    for reader in (formats.read_coloradar, formats.read_vod_radar, formats.read_vod_lidar):
        with pytest.raises(formats.DataFormatError, match=re.escape(str(ply)) + ".*raw float32 .bin"):
            reader(ply)
    edm, _ = request.getfixturevalue("small_runs")
    from sparse_radar.sample import run as sample
    for fmt in ("coloradar", "vod"):
        assert sample([edm, "--input", str(ply), "--data_format", fmt, "--out", str(tmp_path / "s"),
                       "--no-progress"]) == 2
        assert "--data_format points" in capsys.readouterr().err
    raw = tmp_path / "x.bin"
    np.ones((2, 5), np.float32).tofile(raw)
    with pytest.raises(formats.DataFormatError, match="--data_format vod .* or coloradar"):
        formats.read_points(raw)


@row("unreadable-data")
def unreadable_data(request, tmp_path, capsys):
    root = tmp_path / "pairs"
    for kind in ("radar", "lidar"):
        (root / kind).mkdir(parents=True)
        np.save(root / kind / "000.npy", np.ones((3, 5), np.float32))
    os.symlink(root / "radar" / "loop.npy", root / "radar" / "loop.npy")  # a link to itself
    os.symlink(root / "lidar" / "loop.npy", root / "lidar" / "loop.npy")
    data = open_dataset(str(root), "points")
    with pytest.raises(formats.DataFormatError, match="loop.npy: cannot be read"):
        validate_dataset(data, progress=False)
    assert run(SMALL + ["--data", str(root), "--data_format", "points", "--steps", "1",
                        "--out", str(tmp_path / "r")]) == 2
    assert "loop.npy: cannot be read" in capsys.readouterr().err
    monkeypatch = request.getfixturevalue("monkeypatch")  # root reads every folder: deny the listing instead
    real = os.listdir

    def denied(path="."):
        if str(path).endswith("lidar"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(ValueError, match="lidar: the folder cannot be read \\(Permission denied\\)"):
        open_dataset(str(root), "points")


@row("lidar-columns")
def lidar_columns(request, tmp_path, capsys):
    root = tmp_path / "d"
    (root / "radar").mkdir(parents=True)
    (root / "lidar").mkdir()
    np.save(root / "radar" / "0.npy", np.array([[5.0, 0, 0, 1, 2]], np.float32))
    np.save(root / "lidar" / "0.npy", np.array([[5.0, 0, 0]], np.float32))
    with pytest.raises(formats.DataFormatError, match=r"lidar/0\.npy: LiDAR points need 4 columns"):
        open_dataset(str(root), "points")[0]
    (root / "lidar" / "0.npy").unlink()
    formats.write_pcd(root / "lidar" / "0.pcd", np.array([[5.0, 0, 0, 3]]), ["x", "y", "z", "ring"])
    with pytest.raises(formats.DataFormatError, match=r"0\.pcd: LiDAR points need an intensity field"):
        open_dataset(str(root), "points")[0]


@row("pcd-fields")
def pcd_fields(request, tmp_path, capsys):
    from sparse_radar.data.point_fields import radar_columns
    names = ["x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp"]
    points = np.array([[3.0, 4.0, 0.5, 7, 42, 12.5, 9, 9, 1.0, 2.0]])
    formats.write_pcd(tmp_path / "n.pcd", points, names)
    got = radar_columns(tmp_path / "n.pcd", *formats.read_point_fields(tmp_path / "n.pcd"))
    np.testing.assert_allclose(got, [[3, 4, 0.5, 12.5, (3 * 1 + 4 * 2) / 5]], rtol=1e-6)  # radial of vx_comp/vy_comp
    formats.write_ply(tmp_path / "v.ply", np.array([[1.0, 2, 3, -4, 0.25, 9, 0]]),
                      ["x", "y", "z", "RCS", "v_r", "v_r_compensated", "time"])
    got = radar_columns(tmp_path / "v.ply", *formats.read_point_fields(tmp_path / "v.ply"))
    np.testing.assert_allclose(got, [[1, 2, 3, -4, 0.25]])
    formats.write_pcd(tmp_path / "m.pcd", points[:, :6], names[:6])
    with pytest.raises(formats.DataFormatError, match=r"m\.pcd: radar points need doppler"):
        radar_columns(tmp_path / "m.pcd", *formats.read_point_fields(tmp_path / "m.pcd"))


@row("clipped-features")
def clipped_features(request, tmp_path, capsys):
    root = _reference_folder(tmp_path / "d")
    path = root / "s0" / "radar_voxel" / "000.npz"
    data = dict(np.load(path))
    data["features"][:2, 0] = [1.5, -0.5]
    np.savez(path, **data)
    with pytest.warns(UserWarning, match=r"2 feature value\(s\) outside \[0, 1\] in 1 frame"):
        ds = validate_dataset(open_dataset(str(root), "reference"))
    assert ds[0]["radar_feats"][:2, 0].tolist() == [1.0, -1.0]


@row("unpaired-frames")
def unpaired_frames(request, tmp_path, capsys):
    root = _reference_folder(tmp_path / "d", ("000", "001", "002"))
    (root / "s0" / "target_voxel" / "001.npz").unlink()
    with pytest.warns(UserWarning, match=r"1 radar frame\(s\) without a target_voxel file are skipped \(001.npz\)"):
        ds = open_dataset(str(root), "reference")
    assert len(ds) == 2


@row("ambiguous-frames")
def ambiguous_frames(request, tmp_path, capsys):
    root = tmp_path / "d"
    (root / "radar").mkdir(parents=True)
    (root / "lidar").mkdir()
    np.save(root / "radar" / "0000.npy", np.zeros((1, 5), np.float32))
    formats.write_ply(root / "radar" / "0000.ply", np.zeros((1, 5)), ["x", "y", "z", "rcs", "doppler"])
    np.save(root / "lidar" / "0000.npy", np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"frame '0000' has two files, 0000.npy and 0000.ply"):
        open_dataset(str(root), "points")



@row("vod-uncalibrated")
def vod_uncalibrated(request, tmp_path, capsys):
    from sparse_radar.data import vod
    flat = tmp_path / "flat"
    for sensor, cols in (("radar", 7), ("lidar", 4)):
        (flat / sensor).mkdir(parents=True)
        np.ones((3, cols), np.float32).tofile(flat / sensor / "00000.bin")
    with pytest.raises(ValueError, match="no calibration can be read.*--calibration none"):
        open_dataset(str(flat), "vod")
    assert len(open_dataset(str(flat), "vod", calibration="none")) == 1
    tree = tmp_path / "tree"
    vod.export_synthetic(str(tree), (("train", 1),))
    calib = tree / "lidar" / "training" / "calib" / "00000.txt"
    os.remove(calib)
    data = open_dataset(str(tree), "vod")
    with pytest.raises(formats.DataFormatError, match=re.escape(str(calib)) + ": calibration file not found"):
        data[0]
    skewed = "Tr_velo_to_cam: 2 0 0 0 0 1 0 0 0 0 1 0\n"
    calib.write_text(skewed)
    with pytest.raises(formats.DataFormatError, match="not a rigid transform"):
        data[0]


@row("coloradar-uncalibrated")
def coloradar_uncalibrated(request, tmp_path, capsys):
    from sparse_radar.data import coloradar
    flat = tmp_path / "flat"
    for sensor, cols in (("radar", 5), ("lidar", 4)):
        (flat / sensor).mkdir(parents=True)
        np.ones((3, cols), np.float32).tofile(flat / sensor / "0.bin")
    with pytest.raises(ValueError, match="cannot be paired in time nor put into one frame.*--calibration none"):
        open_dataset(str(flat), "coloradar")
    tree = tmp_path / "tree"
    coloradar.export_synthetic(str(tree), (("train", 2),))
    run0 = tree / "synthetic_train_run0"
    stamps = run0 / "lidar" / "timestamps.txt"
    stamps.write_text(stamps.read_text() + "9999.0\n")
    with pytest.raises(formats.DataFormatError, match=re.escape(str(stamps)) + ": 3 timestamps for 2 scan file"):
        open_dataset(str(tree), "coloradar")
    stamps.write_text("1000.1\nnot-a-time\n")
    with pytest.raises(formats.DataFormatError, match=re.escape(str(stamps)) + ": line 2 is not a time"):
        open_dataset(str(tree), "coloradar")
    stamps.write_text("1000.2\n1000.1\n")
    with pytest.raises(formats.DataFormatError, match="times go back at line 2"):
        open_dataset(str(tree), "coloradar")
    poses = run0 / "groundtruth" / "groundtruth_poses.txt"
    stamps.write_text("1100.1\n1100.2\n")
    poses.write_text("0 0 0 0 0 0\n")
    with pytest.raises(formats.DataFormatError, match=re.escape(str(poses)) + ": line 1 is not 'x y z qx qy qz qw'"):
        open_dataset(str(tree), "coloradar")
    os.remove(poses)
    with pytest.raises(formats.DataFormatError, match=re.escape(str(poses)) + ": ground-truth poses not found"):
        open_dataset(str(tree), "coloradar")
    transform = tree / "calib" / "transforms" / "base_to_single_chip.txt"
    os.remove(transform)
    with pytest.raises(formats.DataFormatError, match=re.escape(str(transform)) + ": transform file not found"):
        open_dataset(str(tree), "coloradar")


@row("coloradar-unpaired")
def coloradar_unpaired(request, tmp_path, capsys):
    from sparse_radar.data import coloradar
    coloradar.export_synthetic(str(tmp_path), (("train", 3),))
    with pytest.warns(UserWarning, match=r"1 radar scan\(s\) dropped \(1 without a LiDAR scan within --max_dt\); "
                                         r"the largest time gap to a LiDAR scan was 0\.500 s \(--max_dt 0\.05 s\)"):
        data = open_dataset(str(tmp_path), "coloradar")
    assert len(data) == 3
    poses = tmp_path / "synthetic_train_run0" / "groundtruth" / "timestamps.txt"
    times = poses.read_text().split()
    poses.write_text("\n".join(str(float(t) + 0.25) for t in times) + "\n")  # the poses start after scan 0
    with pytest.warns(UserWarning, match="outside the ground-truth poses' times"):
        assert len(open_dataset(str(tmp_path), "coloradar")) < 3
    with pytest.raises(ValueError, match="no radar scan has a LiDAR scan within --max_dt 0.0001"):
        open_dataset(str(tmp_path), "coloradar", max_dt=0.0001)


@row("dual-radar-calib")
def dual_radar_calib(request, tmp_path, capsys):
    from sparse_radar.data import dual_radar
    with pytest.raises(ValueError, match="not Dual-Radar's tree"):
        open_dataset(str(tmp_path), "dual_radar")
    dual_radar.export_synthetic(str(tmp_path / "tree"), (("train", 1),))
    calib = tmp_path / "tree" / "training" / "calib" / "000000.txt"
    data = open_dataset(str(tmp_path / "tree"), "dual_radar")
    lines = calib.read_text().splitlines()
    calib.write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(formats.DataFormatError, match=re.escape(str(calib)) + ": 3 line"):
        data[0]
    calib.write_text("\n".join(lines[:3] + ["Tr_arbe_to_velo: 1 0 0"]) + "\n")
    with pytest.raises(formats.DataFormatError, match="line 4 .Tr_arbe_to_velo. holds 3 numbers, expected 12"):
        data[0]
    calib.write_text("\n".join(lines[:3] + ["Tr_arbe_to_velo: 1 1 0 0 0 1 0 0 0 0 1 0"]) + "\n")
    with pytest.raises(formats.DataFormatError, match="not a rigid transform"):
        data[0]
    os.remove(calib)
    with pytest.raises(formats.DataFormatError, match=re.escape(str(calib)) + ": calibration file not found"):
        data[0]


@row("pcd-compressed")
def pcd_compressed(request, tmp_path, capsys):
    points = np.arange(40, dtype=np.float32).reshape(10, 4)
    path = tmp_path / "c.pcd"
    formats.write_pcd(path, points, ["x", "y", "z", "intensity"], compressed=True)
    head, body = path.read_bytes().split(b"DATA binary_compressed\n")
    packed, size = struct.unpack("<II", body[:8])
    for bad, message in ((body[:5], "ends before its two sizes"),
                         (body[:8 + packed - 3], f"holds {packed - 3} bytes, its size field says {packed}"),
                         (struct.pack("<II", packed, size - 16) + body[8:], "144 bytes raw, but 10 points of 16 bytes are 160"),
                         (struct.pack("<II", 4, 2 ** 31) + b"\x00" * 4, "cannot come from 4 bytes"),
                         (struct.pack("<II", 2, size) + bytes([0x80, 200]), "corrupt LZF data")):
        path.write_bytes(head + b"DATA binary_compressed\n" + bad)
        with pytest.raises(formats.DataFormatError, match=re.escape(str(path)) + ": .*" + re.escape(message)):
            formats.read_pcd(path)
