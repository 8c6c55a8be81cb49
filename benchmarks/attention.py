"""Each attention type, dense path vs sparse path: forward+backward time and peak memory against the
number of active voxels. One fresh process per measurement. `python -m benchmarks.attention`.

The dense path attends over every cell of the grid (plain dense model, no mask), the sparse path over the
active voxels only; grid 8x64x64, 64 channels, 4 heads, window 4x4x4, top-k 32, patches of 64."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from .common import machine, markdown_table, pyplot, save_figure, write_report
from .step_worker import MMAP_THRESHOLD

TYPES = ("flash", "window", "linear", "sparse", "height", "serialized")


def one(attention_type: str, grid, occupancy: float, path: str, repeats: int, mmap_threshold: int) -> dict:
    """Measure in this process (called in a child): median fwd+bwd ms and peak RSS above baseline."""
    from sparse_radar import DenseVoxels
    from sparse_radar.nn import AttentionBlock

    from .step_worker import current_rss, fix_mmap_threshold, peak_rss, reset_peak_rss

    fixed = mmap_threshold > 0 and fix_mmap_threshold(mmap_threshold)

    torch.manual_seed(0)
    block = AttentionBlock(64, attention_type, 4, "group", 32, (4, 4, 4), topk=32, patch_size=64)
    for p in block.proj.parameters():
        torch.nn.init.normal_(p, std=0.02)
    mask = torch.rand(1, 1, *grid) < occupancy
    data = torch.randn(1, 64, *grid) * mask
    field = DenseVoxels(data, mask).to_sparse() if path == "sparse" else DenseVoxels(data)
    active = int(mask.sum())
    del mask, data
    values = (lambda o: o.feats) if path == "sparse" else (lambda o: o.data)
    reset_peak_rss()
    base = current_rss()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        values(block(field)).square().mean().backward()
        block.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return {"type": attention_type, "path": path, "occupancy": occupancy, "active": active,
            "tokens": active if path == "sparse" else grid[0] * grid[1] * grid[2],
            "ms": statistics.median(times) * 1e3, "peak_bytes": peak_rss() - base,
            "mmap_threshold": mmap_threshold if fixed else 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="8,64,64")
    p.add_argument("--occupancy", default="0.01,0.03,0.1,0.3")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--mmap-threshold", type=int, default=MMAP_THRESHOLD,
                   help="fixed glibc mmap threshold in bytes, as benchmarks.step_worker; 0: glibc's dynamic one")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--one", nargs=3, metavar=("TYPE", "OCCUPANCY", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    grid = tuple(int(v) for v in args.grid.split(","))
    if args.one:
        print(json.dumps(one(args.one[0], grid, float(args.one[1]), args.one[2], args.repeats, args.mmap_threshold)))
        return 0
    results = []
    for kind in TYPES:
        dense = None
        for occ in [float(o) for o in args.occupancy.split(",")]:
            for path in (("dense", "sparse") if dense is None else ("sparse",)):  # dense cost: same for any occupancy
                cmd = [sys.executable, "-m", "benchmarks.attention", "--grid", args.grid, "--repeats",
                       str(args.repeats), "--mmap-threshold", str(args.mmap_threshold), "--one", kind, str(occ), path]
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                    row = json.loads(done.stdout) if done.returncode == 0 else \
                        {"type": kind, "path": path, "occupancy": occ, "status": done.stderr[-200:]}
                except subprocess.TimeoutExpired:
                    row = {"type": kind, "path": path, "occupancy": occ, "status": f"timed out ({args.timeout} s)"}
                print(json.dumps(row), flush=True)
                results.append(row)
                if path == "dense":
                    dense = row
    rows = []
    for r in results:
        if r["path"] != "sparse":
            continue
        d = next(x for x in results if x["type"] == r["type"] and x["path"] == "dense")
        ok = "ms" in r and "ms" in d
        rows.append([r["type"], r.get("active", "-"), f"{d['ms']:.0f}" if "ms" in d else d.get("status"),
                     f"{r['ms']:.1f}" if "ms" in r else r.get("status"), f"{d['ms'] / r['ms']:.0f}x" if ok else "-",
                     f"{d['peak_bytes'] / 1e6:.0f}" if ok else "-", f"{r['peak_bytes'] / 1e6:.1f}" if ok else "-"])
    table = markdown_table(["attention", "active voxels", "dense ms (all cells)", "sparse ms", "speed-up",
                            "dense MB", "sparse MB"], rows)
    header = (f"AttentionBlock(64 ch, 4 heads) forward+backward, grid {args.grid}, batch 1, CPU, medians; "
              f"mmap threshold {args.mmap_threshold or 'dynamic'}")
    print(header + "\n\n" + table)
    write_report(args.out, "attention", {"machine": machine(), "results": results}, header + "\n\n" + table)
    _plot(results, f"{args.out}/attention.png")
    return 0


def _plot(results, path):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in TYPES:
        pts = sorted((r["active"], r["ms"], r["peak_bytes"]) for r in results
                     if r["type"] == kind and r["path"] == "sparse" and "ms" in r)
        if pts:
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kind)
            axes[1].plot([p[0] for p in pts], [max(p[2], 1) / 1e6 for p in pts], marker="o", label=kind)
    for ax, title in zip(axes, ("sparse fwd+bwd time (ms)", "sparse peak memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("active voxels")
        ax.set_title(title)
        ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
