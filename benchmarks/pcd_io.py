"""`python -m benchmarks.pcd_io`: reading and writing a 1 M-point PCD (x, y, z, intensity, doppler, float32) with this
project's reader (the lzf C codec; the pure-Python decoder) beside pypcd4 and Open3D where they are installed (the
`compare` extra: pip install 'sparse-radar[compare]'); binary
and binary_compressed. Medians of --repeats runs, one process, this machine. Writes pcd_io.md (default
benchmarks/results)."""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from sparse_radar.data import formats, lzf


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    """Run the benchmark and print and write the table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.pcd_io")
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    pts = np.column_stack([np.round(rng.normal(0, 20, (args.points, 3)), 2), rng.integers(0, 256, (args.points, 1)),
                           np.round(rng.normal(0, 5, (args.points, 1)), 1)]).astype(np.float32)
    names = ["x", "y", "z", "intensity", "doppler"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {m: os.path.join(tmp, f"{m}.pcd") for m in ("binary", "binary_compressed")}
        for mode, path in paths.items():
            t = _median(lambda: formats.write_pcd(path, pts, names, compressed=mode == "binary_compressed"),
                        args.repeats)
            rows.append((f"write {mode}", "sparse_radar" + (" (lzf C codec)" if lzf.have_c_codec() and "comp" in mode
                                                             else ""), t, os.path.getsize(path)))
            t = _median(lambda: formats.read_pcd(path), args.repeats)
            rows.append((f"read {mode}", "sparse_radar" + (" (lzf C codec)" if lzf.have_c_codec() and "comp" in mode
                                                            else ""), t, os.path.getsize(path)))
            assert np.array_equal(formats.read_pcd(path)[0], pts)
        c_codec = lzf._lzf
        lzf._lzf = None
        try:
            t = _median(lambda: formats.read_pcd(paths["binary_compressed"]), 1)
            rows.append(("read binary_compressed", "sparse_radar (pure-Python LZF)", t,
                         os.path.getsize(paths["binary_compressed"])))
        finally:
            lzf._lzf = c_codec
        try:
            from pypcd4 import PointCloud
            for mode, path in paths.items():
                t = _median(lambda: PointCloud.from_path(path).numpy(), args.repeats)
                rows.append((f"read {mode}", "pypcd4", t, os.path.getsize(path)))
        except ImportError:
            rows.append(("read", "pypcd4 (not installed)", float("nan"), 0))
        try:
            import open3d as o3d
            for mode, path in paths.items():
                t = _median(lambda: o3d.t.io.read_point_cloud(path), args.repeats)
                rows.append((f"read {mode}", "open3d", t, os.path.getsize(path)))
        except ImportError:
            rows.append(("read", "open3d (not installed)", float("nan"), 0))
    text = (f"# PCD I/O, {args.points:,} points x 5 float32 fields, medians of {args.repeats}\n\n"
            "| operation | library | seconds | file MB |\n|---|---|---|---|\n" +
            "".join(f"| {op} | {lib} | {t:.3f} | {size / 2**20:.1f} |\n" for op, lib, t, size in rows))
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pcd_io.md"), "w", encoding="utf-8") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
