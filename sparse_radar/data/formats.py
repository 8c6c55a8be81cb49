"""Readers (and writers for PLY/PCD) of radar and LiDAR files: the reference's voxel .npz/.npy,
View-of-Delft and ColoRadar .bin, .npy/.npz point arrays, PLY and PCD (ASCII and binary)."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np


class DataFormatError(ValueError):
    """A file that cannot be read as the expected format; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(f"{os.fspath(path)}: {problem}")


def _load_npz(path):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any numpy failure is a format problem of this file
        raise DataFormatError(path, f"not a readable .npz/.npy file ({exc})") from None


def read_voxel_npz(path) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int, int]]:
    """Reference voxel file (coords [N, 3] x, y, z; features [N, C]; shape (H, W, Z, C)).

    Returns (coords [N, 3] as (z, x, y) int32, features [N, C] float32, grid (Z, X, Y))."""
    data = _load_npz(path)
    missing = [k for k in ("coords", "features", "shape") if k not in data]
    if missing:
        raise DataFormatError(path, f"missing array(s) {', '.join(missing)}; expected coords, features, shape")
    coords, feats, shape = data["coords"], data["features"], tuple(int(s) for s in data["shape"])
    if coords.ndim != 2 or coords.shape[1] != 3 or feats.ndim != 2 or len(feats) != len(coords):
        raise DataFormatError(path, f"coords must be [N, 3] and features [N, C] with the same N, got "
                                    f"{coords.shape} and {feats.shape}")
    if len(shape) != 4:
        raise DataFormatError(path, f"shape must be (H, W, Z, C), got {shape}")
    if len(coords) and (coords.min() < 0 or np.any(coords.max(0) >= np.array(shape[:3]))):
        raise DataFormatError(path, f"coords fall outside the grid {shape[:3]}")
    return coords[:, [2, 0, 1]].astype(np.int32), feats.astype(np.float32), (shape[2], shape[0], shape[1])


def read_voxel_npy(path) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int, int]]:
    """Dense reference grid (H, W, Z, C): its voxels with a nonzero channel, in read_voxel_npz's layout."""
    grid = _load_npz(path)
    if not isinstance(grid, np.ndarray) or grid.ndim != 4:
        raise DataFormatError(path, f"expected a dense (H, W, Z, C) array, got {getattr(grid, 'shape', type(grid))}")
    xyz = np.argwhere(np.any(grid != 0, axis=3))
    feats = grid[xyz[:, 0], xyz[:, 1], xyz[:, 2]]
    return xyz[:, [2, 0, 1]].astype(np.int32), feats.astype(np.float32), (grid.shape[2], grid.shape[0], grid.shape[1])


def read_bin(path, columns: int) -> np.ndarray:
    """float32 point file of `columns` values per point: VoD radar 7, VoD LiDAR 4, ColoRadar 5."""
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % columns:
        raise DataFormatError(path, f"{raw.size} float32 values are not a whole number of {columns}-value points")
    return raw.reshape(-1, columns)


def read_vod_radar(path) -> np.ndarray:
    """View-of-Delft radar [N, 7]: x, y, z, rcs, v_r, v_r_compensated, time."""
    return read_bin(path, 7)


def read_vod_lidar(path) -> np.ndarray:
    """View-of-Delft LiDAR [N, 4]: x, y, z, reflectance."""
    return read_bin(path, 4)


def read_coloradar(path) -> np.ndarray:
    """ColoRadar single-chip radar [N, 5]: x, y, z, intensity, radial velocity."""
    return read_bin(path, 5)


def read_point_array(path) -> np.ndarray:
    """.npy point array [N, F>=3], or the 'points' (else the only) array of a .npz."""
    data = _load_npz(path)
    if not isinstance(data, np.ndarray):
        keys = list(data.keys())
        if "points" in keys:
            data = data["points"]
        elif len(keys) == 1:
            data = data[keys[0]]
        else:
            raise DataFormatError(path, f"holds arrays {keys}; expected one named 'points'")
    if data.ndim != 2 or data.shape[1] < 3:
        raise DataFormatError(path, f"expected points [N, F>=3], got shape {data.shape}")
    return data.astype(np.float32)


_PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4",
              "float": "f4", "double": "f8", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2",
              "int32": "i4", "uint32": "u4", "float32": "f4", "float64": "f8"}


def _read_header(fh, path, end: bytes, first: Optional[bytes] = None) -> List[str]:
    lines = []
    for _ in range(1000):
        line = fh.readline()
        if not line:
            raise DataFormatError(path, f"header ends before {end.decode()!r}")
        lines.append(line.decode("ascii", errors="replace").strip())
        if first is not None and len(lines) == 1 and not line.startswith(first):
            raise DataFormatError(path, f"does not start with {first.decode()!r}")
        if line.strip().startswith(end):
            return lines
    raise DataFormatError(path, "header too long")


