"""Datasets of (radar, target) voxel pairs: built-in synthetic scans, the reference's voxel folders,
and folders of paired point files; `collate` batches them into SparseVoxels."""
from __future__ import annotations

import glob
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..voxels import SparseVoxels
from . import coloradar, dual_radar, formats, point_fields, vod
from .fov import TargetFov
from .grid import GridSpec
from .synthetic import SensorConfig, generate_scan, split_seed
from .voxelize import RADAR_CHANNELS, TARGET_CHANNELS, Channel, voxelize

Sample = Dict[str, np.ndarray]
DATA_FORMATS = ("reference", "vod", "coloradar", "dual_radar", "points")


class SyntheticDataset(Dataset):
    """`size` synthetic scans of a split (seeds by split range), voxelized on `grid`; cached in memory."""

    def __init__(self, split: str = "train", size: int = 64, grid: GridSpec = GridSpec(),
                 sensor: SensorConfig = SensorConfig(), target_fov: Optional[Tuple[float, float, float]] = None):
        split_seed(split, max(size - 1, 0))  # validates split and size
        self.split, self.size, self.grid, self.sensor = split, size, grid, sensor
        self.target_fov = None if target_fov is None else TargetFov.at(target_fov)  # the sensors share an origin
        self._cache: Dict[int, Sample] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.size:
            raise IndexError(f"scan {i} outside [0, {self.size})")
        if i not in self._cache:
            scan = generate_scan(split_seed(self.split, i), self.sensor)
            lidar = scan["lidar"] if self.target_fov is None else scan["lidar"][self.target_fov.mask(scan["lidar"][:, :3])]
            self._cache[i] = voxel_pair(scan["radar"], lidar, self.grid)
        return self._cache[i]

    @property
    def grid_shape(self) -> Tuple[int, int, int]:
        """(D, H, W) of every sample."""
        return self.grid.shape


def voxel_pair(radar: np.ndarray, lidar: np.ndarray, grid: GridSpec,
               radar_channels: Sequence[Channel] = RADAR_CHANNELS) -> Sample:
    """Voxelize radar points [N, 5] (x, y, z, rcs, doppler) and LiDAR points [M, >=4] into a sample."""
    if lidar.shape[1] < 5:  # LiDAR without Doppler: a zero radial-velocity column
        lidar = np.column_stack([lidar[:, :4], np.zeros(len(lidar), dtype=lidar.dtype)])
    rc, rf = voxelize(radar, grid, radar_channels)
    tc, tf = voxelize(lidar, grid, TARGET_CHANNELS)
    return {"radar_coords": rc, "radar_feats": rf, "target_coords": tc, "target_feats": tf}


