"""Bag in, bag out: `python -m sparse_radar.sample RUN --bag IN --radar_topic /radar --out OUT` densifies the radar
messages of a ROS1 (.bag) or ROS2 (folder) bag and writes a bag of the same kind whose `--out_topic` (default
<radar_topic>/dense) holds sensor_msgs/PointCloud2 clouds with x, y, z, intensity and doppler, each with its input's
header stamp and frame id; `--copy_topics` keeps every other topic, so the bag plays back beside the camera.

Radar messages may be sensor_msgs/PointCloud2 or the old sensor_msgs/PointCloud; their fields are taken by name
(data.point_fields). Bags are read and written with the pure-Python `rosbags` package (no ROS install).
"""
from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from .data.export import rosbags_api, typestore

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
POINTCLOUD = "sensor_msgs/msg/PointCloud"
FIELD_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}  # PointField datatypes
OUT_FIELDS = ("x", "y", "z", "intensity", "doppler")


def pointcloud2_array(msg, where: str) -> np.ndarray:
    """A sensor_msgs/PointCloud2 as a structured numpy array (its fields by name and offset)."""
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in FIELD_TYPES:
            raise ValueError(f"{where}: field {f.name!r} has PointField datatype {f.datatype}, not one of 1..8")
        names.append(f.name)
        formats.append((">" if msg.is_bigendian else "<") + FIELD_TYPES[f.datatype] + (
            "" if f.count <= 1 else f"({f.count},)"))
        offsets.append(f.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    count = int(msg.width) * int(msg.height)
    data = np.asarray(msg.data, dtype=np.uint8).tobytes()
    if len(data) < count * dtype.itemsize:
        raise ValueError(f"{where}: {len(data)} data bytes for {count} points of {dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, count=count)


def pointcloud_array(msg) -> np.ndarray:
    """A sensor_msgs/PointCloud (points and named channels) as a structured numpy array."""
    n = len(msg.points)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + [(c.name, "<f4") for c in msg.channels]
    out = np.zeros(n, dtype=fields)
    out["x"], out["y"], out["z"] = ([p.x for p in msg.points], [p.y for p in msg.points], [p.z for p in msg.points])
    for c in msg.channels:
        out[c.name] = np.asarray(c.values, dtype=np.float32)[:n]
    return out


def radar_array(msg, msgtype: str, where: str) -> np.ndarray:
    """The radar message's points as a structured array; a ValueError naming the message without x, y, z."""
    cloud = pointcloud2_array(msg, where) if msgtype == POINTCLOUD2 else pointcloud_array(msg)
    missing = [a for a in "xyz" if a not in (cloud.dtype.names or ())]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)} field; the message has {', '.join(cloud.dtype.names)}")
    return cloud


def dense_message(store, header, cloud: np.ndarray):
    """A PointCloud2 of cloud [M, 5] (x, y, z, intensity, doppler float32) with the given header."""
    T = store.types
    fields = [T["sensor_msgs/msg/PointField"](name=n, offset=4 * i, datatype=7, count=1)
              for i, n in enumerate(OUT_FIELDS)]
    data = np.ascontiguousarray(cloud[:, :5], dtype="<f4")
    return T[POINTCLOUD2](header=header, height=1, width=len(data), fields=fields, is_bigendian=False,
                          point_step=20, row_step=20 * len(data), data=data.view(np.uint8).reshape(-1),
                          is_dense=True)


def _writer(path: str, ros2: bool):
    if ros2:
        from rosbags.rosbag2 import Writer
        return Writer(path, version=8)
    from rosbags.rosbag1 import Writer
    return Writer(path)


def check_output(path: str, overwrite: bool, protected: List[str]) -> None:
    """Refuse an existing output bag unless overwrite (then remove it), and never an input."""
    target = os.path.abspath(path)
    if any(os.path.abspath(p) == target for p in protected):
        raise ValueError(f"--out {path} is an input; choose another path for the output bag")
    if os.path.exists(path):
        if not overwrite:
            raise ValueError(f"--out {path} exists; pass --overwrite to replace it")
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def densify_bag(densifier, settings, bag: str, out: str, radar_topic: str, out_topic: Optional[str] = None,
                every: int = 1, copy_topics: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """Densify bag's radar_topic (every k-th message) into a new bag at out; returns the summary (per message:
    stamp, points in and out, seconds)."""
    from tqdm import tqdm
    any_reader = rosbags_api()[0]
    out_topic = out_topic or radar_topic.rstrip("/") + "/dense"
    ros2 = os.path.isdir(bag)
    store = typestore()
    rows = []
    with any_reader([Path(bag)], default_typestore=store) as reader:
        topics = sorted({c.topic for c in reader.connections})
        radar = [c for c in reader.connections if c.topic == radar_topic]
        if not radar:
            raise ValueError(f"{bag}: no topic {radar_topic}; the bag has {', '.join(topics) or 'none'}")
        kinds = {c.msgtype for c in radar}
        if not kinds <= {POINTCLOUD2, POINTCLOUD}:
            raise ValueError(f"{bag}: {radar_topic} carries {', '.join(sorted(kinds))}, not {POINTCLOUD2} or "
                             f"{POINTCLOUD}")
        if out_topic in topics:
            raise ValueError(f"{bag}: --out_topic {out_topic} is already in the bag; choose another")
        wanted = reader.connections if copy_topics else radar
        total = sum(c.msgcount for c in radar)
        with _writer(out, ros2) as writer:
            dense_conn = writer.add_connection(out_topic, POINTCLOUD2, typestore=store)
            copied = {}
            if copy_topics:
                for c in reader.connections:
                    if ros2:
                        copied[c.id] = writer.add_connection(c.topic, c.msgtype, typestore=reader.typestore,
                                                             serialization_format="cdr")
                    else:
                        copied[c.id] = writer.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data, md5sum=c.digest)
            bar = tqdm(total=total, desc="densifying", unit="msg", disable=not progress)
            index = -1
            for conn, timestamp, raw in reader.messages(connections=wanted):
                if copy_topics:
                    writer.write(copied[conn.id], timestamp, raw)
                if conn.topic != radar_topic:
                    continue
                index += 1
                bar.update(1)
                if index % every:
                    continue
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
                points = radar_array(msg, conn.msgtype, f"{bag} {radar_topic} message {index} (stamp {stamp} ns)")
                t0 = time.perf_counter()
                cloud = densifier(points, sampler=settings.sampler, steps=settings.steps, seed=seed,
                                  sigma_max=settings.sigma_max, sigma_min=settings.sigma_min, s_churn=settings.s_churn,
                                  threshold=settings.threshold, guidance=settings.guidance)
                seconds = time.perf_counter() - t0
                dense = dense_message(store, msg.header, cloud)
                data = store.serialize_cdr(dense, POINTCLOUD2) if ros2 else store.serialize_ros1(dense, POINTCLOUD2)
                writer.write(dense_conn, timestamp, data)
                rows.append({"message": index, "stamp_ns": stamp, "points_in": int(len(points)),
                             "points_out": int(len(cloud)), "seconds": seconds})
            bar.close()
    times = [r["seconds"] for r in rows]
    return {"input": os.path.abspath(bag), "output": os.path.abspath(out), "radar_topic": radar_topic,
            "out_topic": out_topic, "every": every, "copy_topics": copy_topics, "radar_messages": total,
            "densified": len(rows), "seconds_per_message": {"mean": statistics.fmean(times) if times else 0.0,
                                                             "median": statistics.median(times) if times else 0.0},
            "messages": rows}
