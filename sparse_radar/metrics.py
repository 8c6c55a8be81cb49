"""Point-cloud and voxel metrics of this field (Chamfer, Hausdorff, F-score, voxel IoU), with defined values for
empty clouds so that no frame drops out of a mean.

Conventions (see ../shared/REFERENCE.md): distances in metres, unsquared. Chamfer is reported both ways it is
published: `chamfer_mean_of_means` (LiDiff: the average of the two directed means) and `chamfer_sum_of_means`
(Radar-Diffusion: their sum). Modified Hausdorff is Dubuisson-Jain's: the larger of the two directed means.
Empty clouds: a directed distance from or to an empty cloud is `empty_distance` (callers pass the grid's
diagonal, the farthest two points of the grid can be; default inf); two empty clouds are a perfect match.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def _points(cloud, name: str) -> np.ndarray:
    a = np.asarray(cloud, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 3:
        raise ValueError(f"{name} must be an [N, >=3] array of points (x, y, z first), got shape {a.shape}")
    return a[:, :3]


def nearest_distances(source, target) -> np.ndarray:
    """Distance from each point of source [N, >=3] to its nearest point of target [M, >=3] (inf if M = 0)."""
    from scipy.spatial import cKDTree

    src, tgt = _points(source, "source"), _points(target, "target")
    if len(tgt) == 0:
        return np.full(len(src), np.inf)
    if len(src) == 0:
        return np.zeros(0)
    return cKDTree(tgt).query(src, k=1)[0]


def _directed(d: np.ndarray, reduce, other_empty: bool, empty_distance: float) -> float:
    if len(d) == 0:  # nothing to measure from: the other cloud decides (0 if it is empty too)
        return 0.0 if other_empty else float(empty_distance)
    return float(empty_distance) if other_empty else float(reduce(d))


def cloud_metrics(pred, gt, taus: Sequence[float], empty_distance: float = float("inf")) -> Dict[str, float]:
    """Chamfer (both conventions), Hausdorff, modified Hausdorff, and precision/recall/F-score at each tau."""
    p, g = _points(pred, "pred"), _points(gt, "gt")
    if not taus or any(not float(t) > 0 for t in taus):
        raise ValueError(f"taus must be one or more distances > 0, got {list(taus)}")
    d_pg, d_gp = nearest_distances(p, g), nearest_distances(g, p)
    mean_pg = _directed(d_pg, np.mean, len(g) == 0, empty_distance)
    mean_gp = _directed(d_gp, np.mean, len(p) == 0, empty_distance)
    out = {
        "pred_to_gt_mean": mean_pg, "gt_to_pred_mean": mean_gp,
        "chamfer_mean_of_means": (mean_pg + mean_gp) / 2, "chamfer_sum_of_means": mean_pg + mean_gp,
        "hausdorff": max(_directed(d_pg, np.max, len(g) == 0, empty_distance),
                         _directed(d_gp, np.max, len(p) == 0, empty_distance)),
        "modified_hausdorff": max(mean_pg, mean_gp),
    }
    for tau in taus:
        precision = _share_within(d_pg, tau, len(g) == 0)
        recall = _share_within(d_gp, tau, len(p) == 0)
        suffix = f"@{float(tau):g}"
        out["precision" + suffix], out["recall" + suffix] = precision, recall
        out["fscore" + suffix] = _harmonic(precision, recall)
    return out


def _share_within(d: np.ndarray, tau: float, other_empty: bool) -> float:
    """Share of distances <= tau; 1 when both clouds are empty, 0 when only one is."""
    if len(d) == 0:
        return 1.0 if other_empty else 0.0
    return float((d <= tau).mean())


def _harmonic(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def voxel_metrics(pred_voxels, gt_voxels) -> Dict[str, float]:
    """IoU, precision and recall of two sets of integer voxel coordinates [N, 3] (1.0 each when both are empty)."""
    arrays = []
    for name, v in (("pred_voxels", pred_voxels), ("gt_voxels", gt_voxels)):
        a = np.asarray(v)
        if a.ndim != 2 or a.shape[1] != 3 or (a.size and a.dtype.kind not in "iu"):
            raise ValueError(f"{name} must be an [N, 3] integer array of voxel coordinates, got {a.dtype} "
                             f"{a.shape}")
        arrays.append(a.astype(np.int64).reshape(-1, 3))
    both = np.concatenate(arrays)
    lo = both.min(0) if len(both) else np.zeros(3, dtype=np.int64)
    extent = (both.max(0) - lo + 1) if len(both) else np.ones(3, dtype=np.int64)
    pred, gt = (np.unique(((a - lo)[:, 0] * extent[1] + (a - lo)[:, 1]) * extent[2] + (a - lo)[:, 2])
                for a in arrays)
    hits = len(np.intersect1d(pred, gt, assume_unique=True))
    union = len(pred) + len(gt) - hits
    return {"voxel_iou": hits / union if union else 1.0,
            "voxel_precision": hits / len(pred) if len(pred) else (1.0 if not len(gt) else 0.0),
            "voxel_recall": hits / len(gt) if len(gt) else (1.0 if not len(pred) else 0.0)}


def summarize(rows: Sequence[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Mean and median of every numeric column over rows (every row counts; none is dropped)."""
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)] if rows else []
    out = {}
    for k in keys:
        values = np.array([float(r[k]) for r in rows])
        out[k] = {"mean": float(values.mean()), "median": float(np.median(values))}
    return out


