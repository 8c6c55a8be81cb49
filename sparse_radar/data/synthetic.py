"""Built-in synthetic street scenes seen by a ray-cast LiDAR and a 4D radar, deterministic from a seed.

`python -m sparse_radar.data.synthetic --count 20` prints per-scan statistics.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

SPLIT_BASE = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # seeds: disjoint ranges per split
SENSOR_HEIGHT = 1.7
# kind: (reflectivity for LiDAR, radar cross-section dBsm)
MATERIALS = {"building": (0.5, 15.0), "car": (0.7, 10.0), "pole": (0.6, 5.0), "pedestrian": (0.4, -3.0),
             "wall": (0.45, 8.0), "ground": (0.25, -12.0)}
KINDS = list(MATERIALS)


@dataclass(frozen=True)
class SensorConfig:
    """LiDAR beam pattern and radar resolution/noise (defaults: a 64-beam LiDAR and an automotive 4D radar)."""

    lidar_beams: int = 64
    lidar_elevation: Tuple[float, float] = (-25.0, 15.0)
    lidar_azimuth_step: float = 0.3
    lidar_range: float = 80.0
    lidar_range_noise: float = 0.02
    radar_azimuth_step: float = 1.0
    radar_elevation: Tuple[float, float] = (-10.0, 10.0)
    radar_elevation_step: float = 2.5
    radar_range: float = 60.0
    radar_noise: Tuple[float, float, float] = (0.15, 1.0, 4.0)  # range m, azimuth deg, elevation deg
    ghost_share: float = 0.08
    clutter_mean: float = 20.0
    field_of_view: float = 90.0  # half angle, degrees
    ground: bool = True


def split_seed(split: str, index: int) -> int:
    """Seed of scan `index` of a split (train / val / test), ranges never overlap."""
    if split not in SPLIT_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_BASE)}")
    if not 0 <= index < 1_000_000:
        raise ValueError(f"scan index must be in [0, 1000000), got {index}")
    return SPLIT_BASE[split] + index


def make_scene(rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Axis-aligned boxes of a street: buildings/walls, parked and moving cars, poles, pedestrians."""
    lo, hi, vel, kind = [], [], [], []
    ground = -SENSOR_HEIGHT

    def add(center_xy, size, height, v=(0.0, 0.0, 0.0), k="car", z0=ground):
        cx, cy = center_xy
        lo.append([cx - size[0] / 2, cy - size[1] / 2, z0])
        hi.append([cx + size[0] / 2, cy + size[1] / 2, z0 + height])
        vel.append(v)
        kind.append(KINDS.index(k))

    for side in (-1, 1):
        x = -5.0
        front = rng.uniform(9.0, 14.0)
        while x < 75.0:
            length = rng.uniform(8.0, 25.0)
            if rng.random() < 0.8:
                add((x + length / 2, side * (front + 5.0)), (length, 10.0), rng.uniform(4.0, 15.0), k="building")
            else:
                add((x + length / 2, side * front), (length, 0.4), rng.uniform(1.0, 2.5), k="wall")
            x += length + rng.uniform(0.0, 6.0)
        for px in np.arange(rng.uniform(2.0, 12.0), 70.0, rng.uniform(10.0, 16.0)):
            add((px, side * 6.5), (0.3, 0.3), 6.0, k="pole")
        for _ in range(rng.poisson(3)):
            add((rng.uniform(3.0, 60.0), side * rng.uniform(4.1, 4.8)),
                (rng.uniform(4.0, 5.0), rng.uniform(1.7, 2.0)), rng.uniform(1.4, 1.8))
        for _ in range(rng.poisson(1.5)):
            heading = rng.uniform(0, 2 * np.pi)
            speed = rng.uniform(0.5, 1.6)
            add((rng.uniform(3.0, 45.0), side * rng.uniform(5.5, 7.5)), (0.5, 0.5), rng.uniform(1.6, 1.9),
                (speed * np.cos(heading), speed * np.sin(heading), 0.0), "pedestrian")
    for _ in range(rng.poisson(3)):
        lane = rng.choice([-1.75, 1.75])
        speed = rng.uniform(3.0, 15.0) * (1 if lane < 0 else -1)
        add((rng.uniform(6.0, 60.0), lane), (rng.uniform(4.0, 5.0), rng.uniform(1.7, 2.0)), rng.uniform(1.4, 1.8),
            (speed, 0.0, 0.0))
    return {"lo": np.array(lo), "hi": np.array(hi), "vel": np.array(vel), "kind": np.array(kind, dtype=np.int64),
            "ego_speed": np.array(rng.uniform(0.0, 12.0)), "ground": np.array(ground)}


