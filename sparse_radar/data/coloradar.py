"""ColoRadar as published: per-run folders of unsynchronised radar and LiDAR scans, paired by time, with the radar
put into the LiDAR frame by the rig's extrinsics and the ground-truth motion between the two stamps.

Facts from the dataset's own tools (arpg's loaders, as in JzHuai0108/coloradar_tools python/dataset_loaders.py and
plot_pointclouds.py):
- RUN/single_chip/pointclouds/data/radar_pointcloud_<i>.bin: float32 N x 5 (x, y, z, intensity, doppler), with
  RUN/single_chip/pointclouds/timestamps.txt, one time in seconds per line, line i for file i.
- RUN/lidar/pointclouds/lidar_pointcloud_<i>.bin: float32 N x 4 (x, y, z, intensity), with RUN/lidar/timestamps.txt
  (some copies keep it in RUN/lidar/pointclouds/timestamps.txt: both are read).
- RUN/groundtruth/groundtruth_poses.txt: `x y z qx qy qz qw` per line, the pose of the rig's base in the world
  (T_world_base), with RUN/groundtruth/timestamps.txt.
- calib/transforms/base_to_<sensor>.txt: line 1 `tx ty tz`, line 2 `qx qy qz qw`; T_base_sensor (the tools map a
  sensor's points into the base frame with it).
So the radar of time t_r goes into the LiDAR frame of time t_l by
T_lidar_radar = inv(T_base_lidar) @ inv(T_world_base(t_l)) @ T_world_base(t_r) @ T_base_radar, the poses
interpolated to both times (linear in position, slerp in rotation).

Splits: this project's convention (the dataset ships none) is ROOT/splits/<split>.txt naming runs, one per line, or
--split_file; without either every run is read.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import calibration, formats

DEFAULT_MAX_DT = 0.05  # seconds: a radar scan pairs with the nearest LiDAR scan only this close in time
RADAR_DIR = os.path.join("single_chip", "pointclouds")
LIDAR_DIR = os.path.join("lidar", "pointclouds")
CALIBRATIONS = ("auto", "none")


def is_run(folder: str) -> bool:
    """Whether folder is one ColoRadar run (single_chip/pointclouds/data)."""
    return os.path.isdir(os.path.join(folder, RADAR_DIR, "data"))


def is_official_tree(root: str) -> bool:
    """Whether root is a ColoRadar run or a folder of runs."""
    if is_run(root):
        return True
    return os.path.isdir(root) and any(is_run(os.path.join(root, d)) for d in os.listdir(root))


def read_timestamps(path: str, count: Optional[int] = None) -> np.ndarray:
    """Times in seconds [M] of a timestamps file, ascending; a missing file, a malformed line, times that go back,
    or (given count) a length other than the folder's file count are a DataFormatError naming the file."""
    if not os.path.isfile(path):
        raise formats.DataFormatError(path, "timestamps file not found")
    times = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                times.append(float(line.split()[0]))
            except ValueError:
                raise formats.DataFormatError(path, f"line {number} is not a time in seconds: "
                                                    f"{line.strip()[:40]!r}") from None
    out = np.asarray(times, dtype=np.float64)
    if count is not None and len(out) != count:
        raise formats.DataFormatError(path, f"{len(out)} timestamps for {count} scan file(s) in its folder: "
                                            f"one line per file, line i for file i")
    if len(out) > 1 and np.any(np.diff(out) < 0):
        row = int(np.argmax(np.diff(out) < 0)) + 2
        raise formats.DataFormatError(path, f"times go back at line {row}: they must be ascending")
    return out


