"""Datasets of (radar, target) voxel pairs: built-in synthetic scans, the reference's voxel folders,
and folders of paired point files; `collate` batches them into SparseVoxels."""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..voxels import SparseVoxels
from . import formats
from .grid import GridSpec
from .synthetic import SensorConfig, generate_scan, split_seed
from .voxelize import RADAR_CHANNELS, TARGET_CHANNELS, Channel, voxelize

Sample = Dict[str, np.ndarray]
DATA_FORMATS = ("reference", "vod", "coloradar", "points")


class SyntheticDataset(Dataset):
    """`size` synthetic scans of a split (seeds by split range), voxelized on `grid`; cached in memory."""

    def __init__(self, split: str = "train", size: int = 64, grid: GridSpec = GridSpec(),
                 sensor: SensorConfig = SensorConfig()):
        split_seed(split, max(size - 1, 0))  # validates split and size
        self.split, self.size, self.grid, self.sensor = split, size, grid, sensor
        self._cache: Dict[int, Sample] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.size:
            raise IndexError(f"scan {i} outside [0, {self.size})")
        if i not in self._cache:
            scan = generate_scan(split_seed(self.split, i), self.sensor)
            self._cache[i] = voxel_pair(scan["radar"], scan["lidar"], self.grid)
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


class ReferenceVoxelDataset(Dataset):
    """The reference layout <root>/<scene>/radar_voxel/<frame>.npz|.npy and target_voxel/<frame>.npz|.npy.

    Features are taken as the reference stores them, in [0, 1], and mapped to [-1, 1]."""

    def __init__(self, root: str):
        self.pairs: List[Tuple[str, str]] = []
        for radar_dir in sorted(glob.glob(os.path.join(root, "*", "radar_voxel"))):
            target_dir = os.path.join(os.path.dirname(radar_dir), "target_voxel")
            for path in sorted(glob.glob(os.path.join(radar_dir, "*.np[yz]"))):
                twin = os.path.join(target_dir, os.path.basename(path))
                if os.path.exists(twin):
                    self.pairs.append((path, twin))
        if not self.pairs:
            raise ValueError(f"{root}: no <scene>/radar_voxel/*.npz|.npy with a matching target_voxel file")
        self.grid_shape = self._read(self.pairs[0][0])[2]

    @staticmethod
    def _read(path):
        return formats.read_voxel_npz(path) if path.endswith(".npz") else formats.read_voxel_npy(path)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Sample:
        out = {}
        for name, path in zip(("radar", "target"), self.pairs[i]):
            coords, feats, shape = self._read(path)
            if shape != self.grid_shape:
                raise formats.DataFormatError(path, f"grid {shape} differs from the dataset's {self.grid_shape}")
            if feats.shape[1] != 4:
                raise formats.DataFormatError(path, f"expected 4 feature channels, got {feats.shape[1]}")
            out[f"{name}_coords"], out[f"{name}_feats"] = coords, 2.0 * np.clip(feats, 0, 1) - 1.0
        return out


class PointPairDataset(Dataset):
    """Paired point files <root>/radar/<frame>.* and <root>/lidar/<frame>.* voxelized on `grid`.

    fmt: 'vod' (View-of-Delft .bin: radar rcs and v_r, LiDAR reflectance), 'coloradar' (.bin radar with
    intensity and radial velocity; LiDAR any point format) or 'points' (.npy/.npz/.ply/.pcd: radar x, y, z,
    rcs, doppler; LiDAR x, y, z, intensity)."""

    def __init__(self, root: str, fmt: str, grid: GridSpec = GridSpec()):
        if fmt not in ("vod", "coloradar", "points"):
            raise ValueError(f"PointPairDataset format must be vod, coloradar or points, got {fmt!r}")
        self.fmt, self.grid, self.grid_shape = fmt, grid, grid.shape
        lidar = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(root, "lidar", "*"))}
        self.pairs = [(p, lidar[os.path.splitext(os.path.basename(p))[0]])
                      for p in sorted(glob.glob(os.path.join(root, "radar", "*")))
                      if os.path.splitext(os.path.basename(p))[0] in lidar]
        if not self.pairs:
            raise ValueError(f"{root}: no radar/<frame>.* file with a matching lidar/<frame>.* file")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Sample:
        radar_path, lidar_path = self.pairs[i]
        if self.fmt == "vod":
            radar = formats.read_vod_radar(radar_path)[:, [0, 1, 2, 3, 4]]
            lidar = formats.read_vod_lidar(lidar_path)
        elif self.fmt == "coloradar":
            radar = formats.read_coloradar(radar_path)
            radar = np.column_stack([radar[:, :3], radar[:, 3] - 20.0, radar[:, 4]])  # intensity dB -> rcs-like
            lidar = formats.read_points(lidar_path, "vod_lidar" if lidar_path.endswith(".bin") else None)
        else:
            radar, lidar = formats.read_points(radar_path), formats.read_points(lidar_path)
        if radar.shape[1] < 5:
            raise formats.DataFormatError(radar_path, f"radar points need x, y, z, rcs, doppler; got {radar.shape[1]} columns")
        return voxel_pair(radar[:, :5], lidar, self.grid)


def open_dataset(data: str, data_format: str = "reference", split: str = "train", size: int = 64,
                 grid: GridSpec = GridSpec()) -> Dataset:
    """'synthetic' or a folder path in one of DATA_FORMATS."""
    if data == "synthetic":
        return SyntheticDataset(split, size, grid)
    if not os.path.isdir(data):
        raise ValueError(f"--data must be 'synthetic' or an existing folder, got {data!r}")
    if data_format == "reference":
        return ReferenceVoxelDataset(data)
    if data_format in DATA_FORMATS:
        return PointPairDataset(data, data_format, grid)
    raise ValueError(f"unknown data_format {data_format!r}; expected one of {', '.join(DATA_FORMATS)}")


def collate(samples: Sequence[Sample], grid_shape: Sequence[int]) -> Tuple[SparseVoxels, SparseVoxels]:
    """Batch samples into (radar, target) SparseVoxels on a (D, H, W) grid."""
    def batch(prefix):
        coords = [np.column_stack([np.full(len(s[f"{prefix}_coords"]), b), s[f"{prefix}_coords"]])
                  for b, s in enumerate(samples)]
        feats = [s[f"{prefix}_feats"] for s in samples]
        return SparseVoxels(torch.from_numpy(np.concatenate(feats).astype(np.float32)),
                            torch.from_numpy(np.concatenate(coords).astype(np.int64)), grid_shape, len(samples))
    return batch("radar"), batch("target")
