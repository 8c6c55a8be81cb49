"""PCD `binary_compressed` (LZF): Open3D-written fixtures read back (C codec and the pure-Python decoder), our writer
read by Open3D where it is installed, an analytic LZF stream, and malformed bodies named as DataFormatErrors."""
import os
import struct

import numpy as np
import pytest

from sparse_radar.data import formats, lzf

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "open3d")
POINTS = np.load(os.path.join(FIXTURES, "points.npy"))  # x, y, z, intensity as Open3D was given them


@pytest.mark.parametrize("name", ["binary.pcd", "ascii.pcd", "compressed.pcd", "binary.ply"])
def test_open3d_files_read_back(name):
    points, fields = formats.read_point_fields(os.path.join(FIXTURES, name))
    assert fields == ["x", "y", "z", "intensity"]
    np.testing.assert_allclose(points, POINTS, rtol=0, atol=1e-6)


def test_the_python_decoder_reads_the_library_written_file(monkeypatch):
    path = os.path.join(FIXTURES, "compressed.pcd")
    raw = open(path, "rb").read()
    start = raw.index(b"DATA binary_compressed\n") + len(b"DATA binary_compressed\n")
    packed, size = struct.unpack("<II", raw[start:start + 8])
    body = raw[start + 8:start + 8 + packed]
    assert packed < size  # Open3D compressed it: the stream holds back references
    decoded = lzf._decompress_python(body, size)
    columns = np.frombuffer(decoded, dtype="<f4").reshape(4, -1).T  # field after field
    np.testing.assert_array_equal(columns, POINTS)
    if lzf.have_c_codec():
        assert lzf.decompress(body, size, use_c=True) == decoded
    monkeypatch.setattr(lzf, "_lzf", None)  # the whole reader without the C codec
    np.testing.assert_array_equal(formats.read_pcd(path)[0], POINTS)


def test_lzf_analytic_stream_and_round_trips():
    # "ab" literal, then a back reference of 6 bytes from one byte back: overlapping, so "ab" repeats
    assert lzf._decompress_python(bytes([1, 97, 98, 0x80, 1]), 8) == b"abababab"
    data = bytes(range(50)) * 40 + b"\x00" * 300
    for use_c in ([False, True] if lzf.have_c_codec() else [False]):
        packed = lzf.compress(data, use_c=use_c)
        assert lzf._decompress_python(packed, len(data)) == data
    assert len(lzf.compress(data, use_c=False)) == len(data) + -(-len(data) // 32)  # literal runs only


@pytest.mark.parametrize("use_c", [False, True])
def test_our_compressed_writer_round_trips(tmp_path, monkeypatch, use_c):
    if use_c and not lzf.have_c_codec():
        pytest.skip("the lzf C codec (python-neo-lzf) is not installed")
    if not use_c:
        monkeypatch.setattr(lzf, "_lzf", None)
    path = tmp_path / "out.pcd"
    formats.write_pcd(path, POINTS, ["x", "y", "z", "intensity"], compressed=True)
    assert b"DATA binary_compressed\n" in path.read_bytes()
    np.testing.assert_array_equal(formats.read_pcd(path)[0], POINTS)


def test_open3d_reads_what_we_write(tmp_path):
    o3d = pytest.importorskip("open3d")  # not a dev dependency: its wheel needs system libraries
    for compressed in (False, True):
        path = str(tmp_path / f"ours_{compressed}.pcd")
        formats.write_pcd(path, np.column_stack([POINTS, -POINTS[:, 3]]), ["x", "y", "z", "intensity", "doppler"],
                          compressed=compressed)
        cloud = o3d.t.io.read_point_cloud(path)
        np.testing.assert_allclose(cloud.point["positions"].numpy(), POINTS[:, :3])
        np.testing.assert_allclose(cloud.point["intensity"].numpy()[:, 0], POINTS[:, 3])
        np.testing.assert_allclose(cloud.point["doppler"].numpy()[:, 0], -POINTS[:, 3])


def _compressed(tmp_path, body: bytes, points: int = 300) -> str:
    header = open(os.path.join(FIXTURES, "compressed.pcd"), "rb").read().split(b"DATA binary_compressed\n")[0]
    header = header.replace(b"POINTS 300", f"POINTS {points}".encode())
    path = tmp_path / "bad.pcd"
    path.write_bytes(header + b"DATA binary_compressed\n" + body)
    return str(path)


@pytest.mark.parametrize("codec", ["c", "python"])
def test_malformed_compressed_bodies_are_named(tmp_path, monkeypatch, codec):
    if codec == "python":
        monkeypatch.setattr(lzf, "_lzf", None)
    elif not lzf.have_c_codec():
        pytest.skip("the lzf C codec (python-neo-lzf) is not installed")
    good = open(os.path.join(FIXTURES, "compressed.pcd"), "rb").read().split(b"DATA binary_compressed\n")[1]
    packed, size = struct.unpack("<II", good[:8])
    cases = [
        (good[:6], "ends before its two sizes"),
        (good[:8 + packed // 2], f"holds {packed // 2} bytes, its size field says {packed}"),
        (struct.pack("<II", packed, size + 16) + good[8:], "4816 bytes raw, but 300 points of 16 bytes are 4800"),
        (struct.pack("<II", 5, size) + bytes([1, 97, 98, 0x80, 9]), "cannot come from 5 bytes"),
        (struct.pack("<II", 200, size) + bytes([0x80, 9]) + bytes(198), "corrupt LZF data"),  # reaches before
    ]
    for body, message in cases:
        path = _compressed(tmp_path, body)
        with pytest.raises(formats.DataFormatError, match=path.replace(".", r"\.") + ": .*" + message.replace(
                "(", r"\(").replace(")", r"\)")):
            formats.read_pcd(path)
