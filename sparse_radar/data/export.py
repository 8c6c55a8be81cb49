"""`python -m sparse_radar.data.export BAG [BAG ...] --out DIR --calib FILE`: NTU4DRadLM's rosbags (the reference's own
dataset) as a `points` folder (DIR/radar/<stamp>.npy x, y, z, rcs, doppler in the LiDAR frame; DIR/lidar/<stamp>.npy
x, y, z, intensity), radar and LiDAR scans paired by their header stamps within --max_dt.

Reads ROS1 and ROS2 bags with the pure-Python `rosbags` package (pip install rosbags; no ROS install):
- radar: `/radar_enhanced_pcl` (else `/radar_pcl`), sensor_msgs/PointCloud, points with named channels (Doppler,
  Power, ...);
- LiDAR: `/livox/lidar`, livox_ros_driver/CustomMsg (its definition is registered here: bags need not carry it);
- radar -> LiDAR: --calib, a text file with a 4x4 (or 3x4) matrix, or with `R:` (9 numbers) and `T:` (3) lines.
Files are named by the radar's header stamp in nanoseconds (never the bag's record time).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import calibration
from .coloradar import DEFAULT_MAX_DT, pair_by_time
from .formats import DataFormatError
from .point_fields import DOPPLER_NAMES, RCS_NAMES

PROG = "python -m sparse_radar.data.export"
RADAR_TOPICS = ("/radar_enhanced_pcl", "/radar_pcl")
LIDAR_TOPIC = "/livox/lidar"
LIVOX_TYPES = {
    "livox_ros_driver/msg/CustomPoint": "uint32 offset_time\nfloat32 x\nfloat32 y\nfloat32 z\nuint8 reflectivity\n"
                                        "uint8 tag\nuint8 line\n",
    "livox_ros_driver/msg/CustomMsg": "std_msgs/Header header\nuint64 timebase\nuint32 point_num\nuint8 lidar_id\n"
                                      "uint8[3] rsvd\nlivox_ros_driver/CustomPoint[] points\n",
}


def rosbags_api():
    """(AnyReader, Stores, get_types_from_msg, get_typestore) of rosbags; a ValueError saying how to install it."""
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    except ImportError:
        raise ValueError("reading bags needs the rosbags package: pip install rosbags (pure Python, no ROS)") from None
    return AnyReader, Stores, get_types_from_msg, get_typestore


def typestore():
    """A ROS1 Noetic typestore with livox_ros_driver's CustomMsg registered."""
    _, stores, get_types_from_msg, get_typestore = rosbags_api()
    store = get_typestore(stores.ROS1_NOETIC)
    types = {}
    for name, text in LIVOX_TYPES.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def read_calib(path: str) -> np.ndarray:
    """T_lidar_radar from a text file: 16 (or 12) numbers of a 4x4 (3x4) matrix, or `R:` and `T:` lines (brackets,
    commas and `=` allowed); a missing file, a malformed one or a non-rigid transform is a DataFormatError."""
    if not os.path.isfile(path):
        raise DataFormatError(path, "calibration file not found")
    text = open(path, encoding="utf-8", errors="replace").read()
    number = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
    labelled = {m.group(1).upper(): [float(v) for v in re.findall(number, m.group(2))]
                for m in re.finditer(r"^\s*([RT])\s*[:=]\s*(.*(?:\n(?!\s*[RT]\s*[:=]).*)*)", text, flags=re.M)}
    if "R" in labelled and "T" in labelled:
        r, t = labelled["R"], labelled["T"]
        if len(r) != 9 or len(t) != 3:
            raise DataFormatError(path, f"R holds {len(r)} numbers and T {len(t)}; expected 9 (a 3x3 rotation) and 3")
        return calibration.check_rigid(calibration.rigid(np.reshape(r, (3, 3)), t), path)
    values = [float(v) for v in re.findall(number, text)]
    if len(values) not in (12, 16):
        raise DataFormatError(path, f"{len(values)} numbers; expected a 4x4 (16) or 3x4 (12) matrix, or 'R:' and 'T:' "
                                    f"lines")
    return calibration.check_rigid(np.reshape(values, (-1, 4)), path)


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def radar_points(msg, source: str) -> np.ndarray:
    """[N, 5] x, y, z, rcs, doppler of a sensor_msgs/PointCloud (channels by name)."""
    xyz = np.array([[p.x, p.y, p.z] for p in msg.points], dtype=np.float64).reshape(-1, 3)
    channels = {c.name.lower(): np.asarray(c.values, dtype=np.float64) for c in msg.channels}

    def channel(names, what):
        for n in names:
            if n in channels:
                if len(channels[n]) != len(xyz):
                    raise DataFormatError(source, f"channel {n!r} has {len(channels[n])} values for {len(xyz)} "
                                                  f"points")
                return channels[n]
        raise DataFormatError(source, f"no {what} channel ({', '.join(names)}) among the radar's channels "
                                      f"{', '.join(channels) or '(none)'}")
    return np.column_stack([xyz, channel(RCS_NAMES, "rcs"), channel(DOPPLER_NAMES, "doppler")])


