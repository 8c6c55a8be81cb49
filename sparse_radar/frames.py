"""Frames to sample and judge: the synthetic test split, a data folder, radar files alone, or one radar file.

Every frame is a voxel sample (radar_coords/feats, and target_coords/feats when ground truth is known) on the
model's grid, as the training datasets give them, plus its name."""
from __future__ import annotations

import os
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .data import formats, point_fields
from .data import coloradar, dual_radar
from .data.coloradar import DEFAULT_MAX_DT
from .data.datasets import (DATA_FORMATS, FolderDataset, PointPairDataset, SyntheticDataset, batch_voxels,
                            coloradar_radar_columns, open_dataset)
from .data.grid import GridSpec
from .data.voxelize import Channel, voxelize
from .voxels import SparseVoxels

POINT_SUFFIXES = (".npy", ".npz", ".ply", ".pcd", ".bin")


class Frame:
    """One input: its name, the voxel sample (read when first used, so work starts at once), and the radar points
    outside the grid (None where unknown)."""

    def __init__(self, name: str, sample: Optional[Dict[str, np.ndarray]] = None, dropped: Optional[int] = None,
                 load: Optional[Callable[[], Tuple[Dict[str, np.ndarray], Optional[int]]]] = None):
        if (sample is None) == (load is None):
            raise ValueError("a Frame needs a sample or a loader, not both")
        self.name, self._sample, self.dropped, self._load = name, sample, dropped, load

    @property
    def sample(self) -> Dict[str, np.ndarray]:
        """The voxel sample (radar_coords/feats, and target_coords/feats where ground truth is known)."""
        if self._sample is None:
            self._sample, self.dropped = self._load()
        return self._sample

    def release(self) -> None:
        """Forget a loaded sample (it is read again if used again)."""
        if self._load is not None:
            self._sample = None

    @property
    def has_target(self) -> bool:
        """Whether ground truth is known."""
        return "target_coords" in self.sample


def load_frames(source: str, grid: GridSpec, radar_channels: Sequence[Channel], data_format: str = "points",
                count: Optional[int] = None, split: str = "test", calibration: str = "auto",
                max_dt: float = DEFAULT_MAX_DT, radar: str = "arbe", target_fov=None) -> List[Frame]:
    """'synthetic' (`count` frames of `split`, default 50 of the test split), a data folder of `data_format` (pairs with
    ground truth; View-of-Delft's and ColoRadar's official trees: the split's frames, calibrated unless calibration
    is 'none', ColoRadar's paired within max_dt seconds), a folder of radar point files, or one radar point file.
    target_fov: a data.fov.TargetFov (a model's record): ground truth cropped by its cone, at each frame's radar pose."""
    cone = None if target_fov is None else (target_fov.azimuth, target_fov.elevation, target_fov.range)
    if count is not None and count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    if source == "synthetic":
        data = SyntheticDataset(split, count or 50, grid, target_fov=cone)
        return [Frame(f"synthetic_{split}_{i:06d}", load=partial(_item, data, i)) for i in range(len(data))]
    if data_format not in DATA_FORMATS:
        raise ValueError(f"unknown data format {data_format!r}; expected one of {', '.join(DATA_FORMATS)}")
    if os.path.isfile(source):
        return [_radar_file_frame(source, grid, radar_channels, data_format)]
    if not os.path.isdir(source):
        raise ValueError(f"input {source!r} is neither 'synthetic', a folder nor a file")
    if _is_paired_folder(source, data_format):
        data = open_dataset(source, data_format, split, 1, grid, calibration=calibration, max_dt=max_dt, radar=radar,
                            target_fov=None if data_format == "reference" else cone)
        if tuple(data.grid_shape) != tuple(grid.shape):
            raise ValueError(f"{source}: the voxel files' grid {tuple(data.grid_shape)} (D, H, W) differs from the "
                             f"model's {tuple(grid.shape)}; use a model trained on voxel files of this shape")
        frames = [Frame(_frame_name(data, i), load=partial(_item, data, i)) for i in range(len(data))]
        return _unique_names(frames[:count] if count else frames)
    files = sorted(os.path.join(source, f) for f in os.listdir(source) if f.lower().endswith(POINT_SUFFIXES))
    if not files:
        raise ValueError(f"{source}: no radar point files ({', '.join(POINT_SUFFIXES)}) and no radar/ + lidar/ "
                         f"(or <scene>/radar_voxel/) pairs")
    files = files[:count] if count else files
    return _unique_names([Frame(os.path.splitext(os.path.basename(f))[0],
                                load=partial(_radar_file_sample, f, grid, radar_channels, data_format))
                          for f in files])


def _item(data, i: int):
    return data[i], None


