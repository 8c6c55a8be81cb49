"""Rigid transforms between sensor frames: 4x4 matrices, quaternions (x, y, z, w), pose interpolation, and the
KITTI-style calib files View-of-Delft ships (one per frame and sensor).

Naming: T_a_b maps points in frame b to frame a (p_a = T_a_b @ p_b), so T_a_c = T_a_b @ T_b_c.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence

import numpy as np

from .formats import DataFormatError

RIGID_TOLERANCE = 1e-3  # |R^T R - I| and |det R - 1| allowed (calib files round to ~6 digits)


def rigid(rotation: np.ndarray, translation: Sequence[float]) -> np.ndarray:
    """The 4x4 transform of a 3x3 rotation and a translation (float64)."""
    out = np.eye(4)
    out[:3, :3] = np.asarray(rotation, dtype=np.float64)
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def check_rigid(matrix: np.ndarray, source: str) -> np.ndarray:
    """matrix as a float64 4x4 rigid transform; a DataFormatError naming source when it is not one (shape, last
    row, R not orthonormal or det R != 1 beyond RIGID_TOLERANCE)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise DataFormatError(source, f"expected a finite 3x4 or 4x4 transform, got shape {m.shape}")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=RIGID_TOLERANCE):
        raise DataFormatError(source, f"the last row of a rigid transform is 0 0 0 1, got {m[3].tolist()}")
    r = m[:3, :3]
    error = np.abs(r.T @ r - np.eye(3)).max()
    det = float(np.linalg.det(r))
    if error > RIGID_TOLERANCE or abs(det - 1.0) > RIGID_TOLERANCE:
        raise DataFormatError(source, f"not a rigid transform: |R^T R - I| = {error:.2g}, det R = {det:.6g} "
                                      f"(a rotation has 0 and 1)")
    return m


