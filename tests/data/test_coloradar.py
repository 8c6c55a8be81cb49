"""ColoRadar's official tree: transform files, timestamps, pairing by time, motion-compensated calibration, and the
synthetic export read back (a radar point lands on its object's LiDAR points only after calibration)."""
import re
import warnings

import numpy as np
import pytest
from scipy.spatial import cKDTree

from sparse_radar.data import calibration as C
from sparse_radar.data import coloradar as CR
from sparse_radar.data.datasets import PointPairDataset, open_dataset
from sparse_radar.data.formats import DataFormatError
from sparse_radar.data.grid import GridSpec


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("coloradar")
    CR.export_synthetic(str(root), (("train", 3), ("val", 1), ("test", 1)))
    return root


def quiet_tree(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CR.ColoradarTree(str(root), **kw)


def test_matrix_quaternion_hand_cases_and_round_trip():
    half = np.sqrt(0.5)
    quarter_turn_z = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # x -> y
    np.testing.assert_allclose(C.matrix_quaternion(quarter_turn_z), [0.0, 0.0, half, half], atol=1e-12)
    half_turn_x = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]  # trace -1: the x branch
    np.testing.assert_allclose(np.abs(C.matrix_quaternion(half_turn_x)), [1.0, 0.0, 0.0, 0.0], atol=1e-12)
    rng = np.random.default_rng(0)
    for q in rng.normal(size=(20, 4)):
        q = q / np.linalg.norm(q) * np.sign(q[3])
        np.testing.assert_allclose(C.matrix_quaternion(C.quaternion_matrix(q)), q, atol=1e-10)


def test_read_transform_hand_case_and_bad_files(tmp_path):
    path = tmp_path / "base_to_lidar.txt"
    path.write_text(f"1 2 3\n0 0 {np.sqrt(0.5)} {np.sqrt(0.5)}\n")
    t = CR.read_transform(str(path))
    np.testing.assert_allclose(t @ [1.0, 0.0, 0.0, 1.0], [1.0, 3.0, 3.0, 1.0], atol=1e-12)  # x turned to y, moved
    path.write_text("1 2 3\n0 0 1\n")
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ".*3 numbers then 4"):
        CR.read_transform(str(path))
    with pytest.raises(DataFormatError, match="transform file not found"):
        CR.read_transform(str(tmp_path / "missing.txt"))


def test_read_timestamps_errors(tmp_path):
    path = tmp_path / "timestamps.txt"
    path.write_text("1.0\n1.1\n")
    np.testing.assert_allclose(CR.read_timestamps(str(path), 2), [1.0, 1.1])
    with pytest.raises(DataFormatError, match="2 timestamps for 3 scan file"):
        CR.read_timestamps(str(path), 3)
    path.write_text("1.0\nnan-ish\n")
    with pytest.raises(DataFormatError, match="line 2 is not a time"):
        CR.read_timestamps(str(path))
    path.write_text("1.0\n0.9\n")
    with pytest.raises(DataFormatError, match="times go back at line 2"):
        CR.read_timestamps(str(path))


def test_pair_by_time_takes_the_nearest():
    nearest, gap = CR.pair_by_time(np.array([0.0, 0.14, 0.26, 0.9]), np.array([0.1, 0.2, 0.3]))
    assert nearest.tolist() == [0, 0, 2, 2]
    np.testing.assert_allclose(gap, [0.1, 0.04, 0.04, 0.6])
    assert CR.pair_by_time(np.array([5.0]), np.array([4.0]))[0].tolist() == [0]  # one LiDAR scan


def test_tree_pairs_runs_by_split_and_warns_once_for_the_dropped(tree):
    with pytest.warns(UserWarning, match=r"1 radar scan\(s\) dropped \(1 without a LiDAR scan within --max_dt\); "
                                         r"the largest time gap to a LiDAR scan was 0\.500 s"):
        train = CR.ColoradarTree(str(tree), split="train")
    assert len(train.pairs) == 3 and all(p.gap <= 0.03 for p in train.pair_list)
    assert {p.run.rsplit("/", 1)[-1] for p in train.pair_list} == {"synthetic_train_run0"}
    assert train.frame_name(2) == "synthetic_train_run0_2"
    assert len(quiet_tree(tree, split="test").pairs) == 1
    assert len(quiet_tree(tree / "synthetic_train_run0").pairs) == 3  # one run given directly: calib in the parent
    with pytest.raises(ValueError, match="no radar scan has a LiDAR scan within --max_dt 0.001"):
        quiet_tree(tree, split="train", max_dt=0.001)