class FolderDataset(Dataset):
    """Paired (radar, target) files of a folder; `inspect` reads one pair for start-up validation, `keep`
    narrows the pairs (validate.validate_dataset drops empty frames)."""

    pairs: List[Tuple[str, str]]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)[0]

    def load(self, i: int) -> Tuple[Sample, int]:
        """(sample, count of feature values clipped into range) of pair i."""
        raise NotImplementedError

    def inspect(self, i: int) -> Dict[str, int]:
        """Voxel counts and clipped values of pair i; raises DataFormatError naming a malformed file."""
        sample, clipped = self.load(i)
        return {"radar_voxels": len(sample["radar_coords"]), "target_voxels": len(sample["target_coords"]),
                "clipped": clipped}

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only these pairs (in this order)."""
        self.pairs = [self.pairs[i] for i in indices]


def _unique_stems(paths: Sequence[str], what: str) -> Dict[str, str]:
    """{file name without extension: path}; two files of one frame name are an error (which would pair?)."""
    stems: Dict[str, str] = {}
    for path in sorted(paths):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise ValueError(f"{what}: frame {stem!r} has two files, {os.path.basename(stems[stem])} and "
                             f"{os.path.basename(path)}; keep one per frame")
        stems[stem] = path
    return stems


def _folder_files(folder: str, suffixes: Sequence[str] = ()) -> List[str]:
    """Paths of the files in folder (ending in one of suffixes, if given); an unreadable folder is a ValueError."""
    if not os.path.isdir(folder):
        return []
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise ValueError(f"{folder}: the folder cannot be read ({exc.strerror or exc})") from None
    return [os.path.join(folder, n) for n in names if not suffixes or n.lower().endswith(tuple(suffixes))]


def _warn_unpaired(root: str, unpaired: Sequence[str], what: str) -> None:
    if unpaired:
        shown = ", ".join(os.path.basename(p) for p in unpaired[:3]) + (" ..." if len(unpaired) > 3 else "")
        warnings.warn(f"{root}: {len(unpaired)} radar frame(s) without a {what} file are skipped ({shown})",
                      stacklevel=3)


class ReferenceVoxelDataset(FolderDataset):
    """The reference layout <root>/<scene>/radar_voxel/<frame>.npz|.npy and target_voxel/<frame>.npz|.npy.

    Features are taken as the reference stores them, in [0, 1], and mapped to [-1, 1] (values outside are
    clipped and counted)."""

    def __init__(self, root: str):
        self.pairs, unpaired = [], []
        for radar_dir in sorted(glob.glob(os.path.join(root, "*", "radar_voxel"))):
            target_dir = os.path.join(os.path.dirname(radar_dir), "target_voxel")
            radar = _unique_stems(_folder_files(radar_dir, (".npy", ".npz")), radar_dir)
            target = _unique_stems(_folder_files(target_dir, (".npy", ".npz")), target_dir)
            for stem, path in radar.items():
                if stem in target:
                    self.pairs.append((path, target[stem]))
                else:
                    unpaired.append(path)
        if not self.pairs:
            raise ValueError(f"{root}: no <scene>/radar_voxel/*.npz|.npy with a matching target_voxel file")
        _warn_unpaired(root, unpaired, "target_voxel")
        self.grid_shape = self._read(self.pairs[0][0])[2]

    @staticmethod
    def _read(path):
        return formats.read_voxel_npz(path) if path.endswith(".npz") else formats.read_voxel_npy(path)

    def load(self, i: int) -> Tuple[Sample, int]:
        """(sample, feature values outside [0, 1] that were clipped) of pair i."""
        out, clipped = {}, 0
        for name, path in zip(("radar", "target"), self.pairs[i]):
            coords, feats, shape = self._read(path)
            if shape != self.grid_shape:
                raise formats.DataFormatError(path, f"grid {shape} differs from the dataset's {self.grid_shape}")
            if feats.shape[1] != 4:
                raise formats.DataFormatError(path, f"expected 4 feature channels, got {feats.shape[1]}")
            clipped += int(((feats < 0) | (feats > 1)).sum())
            out[f"{name}_coords"], out[f"{name}_feats"] = coords, 2.0 * np.clip(feats, 0, 1) - 1.0
        return out, clipped


class PointPairDataset(FolderDataset):
    """Paired point files <root>/radar/<frame>.* and <root>/lidar/<frame>.* voxelized on `grid`.

    fmt: 'vod' (View-of-Delft .bin: radar rcs and v_r, LiDAR reflectance), 'coloradar' (.bin radar with
    intensity and radial velocity; LiDAR any point format) or 'points' (.npy/.npz/.ply/.pcd; PLY/PCD fields by
    name, see point_fields: radar x, y, z, rcs, doppler; LiDAR x, y, z, intensity)."""

    def __init__(self, root: str, fmt: str, grid: GridSpec = GridSpec(), split: str = "train",
                 calibration: str = "auto", radar_scans: int = 1, split_file: Optional[str] = None,
                 max_dt: float = coloradar.DEFAULT_MAX_DT, radar: str = "arbe",
                 target_fov: Optional[Tuple[float, float, float]] = None):
        if fmt not in ("vod", "coloradar", "dual_radar", "points"):
            raise ValueError(f"PointPairDataset format must be vod, coloradar, dual_radar or points, got {fmt!r}")
        self.fmt, self.grid, self.grid_shape, self.tree = fmt, grid, grid.shape, None
        self.cone = target_fov
        self.cache_ident = [calibration, radar, max_dt, target_fov]  # what changes the voxels of a pair
        if fmt == "dual_radar":
            if not dual_radar.is_official_tree(root):
                raise ValueError(f"{root}: not Dual-Radar's tree ({{training,testing}}/{{arbe,ars548,velodyne,calib}})")
            if radar_scans != 1:
                raise ValueError("--radar_scans reads View-of-Delft's accumulated scans (--data_format vod)")
            self.tree = dual_radar.DualRadarTree(root, radar, split, split_file, calibration)
            self.pairs = self.tree.pairs
            return
        if fmt == "vod" and vod.is_official_tree(root):
            self.tree = vod.VodTree(root, radar_scans, split, split_file, calibration)
            self.pairs = self.tree.pairs
            return
        if fmt == "coloradar" and coloradar.is_official_tree(root):
            if radar_scans != 1:
                raise ValueError("--radar_scans reads View-of-Delft's accumulated scans (--data_format vod)")
            self.tree = coloradar.ColoradarTree(root, max_dt, split, split_file, calibration)
            self.pairs = self.tree.pairs
            return
        if fmt == "coloradar" and calibration != "none":
            raise ValueError(f"{root}: not ColoRadar's official tree (runs with single_chip/pointclouds/data, "
                             f"lidar/pointclouds, groundtruth, and calib/transforms beside them), so the scans cannot "
                             f"be paired in time nor put into one frame. Point --data at the dataset's root or a run, "
                             f"or pass --calibration none if this flat radar/ and lidar/ layout is already paired and "
                             f"in the LiDAR frame")
        if fmt == "vod" and calibration != "none":
            raise ValueError(f"{root}: not View-of-Delft's official tree (lidar/training/velodyne, radar/training/"
                             f"velodyne, their calib folders), so no calibration can be read: the radar would stay "
                             f"about 2.5 m off the LiDAR. Point --data at the dataset's root, or pass --calibration "
                             f"none if this flat radar/ and lidar/ layout is already in the LiDAR frame")
        if radar_scans != 1 or split_file:
            raise ValueError("--radar_scans and --split_file read an official tree (View-of-Delft's, or ColoRadar's "
                             "for --split_file)")
        lidar = _unique_stems(_folder_files(os.path.join(root, "lidar")), os.path.join(root, "lidar"))
        radar = _unique_stems(_folder_files(os.path.join(root, "radar")), os.path.join(root, "radar"))
        self.pairs = [(path, lidar[stem]) for stem, path in radar.items() if stem in lidar]
        if not self.pairs:
            raise ValueError(f"{root}: no radar/<frame>.* file with a matching lidar/<frame>.* file")
        _warn_unpaired(root, [p for stem, p in radar.items() if stem not in lidar], "lidar")

    @property
    def target_fov(self) -> Optional[TargetFov]:
        """The target's crop at the first pair's radar pose (what a checkpoint records), or None."""
        return None if self.cone is None else TargetFov.at(self.cone, self.radar_pose(0))

    def radar_pose(self, i: int):
        """The radar's frame (x forward) in pair i's points' frame: the tree's, else the origin."""
        return self.tree.radar_pose(i) if self.tree is not None else None

    def load(self, i: int) -> Tuple[Sample, int]:
        """(sample, 0) of pair i: point features are clipped to each channel's range by design (voxelize); the
        target cropped to the radar's field of view when one is set."""
        radar_path, lidar_path = self.pairs[i]
        if isinstance(self.tree, coloradar.ColoradarTree):  # paired in time, radar moved into the LiDAR frame
            raw, lidar_points = self.tree.frame_points(i)
            radar = point_fields.radar_columns(radar_path, coloradar_radar_columns(raw), None)
            lidar = point_fields.lidar_columns(lidar_path, lidar_points, None)
        elif isinstance(self.tree, dual_radar.DualRadarTree):  # radar into the LiDAR frame, both turned x forward
            radar_points, lidar_points = self.tree.frame_points(i)
            radar = point_fields.radar_columns(radar_path, radar_points, None)  # intensity taken as rcs
            lidar = point_fields.lidar_columns(lidar_path, lidar_points, None)
        elif self.tree is not None:  # the official tree: radar put into the LiDAR frame by the frame's calib files
            radar_points, lidar_points = self.tree.frame_points(i)
            radar = point_fields.radar_columns(radar_path, radar_points, formats.VOD_RADAR_FIELDS)
            lidar = point_fields.lidar_columns(lidar_path, lidar_points, None)
        elif self.fmt == "vod":
            radar = point_fields.radar_columns(radar_path, *formats.read_point_fields(radar_path, "vod_radar"))
            lidar = point_fields.lidar_columns(lidar_path, formats.read_vod_lidar(lidar_path), None)
        elif self.fmt == "coloradar":
            radar = point_fields.radar_columns(radar_path, coloradar_radar_columns(formats.read_coloradar(radar_path)),
                                               None)
            lidar = point_fields.lidar_columns(
                lidar_path, *formats.read_point_fields(lidar_path, "vod_lidar" if lidar_path.endswith(".bin") else None))
        else:
            radar = point_fields.radar_columns(radar_path, *formats.read_point_fields(radar_path))
            lidar = point_fields.lidar_columns(lidar_path, *formats.read_point_fields(lidar_path))
        if self.cone is not None:
            lidar = lidar[TargetFov.at(self.cone, self.radar_pose(i)).mask(lidar[:, :3])]
        return voxel_pair(radar, lidar, self.grid), 0


    def frame_name(self, i: int) -> str:
        """The output name of pair i: its radar file's stem (ColoRadar: <run>_<scan number>)."""
        if isinstance(self.tree, coloradar.ColoradarTree):
            return self.tree.frame_name(i)
        if isinstance(self.tree, dual_radar.DualRadarTree):
            return self.tree.ids[i]
        return os.path.splitext(os.path.basename(self.pairs[i][0]))[0]


