"""`python -m sparse_radar.data.inspect ROOT --data_format F`: what a dataset tree pairs, what it drops and why, the
time gaps, the radar->LiDAR transform, how close the radar lands to the LiDAR with and without calibration, and a PNG
per chosen frame (radar over LiDAR, bird's-eye and side view, before and after calibration). Run it first."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree

from ..training.png import write_png
from . import coloradar
from .datasets import PointPairDataset
from .grid import GridSpec

PROG = "python -m sparse_radar.data.inspect"
TREE_FORMATS = ("vod", "coloradar", "dual_radar")
PANEL = 320  # pixels per panel side
COLOURS = {"lidar": (150, 150, 150), "radar": (230, 40, 40)}


def open_tree(root: str, data_format: str, calibration: str, args) -> PointPairDataset:
    """The dataset of an official tree under `calibration` (its `.tree` pairs, transforms and reads)."""
    data = PointPairDataset(root, data_format, GridSpec(), args.split, calibration, args.radar_scans,
                            args.split_file, args.max_dt, args.radar)
    if data.tree is None:
        raise ValueError(f"{root}: not an official {data_format} tree; inspect reads View-of-Delft's, ColoRadar's "
                         f"and Dual-Radar's trees")
    return data


def nearest_distances(radar: np.ndarray, lidar: np.ndarray) -> np.ndarray:
    """Distance in metres from each radar point to its nearest LiDAR point."""
    if len(radar) == 0 or len(lidar) == 0:
        return np.zeros(0)
    return cKDTree(lidar[:, :3]).query(radar[:, :3])[0]


def _rasterise(image: np.ndarray, u: np.ndarray, v: np.ndarray, extent, colour, size: int = 1) -> None:
    """Draw points (u, v) in metres into image [H, W, 3] over extent (u0, u1, v0, v1), u to the right, v up."""
    h, w, _ = image.shape
    u0, u1, v0, v1 = extent
    col = ((u - u0) / (u1 - u0) * (w - 1)).round().astype(np.int64)
    row = ((v1 - v) / (v1 - v0) * (h - 1)).round().astype(np.int64)
    for dr in range(-size + 1, size):
        for dc in range(-size + 1, size):
            r, c = row + dr, col + dc
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            image[r[ok], c[ok]] = colour


def render_frame(before, after, grid: GridSpec) -> np.ndarray:
    """[2 * PANEL, 2 * PANEL, 3] image of (radar, LiDAR) before and after calibration (rows), bird's-eye (x up, y
    left) and side (x right, z up) views (columns), LiDAR grey under radar red, over the grid's extent."""
    x0, y0, z0, x1, y1, z1 = grid.point_range
    out = np.full((2 * PANEL, 2 * PANEL, 3), 255, dtype=np.uint8)
    for row, (radar, lidar) in enumerate((before, after)):
        bev = out[row * PANEL:(row + 1) * PANEL, :PANEL]
        side = out[row * PANEL:(row + 1) * PANEL, PANEL:]
        for name, points, size in (("lidar", lidar, 1), ("radar", radar, 2)):
            _rasterise(bev, -points[:, 1], points[:, 0], (-y1, -y0, x0, x1), COLOURS[name], size)
            _rasterise(side, points[:, 0], points[:, 2], (x0, x1, z0, z1), COLOURS[name], size)
    out[PANEL - 1:PANEL + 1] = 0  # the frame between the rows and the columns
    out[:, PANEL - 1:PANEL + 1] = 0
    return out