def raycast(dirs: np.ndarray, scene: Dict[str, np.ndarray], max_range: float, ground: bool,
            chunk: int = 4096) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of rays from the origin: (range [R] or inf, object [R] (-1 ground), normal [R, 3])."""
    lo, hi = scene["lo"], scene["hi"]
    r = dirs.shape[0]
    dist = np.full(r, np.inf)
    obj = np.full(r, -2, dtype=np.int64)
    normal = np.zeros((r, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        for s in range(0, r, chunk):
            d = dirs[s:s + chunk]
            inv = 1.0 / np.where(d == 0, 1e-12, d)  # [c, 3]
            t1, t2 = lo[None] * inv[:, None], hi[None] * inv[:, None]  # [c, K, 3]
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            t_near, t_far = near.max(2), far.min(2)  # [c, K]
            hit = (t_far >= t_near) & (t_near > 0)
            t_hit = np.where(hit, t_near, np.inf)
            best = t_hit.argmin(1) if lo.shape[0] else np.zeros(len(d), dtype=np.int64)
            t_best = t_hit[np.arange(len(d)), best] if lo.shape[0] else np.full(len(d), np.inf)
            axis = near[np.arange(len(d)), best].argmax(1) if lo.shape[0] else np.zeros(len(d), dtype=np.int64)
            n = np.zeros((len(d), 3))
            n[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
            if ground:
                t_ground = np.where(d[:, 2] < 0, scene["ground"] / d[:, 2], np.inf)
                below = t_ground < t_best
                t_best = np.where(below, t_ground, t_best)
                best = np.where(below, -1, best)
                n[below] = (0.0, 0.0, 1.0)
            ok = t_best <= max_range
            dist[s:s + chunk] = np.where(ok, t_best, np.inf)
            obj[s:s + chunk] = np.where(ok, best, -2)
            normal[s:s + chunk] = n
    return dist, obj, normal


def _directions(azimuth_deg: np.ndarray, elevation_deg: np.ndarray) -> np.ndarray:
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)


def _material(scene, obj: np.ndarray, column: int) -> np.ndarray:
    kinds = np.where(obj >= 0, scene["kind"][np.clip(obj, 0, None)], KINDS.index("ground"))
    return np.array([MATERIALS[k][column] for k in KINDS])[kinds]


def _radial_velocity(scene, obj: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Doppler: (object velocity - ego velocity) projected on the line of sight."""
    v = np.where((obj >= 0)[:, None], scene["vel"][np.clip(obj, 0, None)], 0.0) if len(scene["vel"]) else \
        np.zeros_like(unit)
    v = v - np.array([float(scene["ego_speed"]), 0.0, 0.0])
    return (v * unit).sum(1)


