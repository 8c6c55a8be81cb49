"""View-of-Delft as published: the official KITTI-style tree, with each frame's radar put into the LiDAR frame.

Facts from the devkit (tudelft-iv/view-of-delft-dataset: vod/configuration/file_locations.py, vod/frame/
data_loader.py, vod/frame/transformations.py):
- ROOT/lidar/training/{velodyne,calib}/<id>.{bin,txt} and ROOT/radar/training/{velodyne,calib}/<id>.{bin,txt};
  the accumulated radar of 3 and 5 scans in ROOT/radar_3_scans and ROOT/radar_5_scans (some documents spell them
  radar_3frames and radar_5frames: both are accepted); frame ids are 5 digits.
- LiDAR points are float32 N x 4 (x, y, z, reflectance); radar points float32 N x 7 (x, y, z, RCS, v_r,
  v_r_compensated, time). Both are already compensated to the camera's time, so one frame's files need only the
  extrinsic: T_lidar_radar = inv(T_camera_lidar) @ T_camera_radar, each the sensor's `Tr_velo_to_cam`.
- Splits: ROOT/lidar/ImageSets/<split>.txt (train, val, test, full), one frame id per line.
"""
from __future__ import annotations

import os
import warnings
from typing import List, Optional, Tuple

import numpy as np

from . import calibration, formats

RADAR_FOLDERS = {1: ("radar",), 3: ("radar_3_scans", "radar_3frames"), 5: ("radar_5_scans", "radar_5frames")}
CALIBRATIONS = ("auto", "none")  # auto: the official tree's calib files; none: the files' points as they are


def is_official_tree(root: str) -> bool:
    """Whether root holds View-of-Delft's official tree (lidar/training/velodyne)."""
    return os.path.isdir(os.path.join(root, "lidar", "training", "velodyne"))


def _ids(folder: str, ext: str) -> List[str]:
    return sorted(name[:-len(ext)] for name in os.listdir(folder) if name.endswith(ext))


def _split_ids(path: str) -> List[str]:
    ids = formats.read_name_list(path)
    bad = [i for i in ids if not i.isdigit()]
    if bad:
        raise formats.DataFormatError(path, f"a split file lists frame ids (digits), one per line; got {bad[0]!r}")
    return [i.zfill(5) for i in ids]


