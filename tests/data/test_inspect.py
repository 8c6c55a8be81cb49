"""`python -m sparse_radar.data.inspect`: the report on each official tree (pairs, drops, gaps, transform, distances
with and without calibration) and its PNGs."""
import re
import struct

import pytest

from sparse_radar.data import coloradar, dual_radar, vod
from sparse_radar.data.inspect import PANEL, main

EXPORTS = {"vod": vod.export_synthetic, "coloradar": coloradar.export_synthetic,
           "dual_radar": dual_radar.export_synthetic}


def png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("fmt", sorted(EXPORTS))
def test_report_shows_calibration_brings_the_radar_onto_the_lidar(fmt, tmp_path, capsys):
    root = tmp_path / "tree"
    EXPORTS[fmt](str(root), (("train", 3), ("test", 1)))
    out = tmp_path / "png"
    assert main([str(root), "--data_format", fmt, "--out", str(out), "--frames", "0,2"]) == 0
    text = capsys.readouterr().out
    assert re.search(r": 3 pair\(s\) of split 'train'", text)
    without = float(re.search(r"without calibration\s+median ([\d.]+) m", text).group(1))
    with_ = float(re.search(r"with calibration\s+median ([\d.]+) m", text).group(1))
    assert with_ < 0.4 < without, text  # under half a default voxel only after calibration
    assert "radar -> LiDAR transform of frame 0" in text
    if fmt == "coloradar":
        assert "1 radar scan(s) dropped" in text and re.search(r"time gap radar - LiDAR: median [\d.]+ ms", text)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and all(png_size(p) == (2 * PANEL, 2 * PANEL) for p in pngs)


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--data_format", "vod"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    root = tmp_path / "tree"
    vod.export_synthetic(str(root), (("train", 2),))
    assert main([str(root), "--data_format", "vod", "--frames", "5", "--out", str(tmp_path / "p")]) == 2
    assert "--frames 5 is outside the 2 frame(s) found" in capsys.readouterr().err
    flat = tmp_path / "flat"
    (flat / "radar").mkdir(parents=True)
    (flat / "lidar").mkdir()
    assert main([str(flat), "--data_format", "vod"]) == 2
    assert "error:" in capsys.readouterr().err
