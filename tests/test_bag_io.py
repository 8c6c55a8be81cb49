"""sample --bag: ROS1 and ROS2 bags written here with rosbags, densified into a new bag (PointCloud2 with x, y, z,
intensity, doppler and each input's header), every k-th message, other topics copied; the refusals."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("rosbags")  # a dev dependency: CI installs it

from sparse_radar.bag_io import pointcloud2_array  # noqa: E402
from sparse_radar.data.export import typestore  # noqa: E402
from sparse_radar.data.synthetic import generate_scan, split_seed  # noqa: E402
from sparse_radar.sample import run as sample  # noqa: E402

STAMPS = [1_700_000_000_000_000_000 + k * 100_000_000 for k in range(4)]


def radar_cloud2(store, k, stamp, fields=("x", "y", "z", "power", "velocity")):
    T = store.types
    scan = generate_scan(split_seed("test", k))["radar"][:, :5].astype(np.float32)
    dtype = np.dtype([(f, "<f4") for f in fields] + [("ring", "<u2"), ("pad", "<u2")])
    rec = np.zeros(len(scan), dtype=dtype)
    for i, f in enumerate(fields):
        rec[f] = scan[:, i]
    pf = [T["sensor_msgs/msg/PointField"](name=n, offset=dtype.fields[n][1], datatype=7 if n != "ring" else 4,
                                          count=1) for n in list(fields) + ["ring"]]
    header = T["std_msgs/msg/Header"](seq=k, stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9,
                                                                                     nanosec=stamp % 10**9),
                                      frame_id="radar_link")
    msg = T["sensor_msgs/msg/PointCloud2"](header=header, height=1, width=len(rec), fields=pf, is_bigendian=False,
                                           point_step=dtype.itemsize, row_step=dtype.itemsize * len(rec),
                                           data=rec.view(np.uint8).reshape(-1), is_dense=True)
    return msg, scan


def write_bag(path, ros2, fields=("x", "y", "z", "power", "velocity")):
    store = typestore()
    if ros2:
        from rosbags.rosbag2 import Writer
        writer, ser = Writer(path, version=8), store.serialize_cdr
    else:
        from rosbags.rosbag1 import Writer
        writer, ser = Writer(path), store.serialize_ros1
    scans = []
    with writer:
        radar = writer.add_connection("/radar", "sensor_msgs/msg/PointCloud2", typestore=store)
        note = writer.add_connection("/note", "std_msgs/msg/String", typestore=store)
        for k, stamp in enumerate(STAMPS):
            msg, scan = radar_cloud2(store, k, stamp, fields)
            scans.append(scan)
            writer.write(radar, stamp + 5_000_000, ser(msg, "sensor_msgs/msg/PointCloud2"))  # record time differs
            writer.write(note, stamp + 6_000_000, ser(store.types["std_msgs/msg/String"](data=f"n{k}"),
                                                      "std_msgs/msg/String"))
    return scans


def read_topics(path):
    from pathlib import Path

    from rosbags.highlevel import AnyReader
    out = {}
    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return out


@pytest.mark.parametrize("ros2", [False, True])
def test_bag_in_bag_out(small_runs, tmp_path, ros2):
    from sparse_radar import Densifier
    bag = str(tmp_path / ("in" if ros2 else "in.bag"))
    scans = write_bag(bag, ros2)
    out = str(tmp_path / ("out" if ros2 else "out.bag"))
    args = [small_runs[0], "--bag", bag, "--radar_topic", "/radar", "--out", out, "--steps", "2", "--no-progress"]
    assert sample(args + ["--every", "2", "--copy_topics"]) == 0
    topics = read_topics(out)
    assert sorted(topics) == ["/note", "/radar", "/radar/dense"]
    assert [m.data for _, m in topics["/note"]] == ["n0", "n1", "n2", "n3"]
    dense = topics["/radar/dense"]
    assert len(dense) == 2  # messages 0 and 2
    densifier = Densifier.from_checkpoint(small_runs[0])
    for (t, msg), k in zip(dense, (0, 2)):
        assert msg.header.frame_id == "radar_link"
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == STAMPS[k]
        assert t == STAMPS[k] + 5_000_000  # written at its input's record time
        assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "doppler"]
        cloud = pointcloud2_array(msg, "out")
        got = np.column_stack([cloud[f] for f in ("x", "y", "z", "intensity", "doppler")])
        np.testing.assert_allclose(got, densifier(scans[k], steps=2), rtol=0, atol=1e-6)
    summary = json.loads(open(out + ".summary.json").read())
    assert summary["densified"] == 2 and summary["radar_messages"] == 4
    assert [m["stamp_ns"] for m in summary["messages"]] == [STAMPS[0], STAMPS[2]]
    assert all(m["seconds"] > 0 for m in summary["messages"])
    # without --copy_topics: the dense topic alone
    out2 = str(tmp_path / ("out2" if ros2 else "out2.bag"))
    assert sample([small_runs[0], "--bag", bag, "--radar_topic", "/radar", "--out", out2, "--steps", "2",
                   "--no-progress"]) == 0
    assert sorted(read_topics(out2)) == ["/radar/dense"]


def test_bag_refusals(small_runs, tmp_path, capsys):
    bag = str(tmp_path / "in.bag")
    write_bag(bag, False)
    out = str(tmp_path / "out.bag")
    base = [small_runs[0], "--bag", bag, "--out", out, "--steps", "2", "--no-progress"]
    assert sample(base + ["--radar_topic", "/nope"]) == 2
    assert "no topic /nope; the bag has /note, /radar" in capsys.readouterr().err
    assert not os.path.exists(out)  # nothing half-written is left
    open(out, "w").write("keep me")
    assert sample(base + ["--radar_topic", "/radar"]) == 2
    assert f"--out {out} exists; pass --overwrite" in capsys.readouterr().err and open(out).read() == "keep me"
    assert sample(base + ["--radar_topic", "/radar", "--overwrite"]) == 0
    nox = str(tmp_path / "nox.bag")
    write_bag(nox, False, fields=("a", "y", "z", "power", "velocity"))
    assert sample([small_runs[0], "--bag", nox, "--radar_topic", "/radar", "--out", str(tmp_path / "o.bag"),
                   "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ("/radar message 0 (stamp 1700000000000000000 ns): no x field; the message has a, y, z, power, velocity, "
            "ring") in err
    assert not os.path.exists(tmp_path / "o.bag")