def simulate_lidar(scene, rng: np.random.Generator, cfg: SensorConfig) -> np.ndarray:
    """LiDAR points [N, 5]: x, y, z, intensity in [0, 1], radial velocity (ground truth, m/s)."""
    el = np.linspace(*cfg.lidar_elevation, cfg.lidar_beams)
    az = np.arange(-cfg.field_of_view, cfg.field_of_view, cfg.lidar_azimuth_step)
    dirs = _directions(*np.meshgrid(az, el, indexing="ij")).reshape(-1, 3)
    dist, obj, normal = raycast(dirs, scene, cfg.lidar_range, cfg.ground)
    keep = np.isfinite(dist)
    dirs, dist, obj, normal = dirs[keep], dist[keep], obj[keep], normal[keep]
    dist = dist + rng.normal(0.0, cfg.lidar_range_noise, dist.shape)
    cos_inc = np.abs((dirs * normal).sum(1))
    intensity = _material(scene, obj, 0) * cos_inc * (1 - 0.4 * dist / cfg.lidar_range)
    intensity = np.clip(intensity + rng.normal(0.0, 0.03, dist.shape), 0.0, 1.0)
    pts = dirs * dist[:, None]
    return np.column_stack([pts, intensity, _radial_velocity(scene, obj, dirs)])


def simulate_radar(scene, rng: np.random.Generator, cfg: SensorConfig) -> np.ndarray:
    """Radar points [N, 5]: x, y, z, RCS (dBsm), Doppler (m/s); few points, noisy, with ghosts and clutter."""
    az = np.arange(-cfg.field_of_view, cfg.field_of_view, cfg.radar_azimuth_step)
    el = np.arange(cfg.radar_elevation[0], cfg.radar_elevation[1] + 1e-9, cfg.radar_elevation_step)
    dirs = _directions(*np.meshgrid(az, el, indexing="ij")).reshape(-1, 3)
    dist, obj, normal = raycast(dirs, scene, cfg.radar_range, cfg.ground)
    keep = np.isfinite(dist)
    dirs, dist, obj, normal = dirs[keep], dist[keep], obj[keep], normal[keep]
    cos_inc = np.abs((dirs * normal).sum(1))
    base_rcs = _material(scene, obj, 1)
    p_detect = np.clip(0.15 + 0.04 * base_rcs, 0.01, 0.8) * cos_inc**2 * (1 - 0.5 * dist / cfg.radar_range)
    det = rng.random(dist.shape) < p_detect
    dirs, dist, obj, cos_inc, base_rcs = dirs[det], dist[det], obj[det], cos_inc[det], base_rcs[det]
    doppler = _radial_velocity(scene, obj, dirs) + rng.normal(0.0, 0.1, dist.shape)
    rcs = base_rcs + 10 * np.log10(cos_inc + 1e-3) + rng.normal(0.0, 3.0, dist.shape)
    ghosts = rng.random(dist.shape) < cfg.ghost_share  # multipath: same bearing, longer path, weaker
    g_dist = dist[ghosts] * rng.uniform(1.3, 2.0, ghosts.sum())
    dist = np.concatenate([dist, g_dist])
    dirs = np.concatenate([dirs, dirs[ghosts]])
    doppler = np.concatenate([doppler, doppler[ghosts]])
    rcs = np.concatenate([rcs, rcs[ghosts] - rng.uniform(6.0, 10.0, ghosts.sum())])
    n_clutter = rng.poisson(cfg.clutter_mean)
    c_dirs = _directions(rng.uniform(-cfg.field_of_view, cfg.field_of_view, n_clutter),
                         rng.uniform(*cfg.radar_elevation, n_clutter))
    dist = np.concatenate([dist, rng.uniform(3.0, cfg.radar_range, n_clutter)])
    dirs = np.concatenate([dirs, c_dirs])
    doppler = np.concatenate([doppler, -float(scene["ego_speed"]) * c_dirs[:, 0] + rng.normal(0, 0.5, n_clutter)])
    rcs = np.concatenate([rcs, rng.normal(-10.0, 5.0, n_clutter)])
    r_noise, az_noise, el_noise = cfg.radar_noise
    az_m = np.arctan2(dirs[:, 1], dirs[:, 0]) + np.deg2rad(rng.normal(0, az_noise, dist.shape))
    el_m = np.arcsin(np.clip(dirs[:, 2], -1, 1)) + np.deg2rad(rng.normal(0, el_noise, dist.shape))
    rng_m = dist + rng.normal(0, r_noise, dist.shape)
    pts = _directions(np.rad2deg(az_m), np.rad2deg(el_m)) * rng_m[:, None]
    return np.column_stack([pts, rcs, doppler])