def read_transform(path: str) -> np.ndarray:
    """T_base_sensor (4x4) of a ColoRadar transform file (`tx ty tz`, then `qx qy qz qw`)."""
    if not os.path.isfile(path):
        raise formats.DataFormatError(path, "transform file not found (calib/transforms/base_to_<sensor>.txt)")
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [line.split() for line in fh if line.strip()]
    try:
        t, q = [float(v) for v in lines[0]], [float(v) for v in lines[1]]
    except (ValueError, IndexError):
        raise formats.DataFormatError(path, "expected two lines: 'tx ty tz' then 'qx qy qz qw'") from None
    if len(t) != 3 or len(q) != 4:
        raise formats.DataFormatError(path, f"expected 3 numbers then 4, got {len(t)} then {len(q)}")
    return calibration.check_rigid(calibration.rigid(calibration.quaternion_matrix(q, path), t), path)


@dataclass
class Poses:
    """Ground-truth poses of one run: times [M], positions [M, 3], quaternions [M, 4] (x, y, z, w)."""
    times: np.ndarray
    positions: np.ndarray
    quaternions: np.ndarray
    source: str

    def covers(self, t: float) -> bool:
        """Whether t lies within the poses' times (no extrapolation)."""
        return len(self.times) > 0 and self.times[0] <= t <= self.times[-1]

    def at(self, t: float) -> np.ndarray:
        """T_world_base at time t (interpolated)."""
        return calibration.interpolate_pose(self.times, self.positions, self.quaternions, t, self.source)


def read_poses(run: str) -> Poses:
    """A run's ground truth (groundtruth/groundtruth_poses.txt with groundtruth/timestamps.txt)."""
    path = os.path.join(run, "groundtruth", "groundtruth_poses.txt")
    if not os.path.isfile(path):
        raise formats.DataFormatError(path, "ground-truth poses not found: they give the motion between a radar "
                                            "and a LiDAR scan (--calibration none reads the points as they are)")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                values = [float(v) for v in line.split()]
            except ValueError:
                values = []
            if len(values) != 7:
                raise formats.DataFormatError(path, f"line {number} is not 'x y z qx qy qz qw': "
                                                    f"{line.strip()[:60]!r}")
            rows.append(values)
    poses = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    times = read_timestamps(os.path.join(run, "groundtruth", "timestamps.txt"), len(poses))
    return Poses(times, poses[:, :3], poses[:, 3:], path)


def _scan_files(folder: str, prefix: str) -> List[str]:
    """folder's <prefix><i>.bin paths ordered by i; a gap in the numbering is a DataFormatError."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.bin$")
    found = {}
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        match = pattern.match(name)
        if match:
            found[int(match.group(1))] = os.path.join(folder, name)
    if not found:
        raise formats.DataFormatError(folder, f"no {prefix}<i>.bin scan files")
    first = min(found)
    missing = [i for i in range(first, first + len(found)) if i not in found]
    if missing:
        raise formats.DataFormatError(folder, f"{prefix}{missing[0]}.bin is missing: the scans are numbered "
                                              f"without gaps, line i of timestamps.txt for scan i")
    return [found[i] for i in sorted(found)]


@dataclass
class Pair:
    """One training pair: a radar scan and the LiDAR scan nearest in time."""
    run: str
    radar: str
    lidar: str
    t_radar: float
    t_lidar: float

    @property
    def gap(self) -> float:
        """|t_radar - t_lidar| in seconds."""
        return abs(self.t_radar - self.t_lidar)


def pair_by_time(radar_times: np.ndarray, lidar_times: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(index of the nearest LiDAR time per radar time, its gap in seconds); lidar_times ascending, non-empty."""
    right = np.searchsorted(lidar_times, radar_times).clip(1, len(lidar_times) - 1) if len(lidar_times) > 1 \
        else np.zeros(len(radar_times), dtype=np.int64)
    left = (right - 1).clip(0)
    take_left = np.abs(radar_times - lidar_times[left]) <= np.abs(radar_times - lidar_times[right])
    nearest = np.where(take_left, left, right)
    return nearest, np.abs(radar_times - lidar_times[nearest])


