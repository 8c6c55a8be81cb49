"""Preview image: bird's-eye and side views of radar, target and a sample (columns, in that order)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..voxels import SparseVoxels
from .png import write_png

COLORS = ((255, 90, 60), (80, 220, 120), (90, 160, 255))  # radar, target, sample


def occupancy_grid(field: SparseVoxels, sample: int = 0) -> np.ndarray:
    """bool [D, H, W] of the voxels of one sample whose occupancy channel is > 0."""
    grid = np.zeros(field.spatial_shape, dtype=bool)
    c = field.coords.cpu().numpy()
    keep = (c[:, 0] == sample) & (field.feats[:, 0].detach().float().cpu().numpy() > 0)
    grid[c[keep, 1], c[keep, 2], c[keep, 3]] = True
    return grid


def _panel(mask2d: np.ndarray, shade: np.ndarray, color: Sequence[int], scale: Sequence[int]) -> np.ndarray:
    img = np.zeros(mask2d.shape + (3,), dtype=np.float32) + 18.0
    level = 0.35 + 0.65 * shade
    img[mask2d] = np.array(color, dtype=np.float32) * level[mask2d, None]
    return np.repeat(np.repeat(img, scale[0], axis=0), scale[1], axis=1)


def render_preview(fields: Sequence[SparseVoxels], sample: int = 0,
                   colors: Sequence[Sequence[int]] = COLORS) -> np.ndarray:
    """[H, W, 3] uint8: top row bird's-eye views (x down, y across, brighter = higher), bottom row side views
    (z up, x across); one column per field (default colours: radar, target, sample)."""
    grids = [occupancy_grid(f, sample) for f in fields]
    d, h, w = grids[0].shape
    bev_scale = max(1, 256 // max(h, w))
    side_scale = (max(1, 96 // d), bev_scale)
    z_index = np.arange(d)[:, None, None] / max(d - 1, 1)
    top, bottom = [], []
    for g, color in zip(grids, colors):
        height = np.where(g, z_index, 0).max(0)
        top.append(_panel(g.any(0), height, color, (bev_scale, bev_scale)))
        depth = np.where(g, np.arange(w)[None, None, :] / max(w - 1, 1), 0).max(2)
        bottom.append(_panel(g.any(2)[::-1], depth[::-1], color, side_scale))
    gap = lambda rows: np.full((rows, 4, 3), 60.0)
    row1 = np.concatenate([x for p in top for x in (p, gap(p.shape[0]))][:-1], axis=1)
    row2 = np.concatenate([x for p in bottom for x in (p, gap(p.shape[0]))][:-1], axis=1)
    width = max(row1.shape[1], row2.shape[1])
    pad = lambda r: np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=18.0)
    image = np.concatenate([pad(row1), np.full((4, width, 3), 60.0), pad(row2)], axis=0)
    return image.clip(0, 255).astype(np.uint8)


def save_preview(path: str, radar: SparseVoxels, target: SparseVoxels, sample_field: SparseVoxels) -> None:
    """Render and write the preview PNG."""
    with torch.no_grad():
        write_png(path, render_preview([radar, target, sample_field]))