def read_ply(path) -> Tuple[np.ndarray, List[str]]:
    """PLY vertices (ascii, binary_little_endian, binary_big_endian) -> (points [N, F] float32, property names)."""
    with open(path, "rb") as fh:
        header = _read_header(fh, path, b"end_header", b"ply")
        fmt, count, names, types, in_vertex = None, 0, [], [], False
        for line in header:
            words = line.split()
            if words[:1] == ["format"]:
                fmt = words[1]
            elif words[:2] == ["element", "vertex"]:
                count, in_vertex = int(words[2]), True
            elif words[:1] == ["element"]:
                in_vertex = False
            elif words[:1] == ["property"] and in_vertex:
                if words[1] == "list":
                    raise DataFormatError(path, "list properties on vertices are not supported")
                if words[1] not in _PLY_TYPES:
                    raise DataFormatError(path, f"unknown property type {words[1]!r}")
                types.append(_PLY_TYPES[words[1]])
                names.append(words[2])
        if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise DataFormatError(path, f"unknown PLY format {fmt!r}")
        if not names:
            raise DataFormatError(path, "no vertex properties")
        if fmt == "ascii":
            rows = [fh.readline().split() for _ in range(count)]
            if any(len(r) < len(names) for r in rows):
                raise DataFormatError(path, f"expected {count} vertex lines of {len(names)} values")
            return np.array([r[:len(names)] for r in rows], dtype=np.float64).astype(np.float32), names
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, order + t) for n, t in zip(names, types)])
        body = fh.read(dtype.itemsize * count)
        if len(body) < dtype.itemsize * count:
            raise DataFormatError(path, f"binary body holds {len(body)} bytes, {dtype.itemsize * count} expected")
        rec = np.frombuffer(body, dtype=dtype, count=count)
        return np.stack([rec[n].astype(np.float32) for n in names], axis=1), names


def write_ply(path, points: np.ndarray, names: Sequence[str], binary: bool = True) -> None:
    """Write points [N, F] as PLY float vertices named `names`."""
    points = np.asarray(points, dtype=np.float32)
    fmt = "binary_little_endian" if binary else "ascii"
    header = ["ply", f"format {fmt} 1.0", f"element vertex {len(points)}"]
    header += [f"property float {n}" for n in names] + ["end_header"]
    _write_points(path, header, points, binary)


def _write_points(path, header: Sequence[str], points: np.ndarray, binary: bool) -> None:
    """An ASCII header, then float32 little-endian rows or text rows."""
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            fh.write(points.astype("<f4").tobytes())
        else:
            np.savetxt(fh, points, fmt="%.7g")


_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def read_pcd(path) -> Tuple[np.ndarray, List[str]]:
    """PCD v0.7 (ascii or binary) -> (points [N, F] float32, field names); nuScenes radar files included."""
    with open(path, "rb") as fh:
        header = _read_header(fh, path, b"DATA")
        meta = {line.split()[0].upper(): line.split()[1:] for line in header
                if line and not line.startswith("#")}
        try:
            names, sizes, kinds = meta["FIELDS"], [int(s) for s in meta["SIZE"]], meta["TYPE"]
            counts = [int(c) for c in meta.get("COUNT", ["1"] * len(names))]
            n = int(meta["POINTS"][0]) if "POINTS" in meta else int(meta["WIDTH"][0]) * int(meta["HEIGHT"][0])
            mode = meta["DATA"][0]
        except (KeyError, IndexError, ValueError) as exc:
            raise DataFormatError(path, f"incomplete PCD header ({exc})") from None
        if not len(names) == len(sizes) == len(kinds) == len(counts):
            raise DataFormatError(path, "FIELDS, SIZE, TYPE and COUNT disagree in length")
        cols = [f"{name}_{i}" if c > 1 else name for name, c in zip(names, counts) for i in range(c)]
        if mode == "ascii":
            rows = [fh.readline().split() for _ in range(n)]
            if any(len(r) != len(cols) for r in rows):
                raise DataFormatError(path, f"expected {n} lines of {len(cols)} values")
            return np.array(rows, dtype=np.float64).astype(np.float32), cols
        if mode != "binary":
            raise DataFormatError(path, f"PCD DATA {mode!r} is not supported (ascii or binary)")
        try:
            fields = [(f"{name}_{i}", "<" + _PCD_TYPES[(kind, size)]) for name, size, kind, c in
                      zip(names, sizes, kinds, counts) for i in range(c)]
        except KeyError as exc:
            raise DataFormatError(path, f"unknown PCD field type {exc}") from None
        dtype = np.dtype(fields)
        body = fh.read(dtype.itemsize * n)
        if len(body) < dtype.itemsize * n:
            raise DataFormatError(path, f"binary body holds {len(body)} bytes, {dtype.itemsize * n} expected")
        rec = np.frombuffer(body, dtype=dtype, count=n)
        return np.stack([rec[f].astype(np.float32) for f, _ in fields], axis=1), cols


def write_pcd(path, points: np.ndarray, names: Sequence[str], binary: bool = True) -> None:
    """Write points [N, F] as a PCD v0.7 file of float fields."""
    points = np.asarray(points, dtype=np.float32)
    f = len(names)
    header = ["# .PCD v0.7", "VERSION 0.7", "FIELDS " + " ".join(names), "SIZE " + " ".join(["4"] * f),
              "TYPE " + " ".join(["F"] * f), "COUNT " + " ".join(["1"] * f), f"WIDTH {len(points)}", "HEIGHT 1",
              "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {len(points)}", f"DATA {'binary' if binary else 'ascii'}"]
    _write_points(path, header, points, binary)


POINT_READERS = {
    "vod_radar": read_vod_radar, "vod_lidar": read_vod_lidar, "coloradar": read_coloradar,
    "npy": read_point_array, "npz": read_point_array,
    "ply": lambda p: read_ply(p)[0], "pcd": lambda p: read_pcd(p)[0],
}


def read_points(path, fmt: Optional[str] = None) -> np.ndarray:
    """Points [N, F] of any supported point format (fmt, or guessed from the extension)."""
    if fmt is None:
        ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
        if ext == "bin":
            raise DataFormatError(path, "a .bin file needs a format: vod_radar, vod_lidar or coloradar")
        fmt = ext
    if fmt not in POINT_READERS:
        raise DataFormatError(path, f"unknown point format {fmt!r}; expected one of {', '.join(POINT_READERS)}")
    if not os.path.exists(path):
        raise DataFormatError(path, "no such file")
    return POINT_READERS[fmt](path)