class VodTree:
    """The frames of one split of an official View-of-Delft tree: (radar .bin, LiDAR .bin, their calib files)."""

    def __init__(self, root: str, radar_scans: int = 1, split: str = "train", split_file: Optional[str] = None,
                 calibration_mode: str = "auto"):
        if radar_scans not in RADAR_FOLDERS:
            raise ValueError(f"--radar_scans must be 1, 3 or 5 (the scans View-of-Delft accumulates), got "
                             f"{radar_scans!r}")
        if calibration_mode not in CALIBRATIONS:
            raise ValueError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration_mode!r}")
        self.root, self.calibrate = root, calibration_mode == "auto"
        self.lidar_dir = os.path.join(root, "lidar", "training", "velodyne")
        self.lidar_calib = os.path.join(root, "lidar", "training", "calib")
        names = RADAR_FOLDERS[radar_scans]
        found = [n for n in names if os.path.isdir(os.path.join(root, n, "training", "velodyne"))]
        if not found:
            raise ValueError(f"{root}: no {' or '.join(f'{n}/training/velodyne' for n in names)} folder for "
                             f"--radar_scans {radar_scans}")
        self.radar_dir = os.path.join(root, found[0], "training", "velodyne")
        own_calib = os.path.join(root, found[0], "training", "calib")
        self.radar_calib = own_calib if os.path.isdir(own_calib) else os.path.join(root, "radar", "training", "calib")
        radar_ids, lidar_ids = _ids(self.radar_dir, ".bin"), set(_ids(self.lidar_dir, ".bin"))
        wanted = self._split(split, split_file)
        ids = [i for i in radar_ids if i in lidar_ids and (wanted is None or i in wanted)]
        if not ids:
            raise ValueError(f"{root}: no frame with both {self.radar_dir}/<id>.bin and {self.lidar_dir}/<id>.bin"
                             + (f" in split {split!r}" if wanted is not None else ""))
        missing = sorted(wanted - set(ids)) if wanted is not None else []
        if missing:
            warnings.warn(f"{root}: {len(missing)} frame(s) of the split have no radar or LiDAR file and are "
                          f"skipped (first {missing[0]})", stacklevel=3)
        self.ids = ids

    def _split(self, split: str, split_file: Optional[str]):
        """The split's frame ids (a set), or None for every frame (no split file and no ImageSets)."""
        if split_file:
            if not os.path.isfile(split_file):
                raise ValueError(f"--split_file {split_file!r} does not exist")
            return set(_split_ids(split_file))
        path = os.path.join(self.root, "lidar", "ImageSets", f"{split}.txt")
        return set(_split_ids(path)) if os.path.isfile(path) else None

    @property
    def pairs(self) -> List[Tuple[str, str]]:
        """(radar .bin, LiDAR .bin) per frame."""
        return [(os.path.join(self.radar_dir, f"{i}.bin"), os.path.join(self.lidar_dir, f"{i}.bin")) for i in self.ids]

    def radar_to_lidar(self, i: int) -> np.ndarray:
        """T_lidar_radar of frame i from its two calib files (identity with calibration 'none')."""
        if not self.calibrate:
            return np.eye(4)
        frame = self.ids[i]
        return calibration.vod_radar_to_lidar(os.path.join(self.lidar_calib, f"{frame}.txt"),
                                              os.path.join(self.radar_calib, f"{frame}.txt"))

    def radar_pose(self, i: int) -> np.ndarray:
        """The radar's frame (x forward) in the points' frame: T_lidar_radar (identity with calibration 'none')."""
        return self.radar_to_lidar(i)

    def frame_points(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """(radar [N, 7] with x, y, z in the LiDAR frame, LiDAR [M, 4]) of frame i."""
        radar_path, lidar_path = self.pairs[i]
        radar = formats.read_vod_radar(radar_path).copy()
        radar[:, :3] = calibration.transform_points(self.radar_to_lidar(i), radar[:, :3])
        return radar, formats.read_vod_lidar(lidar_path)


def write_frame(root: str, frame: str, radar: np.ndarray, lidar: np.ndarray, camera_from_lidar: np.ndarray,
                camera_from_radar: np.ndarray) -> None:
    """Write one frame into an official tree: radar [N, 7] in its own frame, LiDAR [M, 4], both calib files."""
    for sensor, points, tr in (("radar", radar, camera_from_radar), ("lidar", lidar, camera_from_lidar)):
        for sub in ("velodyne", "calib"):
            os.makedirs(os.path.join(root, sensor, "training", sub), exist_ok=True)
        np.ascontiguousarray(points, dtype=np.float32).tofile(os.path.join(root, sensor, "training", "velodyne",
                                                                           f"{frame}.bin"))
        write_calib(os.path.join(root, sensor, "training", "calib", f"{frame}.txt"), tr)


def write_calib(path: str, camera_from_sensor: np.ndarray) -> None:
    """A KITTI-style calib file whose `Tr_velo_to_cam` is camera_from_sensor (4x4 or 3x4); the projections zero."""
    rows = {"P0": np.zeros(12), "P1": np.zeros(12), "P2": np.zeros(12), "P3": np.zeros(12),
            "R0_rect": np.eye(3).ravel(), "Tr_velo_to_cam": np.asarray(camera_from_sensor)[:3].ravel(),
            "Tr_imu_to_velo": np.zeros(12)}
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(f"{k}: {' '.join(f'{v:.12g}' for v in values)}\n" for k, values in rows.items())


# the synthetic tree's mountings: the radar about where View-of-Delft's is relative to its LiDAR (the devkit's calib
# files of frames 00549, 01047, 01201 give (2.514, 0.061, -1.153) m and under 1 degree), the camera's axes KITTI's
RADAR_MOUNT = calibration.rigid(calibration.quaternion_matrix([0.0, 0.0, np.sin(np.deg2rad(0.3)),
                                                               np.cos(np.deg2rad(0.3))]), [2.514, 0.061, -1.153])
CAMERA_FROM_LIDAR = calibration.rigid([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]], [0.05, -0.4, -0.9])


def export_synthetic(folder: str, counts=(("train", 8), ("val", 2), ("test", 2))) -> List[str]:
    """Write synthetic scans as an official View-of-Delft tree: each sensor in its own frame (the radar mounted by
    RADAR_MOUNT in the LiDAR frame), both calib files per frame, ImageSets per split; returns the frame ids."""
    from .synthetic import generate_scan, split_seed
    frames, sets = [], {}
    lidar_from_radar = RADAR_MOUNT
    radar_from_lidar = calibration.invert(lidar_from_radar)
    for split, count in counts:
        for i in range(count):
            scan = generate_scan(split_seed(split, i))
            frame = f"{len(frames):05d}"
            radar, lidar = scan["radar"], scan["lidar"]
            rng = np.linalg.norm(radar[:, :3], axis=1).clip(1e-6)
            compensated = radar[:, 4] + scan["ego_speed"] * radar[:, 0] / rng  # the ego motion taken out
            own = calibration.transform_points(radar_from_lidar, radar[:, :3].astype(np.float64))
            radar7 = np.column_stack([own, radar[:, 3], radar[:, 4], compensated, np.zeros(len(radar))])
            write_frame(folder, frame, radar7, lidar[:, :4], CAMERA_FROM_LIDAR, CAMERA_FROM_LIDAR @ lidar_from_radar)
            frames.append(frame)
            sets.setdefault(split, []).append(frame)
    os.makedirs(os.path.join(folder, "lidar", "ImageSets"), exist_ok=True)
    for split, ids in list(sets.items()) + [("full", frames)]:
        with open(os.path.join(folder, "lidar", "ImageSets", f"{split}.txt"), "w", encoding="utf-8") as fh:
            fh.writelines(f"{i}\n" for i in ids)
    return frames
