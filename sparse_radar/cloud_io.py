"""Radar clouds in, generated points out: voxelisation of point clouds on a model's grid, and a generated field
back to points in physical units."""
from __future__ import annotations

import warnings
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch

from .data.datasets import batch_voxels
from .data.grid import GridSpec
from .data.point_fields import radar_columns, structured_columns
from .data.voxelize import Channel, voxelize
from .frames import centres, kept_rows
from .voxels import SparseVoxels

Cloud = Union[np.ndarray, torch.Tensor]


def voxelize_radar(clouds: Sequence[Cloud], grid: GridSpec,
                   radar_channels: Sequence[Channel]) -> Tuple[SparseVoxels, List[int]]:
    """(one batch of the radar clouds [N, >=3] voxelized on grid, radar points outside the grid per cloud); a cloud
    short of the channels' columns is padded with zeros, with a warning."""
    coords, feats, dropped = [], [], []
    need = max([c.column for c in radar_channels] + [-1]) + 4
    for b, cloud in enumerate(clouds):
        pts = as_points(cloud, f"radar cloud {b}")
        if pts.shape[1] < need:
            warnings.warn(f"radar cloud {b} has {pts.shape[1]} columns; the model reads {need} (x, y, z, rcs, "
                          f"doppler): the missing ones are taken as 0", stacklevel=4)
            pts = np.column_stack([pts, np.zeros((len(pts), need - pts.shape[1]))])
        inside = grid.voxel_coords(pts[:, :3])[1]
        dropped.append(int((~inside).sum()))
        c, f = voxelize(pts, grid, radar_channels)
        coords.append(c)
        feats.append(f)
    if sum(dropped):
        warnings.warn(f"{sum(dropped)} radar point(s) outside the grid {grid.point_range} were dropped "
                      f"(per cloud: {dropped})", stacklevel=4)
    return batch_voxels(coords, feats, grid.shape), dropped


def field_points(field: SparseVoxels, sample: int, threshold: float, grid: GridSpec,
                 target_channels: Sequence[Channel], output_channels: Sequence[Channel]) -> np.ndarray:
    """[M, 3 + C] float32 of one sample: voxel centres (x, y, z, metres) whose occupancy exceeds threshold, then
    the output channels in physical units."""
    keep = kept_rows(field, sample, threshold)
    feats = field.feats.detach().float().cpu().numpy()[keep]
    cols = [centres(field, sample, grid, threshold)]
    for c in output_channels:
        j = list(target_channels).index(c)
        cols.append((c.lo + (np.clip(feats[:, j], -1, 1) + 1) / 2 * (c.hi - c.lo))[:, None])
    return np.concatenate(cols, axis=1).astype(np.float32)


def as_points(cloud: Cloud, name: str) -> np.ndarray:
    """A radar cloud as float64 [N, >=3] (structured arrays by field name, tensors, arrays); bad input is named."""
    if isinstance(cloud, np.ndarray) and cloud.dtype.names:  # named fields: taken by name
        points, names = structured_columns(cloud)
        return radar_columns(name, points, names).astype(np.float64)
    if isinstance(cloud, torch.Tensor):
        cloud = cloud.detach().cpu()
        cloud = (cloud.double() if cloud.is_floating_point() else cloud).numpy()  # bf16 has no numpy dtype
    if not isinstance(cloud, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or tensor [N, >=3], got {type(cloud).__name__}")
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f"{name}: expected an [N, >=3] array (x, y, z, then rcs, doppler), got shape {cloud.shape}")
    if cloud.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected numbers, got dtype {cloud.dtype}")
    pts = cloud.astype(np.float64)
    if not np.isfinite(pts).all():
        raise ValueError(f"{name}: {int((~np.isfinite(pts).all(1)).sum())} point(s) hold NaN or inf")
    return pts
