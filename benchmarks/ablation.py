"""The reference README's optimisation-effect table, measured on our dense path and on our sparse path.

Each row compares a baseline model with the optimised one (memory saving = 1 - optimised / baseline peak,
speed-up = baseline / optimised step time), one fresh process per measurement (benchmarks.step_worker).
`python -m benchmarks.ablation` (grid 8x64x64, batch 1, 3% random occupancy for the sparse path). The latent row's
optimised step is the lightweight VAE encoding the target voxels plus the UNet on the 4x4x4 smaller latent grid.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

from .common import (add_device_argument, check_device, device_name, grouped_bars, machine, markdown_table, pyplot,
                     save_figure, write_report)

BASE = {"use_fp16": False, "use_checkpoint": False, "dropout": 0.0}
# (row, README claim, baseline overrides, optimised overrides, worker flags of baseline, of optimised)
ROWS = [
    ("Flash vs plain softmax attention", "40-60% / 3-5x", {}, {}, ["--sdpa", "math"], []),
    ("Asymmetric xy_only vs full 3D downsampling", "20-30% / 1.5x", {"downsample_stride": "full"},
     {"downsample_stride": "xy_only"}, [], []),
    ("Slim channels (64, 1,2,2,4) vs original (128, 1,2,4,8)", "50-70% / 2-3x",
     {"model_channels": 128, "channel_mult": [1, 2, 4, 8]}, {}, [], []),
    ("fp16/bf16 + checkpointing vs fp32", "40-50% / 0.9x", {}, {"use_fp16": True, "use_checkpoint": True}, [], []),
]
LATENT = ("Latent diffusion vs voxel space", "80-90% / 10x+", {}, {}, [], ["--latent"])  # VAE 4x4x4 + UNet


def measure(grid, batch, occupancy, path, overrides, flags, steps, timeout, device="cpu"):
    """(step ms, peak bytes) of one configuration, or None with the reason."""
    cmd = [sys.executable, "-m", "benchmarks.step_worker", "--preset", "lightweight", "--grid", grid,
           "--batch", str(batch), "--occupancy", str(occupancy), "--path", path, "--steps", str(steps),
           "--overrides", json.dumps({**BASE, **overrides}), "--device", device, *flags]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return None, lines[-1][:160] if lines else died(done.returncode)
    r = json.loads(done.stdout)
    return (r["step_ms"], r["peak_bytes"]), "ok"


def died(returncode: int) -> str:
    """Why a worker that wrote nothing to stderr stopped: a signal (-9 on Linux is usually the OOM killer)."""
    if returncode < 0:
        return f"killed by signal {-returncode}" + (" (out of memory)" if returncode == -9 else "")
    return f"exited with status {returncode}"


def effect(base, opt, why_base: str = "", why_opt: str = "") -> str:
    """'saving% / speed-up x' of an optimised measurement against its baseline, or why there is none."""
    if base is None or opt is None:
        return "; ".join(f"{name}: {why}" for name, m, why in (("baseline", base, why_base),
                                                               ("optimised", opt, why_opt)) if m is None) or "n/a"
    return f"{1 - opt[1] / base[1]:.0%} / {base[0] / opt[0]:.2f}x"


def claimed(claim: str):
    """(memory saving, speed-up) midpoints of a README claim such as '40-60% / 3-5x' or '80-90% / 10x+'."""
    memory, speed = claim.split("/")
    mid = lambda text: sum(map(float, re.findall(r"[0-9.]+", text))) / len(re.findall(r"[0-9.]+", text))
    return mid(memory) / 100, mid(speed)


def plot(raw, path: str) -> None:
    """Memory saving and speed-up of each optimisation, README claim (midpoint) beside ours, if matplotlib is there."""
    plt = pyplot()
    if plt is None:
        return
    names = [name for name, *_ in ROWS + [LATENT] if any(r["row"] == name for r in raw)]
    claims = {name: claim for name, claim, *_ in ROWS + [LATENT]}
    ours = {(r["row"], r["path"]): (r["baseline"], r["optimised"]) for r in raw}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, which, title in ((axes[0], 0, "memory saving (share of baseline peak)"), (axes[1], 1, "speed-up (x)")):
        series = {"README claim": [claimed(claims[name])[which] for name in names]}
        for route in sorted({r["path"] for r in raw}):
            values = []
            for name in names:
                base, opt = ours.get((name, route), (None, None))
                ok = base is not None and opt is not None
                values.append(float("nan") if not ok else 1 - opt[1] / base[1] if which == 0 else base[0] / opt[0])
            series[f"ours, {route} path"] = values
        grouped_bars(ax, [n.split(" vs ")[0].replace(" ", "\n", 1) for n in names], series, title)
        ax.axhline(0 if which == 0 else 1, color="grey", linewidth=0.8)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="8,64,64")
    p.add_argument("--sparse-grid", help="grid of the sparse path's measurements (default: --grid); the sparse "
                                         "path fits larger grids, where activations rather than weights dominate")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--occupancy", type=float, default=0.03)
    p.add_argument("--paths", default="dense,sparse", help="comma-separated: dense, sparse or both")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--name", default="ablation", help="stem of the report files")
    p.add_argument("--rows", default="all", help="'all', or comma-separated row numbers (1-5; 5 = latent)")
    add_device_argument(p)
    p.add_argument("--out", default="bench_out")
    args = p.parse_args(argv)
    paths = [q.strip() for q in args.paths.split(",")]
    if not paths or any(q not in ("dense", "sparse") for q in paths) or len(set(paths)) != len(paths):
        p.error(f"--paths must list dense and/or sparse, got {args.paths!r}")
    check_device(p, args.device)
    grids = {"dense": args.grid, "sparse": args.sparse_grid or args.grid}
    chosen = ROWS + [LATENT]
    if args.rows != "all":
        try:
            chosen = [chosen[int(i) - 1] for i in args.rows.split(",")]
        except (ValueError, IndexError):
            p.error(f"--rows must be 'all' or numbers 1-{len(chosen)}, got {args.rows!r}")
    rows, raw = [], []
    for name, claim, base_o, opt_o, base_f, opt_f in chosen:
        cells = [name, claim]
        for path in paths:
            grid = grids[path]
            base, why_b = measure(grid, args.batch, args.occupancy, path, base_o, base_f, args.steps, args.timeout,
                                  args.device)
            opt, why_o = measure(grid, args.batch, args.occupancy, path, opt_o, opt_f, args.steps, args.timeout,
                                 args.device)
            raw.append({"row": name, "path": path, "grid": grid, "baseline": base, "optimised": opt,
                        "status": [why_b, why_o]})
            print(json.dumps(raw[-1]), flush=True)
            cells.append(effect(base, opt, why_b, why_o))
        rows.append(cells)
    table = markdown_table(["optimisation", "README claim (memory / speed)", *[f"ours, {q} path" for q in paths]],
                           rows)
    where = ", ".join(f"{q} path on {grids[q]}" for q in paths)
    header = (f"lightweight preset as base, {where}, batch {args.batch}, sparse path at {args.occupancy:.0%} random "
              f"occupancy, {device_name(args.device)}; 'saving / speed-up' of the optimised model")
    print(header + "\n\n" + table)
    write_report(args.out, args.name, {"machine": machine(), "rows": raw}, header + "\n\n" + table)
    plot(raw, f"{args.out}/{args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
