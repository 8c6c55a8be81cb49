"""Voxelize point clouds into sparse voxels with per-channel reducers, features scaled to [-1, 1]."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from .grid import GridSpec

EMPTY = -1.0  # value of every channel at an empty voxel (0 in the reference's [0, 1] range)


@dataclass(frozen=True)
class Channel:
    """One voxel channel: reducer over the points of a voxel, source column, and the range mapped to [-1, 1]."""

    name: str
    reducer: str  # "occupancy", "mean", "var", "max", "ones"
    column: int = -1  # feature column (after x, y, z) for mean/var/max
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self):
        if self.reducer not in ("occupancy", "mean", "var", "max", "ones"):
            raise ValueError(f"Channel {self.name!r}: unknown reducer {self.reducer!r}")
        if self.reducer in ("mean", "var", "max") and self.column < 0:
            raise ValueError(f"Channel {self.name!r}: reducer {self.reducer!r} needs a feature column")
        if self.hi <= self.lo:
            raise ValueError(f"Channel {self.name!r}: hi must exceed lo")


# radar points: x, y, z, rcs (dBsm), doppler (m/s); lidar points: x, y, z, intensity [0, 1]
RADAR_CHANNELS = (Channel("occupancy", "occupancy"), Channel("rcs", "mean", 0, -20.0, 40.0),
                  Channel("doppler", "mean", 1, -20.0, 20.0), Channel("doppler_var", "var", 1, 0.0, 4.0))
TARGET_CHANNELS = (Channel("occupancy", "occupancy"), Channel("intensity", "mean", 0, 0.0, 1.0),
                   Channel("doppler", "mean", 1, -20.0, 20.0), Channel("mask", "ones"))


def voxelize(points: np.ndarray, grid: GridSpec, channels: Sequence[Channel]) -> Tuple[np.ndarray, np.ndarray]:
    """Points [N, 3 + F] -> (coords [M, 3] (z, x, y) int32, feats [M, len(channels)] float32 in [-1, 1])."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be an [N, 3 + F] array, got shape {points.shape}")
    need = max([c.column for c in channels] + [-1]) + 4
    if points.shape[1] < need:
        raise ValueError(f"channels {[c.name for c in channels]} need {need} point columns, got {points.shape[1]}")
    coords, inside = grid.voxel_coords(points[:, :3])
    coords, points = coords[inside], points[inside]
    nz, nx, ny = grid.shape
    keys = (coords[:, 0] * nx + coords[:, 1]) * ny + coords[:, 2]
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    out = np.empty((uniq.size, len(channels)), dtype=np.float64)
    for j, ch in enumerate(channels):
        if ch.reducer in ("occupancy", "ones"):
            value = np.ones(uniq.size)
        else:
            col = points[:, 3 + ch.column]
            mean = np.bincount(inverse, col, uniq.size) / counts
            if ch.reducer == "mean":
                value = mean
            elif ch.reducer == "var":
                value = np.bincount(inverse, (col - mean[inverse]) ** 2, uniq.size) / counts
            else:
                value = np.full(uniq.size, -np.inf)
                np.maximum.at(value, inverse, col)
        out[:, j] = 2.0 * np.clip((value - ch.lo) / (ch.hi - ch.lo), 0.0, 1.0) - 1.0
    z = uniq // (nx * ny)
    x = (uniq // ny) % nx
    y = uniq % ny
    return np.stack([z, x, y], axis=1).astype(np.int32), out.astype(np.float32)