def invert(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a rigid 4x4 transform (R^T, -R^T t)."""
    r, t = matrix[:3, :3], matrix[:3, 3]
    return rigid(r.T, -r.T @ t)


def transform_points(matrix: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Points [N, 3] mapped by a 4x4 transform, in xyz's dtype."""
    xyz = np.asarray(xyz)
    out = xyz.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    return out.astype(xyz.dtype if np.issubdtype(xyz.dtype, np.floating) else np.float64)


def quaternion_matrix(quaternion: Sequence[float], source: str = "quaternion") -> np.ndarray:
    """3x3 rotation of a quaternion (x, y, z, w), normalised; a zero or non-finite one is a DataFormatError."""
    q = np.asarray(quaternion, dtype=np.float64)
    norm = float(np.linalg.norm(q)) if q.shape == (4,) else 0.0
    if q.shape != (4,) or not np.isfinite(norm) or norm < 1e-9:
        raise DataFormatError(source, f"expected a quaternion x y z w of non-zero length, got {q.tolist()}")
    x, y, z, w = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_quaternion(rotation: np.ndarray) -> np.ndarray:
    """The unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation (Shepperd's method: the largest of w, x, y, z
    first, for accuracy)."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(r)
    diag = [trace, r[0, 0], r[1, 1], r[2, 2]]
    k = int(np.argmax(diag))
    if k == 0:
        w = 0.5 * np.sqrt(1.0 + trace)
        q = [(r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w), w]
    elif k == 1:
        x = 0.5 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [x, (r[0, 1] + r[1, 0]) / (4 * x), (r[0, 2] + r[2, 0]) / (4 * x), (r[2, 1] - r[1, 2]) / (4 * x)]
    elif k == 2:
        y = 0.5 * np.sqrt(1.0 - r[0, 0] + r[1, 1] - r[2, 2])
        q = [(r[0, 1] + r[1, 0]) / (4 * y), y, (r[1, 2] + r[2, 1]) / (4 * y), (r[0, 2] - r[2, 0]) / (4 * y)]
    else:
        z = 0.5 * np.sqrt(1.0 - r[0, 0] - r[1, 1] + r[2, 2])
        q = [(r[0, 2] + r[2, 0]) / (4 * z), (r[1, 2] + r[2, 1]) / (4 * z), z, (r[1, 0] - r[0, 1]) / (4 * z)]
    q = np.asarray(q) / np.linalg.norm(q)
    return -q if q[3] < 0 else q


def slerp(q0: Sequence[float], q1: Sequence[float], s: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (x, y, z, w) at s in [0, 1], along the shorter arc."""
    a = np.asarray(q0, dtype=np.float64) / np.linalg.norm(q0)
    b = np.asarray(q1, dtype=np.float64) / np.linalg.norm(q1)
    dot = float(a @ b)
    if dot < 0.0:  # q and -q are one rotation: take the shorter way
        b, dot = -b, -dot
    if dot > 0.9995:  # nearly equal: linear, then normalised
        out = a + s * (b - a)
        return out / np.linalg.norm(out)
    theta = np.arccos(dot)
    return (np.sin((1 - s) * theta) * a + np.sin(s * theta) * b) / np.sin(theta)


def interpolate_pose(times: np.ndarray, positions: np.ndarray, quaternions: np.ndarray, t: float,
                     source: str = "poses") -> np.ndarray:
    """The 4x4 pose at time t between the two nearest samples (ascending times [M], positions [M, 3],
    quaternions [M, 4] x y z w): linear in position, slerp in rotation. A t outside the samples is a
    DataFormatError naming source (no extrapolation)."""
    times = np.asarray(times, dtype=np.float64)
    if len(times) == 0 or t < times[0] or t > times[-1]:
        span = f"[{times[0]:.6f}, {times[-1]:.6f}]" if len(times) else "(none)"
        raise DataFormatError(source, f"time {t:.6f} lies outside the poses' times {span}")
    hi = int(np.searchsorted(times, t, side="left"))
    if times[hi] == t or hi == 0:
        return rigid(quaternion_matrix(quaternions[hi], source), positions[hi])
    lo = hi - 1
    s = (t - times[lo]) / (times[hi] - times[lo])
    q = slerp(quaternions[lo], quaternions[hi], s)
    p = (1 - s) * np.asarray(positions[lo], dtype=np.float64) + s * np.asarray(positions[hi], dtype=np.float64)
    return rigid(quaternion_matrix(q, source), p)


def read_kitti_calib(path: str) -> Dict[str, np.ndarray]:
    """The named rows of a KITTI-style calib file ("name: v1 v2 ..." per line) as float64 arrays; a missing
    file or a malformed line is a DataFormatError naming the file."""
    if not os.path.isfile(path):
        raise DataFormatError(path, "calibration file not found")
    out: Dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            name, sep, values = line.partition(":")
            try:
                if not sep:
                    raise ValueError
                out[name.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
            except ValueError:
                raise DataFormatError(path, f"line {number} is not 'name: numbers': {line.strip()[:60]!r}") \
                    from None
    return out


def kitti_extrinsic(path: str, name: str = "Tr_velo_to_cam") -> np.ndarray:
    """The rigid 4x4 transform stored as 12 numbers under `name` in a KITTI-style calib file."""
    rows = read_kitti_calib(path)
    if name not in rows:
        raise DataFormatError(path, f"no '{name}:' line (found {', '.join(rows) or 'none'})")
    if rows[name].size != 12:
        raise DataFormatError(path, f"'{name}' holds {rows[name].size} numbers, expected 12 (a 3x4 matrix)")
    return check_rigid(rows[name].reshape(3, 4), f"{path} ({name})")


def vod_radar_to_lidar(lidar_calib: str, radar_calib: str) -> np.ndarray:
    """T_lidar_radar of a View-of-Delft frame: inv(T_camera_lidar) @ T_camera_radar, each the `Tr_velo_to_cam` of
    its sensor's calib file (the devkit's FrameTransformMatrix)."""
    return invert(kitti_extrinsic(lidar_calib)) @ kitti_extrinsic(radar_calib)