def generate_scan(seed: int, cfg: SensorConfig = SensorConfig()) -> Dict[str, np.ndarray]:
    """One scene and both sensors' points, fully determined by seed."""
    rng = np.random.default_rng(seed)
    scene = make_scene(rng)
    lidar = simulate_lidar(scene, rng, cfg)
    radar = simulate_radar(scene, rng, cfg)
    return {"radar": radar.astype(np.float32), "lidar": lidar.astype(np.float32),
            "ego_speed": float(scene["ego_speed"])}


def main(argv=None) -> int:
    from .grid import GridSpec
    from .voxelize import RADAR_CHANNELS, TARGET_CHANNELS, voxelize

    parser = argparse.ArgumentParser(description="statistics of the built-in synthetic scans, or (--export) the scans "
                                                 "written as a published dataset's tree")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--split", default="train", choices=list(SPLIT_BASE))
    parser.add_argument("--export", choices=("vod", "coloradar", "dual_radar"), default=None,
                        help="write a published dataset's tree into FOLDER, each sensor in its own frame: vod "
                             "(calib files, ImageSets) or coloradar (one run per split, unsynchronised stamps, "
                             "ground-truth poses, calib/transforms) or dual_radar (both radars, calib, ImageSets); "
                             "--count train frames, a quarter as many val "
                             "and test")
    parser.add_argument("folder", nargs="?", metavar="FOLDER", help="--export: the tree's root (new or empty)")
    args = parser.parse_args(argv)
    if args.export:
        return _export(parser, args)
    grid = GridSpec()
    cells = np.prod(grid.shape)
    rows = []
    for i in range(args.count):
        scan = generate_scan(split_seed(args.split, i))
        r, _ = voxelize(scan["radar"], grid, RADAR_CHANNELS)
        t, _ = voxelize(scan["lidar"], grid, TARGET_CHANNELS)
        rows.append((len(scan["radar"]), len(scan["lidar"]), len(r) / cells, len(t) / cells))
    a = np.array(rows)
    print(f"{args.count} {args.split} scans on grid {grid.shape} (D, H, W):")
    print(f"  radar points per scan  {a[:, 0].mean():8.0f} (min {a[:, 0].min():.0f}, max {a[:, 0].max():.0f})")
    print(f"  LiDAR points per scan  {a[:, 1].mean():8.0f} (min {a[:, 1].min():.0f}, max {a[:, 1].max():.0f})")
    print(f"  radar voxel occupancy  {a[:, 2].mean():8.3%}")
    print(f"  LiDAR voxel occupancy  {a[:, 3].mean():8.3%}")
    return 0


def _export(parser, args) -> int:
    """--export vod|coloradar FOLDER."""
    from . import coloradar, dual_radar, vod
    if not args.folder:
        parser.error("--export needs the FOLDER to write the tree into")
    if os.path.exists(args.folder) and os.listdir(args.folder):
        parser.error(f"{args.folder} exists and is not empty: choose a new folder")
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    held_out = max(1, args.count // 4)
    counts = (("train", args.count), ("val", held_out), ("test", held_out))
    if args.export == "vod":
        written = f"{len(vod.export_synthetic(args.folder, counts))} View-of-Delft frames"
    elif args.export == "coloradar":
        written = f"{len(coloradar.export_synthetic(args.folder, counts))} ColoRadar runs"
    else:
        written = f"{len(dual_radar.export_synthetic(args.folder, counts))} Dual-Radar frames"
    print(f"wrote {written} ({args.count} train, {held_out} val, {held_out} test scans) to {args.folder}; train on "
          f"it with: python -m sparse_radar.train --data {args.folder} --data_format {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
