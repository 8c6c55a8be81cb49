"""`python -m sparse_radar.data.export`: a ROS1 bag written here with rosbags (NTU4DRadLM's topics and types) exported
to a points folder: pairs by header stamp (not record time), the calibration applied, channels by name."""
import numpy as np
import pytest

rosbags = pytest.importorskip("rosbags")  # a dev dependency: CI installs it

from sparse_radar.data import calibration as C  # noqa: E402
from sparse_radar.data import export as E  # noqa: E402
from sparse_radar.data.datasets import open_dataset  # noqa: E402
from sparse_radar.data.formats import DataFormatError  # noqa: E402

LIDAR_FROM_RADAR = C.rigid(C.quaternion_matrix([0.0, 0.0, np.sin(0.05), np.cos(0.05)]), [1.5, -0.2, -0.8])


def write_bag(path, radar_stamps, lidar_stamps, channels=("Doppler", "Power", "Range")):
    from rosbags.rosbag1 import Writer
    store = E.typestore()
    T = store.types
    time = lambda ns: T["builtin_interfaces/msg/Time"](sec=ns // 10 ** 9, nanosec=ns % 10 ** 9)  # noqa: E731
    header = lambda ns, frame: T["std_msgs/msg/Header"](seq=0, stamp=time(ns), frame_id=frame)  # noqa: E731
    with Writer(path) as writer:
        radar = writer.add_connection("/radar_enhanced_pcl", "sensor_msgs/msg/PointCloud", typestore=store)
        lidar = writer.add_connection("/livox/lidar", "livox_ros_driver/msg/CustomMsg", typestore=store)
        messages = []
        for k, ns in enumerate(radar_stamps):
            points = [T["geometry_msgs/msg/Point32"](x=10.0 + i, y=float(k), z=0.5) for i in range(3)]
            chans = [T["sensor_msgs/msg/ChannelFloat32"](name=n, values=np.arange(3, dtype=np.float32) + 10 * j)
                     for j, n in enumerate(channels)]
            msg = T["sensor_msgs/msg/PointCloud"](header=header(ns, "radar"), points=points, channels=chans)
            messages.append((ns + 700_000_000, radar, store.serialize_ros1(msg, "sensor_msgs/msg/PointCloud")))
        for k, ns in enumerate(lidar_stamps):
            pts = [T["livox_ros_driver/msg/CustomPoint"](offset_time=0, x=float(i), y=float(k), z=0.0,
                                                         reflectivity=100 + i, tag=0, line=0) for i in range(4)]
            msg = T["livox_ros_driver/msg/CustomMsg"](header=header(ns, "livox"), timebase=ns, point_num=4, lidar_id=0,
                                                      rsvd=np.zeros(3, dtype=np.uint8), points=pts)
            messages.append((ns, lidar, store.serialize_ros1(msg, "livox_ros_driver/msg/CustomMsg")))
        for record_time, conn, data in sorted(messages, key=lambda m: m[0]):  # record time 0.7 s off the radar stamp
            writer.write(conn, record_time, data)


def test_export_pairs_by_header_stamp_and_calibrates(tmp_path, capsys):
    s = 10 ** 9
    bag = tmp_path / "run.bag"
    write_bag(bag, [100 * s, 100 * s + 100_000_000, 100 * s + 200_000_000, 105 * s],
              [100 * s + 20_000_000, 100 * s + 120_000_000, 100 * s + 230_000_000])
    calib = tmp_path / "calib.txt"
    r, t = LIDAR_FROM_RADAR[:3, :3], LIDAR_FROM_RADAR[:3, 3]
    calib.write_text("R: [" + ", ".join(f"{v:.12f}" for v in r.ravel()) + "]\nT: [" + ", ".join(map(str, t)) + "]\n")
    out = tmp_path / "points"
    with pytest.warns(UserWarning, match=r"1 radar scan\(s\) have no LiDAR scan within --max_dt 0.05 s.*4\.770 s"):
        assert E.main([str(bag), "--out", str(out), "--calib", str(calib), "--progress", "False"]) == 0
    assert "wrote 3 radar/LiDAR pair(s)" in capsys.readouterr().out
    names = sorted(p.name for p in (out / "radar").iterdir())
    assert names == [f"{100 * s + d:019d}.npy" for d in (0, 100_000_000, 200_000_000)]  # header stamps
    assert names == sorted(p.name for p in (out / "lidar").iterdir())
    radar = np.load(out / "radar" / names[1])
    expected = C.transform_points(LIDAR_FROM_RADAR, np.array([[10.0, 1.0, 0.5], [11.0, 1.0, 0.5], [12.0, 1.0, 0.5]]))
    np.testing.assert_allclose(radar[:, :3], expected, atol=1e-5)
    np.testing.assert_allclose(radar[:, 3:], [[10, 0], [11, 1], [12, 2]])  # rcs = Power, doppler = Doppler
    lidar = np.load(out / "lidar" / names[2])
    np.testing.assert_allclose(lidar[:, [1, 3]], [[2, 100], [2, 101], [2, 102], [2, 103]])  # scan 2, reflectivity
    assert len(open_dataset(str(out), "points")) == 3


def test_calibration_forms_and_errors(tmp_path, capsys):
    path = tmp_path / "m.txt"
    path.write_text("\n".join(" ".join(map(str, row)) for row in LIDAR_FROM_RADAR) + "\n")
    np.testing.assert_allclose(E.read_calib(str(path)), LIDAR_FROM_RADAR, atol=1e-12)
    path.write_text("1 2 3\n")
    with pytest.raises(DataFormatError, match="3 numbers; expected a 4x4"):
        E.read_calib(str(path))
    path.write_text("R: 2 0 0 0 1 0 0 0 1\nT: 0 0 0\n")
    with pytest.raises(DataFormatError, match="not a rigid transform"):
        E.read_calib(str(path))
    bag = tmp_path / "b.bag"
    write_bag(bag, [10 ** 9], [10 ** 9], channels=("Range",))
    assert E.main([str(bag), "--out", str(tmp_path / "o"), "--calibration", "none", "--progress", "False"]) == 2
    assert "no rcs channel (rcs, power, snr, intensity) among the radar's channels range" in capsys.readouterr().err
    assert E.main([str(bag), "--out", str(tmp_path / "o2"), "--progress", "False"]) == 2
    assert "--calib FILE" in capsys.readouterr().err
    assert E.main([str(bag), "--out", str(tmp_path / "o3"), "--calibration", "none", "--radar_topic", "/x",
                   "--progress", "False"]) == 2
    assert "no topic /x" in capsys.readouterr().err
