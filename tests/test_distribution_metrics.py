"""BEV histogram, JSD and MMD against brute-force loops and analytic cases; sample diversity and best-of-k."""
import itertools
import math

import numpy as np
import pytest

from sparse_radar.data.grid import GridSpec
from sparse_radar.metrics import (bev_histogram, bev_jsd, bev_mmd, best_of_k, cloud_metrics, sample_diversity)

GRID = GridSpec((0.0, 0.0, 0.0, 4.0, 4.0, 2.0), (1.0, 1.0, 1.0))  # 4 x 4 columns, 2 voxels high
SHAPE_XY = GRID.counts_xyz[:2]


def test_bev_histogram_counts_occupied_voxels_or_points():
    xyz = np.array([[0.2, 0.2, 0.2], [0.3, 0.4, 0.3], [0.5, 0.5, 1.5], [3.5, 1.5, 0.5], [9.0, 0.0, 0.0]])
    occ = bev_histogram(xyz, GRID.voxel_index, SHAPE_XY)
    pts = bev_histogram(xyz, GRID.voxel_index, SHAPE_XY, occupancy=False)
    assert occ[0, 0] == 2 and pts[0, 0] == 3  # two voxels (z 0 and 1) in column (0, 0), three points
    assert occ[3, 1] == 1 and occ.sum() == 3 and pts.sum() == 4  # the point at x = 9 is off the grid


def brute_jsd(p, q):
    p, q = p / p.sum(), q / q.sum()
    total = 0.0
    for a, b in zip(p.ravel(), q.ravel()):
        m = (a + b) / 2
        total += 0.5 * (a * math.log(a / m) if a > 0 else 0.0) + 0.5 * (b * math.log(b / m) if b > 0 else 0.0)
    return math.sqrt(total)


def test_jsd_against_brute_force_and_analytic_cases():
    rng = np.random.default_rng(0)
    pred = [rng.integers(0, 3, (4, 4)).astype(float) for _ in range(3)]
    gt = [rng.integers(0, 3, (4, 4)).astype(float) for _ in range(2)]
    assert bev_jsd(pred, gt) == pytest.approx(brute_jsd(sum(pred), sum(gt)), abs=1e-12)
    one = np.zeros((4, 4)); one[0, 0] = 1
    other = np.zeros((4, 4)); other[3, 3] = 5
    assert bev_jsd([one], [one * 7]) == pytest.approx(0.0)  # the same distribution, any scale
    assert bev_jsd([one], [other]) == pytest.approx(math.sqrt(math.log(2)))  # disjoint
    assert bev_jsd([np.zeros((4, 4))], [np.zeros((4, 4))]) == 0.0
    assert bev_jsd([np.zeros((4, 4))], [one]) == pytest.approx(math.sqrt(math.log(2)))
    from scipy.spatial.distance import jensenshannon  # what LiDARGen and LiDiff call
    assert bev_jsd(pred, gt) == pytest.approx(jensenshannon(sum(pred).ravel(), sum(gt).ravel()), abs=1e-12)


def test_mmd_against_brute_force():
    rng = np.random.default_rng(1)
    pred = [rng.random((3, 3)) for _ in range(3)] + [np.zeros((3, 3))]
    gt = [rng.random((3, 3)) for _ in range(2)]
    norm = lambda h: h.ravel() / h.sum() if h.sum() else h.ravel()  # noqa: E731
    k = lambda a, b: math.exp(-float(((norm(a) - norm(b)) ** 2).sum()) / (2 * 0.5 ** 2))  # noqa: E731
    mean = lambda xs, ys: np.mean([k(a, b) for a, b in itertools.product(xs, ys)])  # noqa: E731
    assert bev_mmd(pred, gt) == pytest.approx(mean(pred, pred) + mean(gt, gt) - 2 * mean(pred, gt), abs=1e-12)
    assert bev_mmd(gt, gt) == pytest.approx(0.0, abs=1e-12)


def test_diversity_and_best_of_k():
    a = np.zeros((1, 3))
    b = np.array([[2.0, 0.0, 0.0]])
    c = np.array([[0.0, 4.0, 0.0]])
    assert sample_diversity([a]) == 0.0
    # pairs (a, b) 2, (a, c) 4, (b, c) sqrt(20): the mean of the two directed means is the distance itself here
    assert sample_diversity([a, b, c]) == pytest.approx((2 + 4 + math.sqrt(20)) / 3)
    gt = np.array([[1.9, 0.0, 0.0]])
    rows = [cloud_metrics(x, gt, [1.0]) for x in (a, b, c)]
    assert best_of_k(rows)["chamfer_mean_of_means"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least one sample"):
        best_of_k([])


def test_peak_memory_sees_what_a_block_allocates():
    import torch

    from sparse_radar.outputs import PeakMemory
    with PeakMemory("cpu") as quiet:
        pass
    with PeakMemory("cpu") as watch:
        block = torch.ones(50 * 2**20 // 4 * 4)  # 200 MB, touched
        del block
    assert watch.mb > 150 and quiet.mb < 50 and watch.kind == "resident set, sampled"