class ColoradarTree:
    """The radar scans of the chosen runs paired with the LiDAR scan nearest in time (within max_dt seconds)."""

    def __init__(self, root: str, max_dt: float = DEFAULT_MAX_DT, split: str = "train",
                 split_file: Optional[str] = None, calibration_mode: str = "auto"):
        if calibration_mode not in CALIBRATIONS:
            raise ValueError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration_mode!r}")
        if not (isinstance(max_dt, (int, float)) and 0 < max_dt < 10):
            raise ValueError(f"--max_dt must be a time in seconds in (0, 10), got {max_dt!r}")
        self.root, self.max_dt, self.calibrate = root, float(max_dt), calibration_mode == "auto"
        self.runs = self._runs(root, split, split_file)
        self.calib_dir = self._calib_dir(root) if self.calibrate else None
        if self.calibrate:
            transforms = os.path.join(self.calib_dir, "transforms")
            self.base_from_radar = read_transform(os.path.join(transforms, "base_to_single_chip.txt"))
            self.base_from_lidar = read_transform(os.path.join(transforms, "base_to_lidar.txt"))
        self.pair_list: List[Pair] = []
        self.dropped: Dict[str, int] = {}
        self.largest_dropped_gap = 0.0
        self._poses: Dict[str, Poses] = {}
        for run in self.runs:
            self._pair_run(run)
        if not self.pair_list:
            raise ValueError(f"{root}: no radar scan has a LiDAR scan within --max_dt {self.max_dt} s"
                             + (" and ground-truth poses at both times" if self.calibrate else ""))
        if self.dropped:
            total = sum(self.dropped.values())
            reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.items())
            warnings.warn(f"{root}: {total} radar scan(s) dropped ({reasons}); the largest time gap to a LiDAR "
                          f"scan was {self.largest_dropped_gap:.3f} s (--max_dt {self.max_dt} s)", stacklevel=3)

    @staticmethod
    def _runs(root: str, split: str, split_file: Optional[str]) -> List[str]:
        if is_run(root):
            return [root]
        runs = sorted(d for d in os.listdir(root) if is_run(os.path.join(root, d)))
        names = None
        path = split_file or os.path.join(root, "splits", f"{split}.txt")
        if split_file and not os.path.isfile(split_file):
            raise ValueError(f"--split_file {split_file!r} does not exist")
        if os.path.isfile(path):
            names = formats.read_name_list(path)
            unknown = [n for n in names if n not in runs]
            if unknown:
                raise formats.DataFormatError(path, f"names run {unknown[0]!r}, which is not a run folder of {root} "
                                                    f"(runs: {', '.join(runs[:5])}{' ...' if len(runs) > 5 else ''})")
            runs = [r for r in runs if r in names]
        if not runs:
            raise ValueError(f"{root}: no ColoRadar run (a folder with {RADAR_DIR}/data)"
                             + (f" in split {split!r}" if names is not None else ""))
        return [os.path.join(root, r) for r in runs]

    @staticmethod
    def _calib_dir(root: str) -> str:
        """calib/ beside the runs: in root, or in root's parent when root is one run."""
        candidates = [os.path.join(root, "calib"), os.path.join(os.path.dirname(os.path.abspath(root)), "calib")]
        for c in candidates:
            if os.path.isdir(os.path.join(c, "transforms")):
                return c
        raise formats.DataFormatError(os.path.join(candidates[0], "transforms"),
                                      "calibration folder not found (calib/transforms/base_to_single_chip.txt and "
                                      "base_to_lidar.txt, beside the runs); --calibration none reads the points as "
                                      "they are")

    def _drop(self, why: str, count: int) -> None:
        if count:
            self.dropped[why] = self.dropped.get(why, 0) + int(count)

    def _pair_run(self, run: str) -> None:
        radar_files = _scan_files(os.path.join(run, RADAR_DIR, "data"), "radar_pointcloud_")
        lidar_files = _scan_files(os.path.join(run, LIDAR_DIR), "lidar_pointcloud_")
        radar_t = read_timestamps(os.path.join(run, RADAR_DIR, "timestamps.txt"), len(radar_files))
        lidar_stamps = os.path.join(run, "lidar", "timestamps.txt")
        if not os.path.isfile(lidar_stamps):
            lidar_stamps = os.path.join(run, LIDAR_DIR, "timestamps.txt")
        lidar_t = read_timestamps(lidar_stamps, len(lidar_files))
        nearest, gap = pair_by_time(radar_t, lidar_t)
        close = gap <= self.max_dt
        self._drop("without a LiDAR scan within --max_dt", int((~close).sum()))
        if (~close).any():
            self.largest_dropped_gap = max(self.largest_dropped_gap, float(gap[~close].max()))
        if self.calibrate:
            poses = self._poses[run] = read_poses(run)
            covered = np.array([poses.covers(radar_t[i]) and poses.covers(lidar_t[nearest[i]])
                                for i in range(len(radar_t))], dtype=bool)
            self._drop("outside the ground-truth poses' times", int((close & ~covered).sum()))
            close &= covered
        for i in np.flatnonzero(close):
            j = int(nearest[i])
            self.pair_list.append(Pair(run, radar_files[i], lidar_files[j], float(radar_t[i]), float(lidar_t[j])))

    @property
    def pairs(self) -> List[Tuple[str, str]]:
        """(radar .bin, LiDAR .bin) per pair."""
        return [(p.radar, p.lidar) for p in self.pair_list]

    def frame_name(self, i: int) -> str:
        """<run>_<radar scan number>: unique over the runs of a tree."""
        p = self.pair_list[i]
        return f"{os.path.basename(p.run)}_{os.path.basename(p.radar)[len('radar_pointcloud_'):-len('.bin')]}"

    def radar_to_lidar(self, i: int) -> np.ndarray:
        """T_lidar_radar of pair i: the extrinsics and the rig's motion between the two stamps (identity with
        calibration 'none')."""
        if not self.calibrate:
            return np.eye(4)
        p = self.pair_list[i]
        poses = self._poses[p.run]
        world_from_lidar = poses.at(p.t_lidar) @ self.base_from_lidar
        world_from_radar = poses.at(p.t_radar) @ self.base_from_radar
        return calibration.invert(world_from_lidar) @ world_from_radar

    def radar_pose(self, i: int) -> np.ndarray:
        """The radar's frame (x forward) in the points' frame: T_lidar_radar (identity with calibration 'none')."""
        return self.radar_to_lidar(i)

    def frame_points(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """(radar [N, 5] with x, y, z in the LiDAR frame, LiDAR [M, 4]) of pair i."""
        p = self.pair_list[i]
        radar = formats.read_coloradar(p.radar).copy()
        radar[:, :3] = calibration.transform_points(self.radar_to_lidar(i), radar[:, :3])
        return radar, formats.read_bin(p.lidar, 4)


# ---- synthetic runs in the official layout ----
# The synthetic rig: the LiDAR 0.3 m over the base and turned 90 degrees, the radar 0.6 m ahead and 0.2 m below it,
# yawed 8 degrees (far enough apart that an uncalibrated radar point misses its object by more than a voxel).
LIDAR_MOUNT = calibration.rigid(calibration.quaternion_matrix([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)]),
                                [0.0, 0.0, 0.3])
