"""The radar's field of view as a crop of the target: a cone (full azimuth and elevation angles, a range) from the
radar's mounting, so a model is not asked to invent what lies behind or beside the sensor.

--target_fov is 'auto' (the dataset's default below), 'none', or 'AZIMUTH,ELEVATION,RANGE' (degrees, degrees,
metres). The cone's apex and boresight are the radar's pose in the points' frame (its x axis forward), recorded
with the run so the Densifier crops its output the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from . import calibration

# Dual-Radar's README states its radars' fields of view (azimuth x elevation, range). The View-of-Delft and
# ColoRadar devkits state none: their defaults are generous forward cones that take away what lies behind and beside
# the radar without cutting into what it sees. The synthetic scans' radar and LiDAR share the forward half space.
DEFAULT_FOVS = {
    ("dual_radar", "arbe"): (100.0, 30.0, 153.6),
    ("dual_radar", "ars548"): (120.0, 28.0, 300.0),
    ("vod", None): (120.0, 40.0, 100.0),
    ("coloradar", None): (120.0, 40.0, 30.0),
}
IDENTITY = tuple(np.eye(4).ravel().tolist())


def parse_target_fov(text: str) -> Optional[object]:
    """'auto', None for 'none', or (azimuth, elevation, range) from 'AZ,EL,RANGE'; anything else is a ValueError."""
    text = str(text).strip().lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    usage = (f"--target_fov must be auto, none, or AZIMUTH,ELEVATION,RANGE (full angles in degrees, range in "
             f"metres, e.g. 100,30,150), got {text!r}")
    try:
        az, el, rng = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(usage) from None
    if not (0 < az <= 360 and 0 < el <= 180 and 0 < rng < float("inf")):
        raise ValueError(usage)
    return az, el, rng


def resolve_target_fov(text: str, data_format: str, radar: str = "arbe") -> Optional[Tuple[float, float, float]]:
    """The cone --target_fov asks for on this dataset (auto: its default, none for synthetic and plain folders)."""
    spec = parse_target_fov(text)
    if spec != "auto":
        return spec
    return DEFAULT_FOVS.get((data_format, radar if data_format == "dual_radar" else None))


@dataclass(frozen=True)
class TargetFov:
    """A cone of full angles azimuth x elevation (degrees) out to range (metres) along the x axis of pose (a 4x4,
    row-major 16 floats, the radar's frame in the points' frame)."""
    azimuth: float
    elevation: float
    range: float
    pose: Tuple[float, ...] = field(default=IDENTITY)

    def mask(self, xyz: np.ndarray) -> np.ndarray:
        """Which points [N, 3] (in the points' frame) lie inside the cone."""
        local = calibration.transform_points(calibration.invert(np.asarray(self.pose).reshape(4, 4)),
                                             np.asarray(xyz, dtype=np.float64))
        x, y, z = local[:, 0], local[:, 1], local[:, 2]
        flat = np.hypot(x, y)
        azimuth = np.degrees(np.abs(np.arctan2(y, x)))
        elevation = np.degrees(np.abs(np.arctan2(z, flat)))
        return (azimuth <= self.azimuth / 2) & (elevation <= self.elevation / 2) & \
            (np.sqrt(flat ** 2 + z ** 2) <= self.range)

    def to_dict(self) -> dict:
        """Plain dict (JSON and checkpoint safe)."""
        return {"azimuth": self.azimuth, "elevation": self.elevation, "range": self.range, "pose": list(self.pose)}

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> Optional["TargetFov"]:
        """From to_dict's output (None stays None)."""
        if not values:
            return None
        return cls(float(values["azimuth"]), float(values["elevation"]), float(values["range"]),
                   tuple(float(v) for v in values["pose"]))

    @classmethod
    def at(cls, cone: Tuple[float, float, float], pose: Optional[np.ndarray] = None) -> "TargetFov":
        """The cone (azimuth, elevation, range) at pose (default the origin, x forward)."""
        p = IDENTITY if pose is None else tuple(np.asarray(pose, dtype=np.float64).ravel().tolist())
        return cls(float(cone[0]), float(cone[1]), float(cone[2]), p)
