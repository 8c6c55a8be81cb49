"""What a checkpoint records about its data: the metric grid, the channel scalings and the support rule."""
from __future__ import annotations

import warnings
from dataclasses import asdict

from ..data.grid import GridSpec
from ..data.voxelize import RADAR_CHANNELS, TARGET_CHANNELS
from .config import TrainConfig, given_flags


def metric_grid(cfg: TrainConfig, grid_shape) -> GridSpec:
    """The run's metric grid: --grid; for voxel folders (whose files fix the shape) --grid when its shape
    matches the files', else unit voxels at the origin (positions in voxel indices), with a warning."""
    grid = cfg.grid_spec()
    if tuple(grid.shape) == tuple(grid_shape):
        return grid
    if "grid" in given_flags(cfg):
        raise ValueError(f"--grid {cfg.grid} has shape {grid.shape} (D, H, W) but the data's voxel files are "
                         f"{tuple(grid_shape)}; pass a --grid of that shape or leave it out")
    warnings.warn(f"the voxel files' grid {tuple(grid_shape)} has no metric range (pass --grid to give one); "
                  f"generated points will be in voxel units", stacklevel=2)
    return GridSpec.index_units(grid_shape)


def data_record(cfg: TrainConfig, grid: GridSpec, target_fov=None) -> dict:
    """What inference needs to turn points into model input and back: grid and channel scalings, and the target's
    crop to the radar's field of view (a data.fov.TargetFov, or None)."""
    as_dicts = lambda chans: [asdict(c) for c in chans]
    return {"grid": grid.to_dict(), "radar_channels": as_dicts(RADAR_CHANNELS),
            "target_fov": None if target_fov is None else target_fov.to_dict(),
            "target_channels": as_dicts(TARGET_CHANNELS), "support": cfg.support,
            "support_radius": list(cfg.radius()),
            "radar_features": "reference voxel files in [0, 1]" if cfg.data != "synthetic" and
            cfg.data_format == "reference" else "points"}


def data_record_of(state: dict) -> dict:
    """A checkpoint's data record; checkpoints written before it existed used the default grid and channels."""
    if state.get("data_config"):
        return state["data_config"]
    cfg = TrainConfig.from_dict(state["train_config"])
    shape = tuple(state["model_config"]["input_size"])
    grid = cfg.grid_spec() if tuple(cfg.grid_spec().shape) == shape else GridSpec.index_units(shape)
    return data_record(cfg, grid)
