"""Readers (and writers for PLY/PCD) of radar and LiDAR files: the reference's voxel .npz/.npy,
View-of-Delft and ColoRadar .bin, .npy/.npz point arrays, PLY and PCD (ASCII and binary)."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..kernels.coords import INT32_LIMIT
from . import lzf


class DataFormatError(ValueError):
    """A file that cannot be read as the expected format; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path, self.problem = os.fspath(path), problem


def _load_npz(path):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any numpy failure is a format problem of this file
        raise DataFormatError(path, f"not a readable .npz/.npy file ({exc})") from None


def _numeric(path, array: np.ndarray, name: str) -> np.ndarray:
    """array, refused unless it holds finite numbers (no strings, objects or NaN)."""
    if array.dtype.kind not in "biuf":
        raise DataFormatError(path, f"{name} must be numeric, got dtype {array.dtype}")
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        bad = ~np.isfinite(array).reshape(len(array), -1).all(1) if array.ndim else ~np.isfinite(array)
        raise DataFormatError(path, f"{name} hold NaN or inf ({int(bad.sum())} row(s))")
    return array


def _whole(path, array: np.ndarray, name: str) -> np.ndarray:
    """Integer values of array as int64 (float arrays must hold whole numbers)."""
    array = _numeric(path, array, name)
    if array.dtype.kind == "f":
        if array.size and (np.abs(array).max() >= 2**62 or not np.array_equal(array, np.floor(array))):
            raise DataFormatError(path, f"{name} must be whole numbers, got fractional or huge values")
    elif array.dtype.kind == "u" and array.size and array.max() >= 2**63:
        raise DataFormatError(path, f"{name} hold values beyond int64")
    return array.astype(np.int64)


def _grid_shape(path, shape_array) -> Tuple[int, int, int, int]:
    shape_array = np.asarray(shape_array)
    if shape_array.ndim != 1 or shape_array.size != 4:
        raise DataFormatError(path, f"shape must be four ints (H, W, Z, C), got {shape_array.tolist()!r}")
    shape = tuple(int(v) for v in _whole(path, shape_array, "shape"))
    if min(shape) < 1 or max(shape[:3]) > INT32_LIMIT:  # voxel coords are int32
        raise DataFormatError(path, f"shape {shape} must be positive, each grid size at most 2^31")
    return shape  # type: ignore[return-value]


def read_voxel_npz(path) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int, int]]:
    """Reference voxel file (coords [N, 3] x, y, z; features [N, C]; shape (H, W, Z, C)).

    Returns (coords [N, 3] as (z, x, y) int32, features [N, C] float32, grid (Z, X, Y)); non-numeric, NaN,
    fractional, out-of-grid or duplicate coords and non-numeric or NaN features raise DataFormatError."""
    data = _load_npz(path)
    if isinstance(data, np.ndarray):
        raise DataFormatError(path, "a single array; expected an .npz with coords, features, shape")
    missing = [k for k in ("coords", "features", "shape") if k not in data]
    if missing:
        raise DataFormatError(path, f"missing array(s) {', '.join(missing)}; expected coords, features, shape")
    coords, feats = data["coords"], data["features"]
    shape = _grid_shape(path, data["shape"])
    if coords.ndim != 2 or coords.shape[1] != 3 or feats.ndim != 2 or len(feats) != len(coords):
        raise DataFormatError(path, f"coords must be [N, 3] and features [N, C] with the same N, got "
                                    f"{coords.shape} and {feats.shape}")
    coords = _whole(path, coords, "coords")
    feats = _numeric(path, feats, "features")
    if len(coords) and (coords.min() < 0 or np.any(coords.max(0) >= np.array(shape[:3]))):
        raise DataFormatError(path, f"coords fall outside the grid {shape[:3]}")
    if len(coords):
        keys = (coords[:, 0] * shape[1] + coords[:, 1]) * shape[2] + coords[:, 2]
        uniq, counts = np.unique(keys, return_counts=True)
        if (counts > 1).any():
            raise DataFormatError(path, f"{int((counts > 1).sum())} duplicate coordinate(s), e.g. "
                                        f"{coords[keys == uniq[counts > 1][0]][0].tolist()}; one row per voxel")
    return coords[:, [2, 0, 1]].astype(np.int32), feats.astype(np.float32), (shape[2], shape[0], shape[1])