RADAR_MOUNT = calibration.rigid(calibration.quaternion_matrix([0.0, 0.0, np.sin(np.deg2rad(4.0)),
                                                               np.cos(np.deg2rad(4.0))]), [0.6, 0.0, 0.1])
LIDAR_PERIOD = 0.1  # s


def write_transform(path: str, base_from_sensor: np.ndarray) -> None:
    """Write T_base_sensor as a ColoRadar transform file."""
    q = calibration.matrix_quaternion(base_from_sensor[:3, :3])
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(" ".join(f"{v:.9f}" for v in base_from_sensor[:3, 3]) + "\n")
        fh.write(" ".join(f"{v:.9f}" for v in q) + "\n")


def _write_lines(path: str, rows: Sequence[Sequence[float]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(" ".join(f"{v:.9f}" for v in row) + "\n" for row in rows)


def export_synthetic(folder: str, counts=(("train", 8), ("val", 2), ("test", 2)), seed: int = 0) -> List[str]:
    """Write synthetic scans as ColoRadar runs (one per split): each sensor in its own frame on the rig above, the
    radar stamped up to 30 ms off its LiDAR scan while the rig drives at the scan's ego speed, ground-truth poses
    at 100 Hz, calib/transforms, splits/<split>.txt; plus one radar scan per run with no LiDAR partner within
    DEFAULT_MAX_DT. Returns the run names."""
    from .synthetic import generate_scan, split_seed
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "calib", "transforms"), exist_ok=True)
    write_transform(os.path.join(folder, "calib", "transforms", "base_to_single_chip.txt"), RADAR_MOUNT)
    write_transform(os.path.join(folder, "calib", "transforms", "base_to_lidar.txt"), LIDAR_MOUNT)
    os.makedirs(os.path.join(folder, "splits"), exist_ok=True)
    runs = []
    for split, count in counts:
        run = os.path.join(folder, f"synthetic_{split}_run0")
        runs.append(os.path.basename(run))
        with open(os.path.join(folder, "splits", f"{split}.txt"), "w", encoding="utf-8") as fh:
            fh.write(os.path.basename(run) + "\n")
        scans = [generate_scan(split_seed(split, i)) for i in range(count)]
        speed = float(np.mean([s["ego_speed"] for s in scans])) if scans else 0.0
        start = 1000.0 + 100.0 * len(runs)
        world_from_base = lambda t: calibration.rigid(np.eye(3), [speed * (t - start), 0.0, 0.0])  # noqa: E731
        lidar_t = start + LIDAR_PERIOD * (1 + np.arange(count))
        radar_t = lidar_t + rng.uniform(-0.03, 0.03, count)
        for d, sub in ((RADAR_DIR, "data"), (LIDAR_DIR, "")):
            os.makedirs(os.path.join(run, d, sub), exist_ok=True)
        for i, scan in enumerate(scans):
            # the scan's points are in the LiDAR frame at its stamp; the radar sees the same world from where the
            # rig is at the radar's stamp
            world_from_lidar = world_from_base(lidar_t[i]) @ LIDAR_MOUNT
            radar_from_world = calibration.invert(world_from_base(radar_t[i]) @ RADAR_MOUNT)
            radar = scan["radar"].astype(np.float64)
            own = calibration.transform_points(radar_from_world @ world_from_lidar, radar[:, :3])
            intensity = radar[:, 3] + 20.0  # the flat reader's rcs = intensity - 20
            np.column_stack([own, intensity, radar[:, 4]]).astype(np.float32).tofile(
                os.path.join(run, RADAR_DIR, "data", f"radar_pointcloud_{i}.bin"))
            np.ascontiguousarray(scan["lidar"][:, :4], dtype=np.float32).tofile(
                os.path.join(run, LIDAR_DIR, f"lidar_pointcloud_{i}.bin"))
        # one radar scan long after the last LiDAR scan: no partner
        lonely = lidar_t[-1] + 0.5 if count else start
        np.zeros((1, 5), dtype=np.float32).tofile(os.path.join(run, RADAR_DIR, "data", f"radar_pointcloud_{count}.bin"))
        _write_lines(os.path.join(run, RADAR_DIR, "timestamps.txt"), [[t] for t in [*radar_t, lonely]])
        _write_lines(os.path.join(run, "lidar", "timestamps.txt"), [[t] for t in lidar_t])
        pose_t = np.arange(start, lonely + 0.2, 0.01)
        _write_lines(os.path.join(run, "groundtruth", "timestamps.txt"), [[t] for t in pose_t])
        _write_lines(os.path.join(run, "groundtruth", "groundtruth_poses.txt"),
                     [[speed * (t - start), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0] for t in pose_t])
    return runs
