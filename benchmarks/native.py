"""One training step of the lightweight preset at the reference dataset's native grid, 80 x 200 x 600
(0.2 m voxels over [0, -20, -6, 120, 20, 10]; the reference had to downsample to 32x128x128), on synthetic
scans voxelized at that resolution: measured on the sparse path, estimated for the dense path.
`python -m benchmarks.native`."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from sparse_radar.data import NTU4DRADLM_GRID
from sparse_radar.estimate import estimate
from sparse_radar.models import create_lightweight_unet_config

from .common import grouped_bars, machine, markdown_table, pyplot, save_figure, write_report


def plot(measured_bytes: float, sparse_estimate: float, dense_estimate: float, title: str, path: str) -> None:
    """Bar chart of the sparse step's measured and estimated peak beside the dense estimate and a 24 GB card."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    grouped_bars(ax, ["sparse\n(measured)", "sparse\n(estimated, random voxels)", "dense\n(estimated)"],
                 {"peak GB": [measured_bytes / 1e9, sparse_estimate / 1e9, dense_estimate / 1e9]}, title, fontsize=8)
    ax.axhline(24, color="red", linewidth=1, linestyle="--", label="24 GB")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--precision", choices=("preset", "fp32"), default="preset")
    p.add_argument("--out", default="bench_out")
    args = p.parse_args(argv)
    grid = NTU4DRADLM_GRID.shape  # (D, H, W) = (Z, X, Y) = (80, 600, 200)
    overrides = {} if args.precision == "preset" else {"use_fp16": False, "use_checkpoint": False}
    cmd = [sys.executable, "-m", "benchmarks.step_worker", "--preset", "lightweight", "--grid",
           ",".join(map(str, grid)), "--batch", str(args.batch), "--pattern", "structured", "--path", "sparse",
           "--steps", str(args.steps), "--overrides", json.dumps(overrides)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    r = json.loads(done.stdout)
    print(done.stdout.strip(), flush=True)  # the measurement first: estimating cannot lose it
    cfg = create_lightweight_unet_config(in_channels=8, out_channels=4, input_size=grid, **overrides)
    dense = estimate(cfg, grid, args.batch, r["active_share"], "dense")
    sparse_est = estimate(cfg, grid, args.batch, r["active_share"], "sparse")
    rows = [["sparse (measured)", f"{r['active_voxels']} ({r['active_share']:.3%})", f"{r['step_ms'] / 1e3:.1f}",
             f"{r['peak_bytes'] / 1e9:.2f}", f"{sparse_est.step_peak / 1e9:.2f} (random-occupancy model)"],
            ["dense (estimated)", f"{args.batch * grid[0] * grid[1] * grid[2]} (all)", "not run",
             f"{dense.step_peak / 1e9:.0f} (does not fit 24 GB)" if dense.total > 24e9 else
             f"{dense.step_peak / 1e9:.1f}", f"{dense.step_peak / 1e9:.1f}"]]
    table = markdown_table(["path", "voxels", "step s", "peak GB", "estimator GB"], rows)
    header = (f"lightweight ({args.precision} precision), native grid {grid} (Z, X, Y), batch {args.batch}, "
              f"synthetic LiDAR voxels at 0.2 m, CPU")
    print(header + "\n\n" + table)
    write_report(args.out, "native", {"machine": machine(), "sparse": r, "dense_estimate": dense.to_dict()},
                 header + "\n\n" + table)
    plot(r["peak_bytes"], sparse_est.step_peak, dense.step_peak, f"lightweight, native grid {grid}, batch {args.batch}",
         f"{args.out}/native.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
