"""Rigid transforms, quaternions, pose interpolation and KITTI calib files against hand-computed cases."""
import math

import numpy as np
import pytest

from sparse_radar.data import calibration as cal
from sparse_radar.data.formats import DataFormatError
from sparse_radar.data.vod import write_calib


def test_quaternion_to_matrix_hand_cases():
    s = math.sqrt(0.5)
    np.testing.assert_allclose(cal.quaternion_matrix([0, 0, 0, 1]), np.eye(3))
    # 90 degrees about z: x -> y, y -> -x
    np.testing.assert_allclose(cal.quaternion_matrix([0, 0, s, s]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    # 180 degrees about x: y -> -y, z -> -z; a quaternion of length 2 is normalised
    np.testing.assert_allclose(cal.quaternion_matrix([2, 0, 0, 0]), np.diag([1, -1, -1]), atol=1e-12)
    with pytest.raises(DataFormatError, match="non-zero length"):
        cal.quaternion_matrix([0, 0, 0, 0], "base_to_lidar.txt")


def test_rigid_inverse_and_points():
    t = cal.rigid(cal.quaternion_matrix([0, 0, math.sqrt(0.5), math.sqrt(0.5)]), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(cal.transform_points(t, np.array([[1.0, 0.0, 0.0]])), [[1.0, 3.0, 3.0]], atol=1e-12)
    np.testing.assert_allclose(cal.invert(t) @ t, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(cal.invert(t), np.linalg.inv(t), atol=1e-12)


def test_a_transform_that_is_not_rigid_is_refused_by_file():
    scaled = np.eye(4)
    scaled[0, 0] = 1.1
    with pytest.raises(DataFormatError, match=r"calib/00001.txt: not a rigid transform"):
        cal.check_rigid(scaled, "calib/00001.txt")
    reflected = np.diag([1.0, 1.0, -1.0, 1.0])  # orthonormal, det -1
    with pytest.raises(DataFormatError, match="det R = -1"):
        cal.check_rigid(reflected, "x.txt")
    with pytest.raises(DataFormatError, match="0 0 0 1"):
        cal.check_rigid(np.vstack([np.eye(4)[:3], [0, 0, 1, 1]]), "x.txt")


def test_pose_interpolation_halfway():
    times = np.array([0.0, 2.0])
    positions = np.array([[0.0, 0.0, 0.0], [2.0, 4.0, 0.0]])
    quats = np.array([[0, 0, 0, 1.0], [0, 0, 1.0, 0]])  # identity, then 180 degrees about z
    pose = cal.interpolate_pose(times, positions, quats, 1.0)
    np.testing.assert_allclose(pose[:3, 3], [1.0, 2.0, 0.0])
    np.testing.assert_allclose(pose[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)  # 90 degrees
    np.testing.assert_allclose(cal.interpolate_pose(times, positions, quats, 2.0)[:3, 3], [2.0, 4.0, 0.0])
    with pytest.raises(DataFormatError, match="outside the poses' times"):
        cal.interpolate_pose(times, positions, quats, 2.5, "groundtruth_poses.txt")
    # slerp takes the shorter arc: q and -q are one rotation
    np.testing.assert_allclose(abs(cal.slerp([0, 0, 0, 1.0], [0, 0, 0, -1.0], 0.5) @ [0, 0, 0, 1.0]), 1.0)


def test_vod_radar_to_lidar_from_two_calib_files(tmp_path):
    """The devkit's chain, inv(T_camera_lidar) @ T_camera_radar: a radar 2.5 m ahead of and 1.15 m below the
    LiDAR maps its origin to (2.5, 0, -1.15) in the LiDAR frame."""
    camera_from_lidar = cal.rigid([[0, -1, 0], [0, 0, -1], [1, 0, 0]], [0.1, -0.2, -0.3])  # x fwd -> z fwd
    lidar_from_radar = cal.rigid(np.eye(3), [2.5, 0.0, -1.15])
    write_calib(str(tmp_path / "lidar.txt"), camera_from_lidar)
    write_calib(str(tmp_path / "radar.txt"), camera_from_lidar @ lidar_from_radar)
    t = cal.vod_radar_to_lidar(str(tmp_path / "lidar.txt"), str(tmp_path / "radar.txt"))
    np.testing.assert_allclose(t, lidar_from_radar, atol=1e-9)
    np.testing.assert_allclose(cal.transform_points(t, np.zeros((1, 3))), [[2.5, 0.0, -1.15]], atol=1e-9)


def test_calib_file_errors_name_the_file(tmp_path):
    with pytest.raises(DataFormatError, match="missing.txt: calibration file not found"):
        cal.kitti_extrinsic(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("P2: 1 2 3\nTr_velo_to_cam 1 2\n")
    with pytest.raises(DataFormatError, match="bad.txt: line 2 is not 'name: numbers'"):
        cal.kitti_extrinsic(str(bad))
    short = tmp_path / "short.txt"
    short.write_text("Tr_velo_to_cam: 1 0 0 0 0 1 0 0\n")
    with pytest.raises(DataFormatError, match="holds 8 numbers, expected 12"):
        cal.kitti_extrinsic(str(short))
    other = tmp_path / "other.txt"
    other.write_text("P2: 1 2 3\n")
    with pytest.raises(DataFormatError, match="no 'Tr_velo_to_cam:' line"):
        cal.kitti_extrinsic(str(other))