def frame_metrics(pred_xyz, gt_xyz, voxel_of, taus: Sequence[float], empty_distance: float) -> Dict[str, float]:
    """cloud_metrics plus voxel_metrics of one frame; voxel_of maps points [N, 3] to integer voxels [N, 3]."""
    out = cloud_metrics(pred_xyz, gt_xyz, taus, empty_distance)
    out.update(voxel_metrics(voxel_of(_points(pred_xyz, "pred")), voxel_of(_points(gt_xyz, "gt"))))
    return out


def parse_taus(text: Optional[str], one_voxel: float) -> List[float]:
    """--tau: comma-separated distances in metres; None gives [one_voxel]."""
    if text is None:
        return [float(one_voxel)]
    try:
        taus = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        taus = []
    if not taus or min(taus) <= 0:
        raise ValueError(f"--tau must be distances > 0, comma-separated, got {text!r}")
    return taus


# ---- distribution metrics (a generated set against a reference set, beside the single-reference ones above) ----

def bev_histogram(xyz, voxel_of, shape_xy: Sequence[int], occupancy: bool = True) -> np.ndarray:
    """Bird's-eye histogram [X, Y] of a cloud on a grid's columns: with occupancy (LiDiff's BEV, Nunes et al.,
    CVPR 2024, histogram_metrics: 3D counts clipped to 1, summed over z) the occupied voxels per column, else the
    points per column (LiDARGen's, Zyrianov et al., ECCV 2022). voxel_of maps points [N, 3] to (z, x, y) voxels;
    points outside shape_xy are left out."""
    hist = np.zeros(tuple(int(s) for s in shape_xy), dtype=np.float64)
    v = np.asarray(voxel_of(_points(xyz, "xyz")), dtype=np.int64).reshape(-1, 3)
    inside = (v[:, 1] >= 0) & (v[:, 1] < hist.shape[0]) & (v[:, 2] >= 0) & (v[:, 2] < hist.shape[1])
    v = v[inside]
    if occupancy:
        v = np.unique(v, axis=0)
    np.add.at(hist, (v[:, 1], v[:, 2]), 1.0)
    return hist


def bev_jsd(pred_hists: Sequence[np.ndarray], gt_hists: Sequence[np.ndarray]) -> float:
    """Jensen-Shannon distance between the summed bird's-eye histograms of two sets (LiDARGen's and LiDiff's BEV
    JSD: each set's histograms summed and normalised, then scipy's jensenshannon, natural log, the square root of
    the divergence: 0 for equal distributions, sqrt(ln 2) for disjoint ones). An empty set against a non-empty one
    is sqrt(ln 2); two empty sets are 0."""
    p, q = (np.sum([np.asarray(h, dtype=np.float64) for h in hs], axis=0).ravel() for hs in (pred_hists, gt_hists))
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else float(np.sqrt(np.log(2)))
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    kl = lambda a: float(np.sum(a[a > 0] * np.log(a[a > 0] / m[a > 0])))  # noqa: E731
    return float(np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


def bev_mmd(pred_hists: Sequence[np.ndarray], gt_hists: Sequence[np.ndarray], sigma: float = 0.5) -> float:
    """Maximum mean discrepancy (squared, biased estimate) between two sets of per-frame bird's-eye histograms,
    each normalised to sum 1 (an empty one stays zero), with the Gaussian kernel exp(-|a - b|^2 / (2 sigma^2)):
    mean k(p, p') + mean k(q, q') - 2 mean k(p, q) over all pairs, self-pairs included (LiDARGen's BEV MMD, as
    R2DM and LiDM compute it, sigma 0.5)."""
    def flat(hs):
        a = np.stack([np.asarray(h, dtype=np.float64).ravel() for h in hs])
        total = a.sum(axis=1, keepdims=True)
        return np.divide(a, total, out=np.zeros_like(a), where=total > 0)

    p, q = flat(pred_hists), flat(gt_hists)

    def kernel(a, b):
        d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-np.maximum(d2, 0.0) / (2 * sigma ** 2))
    return float(kernel(p, p).mean() + kernel(q, q).mean() - 2 * kernel(p, q).mean())


def sample_diversity(clouds: Sequence, key: str = "chamfer_mean_of_means",
                     empty_distance: float = float("inf")) -> float:
    """Mean pairwise Chamfer (key's convention) between k samples [N_i, >=3] of one frame; 0 for fewer than two."""
    pairs = [(i, j) for i in range(len(clouds)) for j in range(i + 1, len(clouds))]
    if not pairs:
        return 0.0
    return float(np.mean([cloud_metrics(clouds[i], clouds[j], [1.0], empty_distance)[key] for i, j in pairs]))


def best_of_k(rows: Sequence[Dict[str, float]], key: str = "chamfer_mean_of_means") -> Dict[str, float]:
    """Of k samples' metric rows of one frame, the row whose key (a distance: lower is better) is smallest."""
    if not rows:
        raise ValueError("best_of_k needs the rows of at least one sample")
    return dict(min(rows, key=lambda r: r[key]))
