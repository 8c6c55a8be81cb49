"""Radar and LiDAR point columns by field name (PLY/PCD/structured arrays) or by position (.bin, plain arrays).

Radar -> [N, 5] x, y, z, rcs, doppler. Names, case-insensitive, first match wins:
  rcs: rcs (nuScenes, View-of-Delft), then power, snr, intensity (ROS radar drivers, NTU4DRadLM's channels);
  doppler: doppler, v_r (View-of-Delft, as its .bin reader), vr, radial_velocity, velocity, then the radial projection
  (x vx + y vy) / |(x, y)| of nuScenes' vx_comp / vy_comp, or of vx / vy.
LiDAR -> [N, 4] x, y, z, intensity; intensity: intensity, reflectance, remission, reflectivity, i.
Unnamed points are taken by position: radar x, y, z, rcs, doppler; LiDAR x, y, z, intensity.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from .formats import DataFormatError

RCS_NAMES = ("rcs", "power", "snr", "intensity")
DOPPLER_NAMES = ("doppler", "v_r", "vr", "radial_velocity", "velocity")
VELOCITY_PAIRS = (("vx_comp", "vy_comp"), ("vx", "vy"))
INTENSITY_NAMES = ("intensity", "reflectance", "remission", "reflectivity", "i")


def _finite(path, values: np.ndarray, what: str) -> np.ndarray:
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DataFormatError(path, f"{int(bad.sum())} {what} point(s) hold NaN or inf, e.g. row {int(bad.argmax())}")
    return values


def _column(points: np.ndarray, names: List[str], wanted: Sequence[str]) -> Optional[np.ndarray]:
    lower = [n.lower() for n in names]
    for name in wanted:
        if name in lower:
            return points[:, lower.index(name)]
    return None


def _xyz(path, points: np.ndarray, names: List[str], what: str) -> np.ndarray:
    cols = [_column(points, names, (axis,)) for axis in "xyz"]
    if any(c is None for c in cols):
        raise DataFormatError(path, f"{what} points need fields x, y, z; the file has {', '.join(names)}")
    return np.stack(cols, axis=1)


def radar_columns(path, points: np.ndarray, names: Optional[List[str]]) -> np.ndarray:
    """Radar points [N, 5] (x, y, z, rcs, doppler) from a file's points and field names (None: by position)."""
    if names is None:
        if points.shape[1] < 5:
            raise DataFormatError(path, f"radar points need 5 columns (x, y, z, rcs, doppler), got {points.shape[1]}")
        return _finite(path, points[:, :5], "radar")
    xyz = _xyz(path, points, names, "radar")
    rcs = _column(points, names, RCS_NAMES)
    doppler = _column(points, names, DOPPLER_NAMES)
    if doppler is None:
        for vx_name, vy_name in VELOCITY_PAIRS:
            vx, vy = _column(points, names, (vx_name,)), _column(points, names, (vy_name,))
            if vx is not None and vy is not None:
                r = np.hypot(xyz[:, 0], xyz[:, 1])
                doppler = np.where(r > 0, (xyz[:, 0] * vx + xyz[:, 1] * vy) / np.maximum(r, 1e-12), 0.0)
                break
    missing = [what for what, col in ((f"rcs ({', '.join(RCS_NAMES)})", rcs),
                                      (f"doppler ({', '.join(DOPPLER_NAMES)}, or vx_comp/vy_comp)", doppler))
               if col is None]
    if missing:
        raise DataFormatError(path, f"radar points need {' and '.join(missing)}; the file has {', '.join(names)}")
    return _finite(path, np.column_stack([xyz, rcs, doppler]).astype(np.float32), "radar")


def structured_columns(cloud: np.ndarray) -> "tuple[np.ndarray, List[str]]":
    """(points [N, F] float64, field names) of a structured numpy array (a PointCloud2 read as a record array, a
    PCD/PLY with named fields): its scalar numeric fields, in order."""
    names = [n for n in cloud.dtype.names if cloud.dtype[n].shape == () and cloud.dtype[n].kind in "iuf"]
    if not names:
        raise TypeError(f"a structured array needs numeric fields (x, y, z, ...); it has {', '.join(cloud.dtype.names)}")
    return np.column_stack([cloud[n].astype(np.float64).reshape(-1) for n in names]), names


def lidar_columns(path, points: np.ndarray, names: Optional[List[str]]) -> np.ndarray:
    """LiDAR points [N, 4] (x, y, z, intensity; unnamed: a 5th column, doppler, kept) from a file's points and field names (None: by position)."""
    if names is None:  # a 5th unnamed column, as in the synthetic scans, is the radial velocity
        if points.shape[1] < 4:
            raise DataFormatError(path, f"LiDAR points need 4 columns (x, y, z, intensity), got {points.shape[1]}")
        return _finite(path, points[:, :5], "LiDAR")
    xyz = _xyz(path, points, names, "LiDAR")
    intensity = _column(points, names, INTENSITY_NAMES)
    if intensity is None:
        raise DataFormatError(path, f"LiDAR points need an intensity field ({', '.join(INTENSITY_NAMES)}); the file "
                                    f"has {', '.join(names)}")
    return _finite(path, np.column_stack([xyz, intensity]).astype(np.float32), "LiDAR")
