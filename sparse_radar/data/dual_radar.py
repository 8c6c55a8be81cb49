"""Dual-Radar as published: a KITTI-style tree with two 4D radars (Arbe Phoenix, Continental ARS548), each put into
the LiDAR frame by its extrinsic from the frame's calib file, then turned to x forward.

Facts from the devkit (adept-thu/Dual-Radar: README, pcdet/utils/calibration_mine.py,
pcdet/datasets/dual_radar/dual_radar_dataset*.py, tools/cfgs/dataset_configs/dual_radar_dataset_{arbe,ars548}.yaml):
- ROOT/{training,testing}/{arbe,ars548,velodyne,calib}/<id>.{bin,txt} (the LiDAR folder ships as `robosense` in the
  archives: both names are read); ROOT/ImageSets/<split>.txt (train, val, trainval, test); the test split lives
  in `testing`, every other in `training`.
- Radar points are float32 N x 5 (x, y, z, intensity, doppler), both radars; LiDAR points float32 N x 6 (x, y, z,
  intensity, ring, timestamp).
- calib lines, in this order: P2, R0_rect, Tr_velo_to_cam, Tr_arbe_to_velo, Tr_ars_to_velo (the devkit reads them
  by position), the last two 3 x 4: T_lidar_radar.
- The LiDAR frame has y forward (the devkit's note, and its point range x in [-40, 40], y in [-10, 60.4]); the
  engine's grids have x forward, so both clouds are turned by LIDAR_TO_FORWARD (x' = y, y' = -x).
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np

from . import calibration, formats

RADARS = {"arbe": 3, "ars548": 4}  # the calib line of each radar's Tr_<radar>_to_velo
CALIB_LINES = ("P2", "R0_rect", "Tr_velo_to_cam", "Tr_arbe_to_velo", "Tr_ars_to_velo")
LIDAR_FOLDERS = ("velodyne", "robosense")
LIDAR_TO_FORWARD = calibration.rigid([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [0.0, 0.0, 0.0])
CALIBRATIONS = ("auto", "none")


def is_official_tree(root: str) -> bool:
    """Whether root holds Dual-Radar's tree (training/ or testing/ with a calib folder)."""
    return any(os.path.isdir(os.path.join(root, part, "calib")) for part in ("training", "testing"))


def read_extrinsic(path: str, radar: str) -> np.ndarray:
    """T_lidar_radar (4x4) of `radar` from a Dual-Radar calib file (its line 4 for arbe, 5 for ars548)."""
    if not os.path.isfile(path):
        raise formats.DataFormatError(path, "calibration file not found")
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [line.split() for line in fh if line.strip()]
    row = RADARS[radar]
    if len(lines) <= row:
        raise formats.DataFormatError(path, f"{len(lines)} line(s); a Dual-Radar calib file has "
                                            f"{', '.join(CALIB_LINES)}, in this order")
    label, values = lines[row][0].rstrip(":"), lines[row][1:]
    try:
        numbers = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        raise formats.DataFormatError(path, f"line {row + 1} ({label}) holds a value that is not a number") from None
    if numbers.size != 12:
        raise formats.DataFormatError(path, f"line {row + 1} ({label}) holds {numbers.size} numbers, expected 12 "
                                            f"(the 3x4 {CALIB_LINES[row]})")
    return calibration.check_rigid(numbers.reshape(3, 4), f"{path} ({CALIB_LINES[row]})")