def read_voxel_npy(path) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int, int]]:
    """Dense reference grid (H, W, Z, C): its voxels with a nonzero channel, in read_voxel_npz's layout."""
    grid = _load_npz(path)
    if not isinstance(grid, np.ndarray) or grid.ndim != 4:
        raise DataFormatError(path, f"expected a dense (H, W, Z, C) array, got {getattr(grid, 'shape', type(grid))}")
    grid = _numeric(path, grid, "voxel values")
    xyz = np.argwhere(np.any(grid != 0, axis=3))
    feats = grid[xyz[:, 0], xyz[:, 1], xyz[:, 2]]
    return xyz[:, [2, 0, 1]].astype(np.int32), feats.astype(np.float32), (grid.shape[2], grid.shape[0], grid.shape[1])


def read_name_list(path) -> List[str]:
    """The non-empty lines of a list file (split files: frame ids or run names, one per line), stripped."""
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def read_bin(path, columns: int) -> np.ndarray:
    """float32 point file of `columns` values per point: VoD radar 7, VoD LiDAR 4, ColoRadar 5."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext != ".bin":  # raw floats have no header: any other file would be read as garbage points
        raise DataFormatError(path, f"a {ext or 'suffix-less'} file where a raw float32 .bin point file is expected "
                                    f"(--data_format vod, coloradar and dual_radar read .bin radar files; for .npy, .npz, .ply "
                                    f"and .pcd use --data_format points)")
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
    return _point_array(path)[0]


def _point_array(path) -> Tuple[np.ndarray, Optional[List[str]]]:
    """(points [N, F] float32, field names of a structured array or None)."""
    data = _load_npz(path)
    if not isinstance(data, np.ndarray):
        keys = list(data.keys())
        if "points" in keys:
            data = data["points"]
        elif len(keys) == 1:
            data = data[keys[0]]
        else:
            raise DataFormatError(path, f"holds arrays {keys}; expected one named 'points'")
    names = None
    if data.dtype.names:  # a structured array: one named field per column
        names = list(data.dtype.names)
        data = np.stack([_numeric(path, data[n], f"field {n!r}").astype(np.float64) for n in names], axis=-1) \
            if len(data) else np.zeros((0, len(names)))
    if data.ndim != 2 or data.shape[1] < 3:
        raise DataFormatError(path, f"expected points [N, F>=3], got shape {data.shape}")
    return _numeric(path, data, "points").astype(np.float32), names


def _count(path, text: str, what: str, limit: int) -> int:
    """A header's element count: a whole number in [0, limit] (limit from the file's size, so a huge count
    is refused before anything is allocated)."""
    try:
        n = int(text)
    except (TypeError, ValueError):
        raise DataFormatError(path, f"{what} count {text!r} is not a whole number") from None
    if n < 0:
        raise DataFormatError(path, f"{what} count {n} is negative")
    if n > limit:
        raise DataFormatError(path, f"{what} count {n} exceeds what the file's {os.path.getsize(path)} bytes can hold")
    return n


def _text_rows(fh, path, n: int, width: int, exact: bool) -> np.ndarray:
    """n text lines of `width` numbers each -> float64 [n, width]."""
    rows = []
    for i in range(n):
        words = fh.readline().decode("ascii", errors="replace").split()
        if len(words) < width or (exact and len(words) != width):
            raise DataFormatError(path, f"data line {i + 1} of {n} holds {len(words)} values, {width} expected")
        try:
            rows.append([float(w) for w in words[:width]])
        except ValueError:
            raise DataFormatError(path, f"data line {i + 1} holds a non-numeric value: {' '.join(words[:width])!r}") \
                from None
    return np.array(rows, dtype=np.float64).reshape(n, width)


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


def _ply_elements(path, header: List[str], body_bytes: int):
    """(format, [(element name, count, [(property name, type or ('list', count type, item type))])])."""
    fmt, elements = None, []
    for line in header:
        words = line.split()
        if words[:1] == ["format"]:
            fmt = words[1] if len(words) > 1 else None
        elif words[:1] == ["element"]:
            name = words[1] if len(words) > 1 else ""
            elements.append((name, _count(path, words[2] if len(words) > 2 else None, name or "element", body_bytes),
                             []))
        elif words[:1] == ["property"] and elements:
            kinds = words[2:-1] if words[1:2] == ["list"] else words[1:2]
            bad = [k for k in kinds if k not in _PLY_TYPES]
            if bad or len(words) < (5 if words[1:2] == ["list"] else 3):
                raise DataFormatError(path, f"malformed property line {line!r}" + (f" (unknown type {bad[0]!r})"
                                                                                     if bad else ""))
            kind = ("list", _PLY_TYPES[kinds[0]], _PLY_TYPES[kinds[1]]) if words[1] == "list" else _PLY_TYPES[kinds[0]]
            elements[-1][2].append((words[-1], kind))
    return fmt, elements


def _skip_ply_element(fh, path, fmt: str, name: str, count: int, props) -> None:
    """Read past `count` items of an element declared before the vertices."""
    if fmt == "ascii":
        for i in range(count):
            if not fh.readline():
                raise DataFormatError(path, f"file ends inside element {name!r} (item {i + 1} of {count})")
        return
    order = "<" if fmt == "binary_little_endian" else ">"
    if all(not isinstance(kind, tuple) for _, kind in props):
        size = np.dtype([(p, order + k) for p, k in props]).itemsize * count
        if len(fh.read(size)) < size:
            raise DataFormatError(path, f"file ends inside element {name!r}")
        return
    for i in range(count):  # variable-size items (faces): one item at a time
        for _, kind in props:
            if isinstance(kind, tuple):
                head = np.dtype(order + kind[1])
                raw = fh.read(head.itemsize)
                n = int(np.frombuffer(raw, head)[0]) if len(raw) == head.itemsize else -1
                size = n * np.dtype(kind[2]).itemsize
            else:
                size = np.dtype(kind).itemsize
            if size < 0 or len(fh.read(size)) < size:
                raise DataFormatError(path, f"file ends inside element {name!r} (item {i + 1} of {count})")


def read_ply(path) -> Tuple[np.ndarray, List[str]]:
    """PLY vertices (ascii, binary_little_endian, binary_big_endian) -> (points [N, F] float32, property names);
    elements declared before the vertices (faces, say) are read past in their declared order."""
    with open(path, "rb") as fh:
        header = _read_header(fh, path, b"end_header", b"ply")
        fmt, elements = _ply_elements(path, header, os.path.getsize(path) - fh.tell())
        if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise DataFormatError(path, f"unknown PLY format {fmt!r}")
        at = next((i for i, e in enumerate(elements) if e[0] == "vertex"), None)
        if at is None:
            raise DataFormatError(path, "no 'element vertex N' line in the header")
        _, count, props = elements[at]
        if not props:
            raise DataFormatError(path, "no vertex properties")
        if any(isinstance(kind, tuple) for _, kind in props):
            raise DataFormatError(path, "list properties on vertices are not supported")
        for name, n, element_props in elements[:at]:
            _skip_ply_element(fh, path, fmt, name, n, element_props)
        names, types = [p for p, _ in props], [k for _, k in props]
        if fmt == "ascii":
            return _text_rows(fh, path, count, len(names), exact=False).astype(np.float32), names
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
    """PCD v0.7 (ascii, binary or binary_compressed: LZF, PCL's and Open3D's compressed files) -> (points [N, F]
    float32, field names); nuScenes radar files included."""
    with open(path, "rb") as fh:
        header = _read_header(fh, path, b"DATA")
        meta = {line.split()[0].upper(): line.split()[1:] for line in header
                if line and not line.startswith("#")}
        try:
            names, sizes, kinds = meta["FIELDS"], [int(s) for s in meta["SIZE"]], meta["TYPE"]
            counts = [int(c) for c in meta.get("COUNT", ["1"] * len(names))]
            mode = meta["DATA"][0]
            n_text = meta["POINTS"][0] if "POINTS" in meta else str(int(meta["WIDTH"][0]) * int(meta["HEIGHT"][0]))
        except (KeyError, IndexError, ValueError) as exc:
            raise DataFormatError(path, f"incomplete PCD header ({exc})") from None
        if min(sizes + counts, default=0) < 1:
            raise DataFormatError(path, f"PCD SIZE and COUNT must be positive, got {sizes} and {counts}")
        if mode not in ("ascii", "binary", "binary_compressed"):
            raise DataFormatError(path, f"PCD DATA {mode!r} is not supported (ascii, binary or binary_compressed)")
        if not len(names) == len(sizes) == len(kinds) == len(counts):
            raise DataFormatError(path, "FIELDS, SIZE, TYPE and COUNT disagree in length")
        if mode == "binary_compressed":
            return _read_compressed_body(fh, path, n_text, names, sizes, kinds, counts)
        n = _count(path, n_text, "POINTS", os.path.getsize(path) - fh.tell())
        cols = [f"{name}_{i}" if c > 1 else name for name, c in zip(names, counts) for i in range(c)]
        if mode == "ascii":
            return _text_rows(fh, path, n, len(cols), exact=True).astype(np.float32), cols
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


def _pcd_dtypes(path, names, sizes, kinds, counts) -> List[Tuple[str, str, int]]:
    try:
        return [(name, "<" + _PCD_TYPES[(kind, size)], c) for name, size, kind, c in zip(names, sizes, kinds, counts)]
    except KeyError as exc:
        raise DataFormatError(path, f"unknown PCD field type {exc}") from None


def _read_compressed_body(fh, path, n_text, names, sizes, kinds, counts) -> Tuple[np.ndarray, List[str]]:
    """A binary_compressed body: compressed and raw sizes (uint32), then LZF of the fields one after another, each
    field's values of every point together (column-major)."""
    fields = _pcd_dtypes(path, names, sizes, kinds, counts)
    point_bytes = sum(np.dtype(t).itemsize * c for _, t, c in fields)
    head = fh.read(8)
    if len(head) < 8:
        raise DataFormatError(path, "binary_compressed body ends before its two sizes")
    packed, raw_size = np.frombuffer(head, dtype="<u4")
    body = fh.read(int(packed))
    if len(body) < packed:
        raise DataFormatError(path, f"binary_compressed body holds {len(body)} bytes, its size field says {packed}")
    if raw_size > 100 * int(packed) + 1024:  # LZF expands at most ~88x: a bogus size, refused before allocating
        raise DataFormatError(path, f"binary_compressed raw size {raw_size} cannot come from {packed} bytes")
    n = _count(path, n_text, "POINTS", 2 ** 40)  # nothing is allocated from it: it must match the raw size
    if n * point_bytes != raw_size:
        raise DataFormatError(path, f"binary_compressed data is {raw_size} bytes raw, but {n} points of "
                                    f"{point_bytes} bytes are {n * point_bytes}")
    try:
        raw = lzf.decompress(body, int(raw_size))
    except ValueError as exc:
        raise DataFormatError(path, f"binary_compressed data: {exc}") from None
    cols, out, offset = [], [], 0
    for name, t, c in fields:
        width = np.dtype(t).itemsize * c * n
        block = np.frombuffer(raw, dtype=t, count=n * c, offset=offset).reshape(n, c)
        offset += width
        out.append(block.astype(np.float32))
        cols += [f"{name}_{i}" if c > 1 else name for i in range(c)]
    return (np.concatenate(out, axis=1) if out else np.zeros((n, 0), np.float32)), cols