def lidar_points(msg) -> np.ndarray:
    """[M, 4] x, y, z, reflectivity of a livox_ros_driver/CustomMsg."""
    return np.array([[p.x, p.y, p.z, p.reflectivity] for p in msg.points], dtype=np.float64).reshape(-1, 4)


def _connections(reader, bag: str, radar_topic: Optional[str], lidar_topic: str):
    topics = {c.topic for c in reader.connections}
    radar = radar_topic or next((t for t in RADAR_TOPICS if t in topics), None)
    missing = [t for t in (radar, lidar_topic) if t is None or t not in topics]
    if missing:
        wanted = radar_topic or " or ".join(RADAR_TOPICS)
        raise ValueError(f"{bag}: no topic {missing[0] or wanted} (the bag has {', '.join(sorted(topics)) or 'none'}); "
                         f"pass --radar_topic / --lidar_topic")
    return ([c for c in reader.connections if c.topic == radar], [c for c in reader.connections if c.topic == lidar_topic])


def _stamps(reader, connections, progress: bool, what: str) -> List[int]:
    from tqdm import tqdm
    out = []
    for conn, _, raw in tqdm(reader.messages(connections=connections), desc=f"reading {what} stamps",
                             unit="msg", disable=not progress, leave=False):
        out.append(_stamp(reader.deserialize(raw, conn.msgtype)))
    return out


def _save(path: str, points: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, points.astype(np.float32))
    os.replace(tmp, path)  # a kill leaves no half-written scan under its final name