def chosen_frames(count: int, frames: Optional[str]) -> List[int]:
    """The frame indices to draw: --frames i,j,... or the first, middle and last."""
    if frames:
        try:
            picked = [int(f) for f in frames.split(",")]
        except ValueError:
            raise ValueError(f"--frames must be comma-separated frame numbers, got {frames!r}") from None
        bad = [f for f in picked if not 0 <= f < count]
        if bad:
            raise ValueError(f"--frames {bad[0]} is outside the {count} frame(s) found (0..{count - 1})")
        return picked
    return sorted({0, count // 2, count - 1})


def _percentiles(values: np.ndarray) -> str:
    if len(values) == 0:
        return "no points"
    return f"median {np.median(values):.3f} m, 90th percentile {np.percentile(values, 90):.3f} m"


def report(args, out=None) -> int:
    """Print the report (to out, default stdout), write the PNGs; returns the exit status."""
    out = out or sys.stdout
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrated = open_tree(args.root, args.data_format, "auto", args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same drops, said once above
        raw = open_tree(args.root, args.data_format, "none", args)
    tree, plain = calibrated.tree, raw.tree
    n = len(tree.pairs)
    print(f"{args.root}: {n} pair(s) of split {args.split!r} ({args.data_format})", file=out)
    for w in caught:
        print(f"  dropped: {w.message}", file=out)
    if isinstance(tree, coloradar.ColoradarTree):
        gaps = np.array([p.gap for p in tree.pair_list])
        print(f"  time gap radar - LiDAR: median {np.median(gaps) * 1e3:.1f} ms, 90th percentile "
              f"{np.percentile(gaps, 90) * 1e3:.1f} ms, max {gaps.max() * 1e3:.1f} ms (--max_dt {tree.max_dt} s)",
              file=out)
        print("  transform: inv(T_base_lidar) @ inv(T_world_base(t_lidar)) @ T_world_base(t_radar) @ "
              "T_base_radar, per pair", file=out)
    else:
        print("  time gap: none (the dataset pairs one radar and one LiDAR file per frame id)", file=out)
    np.set_printoptions(precision=4, suppress=True)
    print(f"  radar -> LiDAR transform of frame 0 ({calibrated.frame_name(0)}):", file=out)
    for line in str(tree.radar_to_lidar(0)).splitlines():
        print(f"    {line}", file=out)
    picked = chosen_frames(n, args.frames)
    statistics = range(n) if n <= args.max_frames else np.linspace(0, n - 1, args.max_frames).round().astype(int)
    near = {"without calibration": [], "with calibration": []}
    for i in sorted(set(int(f) for f in statistics) | set(picked)):
        after, before = tree.frame_points(i), plain.frame_points(i)  # (radar, LiDAR) each
        near["without calibration"].append(nearest_distances(*before))
        near["with calibration"].append(nearest_distances(*after))
        if i in picked:
            os.makedirs(args.out, exist_ok=True)
            path = os.path.join(args.out, f"{calibrated.frame_name(i)}.png")
            write_png(path, render_frame(before, after, GridSpec()))
            print(f"  wrote {path} (top: before calibration, bottom: after; left: bird's-eye, right: side)",
                  file=out)
    print(f"  radar point to nearest LiDAR point over {len(near['with calibration'])} frame(s):", file=out)
    for name, values in near.items():
        print(f"    {name:20s} {_percentiles(np.concatenate(values))}", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser."""
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description=__doc__.split(":", 1)[1].strip())
    p.add_argument("root", metavar="ROOT", help="the dataset's root (ColoRadar: the folder of runs, or one run)")
    p.add_argument("--data_format", required=True, choices=TREE_FORMATS)
    p.add_argument("--split", default="train", help="the split to read (train, val, test, ...)")
    p.add_argument("--split_file", default=None, help="frame ids (vod, dual_radar) or run names (coloradar)")
    p.add_argument("--radar_scans", type=int, default=1, choices=(1, 3, 5), help="vod: accumulated radar scans")
    p.add_argument("--radar", default="arbe", choices=("arbe", "ars548"), help="dual_radar: which radar")
    p.add_argument("--max_dt", type=float, default=coloradar.DEFAULT_MAX_DT, help="coloradar: pairing limit (s)")
    p.add_argument("--frames", default=None, help="frame numbers to draw, e.g. 0,10 (default: first, middle, last)")
    p.add_argument("--max_frames", type=int, default=50, help="frames the distance statistics read (evenly spaced)")
    p.add_argument("--out", default="inspect", help="folder for the PNGs (default ./inspect)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: 0 on success, 2 with one line on stderr for bad input."""
    args = build_parser().parse_args(argv)
    try:
        if args.max_frames < 1:
            raise ValueError(f"--max_frames must be >= 1, got {args.max_frames}")
        if not os.path.isdir(args.root):
            raise ValueError(f"ROOT {args.root!r} is not a folder")
        return report(args)
    except (ValueError, TypeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
