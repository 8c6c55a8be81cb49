"""--target_fov: the cone's analytic edges, the per-dataset defaults, the crop of the training targets at each frame's
radar pose, its record in the checkpoint and the Densifier's crop of what it generates."""
import math
import warnings

import numpy as np
import pytest
from scipy.spatial import cKDTree

from sparse_radar.data import calibration as C
from sparse_radar.data import vod
from sparse_radar.data.datasets import open_dataset
from sparse_radar.data.fov import DEFAULT_FOVS, TargetFov, parse_target_fov, resolve_target_fov
from sparse_radar.data.grid import GridSpec


def test_parse_and_defaults():
    assert parse_target_fov("none") is None and parse_target_fov("AUTO") == "auto"
    assert parse_target_fov("100,30,153.6") == (100.0, 30.0, 153.6)
    for bad in ("100,30", "0,30,10", "100,200,10", "a,b,c", "100,30,-1"):
        with pytest.raises(ValueError, match="AZIMUTH,ELEVATION,RANGE"):
            parse_target_fov(bad)
    assert resolve_target_fov("auto", "dual_radar", "ars548") == (120.0, 28.0, 300.0)
    assert resolve_target_fov("auto", "vod") == DEFAULT_FOVS[("vod", None)]
    assert resolve_target_fov("auto", "synthetic") is None and resolve_target_fov("auto", "points") is None
    assert resolve_target_fov("10,10,10", "synthetic") == (10.0, 10.0, 10.0)


def test_cone_edges_analytic():
    cone = TargetFov.at((90.0, 30.0, 100.0))  # +-45 degrees azimuth, +-15 elevation, 100 m
    t = lambda deg: 10 * math.tan(math.radians(deg))  # noqa: E731
    points = np.array([[10, 0, 0], [-10, 0, 0], [10, t(44), 0], [10, t(46), 0], [10, 0, t(14)], [10, 0, -t(16)],
                       [99, 0, 0], [101, 0, 0]], dtype=np.float64)
    assert cone.mask(points).tolist() == [True, False, True, False, True, False, True, False]
    # mounted 2.5 m ahead, 1 m down, looking left (+y): its x axis is the scene's y
    turned = TargetFov.at((90.0, 30.0, 100.0), C.rigid([[0, -1, 0], [1, 0, 0], [0, 0, 1]], [2.5, 0.0, -1.0]))
    assert turned.mask(np.array([[2.5, 10.0, -1.0], [12.5, 0.0, -1.0], [2.5, -10.0, -1.0]])).tolist() == \
        [True, False, False]
    assert TargetFov.from_dict(turned.to_dict()) == turned and TargetFov.from_dict(None) is None


def test_targets_cropped_at_the_radar_pose(tmp_path):
    vod.export_synthetic(str(tmp_path), (("train", 2),))
    grid = GridSpec()
    cone = (60.0, 20.0, 40.0)
    cropped = open_dataset(str(tmp_path), "vod", "train", grid=grid, target_fov=cone)
    full = open_dataset(str(tmp_path), "vod", "train", grid=grid)
    fov = TargetFov.at(cone, cropped.tree.radar_pose(0))
    np.testing.assert_allclose(np.asarray(fov.pose).reshape(4, 4)[:3, 3], [2.514, 0.061, -1.153], atol=1e-6)
    for i in range(2):
        kept, everything = cropped[i]["target_coords"], full[i]["target_coords"]
        assert 0 < len(kept) < len(everything)
        # every kept voxel holds a LiDAR point inside the cone at this frame's radar pose: its centre lies within
        # half a voxel diagonal of one
        lidar = cropped.tree.frame_points(i)[1][:, :3]
        inside = lidar[TargetFov.at(cone, cropped.tree.radar_pose(i)).mask(lidar)]
        distance = cKDTree(inside).query(grid.voxel_centers(kept))[0]
        assert distance.max() <= math.sqrt(3) * grid.voxel_size[0] / 2 + 1e-6
    assert cropped.target_fov == TargetFov.at(cone, cropped.tree.radar_pose(0))


def test_checkpoint_records_the_cone_and_the_densifier_crops(tmp_path):
    from sparse_radar import Densifier
    from sparse_radar.data.synthetic import generate_scan, split_seed
    from sparse_radar.train import run
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run(["--steps", "1", "--train_size", "2", "--model_channels", "8", "--progress", "False",
                    "--preview_steps", "1", "--target_fov", "60,20,30", "--out", str(out)]) == 0
        densifier = Densifier.from_checkpoint(str(out))
    assert densifier.target_fov == TargetFov.at((60.0, 20.0, 30.0))
    radar = generate_scan(split_seed("test", 0))["radar"]
    cloud = densifier(radar, steps=2)
    assert len(cloud) > 0 and TargetFov.at((62.0, 22.0, 31.0)).mask(cloud[:, :3]).all()  # centres, within a voxel
    densifier.target_fov = None
    assert len(densifier(radar, steps=2)) > len(cloud)  # the uncropped output reaches outside the cone