class DualRadarTree:
    """The frames of one split of a Dual-Radar tree: (radar .bin, LiDAR .bin, calib file) per frame id."""

    def __init__(self, root: str, radar: str = "arbe", split: str = "train", split_file: Optional[str] = None,
                 calibration_mode: str = "auto"):
        if radar not in RADARS:
            raise ValueError(f"--radar must be one of {', '.join(RADARS)} (Dual-Radar's two radars), got {radar!r}")
        if calibration_mode not in CALIBRATIONS:
            raise ValueError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration_mode!r}")
        self.root, self.radar, self.calibrate = root, radar, calibration_mode == "auto"
        part = os.path.join(root, "testing" if split == "test" else "training")
        self.radar_dir, self.calib_dir = os.path.join(part, radar), os.path.join(part, "calib")
        lidar = [os.path.join(part, name) for name in LIDAR_FOLDERS if os.path.isdir(os.path.join(part, name))]
        if not os.path.isdir(self.radar_dir) or not lidar:
            raise ValueError(f"{part}: needs {radar}/ and {' or '.join(LIDAR_FOLDERS)}/ folders of <id>.bin "
                             f"(Dual-Radar's tree)")
        self.lidar_dir = lidar[0]
        radar_ids = sorted(n[:-4] for n in os.listdir(self.radar_dir) if n.endswith(".bin"))
        lidar_ids = {n[:-4] for n in os.listdir(self.lidar_dir) if n.endswith(".bin")}
        wanted = self._split(split, split_file)
        self.ids = [i for i in radar_ids if i in lidar_ids and (wanted is None or i in wanted)]
        if not self.ids:
            raise ValueError(f"{part}: no frame with both {radar}/<id>.bin and {os.path.basename(self.lidar_dir)}/"
                             f"<id>.bin" + (f" in split {split!r}" if wanted is not None else ""))

    def _split(self, split: str, split_file: Optional[str]):
        path = split_file or os.path.join(self.root, "ImageSets", f"{split}.txt")
        if split_file and not os.path.isfile(split_file):
            raise ValueError(f"--split_file {split_file!r} does not exist")
        if not os.path.isfile(path):
            return None
        return set(formats.read_name_list(path))

    @property
    def pairs(self) -> List[Tuple[str, str]]:
        """(radar .bin, LiDAR .bin) per frame."""
        return [(os.path.join(self.radar_dir, f"{i}.bin"), os.path.join(self.lidar_dir, f"{i}.bin")) for i in self.ids]

    def radar_to_lidar(self, i: int) -> np.ndarray:
        """T_lidar_radar of frame i from its calib file (identity with calibration 'none')."""
        if not self.calibrate:
            return np.eye(4)
        return read_extrinsic(os.path.join(self.calib_dir, f"{self.ids[i]}.txt"), self.radar)

    def radar_pose(self, i: int) -> np.ndarray:
        """A frame with x along the radar's boresight (its y axis, as the LiDAR's) in the points' frame."""
        boresight_from_x = calibration.invert(LIDAR_TO_FORWARD)  # x forward -> the radar's own y forward
        if not self.calibrate:
            return boresight_from_x
        return LIDAR_TO_FORWARD @ self.radar_to_lidar(i) @ boresight_from_x

    def frame_points(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """(radar [N, 5] x, y, z, intensity, doppler; LiDAR [M, 4] x, y, z, intensity) of frame i, in the LiDAR
        frame turned to x forward (with calibration 'none': as the files hold them)."""
        radar_path, lidar_path = self.pairs[i]
        radar = formats.read_bin(radar_path, 5).copy()
        lidar = formats.read_bin(lidar_path, 6)[:, :4].copy()
        turn = LIDAR_TO_FORWARD if self.calibrate else np.eye(4)
        radar[:, :3] = calibration.transform_points(turn @ self.radar_to_lidar(i), radar[:, :3])
        lidar[:, :3] = calibration.transform_points(turn, lidar[:, :3])
        return radar, lidar


# the synthetic tree's mountings: the radars ahead of and below the LiDAR by about what the devkit's defaults give
# (Arbe (0.08, 2.21, -1.60) m, ARS548 (0.07, 1.97, -1.20) m in the LiDAR's y-forward frame), turned under 5 degrees
MOUNTS = {"arbe": calibration.rigid(calibration.quaternion_matrix([0.0, 0.0, np.sin(np.deg2rad(1.7)),
                                                                   np.cos(np.deg2rad(1.7))]), [0.08, 2.21, -1.60]),
          "ars548": calibration.rigid(calibration.quaternion_matrix([0.0, 0.0, np.sin(np.deg2rad(2.3)),
                                                                     np.cos(np.deg2rad(2.3))]), [0.07, 1.97, -1.20])}


def write_calib(path: str, lidar_from_arbe: np.ndarray, lidar_from_ars: np.ndarray) -> None:
    """A Dual-Radar calib file with these radar extrinsics (the camera rows identity/zero)."""
    rows = [("P2", np.zeros(12)), ("R0_rect", np.eye(3).ravel()), ("Tr_velo_to_cam", np.eye(4)[:3].ravel()),
            ("Tr_arbe_to_velo", lidar_from_arbe[:3].ravel()), ("Tr_ars_to_velo", lidar_from_ars[:3].ravel())]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(f"{k}: {' '.join(f'{v:.12g}' for v in values)}\n" for k, values in rows)


def export_synthetic(folder: str, counts=(("train", 8), ("val", 2), ("test", 2))) -> List[str]:
    """Write synthetic scans as a Dual-Radar tree: the LiDAR y forward, both radars in their own frames (MOUNTS),
    a calib file per frame, ImageSets per split; returns the frame ids."""
    from .synthetic import generate_scan, split_seed
    forward_to_lidar = calibration.invert(LIDAR_TO_FORWARD)
    sets, ids = {}, []
    for split, count in counts:
        part = os.path.join(folder, "testing" if split == "test" else "training")
        for sub in ("arbe", "ars548", "velodyne", "calib"):
            os.makedirs(os.path.join(part, sub), exist_ok=True)
        for i in range(count):
            scan, frame = generate_scan(split_seed(split, i)), f"{len(ids):06d}"
            radar = scan["radar"].astype(np.float64)
            in_lidar = calibration.transform_points(forward_to_lidar, radar[:, :3])
            for name, mount in MOUNTS.items():
                own = calibration.transform_points(calibration.invert(mount), in_lidar)
                np.column_stack([own, radar[:, 3], radar[:, 4]]).astype(np.float32).tofile(
                    os.path.join(part, name, f"{frame}.bin"))
            lidar = scan["lidar"].astype(np.float64)
            rows = np.column_stack([calibration.transform_points(forward_to_lidar, lidar[:, :3]), lidar[:, 3],
                                    np.zeros(len(lidar)), np.zeros(len(lidar))])
            rows.astype(np.float32).tofile(os.path.join(part, "velodyne", f"{frame}.bin"))
            write_calib(os.path.join(part, "calib", f"{frame}.txt"), MOUNTS["arbe"], MOUNTS["ars548"])
            ids.append(frame)
            sets.setdefault(split, []).append(frame)
    os.makedirs(os.path.join(folder, "ImageSets"), exist_ok=True)
    for split, frames in sets.items():
        with open(os.path.join(folder, "ImageSets", f"{split}.txt"), "w", encoding="utf-8") as fh:
            fh.writelines(f"{i}\n" for i in frames)
    return ids