def write_pcd(path, points: np.ndarray, names: Sequence[str], binary: bool = True, compressed: bool = False) -> None:
    """Write points [N, F] as a PCD v0.7 file of float fields (compressed: DATA binary_compressed, LZF)."""
    points = np.asarray(points, dtype=np.float32)
    f = len(names)
    mode = "binary_compressed" if compressed else "binary" if binary else "ascii"
    header = ["# .PCD v0.7", "VERSION 0.7", "FIELDS " + " ".join(names), "SIZE " + " ".join(["4"] * f),
              "TYPE " + " ".join(["F"] * f), "COUNT " + " ".join(["1"] * f), f"WIDTH {len(points)}", "HEIGHT 1",
              "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {len(points)}", f"DATA {mode}"]
    if not compressed:
        _write_points(path, header, points, binary)
        return
    raw = np.ascontiguousarray(points.astype("<f4").T).tobytes()  # field after field
    packed = lzf.compress(raw)
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(np.array([len(packed), len(raw)], dtype="<u4").tobytes())
        fh.write(packed)


POINT_READERS = {
    "vod_radar": lambda p: (read_vod_radar(p), VOD_RADAR_FIELDS), "vod_lidar": lambda p: (read_vod_lidar(p), None),
    "coloradar": lambda p: (read_coloradar(p), None), "npy": _point_array, "npz": _point_array,
    "ply": read_ply, "pcd": read_pcd,
}
VOD_RADAR_FIELDS = ["x", "y", "z", "rcs", "v_r", "v_r_compensated", "time"]


def read_points(path, fmt: Optional[str] = None) -> np.ndarray:
    """Points [N, F] of any supported point format (fmt, or guessed from the extension)."""
    return read_point_fields(path, fmt)[0]


def read_point_fields(path, fmt: Optional[str] = None) -> Tuple[np.ndarray, Optional[List[str]]]:
    """(points [N, F], field names or None where the format has none: .bin, plain .npy/.npz)."""
    if fmt is None:
        ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
        if ext == "bin":
            raise DataFormatError(path, "a .bin file holds raw floats with no field names: pass --data_format vod "
                                        "(View-of-Delft) or coloradar (ColoRadar) for it")
        fmt = ext
    if fmt not in POINT_READERS:
        raise DataFormatError(path, f"unknown point format {fmt!r}; expected one of {', '.join(POINT_READERS)}")
    if not os.path.exists(path):
        raise DataFormatError(path, "no such file")
    return POINT_READERS[fmt](path)
