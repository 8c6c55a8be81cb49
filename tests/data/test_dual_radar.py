"""Dual-Radar's tree: the calib file's radar extrinsics, the LiDAR's y-forward frame turned to x forward, splits in
training/ and testing/, and the synthetic export read back (radar on its LiDAR only after calibration)."""
import re

import numpy as np
import pytest
from scipy.spatial import cKDTree

from sparse_radar.data import calibration as C
from sparse_radar.data import dual_radar as D
from sparse_radar.data.datasets import open_dataset
from sparse_radar.data.formats import DataFormatError
from sparse_radar.data.grid import GridSpec


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("dual_radar")
    D.export_synthetic(str(root), (("train", 2), ("val", 1), ("test", 1)))
    return root


def test_extrinsics_by_line_hand_case_and_bad_files(tmp_path):
    path = tmp_path / "000000.txt"
    arbe = C.rigid(np.eye(3), [1.0, 2.0, 3.0])
    ars = C.rigid([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [0.0, 0.0, -1.0])
    D.write_calib(str(path), arbe, ars)
    np.testing.assert_allclose(D.read_extrinsic(str(path), "arbe") @ [0, 0, 0, 1.0], [1.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(D.read_extrinsic(str(path), "ars548") @ [1.0, 0, 0, 1.0], [0.0, 1.0, -1.0, 1.0])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4]) + "\n")
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ": 4 line.*Tr_ars_to_velo, in this order"):
        D.read_extrinsic(str(path), "ars548")
    path.write_text("\n".join(lines[:3] + ["Tr_arbe_to_velo: 1 0 0 0 0 1 0 0 0 0 1"]) + "\n")
    with pytest.raises(DataFormatError, match="line 4 .* holds 11 numbers, expected 12"):
        D.read_extrinsic(str(path), "arbe")
    path.write_text("\n".join(lines[:3] + ["Tr_arbe_to_velo: 2 0 0 0 0 1 0 0 0 0 1 0"]) + "\n")
    with pytest.raises(DataFormatError, match="not a rigid transform"):
        D.read_extrinsic(str(path), "arbe")
    with pytest.raises(DataFormatError, match="calibration file not found"):
        D.read_extrinsic(str(tmp_path / "none.txt"), "arbe")


def test_the_lidar_frame_is_turned_to_x_forward():
    ahead, left_hand = C.transform_points(D.LIDAR_TO_FORWARD, np.array([[0.0, 10.0, 1.0], [-2.0, 0.0, 0.0]]))
    np.testing.assert_allclose(ahead, [10.0, 0.0, 1.0])  # y forward in the LiDAR: x forward on the grid
    np.testing.assert_allclose(left_hand, [0.0, 2.0, 0.0])  # x = -2 (left of a y-forward, z-up frame): y = +2


@pytest.mark.parametrize("radar", ["arbe", "ars548"])
def test_radar_lands_on_its_lidar_only_after_calibration(tree, radar):
    voxel = GridSpec().voxel_size[0]
    for mode, near in (("auto", True), ("none", False)):
        data = D.DualRadarTree(str(tree), radar, "train", calibration_mode=mode)
        for i in range(len(data.ids)):
            points, lidar = data.frame_points(i)
            distance = cKDTree(lidar[:, :3]).query(points[:, :3])[0]
            assert (np.median(distance) < voxel / 2) == near, (radar, mode, i, np.median(distance))
    calibrated = D.DualRadarTree(str(tree), radar, "train").frame_points(0)[1]
    assert np.median(calibrated[:, 0]) > 0  # the scene lies ahead: x forward after the turn


def test_splits_datasets_and_bad_arguments(tree, tmp_path):
    assert D.DualRadarTree(str(tree), "arbe", "test").pairs[0][0].startswith(str(tree / "testing"))
    assert len(D.DualRadarTree(str(tree), "arbe", "val").ids) == 1
    data = open_dataset(str(tree), "dual_radar", "train", grid=GridSpec(), radar="ars548")
    assert len(data) == 2 and data.frame_name(1) == "000001" and len(data[0]["radar_coords"]) > 0
    with pytest.raises(ValueError, match="--radar must be one of arbe, ars548"):
        D.DualRadarTree(str(tree), "radar3")
    with pytest.raises(ValueError, match="not Dual-Radar's tree"):
        open_dataset(str(tmp_path), "dual_radar")
