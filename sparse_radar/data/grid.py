"""GridSpec: a point-cloud range and voxel size, and the voxel layout the models use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class GridSpec:
    """Range (x0, y0, z0, x1, y1, z1) in metres and voxel size (vx, vy, vz).

    Model layout (D, H, W) = (Z, X, Y), as the reference's (C, Z, H, W) with H = x and W = y.
    """

    point_range: Tuple[float, float, float, float, float, float] = (0.0, -25.6, -2.0, 51.2, 25.6, 4.4)
    voxel_size: Tuple[float, float, float] = (0.8, 0.8, 0.8)

    def __post_init__(self):
        r = tuple(float(v) for v in self.point_range)
        v = self.voxel_size
        v = (float(v),) * 3 if isinstance(v, (int, float)) else tuple(float(s) for s in v)
        if len(r) != 6 or any(r[i + 3] <= r[i] for i in range(3)):
            raise ValueError(f"GridSpec.point_range must be (x0, y0, z0, x1, y1, z1) with x1 > x0 etc., got {r}")
        if len(v) != 3 or min(v) <= 0:
            raise ValueError(f"GridSpec.voxel_size must be three positive sizes, got {self.voxel_size!r}")
        object.__setattr__(self, "point_range", r)
        object.__setattr__(self, "voxel_size", v)

    @property
    def counts_xyz(self) -> Tuple[int, int, int]:
        """Voxels along x, y, z."""
        r, v = self.point_range, self.voxel_size
        return tuple(int(round((r[i + 3] - r[i]) / v[i])) for i in range(3))  # type: ignore[return-value]

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(D, H, W) = (nz, nx, ny)."""
        nx, ny, nz = self.counts_xyz
        return (nz, nx, ny)

    def voxel_coords(self, xyz: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Integer (z, x, y) voxel of each point [N, 3] and a bool mask of the points inside the range."""
        xyz = np.asarray(xyz, dtype=np.float64)
        lo = np.array(self.point_range[:3])
        idx = np.floor((xyz - lo) / np.array(self.voxel_size)).astype(np.int64)  # [N, 3] x, y, z
        inside = np.all((idx >= 0) & (idx < np.array(self.counts_xyz)), axis=1)
        return idx[:, [2, 0, 1]], inside

    def voxel_index(self, xyz: np.ndarray) -> np.ndarray:
        """Integer (z, x, y) voxel of each point [N, 3], inside the range or not."""
        return self.voxel_coords(xyz)[0]

    def voxel_centers(self, coords_zxy: np.ndarray) -> np.ndarray:
        """Metric centres [N, 3] (x, y, z) of voxels given as (z, x, y)."""
        c = np.asarray(coords_zxy, dtype=np.float64)[:, [1, 2, 0]]
        return np.array(self.point_range[:3]) + (c + 0.5) * np.array(self.voxel_size)

    @property
    def diagonal(self) -> float:
        """Length of the range's diagonal in metres (the farthest two points of the grid can be)."""
        r = self.point_range
        return float(np.linalg.norm([r[3] - r[0], r[4] - r[1], r[5] - r[2]]))

    def to_dict(self) -> dict:
        """Plain dict (JSON and checkpoint safe)."""
        return {"point_range": list(self.point_range), "voxel_size": list(self.voxel_size)}

    @classmethod
    def from_dict(cls, values: dict) -> "GridSpec":
        """From to_dict's output."""
        return cls(tuple(values["point_range"]), tuple(values["voxel_size"]))

    def describe(self) -> str:
        """'(D, H, W) over x0..x1, y0..y1, z0..z1 m at vx x vy x vz m' for messages."""
        r, v = self.point_range, self.voxel_size
        return (f"{self.shape} over x {r[0]:g}..{r[3]:g}, y {r[1]:g}..{r[4]:g}, z {r[2]:g}..{r[5]:g} m at "
                f"{v[0]:g} x {v[1]:g} x {v[2]:g} m voxels")

    def require_same(self, other: "GridSpec", what: str) -> None:
        """ValueError naming both grids unless other (the grid `what` was trained on) is this one."""
        if other != self:
            raise ValueError(f"{what} was trained on the grid {other.describe()}, but this model's grid is "
                             f"{self.describe()}; use one trained on the same grid")

    @classmethod
    def index_units(cls, shape) -> "GridSpec":
        """A grid of unit voxels at the origin with shape (D, H, W): positions in voxel indices."""
        d, h, w = (int(v) for v in shape)
        return cls((0.0, 0.0, 0.0, float(h), float(w), float(d)), (1.0, 1.0, 1.0))


NTU4DRADLM_GRID = GridSpec((0.0, -20.0, -6.0, 120.0, 20.0, 10.0), (0.2, 0.2, 0.2))  # 600 x 200 x 80 (x, y, z)
# --grid names: today's default 8x64x64 at 0.8 m; the reference's downsampled 32x128x128 of the NTU4DRadLM range;
# that range at its native 0.2 m (80x600x200). Shapes are (D, H, W) = (z, x, y).
NAMED_GRIDS = {
    "default": GridSpec(),
    "reference": GridSpec(NTU4DRADLM_GRID.point_range, (120.0 / 128, 40.0 / 128, 16.0 / 32)),
    "native": NTU4DRADLM_GRID,
}


def parse_grid(text: str) -> GridSpec:
    """A --grid value: a name of NAMED_GRIDS, or 'x0,y0,z0,x1,y1,z1@v' / '...@vx,vy,vz' (metres)."""
    text = str(text).strip()
    if text in NAMED_GRIDS:
        return NAMED_GRIDS[text]
    usage = (f"--grid must be one of {', '.join(NAMED_GRIDS)} or bounds and voxel size as "
             f"'x0,y0,z0,x1,y1,z1@size' or '...@vx,vy,vz' (metres), got {text!r}")
    if text.count("@") != 1:
        raise ValueError(usage)
    bounds, size = text.split("@")
    try:
        r = tuple(float(v) for v in bounds.split(","))
        v = tuple(float(s) for s in size.split(","))
    except ValueError:
        raise ValueError(usage) from None
    if len(r) != 6 or len(v) not in (1, 3):
        raise ValueError(usage)
    return GridSpec(r, v * 3 if len(v) == 1 else v)