def test_radar_to_lidar_is_extrinsics_and_motion(tree):
    data = quiet_tree(tree, split="train")
    for i, p in enumerate(data.pair_list):
        speed = np.loadtxt(f"{p.run}/groundtruth/groundtruth_poses.txt")[1, 0] / 0.01  # the rig's x per 10 ms
        drive = C.rigid(np.eye(3), [speed * (p.t_radar - p.t_lidar), 0.0, 0.0])  # the base's motion in between
        expected = C.invert(CR.LIDAR_MOUNT) @ drive @ CR.RADAR_MOUNT
        np.testing.assert_allclose(data.radar_to_lidar(i), expected, atol=1e-5)
        assert abs(speed * (p.t_radar - p.t_lidar)) > 0.02  # the motion is not negligible in this case


def test_radar_points_land_on_their_lidar_only_after_calibration(tree):
    voxel = GridSpec().voxel_size[0]
    for mode, near in (("auto", True), ("none", False)):
        data = quiet_tree(tree, split="train", calibration_mode=mode)
        for i in range(len(data.pairs)):
            radar, lidar = data.frame_points(i)
            distance = cKDTree(lidar[:, :3]).query(radar[:, :3])[0]
            assert (np.median(distance) < voxel / 2) == near, (mode, i, np.median(distance))


def test_open_dataset_reads_the_tree_and_refuses_a_flat_uncalibrated_folder(tree, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = open_dataset(str(tree), "coloradar", "train", grid=GridSpec())
    assert isinstance(data, PointPairDataset) and len(data) == 3
    sample = data[0]
    assert len(sample["radar_coords"]) > 0 and len(sample["target_coords"]) > len(sample["radar_coords"])
    flat = tmp_path / "flat"
    for sensor, cols in (("radar", 5), ("lidar", 4)):
        (flat / sensor).mkdir(parents=True)
        np.ones((3, cols), np.float32).tofile(flat / sensor / "0.bin")
    with pytest.raises(ValueError, match="not ColoRadar's official tree.*--calibration none"):
        open_dataset(str(flat), "coloradar")
    assert len(open_dataset(str(flat), "coloradar", calibration="none")) == 1


def test_missing_pose_and_calib_files_are_named(tree, tmp_path):
    import shutil
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    poses = root / "synthetic_val_run0" / "groundtruth" / "groundtruth_poses.txt"
    poses.unlink()
    with pytest.raises(DataFormatError, match=re.escape(str(poses)) + ": ground-truth poses not found"):
        quiet_tree(root, split="val")
    assert len(quiet_tree(root, split="val", calibration_mode="none").pairs) == 1
    transform = root / "calib" / "transforms" / "base_to_lidar.txt"
    transform.unlink()
    with pytest.raises(DataFormatError, match=re.escape(str(transform)) + ": transform file not found"):
        quiet_tree(root, split="test")


def test_export_command_then_train_and_sample_on_the_tree(tmp_path, capsys):
    from sparse_radar.data.synthetic import main
    from sparse_radar.sample import run as sample_main
    from sparse_radar.train import run
    root = tmp_path / "tree"
    assert main(["--export", "coloradar", str(root), "--count", "4"]) == 0
    assert "--data_format coloradar" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "splits").iterdir()) == ["test.txt", "train.txt", "val.txt"]
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run(["--data", str(root), "--data_format", "coloradar", "--steps", "1", "--batch_size", "2",
                    "--progress", "False", "--model_channels", "8", "--out", str(out)]) == 0
        samples = tmp_path / "samples"
        assert sample_main([str(out), "--input", str(root), "--data_format", "coloradar", "--steps", "1",
                            "--out", str(samples)]) == 0
    assert sorted(p.stem for p in samples.glob("*.ply")) == ["synthetic_test_run0_0"]  # named by run and scan
