"""sparse_radar.metrics against brute-force numpy, hand-computed cases and empty clouds."""
import numpy as np
import pytest

from sparse_radar.metrics import cloud_metrics, nearest_distances, summarize, voxel_metrics


def brute(pred, gt, tau):
    d = np.linalg.norm(pred[:, None, :3] - gt[None, :, :3], axis=2)
    pg, gp = d.min(1), d.min(0)
    p, r = (pg <= tau).mean(), (gp <= tau).mean()
    return {"chamfer_mean_of_means": (pg.mean() + gp.mean()) / 2, "chamfer_sum_of_means": pg.mean() + gp.mean(),
            "hausdorff": max(pg.max(), gp.max()), "modified_hausdorff": max(pg.mean(), gp.mean()),
            f"precision@{tau:g}": p, f"recall@{tau:g}": r,
            f"fscore@{tau:g}": 0.0 if p + r == 0 else 2 * p * r / (p + r)}


@pytest.mark.parametrize("seed", range(4))
def test_cloud_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=(rng.integers(1, 60), 5))  # extra columns are ignored
    gt = rng.normal(size=(rng.integers(1, 60), 4))
    got = cloud_metrics(pred, gt, taus=(0.3, 0.8))
    for tau in (0.3, 0.8):
        for k, v in brute(pred, gt, tau).items():
            assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k


def test_hand_computed_case():
    pred = np.array([[0.0, 0, 0], [3.0, 0, 0]])
    gt = np.array([[0.0, 0, 1], [0.0, 0, 2]])
    m = cloud_metrics(pred, gt, taus=(1.0,))
    # pred -> gt: 1 and sqrt(9 + 1); gt -> pred: 1 and 2
    pg = (1 + np.sqrt(10)) / 2
    assert m["pred_to_gt_mean"] == pytest.approx(pg)
    assert m["gt_to_pred_mean"] == pytest.approx(1.5)
    assert m["chamfer_sum_of_means"] == pytest.approx(pg + 1.5)
    assert m["chamfer_mean_of_means"] == pytest.approx((pg + 1.5) / 2)
    assert m["hausdorff"] == pytest.approx(np.sqrt(10))
    assert m["modified_hausdorff"] == pytest.approx(pg)
    assert (m["precision@1"], m["recall@1"]) == (0.5, 0.5)
    assert m["fscore@1"] == pytest.approx(0.5)


def test_empty_clouds_have_defined_values():
    gt = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    empty = np.zeros((0, 3))
    m = cloud_metrics(empty, gt, taus=(0.5,), empty_distance=100.0)
    assert m["chamfer_sum_of_means"] == 200.0 and m["hausdorff"] == 100.0
    assert (m["precision@0.5"], m["recall@0.5"], m["fscore@0.5"]) == (0.0, 0.0, 0.0)
    m = cloud_metrics(gt, empty, taus=(0.5,), empty_distance=100.0)
    assert m["chamfer_mean_of_means"] == 100.0 and m["fscore@0.5"] == 0.0
    both = cloud_metrics(empty, empty, taus=(0.5,), empty_distance=100.0)
    assert both["chamfer_sum_of_means"] == 0.0 and both["fscore@0.5"] == 1.0
    assert np.isinf(cloud_metrics(empty, gt, taus=(0.5,))["hausdorff"])  # the default empty_distance


def test_nearest_distances_and_bad_input():
    d = nearest_distances(np.array([[0.0, 0, 0]]), np.array([[3.0, 4, 0], [0, 0, 2]]))
    assert d.tolist() == [2.0]
    assert np.isinf(nearest_distances(np.ones((2, 3)), np.zeros((0, 3)))).all()
    with pytest.raises(ValueError, match=r"\[N, >=3\]"):
        cloud_metrics(np.ones((3, 2)), np.ones((3, 3)), taus=(1.0,))
    with pytest.raises(ValueError, match="taus"):
        cloud_metrics(np.ones((3, 3)), np.ones((3, 3)), taus=(0.0,))


def test_voxel_metrics():
    pred = np.array([[0, 0, 0], [0, 0, 1], [5, 5, 5], [5, 5, 5]])  # a duplicate counts once
    gt = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [-2, 3, 9]])
    m = voxel_metrics(pred, gt)
    assert m == {"voxel_iou": 2 / 5, "voxel_precision": 2 / 3, "voxel_recall": 2 / 4}
    empty = np.zeros((0, 3), dtype=np.int64)
    assert voxel_metrics(empty, empty) == {"voxel_iou": 1.0, "voxel_precision": 1.0, "voxel_recall": 1.0}
    assert voxel_metrics(empty, gt) == {"voxel_iou": 0.0, "voxel_precision": 0.0, "voxel_recall": 0.0}
    assert voxel_metrics(pred, empty)["voxel_precision"] == 0.0
    with pytest.raises(ValueError, match="integer"):
        voxel_metrics(np.ones((2, 3)), gt)


def test_summarize_keeps_every_row():
    s = summarize([{"a": 1.0, "name": "x"}, {"a": 3.0, "name": "y"}, {"a": 8.0, "name": "z"}])
    assert s == {"a": {"mean": 4.0, "median": 3.0}}


def test_parse_taus():
    from sparse_radar.metrics import parse_taus

    assert parse_taus(None, 0.8) == [0.8] and parse_taus("0.4, 1.6", 0.8) == [0.4, 1.6]
    for bad in ("", "a", "0.4,-1", "0"):
        with pytest.raises(ValueError, match="--tau"):
            parse_taus(bad, 0.8)