def coloradar_radar_columns(raw: np.ndarray) -> np.ndarray:
    """ColoRadar's x, y, z, intensity (dB), doppler as x, y, z, rcs, doppler (rcs = intensity - 20)."""
    return np.column_stack([raw[:, :3], raw[:, 3] - 20.0, raw[:, 4]])


def open_dataset(data: str, data_format: str = "reference", split: str = "train", size: int = 64,
                 grid: GridSpec = GridSpec(), calibration: str = "auto", radar_scans: int = 1,
                 split_file: Optional[str] = None, max_dt: float = coloradar.DEFAULT_MAX_DT,
                 radar: str = "arbe", target_fov: Optional[Tuple[float, float, float]] = None) -> Dataset:
    """'synthetic' or a folder path in one of DATA_FORMATS (View-of-Delft and ColoRadar: their official trees,
    calibrated; ColoRadar paired in time within max_dt seconds)."""
    if data == "synthetic":
        return SyntheticDataset(split, size, grid, target_fov=target_fov)
    if not os.path.isdir(data):
        raise ValueError(f"--data must be 'synthetic' or an existing folder, got {data!r}")
    if data_format == "reference":
        if target_fov is not None:
            raise ValueError("--target_fov crops LiDAR points; the reference format stores voxels (pass --target_fov "
                             "none)")
        return ReferenceVoxelDataset(data)
    if data_format in DATA_FORMATS:
        return PointPairDataset(data, data_format, grid, split, calibration, radar_scans, split_file, max_dt, radar,
                                target_fov)
    raise ValueError(f"unknown data_format {data_format!r}; expected one of {', '.join(DATA_FORMATS)}")


def batch_voxels(coords: Sequence[np.ndarray], feats: Sequence[np.ndarray], grid_shape) -> SparseVoxels:
    """One SparseVoxels batch from per-sample voxel coords [M_b, 3] (z, x, y) and feats [M_b, C]."""
    stacked = [np.column_stack([np.full(len(c), b), c]) for b, c in enumerate(coords)]
    return SparseVoxels(torch.from_numpy(np.concatenate(feats).astype(np.float32)),
                        torch.from_numpy(np.concatenate(stacked).astype(np.int64)), tuple(grid_shape), len(coords))


def collate(samples: Sequence[Sample], grid_shape: Sequence[int]) -> Tuple[SparseVoxels, SparseVoxels]:
    """Batch samples into (radar, target) SparseVoxels on a (D, H, W) grid."""
    return tuple(batch_voxels([s[f"{p}_coords"] for s in samples], [s[f"{p}_feats"] for s in samples], grid_shape)
                 for p in ("radar", "target"))