def _unique_names(frames: List[Frame]) -> List[Frame]:
    """frames, refused where two share a name (their output files would overwrite each other)."""
    seen: Dict[str, int] = {}
    for i, f in enumerate(frames):
        if f.name in seen:
            raise ValueError(f"two inputs are both frame {f.name!r} (numbers {seen[f.name]} and {i}); their outputs "
                             f"would overwrite each other: keep one file per frame name")
        seen[f.name] = i
    return frames


def _is_paired_folder(folder: str, data_format: str) -> bool:
    if data_format == "reference":
        return any(os.path.isdir(os.path.join(folder, d, "radar_voxel")) for d in os.listdir(folder))
    if data_format == "coloradar" and coloradar.is_official_tree(folder):
        return True
    if data_format == "dual_radar":
        return dual_radar.is_official_tree(folder)
    return os.path.isdir(os.path.join(folder, "radar")) and os.path.isdir(os.path.join(folder, "lidar"))


def _frame_name(data: FolderDataset, i: int) -> str:
    if isinstance(data, PointPairDataset):
        return data.frame_name(i)
    radar_path = data.pairs[i][0]
    stem = os.path.splitext(os.path.basename(radar_path))[0]
    scene = os.path.basename(os.path.dirname(os.path.dirname(radar_path)))
    return f"{scene}_{stem}" if isinstance(data, FolderDataset) and "radar_voxel" in radar_path else stem


def radar_points_of_file(path: str, data_format: str = "points") -> np.ndarray:
    """Radar points [N, 5] (x, y, z, rcs, doppler) of one file, read as the training readers read it."""
    if data_format == "reference":
        raise ValueError(f"{path}: the reference format stores voxels in scene folders; pass the folder "
                         f"(<scene>/radar_voxel, target_voxel) or a radar point file")
    if data_format == "vod":
        return point_fields.radar_columns(path, *formats.read_point_fields(path, "vod_radar"))
    if data_format == "coloradar":
        return point_fields.radar_columns(path, coloradar_radar_columns(formats.read_coloradar(path)), None)
    if data_format == "dual_radar":  # x, y, z, intensity (taken as rcs), doppler, in the radar's own frame
        return point_fields.radar_columns(path, formats.read_bin(path, 5), None)
    return point_fields.radar_columns(path, *formats.read_point_fields(path))


def _radar_file_sample(path: str, grid: GridSpec, radar_channels: Sequence[Channel], data_format: str):
    """(radar sample, radar points outside the grid) of one radar point file."""
    points = radar_points_of_file(path, data_format)
    inside = grid.voxel_coords(points[:, :3])[1]
    coords, feats = voxelize(points, grid, radar_channels)
    return {"radar_coords": coords, "radar_feats": feats}, int((~inside).sum())


def _radar_file_frame(path: str, grid: GridSpec, radar_channels: Sequence[Channel], data_format: str) -> Frame:
    frame = Frame(os.path.splitext(os.path.basename(path))[0],
                  load=partial(_radar_file_sample, path, grid, radar_channels, data_format))
    frame.sample  # one file given by name: read now, so a bad file is refused before any work  # noqa: B018
    return frame


def radar_field(frames: Sequence[Frame], grid_shape) -> SparseVoxels:
    """The frames' radar voxels as one batch."""
    return _batch(frames, "radar", grid_shape)


def target_field(frames: Sequence[Frame], grid_shape) -> SparseVoxels:
    """The frames' target voxels as one batch (every frame must have ground truth)."""
    missing = [f.name for f in frames if not f.has_target]
    if missing:
        raise ValueError(f"frames without ground truth: {', '.join(missing[:3])}")
    return _batch(frames, "target", grid_shape)


def _batch(frames: Sequence[Frame], prefix: str, grid_shape) -> SparseVoxels:
    return batch_voxels([f.sample[f"{prefix}_coords"] for f in frames], [f.sample[f"{prefix}_feats"] for f in frames],
                        grid_shape)


def kept_rows(field: SparseVoxels, sample: int, threshold: Optional[float] = None) -> np.ndarray:
    """bool [N]: the rows of one sample (whose channel 0 exceeds threshold, if given)."""
    keep = field.coords[:, 0].cpu().numpy() == sample
    if threshold is not None:
        keep &= field.feats[:, 0].detach().float().cpu().numpy() > threshold
    return keep


def centres(field: SparseVoxels, sample: int, grid: GridSpec, threshold: Optional[float] = None) -> np.ndarray:
    """Metric centres [M, 3] of one sample's voxels (those whose channel 0 exceeds threshold, if given)."""
    return grid.voxel_centers(field.coords.cpu().numpy()[kept_rows(field, sample, threshold), 1:])