def export_bag(bag: str, out: str, lidar_from_radar: np.ndarray, radar_topic: Optional[str] = None,
               lidar_topic: str = LIDAR_TOPIC, max_dt: float = DEFAULT_MAX_DT, progress: bool = True) -> Dict[str, int]:
    """Write bag's paired scans into out/radar and out/lidar; returns {'pairs', 'dropped'}. Two passes: the header
    stamps first (to pair), then the paired messages (nothing but one scan is held in memory)."""
    from tqdm import tqdm
    any_reader, _, _, _ = rosbags_api()
    store = typestore()
    with any_reader([Path(bag)], default_typestore=store) as reader:
        radar_conns, lidar_conns = _connections(reader, bag, radar_topic, lidar_topic)
        radar_t = np.array(_stamps(reader, radar_conns, progress, "radar"), dtype=np.int64)
        lidar_t = np.array(_stamps(reader, lidar_conns, progress, "LiDAR"), dtype=np.int64)
        if len(lidar_t) == 0 or len(radar_t) == 0:
            raise ValueError(f"{bag}: {len(radar_t)} radar and {len(lidar_t)} LiDAR message(s); both are needed")
        order = np.argsort(lidar_t, kind="stable")
        nearest, gap = pair_by_time(radar_t / 1e9, lidar_t[order] / 1e9)
        close = gap <= max_dt
        if (~close).any():
            warnings.warn(f"{bag}: {int((~close).sum())} radar scan(s) have no LiDAR scan within --max_dt {max_dt} s "
                          f"and are dropped; the largest gap was {gap[~close].max():.3f} s", stacklevel=2)
        pairs = {int(radar_t[i]): int(lidar_t[order[j]]) for i, j in enumerate(nearest) if close[i]}
        for sub in ("radar", "lidar"):
            os.makedirs(os.path.join(out, sub), exist_ok=True)
        needed_lidar = {}
        for r, l_ in pairs.items():
            needed_lidar.setdefault(l_, []).append(r)
        written = 0
        for conn, _, raw in tqdm(reader.messages(connections=radar_conns + lidar_conns), desc="writing scans",
                                 unit="msg", disable=not progress, leave=False):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = _stamp(msg)
            if conn.topic == lidar_topic:
                for r in needed_lidar.get(stamp, ()):  # the LiDAR scan, named after each radar scan it pairs with
                    _save(os.path.join(out, "lidar", f"{r:019d}.npy"), lidar_points(msg))
            elif stamp in pairs:
                points = radar_points(msg, f"{bag} ({conn.topic} at {stamp} ns)")
                points[:, :3] = calibration.transform_points(lidar_from_radar, points[:, :3])
                _save(os.path.join(out, "radar", f"{stamp:019d}.npy"), points)
                written += 1
    return {"pairs": written, "dropped": int((~close).sum())}


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser."""
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description=__doc__.split(":", 1)[1].strip())
    p.add_argument("bags", nargs="+", metavar="BAG", help="ROS1 .bag files or ROS2 bag folders")
    p.add_argument("--out", required=True, help="the points folder to write (new or empty)")
    p.add_argument("--calib", default=None, help="radar->LiDAR: a 4x4 matrix, or R: and T: lines")
    p.add_argument("--calibration", default="auto", choices=("auto", "none"),
                   help="none: keep the radar in its own frame (no --calib)")
    p.add_argument("--radar_topic", default=None, help=f"default {' or '.join(RADAR_TOPICS)}")
    p.add_argument("--lidar_topic", default=LIDAR_TOPIC)
    p.add_argument("--max_dt", type=float, default=DEFAULT_MAX_DT, help="pairing limit in seconds")
    p.add_argument("--progress", default="True", choices=("True", "False"))
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: 0 on success, 2 with one line on stderr for bad input."""
    args = build_parser().parse_args(argv)
    try:
        if args.calibration == "auto" and not args.calib:
            raise ValueError("--calib FILE gives the radar->LiDAR transform (or pass --calibration none to keep the "
                             "radar in its own frame)")
        if not 0 < args.max_dt < 10:
            raise ValueError(f"--max_dt must be a time in seconds in (0, 10), got {args.max_dt}")
        if os.path.isdir(args.out) and os.listdir(args.out):
            raise ValueError(f"--out {args.out} exists and is not empty: choose a new folder")
        missing = [b for b in args.bags if not os.path.exists(b)]
        if missing:
            raise ValueError(f"bag {missing[0]!r} does not exist")
        transform = read_calib(args.calib) if args.calibration == "auto" else np.eye(4)
        total = {"pairs": 0, "dropped": 0}
        for bag in args.bags:
            counts = export_bag(bag, args.out, transform, args.radar_topic, args.lidar_topic, args.max_dt,
                                args.progress == "True")
            total = {k: total[k] + counts[k] for k in total}
    except (ValueError, TypeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {total['pairs']} radar/LiDAR pair(s) to {args.out} ({total['dropped']} radar scan(s) dropped); train "
          f"on it with: python -m sparse_radar.train --data {args.out} --data_format points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
