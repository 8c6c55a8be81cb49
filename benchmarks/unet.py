"""UNet training step, dense path vs sparse path, same model and weights, each configuration in its own process.

`python -m benchmarks.unet --set target` (lightweight, 32x128x128, batch 2, 3%: random and structured),
`--set sweep` (presets x grids x occupancy x batch; hours on a CPU), `--set quick` (a minute).
Writes unet.json, unet.md and unet.png to --out. The dense path is the plain dense model (no mask), what the
reference runs; a path whose estimated memory exceeds this machine's is reported as not fitting. On a CPU the
workers fix glibc's mmap threshold (--mmap-threshold, see benchmarks.step_worker) so peak RSS follows live tensors.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import re
import subprocess
import sys
from typing import List

import torch

from sparse_radar.estimate import estimate
from sparse_radar.models import PRESETS

from .bound import bound, record_layers
from .common import (add_device_argument, check_device, device_name, grouped_bars, machine, markdown_table, pyplot,
                     save_figure, write_report)
from .step_worker import MMAP_THRESHOLD, make_input

SMALL, TARGET, LARGE = (16, 64, 64), (32, 128, 128), (32, 256, 256)
OCCUPANCIES = (0.005, 0.01, 0.03, 0.1, 0.3)
REFERENCE_PRESETS = ("ultra_lightweight", "lightweight")
SETS = {
    "quick": [("tiny", SMALL, 2, occ, "random") for occ in (0.01, 0.03, 0.1)],
    "target": [("lightweight", TARGET, 2, 0.03, "random"), ("lightweight", TARGET, 2, 0.03, "structured")],
    # every value the benchmark issue names, without the full product (see "full"), cheapest rows first so that an
    # interrupted run (resumed with --reuse) has covered every value: the larger grid on scenes, every preset x
    # batch x occupancy at the small grid, the two reference presets at the target grid at every occupancy up to
    # 10% and on scenes, then the larger grid's random rows (global attention over ~51k voxels a sample at 3%)
    "sweep": [("lightweight", LARGE, 1, 0.03, "structured")]
    + [(p, SMALL, b, occ, "random") for p in ("tiny",) + REFERENCE_PRESETS for b in (1, 2, 4) for occ in OCCUPANCIES]
    + [(p, SMALL, 2, 0.03, "structured") for p in ("tiny",) + REFERENCE_PRESETS]
    + [(p, TARGET, 2, occ, "random") for p in REFERENCE_PRESETS for occ in OCCUPANCIES[:4]]
    + [(p, TARGET, 2, 0.03, "structured") for p in REFERENCE_PRESETS]
    + [("lightweight", LARGE, 1, occ, "random") for occ in (0.01, 0.03)],
    # the full product: days of dense steps on a CPU (the tiny preset's global attention at ds 2 alone takes
    # many minutes a step from 32x128x128 on)
    "full": [(p, g, b, o, pat) for p, g, b, o, pat in itertools.product(
        ("tiny",) + REFERENCE_PRESETS, (SMALL, TARGET, LARGE), (1, 2, 4), OCCUPANCIES, ("random",))] + [
        (p, g, b, 0.03, "structured") for p in ("tiny",) + REFERENCE_PRESETS for g in (SMALL, TARGET, LARGE)
        for b in ((1,) if g == LARGE else (2,))],
}


def available_bytes(device: str = "cpu") -> int:
    """Memory a worker may use: the GPU's free memory for cuda, else this machine's MemAvailable."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_one(preset, grid, batch, occupancy, pattern, path, steps, timeout, precision, mmap_threshold,
            execute: bool = True, time_budget: float = 0.0, device: str = "cpu", field: str = "fresh") -> dict:
    """One worker process; a row describing the result, a non-fit or a time-out ("not run" unless execute)."""
    overrides = {} if precision == "preset" else {"use_fp16": False, "use_checkpoint": False}
    cfg = PRESETS[preset](in_channels=8, out_channels=4, input_size=grid, **overrides)
    est = estimate(cfg, grid, batch, occupancy, path)
    row = {"preset": preset, "grid": list(grid), "batch": batch, "occupancy": occupancy, "pattern": pattern,
           "path": path, "estimated_bytes": est.step_peak, "precision": precision,
           "mmap_threshold": mmap_threshold, "device": device, "field": field if path == "sparse" else None}
    if est.total > 0.9 * available_bytes(device):
        return {**row, "status": f"does not fit: estimated {est.total / 1e9:.1f} GB"}
    if not execute:
        return {**row, "status": "not run"}
    cmd = [sys.executable, "-m", "benchmarks.step_worker", "--preset", preset, "--grid", ",".join(map(str, grid)),
           "--batch", str(batch), "--occupancy", str(occupancy), "--pattern", pattern, "--path", path,
           "--steps", str(steps), "--overrides", json.dumps(overrides), "--mmap-threshold", str(mmap_threshold),
           "--time-budget", str(time_budget), "--device", device, "--field", field]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        # at most steps + 1 steps ran, so a step takes at least timeout / (steps + 1)
        return {**row, "status": f"timed out after {timeout} s", "timeout_s": timeout,
                "step_ms_at_least": timeout * 1e3 / (steps + 1)}
    if done.returncode != 0:
        return {**row, "status": "failed: " + done.stderr.strip().splitlines()[-1][:200]}
    return {**row, **json.loads(done.stdout), "status": "ok"}


def row_key(preset, grid, batch, occupancy, pattern, path, precision, mmap_threshold, device="cpu",
            field="fresh") -> tuple:
    """Cache key of a measurement; the plain dense model costs the same at any occupancy and pattern and has
    no sparse field to build."""
    if path == "dense":
        occupancy, pattern, field = None, None, None
    return (preset, tuple(grid), batch, occupancy, pattern, path, precision, mmap_threshold, device, field)


def read_rows(path: str) -> List[dict]:
    """The rows of an earlier run: its JSON report, or its log (one JSON row a line, other lines ignored)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        report = json.loads(text)
    except ValueError:
        report = None
    if isinstance(report, dict) and isinstance(report.get("results"), list):
        return report["results"]
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def timed_out(row: dict) -> float:
    """The time-out in seconds of a row that timed out, else 0."""
    found = re.match(r"timed out after ([\d.]+) s", row.get("status", ""))
    return float(row.get("timeout_s", found.group(1))) if found else 0.0


def load_rows(*paths: str) -> dict:
    """Measured rows of earlier runs' logs or reports, by row_key."""
    cache = {}
    for path in paths:
        for r in read_rows(path):
            if r.get("status") == "ok" or timed_out(r):
                cache[row_key(r["preset"], r["grid"], r["batch"], r["occupancy"], r["pattern"], r["path"],
                              r["precision"], r.get("mmap_threshold", 0), r.get("device", "cpu"),
                              r.get("field", "cached"))] = r  # rows before the --field option reused one field
    return cache


@functools.lru_cache(maxsize=None)
def _layers(preset: str, grid: tuple):
    return record_layers(preset, grid)


def arithmetic_bound(row: dict) -> float:
    """Dense / sparse forward multiply-adds of a configuration's input (benchmarks.bound): the speed-up the sparse
    path would reach at the dense kernels' FLOP rate."""
    mask, _ = make_input(tuple(row["grid"]), row["batch"], row["occupancy"], row["pattern"], 1)
    return bound(_layers(row["preset"], tuple(row["grid"])), mask).ratio


def speed_up(dense: dict, sparse: dict) -> str:
    """Dense / sparse step time; a lower bound ("> Nx") where the dense step timed out."""
    if sparse.get("status") != "ok":
        return "-"
    if dense.get("status") == "ok":
        return f"{dense['step_ms'] / sparse['step_ms']:.1f}x"
    return f"> {dense['step_ms_at_least'] / sparse['step_ms']:.1f}x" if "step_ms_at_least" in dense else "-"


def pair_rows(results: List[dict], with_bound: bool = True) -> List[list]:
    """Markdown rows: one per configuration, dense and sparse side by side, with ratios (and the arithmetic
    bound on the speed-up)."""
    rows, fmt = [], (lambda r, k, s: f"{r[k] / s:.0f}" if r.get("status") == "ok" else r.get("status", "-"))
    for i in range(0, len(results), 2):
        d, s = results[i], results[i + 1]
        ok = d.get("status") == "ok" and s.get("status") == "ok"
        mem_ratio = f"{d['peak_bytes'] / s['peak_bytes']:.1f}x" if ok else (
            f"~{d['estimated_bytes'] / s['peak_bytes']:.1f}x (dense estimated)" if s.get("status") == "ok" else "-")
        rows.append([s["preset"], "x".join(map(str, s["grid"])), s["batch"], f"{s['occupancy']:.1%}", s["pattern"],
                     f"{s.get('active_share', s['occupancy']):.2%}", fmt(d, "step_ms", 1), fmt(s, "step_ms", 1),
                     speed_up(d, s),
                     f"{arithmetic_bound(s):.1f}x" if with_bound else "-", fmt(d, "peak_bytes", 1e6),
                     fmt(s, "peak_bytes", 1e6), mem_ratio,
                     f"{d.get('timed_steps', '-')}/{s.get('timed_steps', '-')}"])
    return rows


HEADER = ["preset", "grid", "batch", "occupancy", "pattern", "active", "dense ms", "sparse ms", "speed-up",
          "arithmetic bound", "dense MB", "sparse MB", "memory saving", "timed steps (dense/sparse)"]


def plot(results: List[dict], path: str) -> None:
    """Bar chart of step time and peak memory per configuration (log scale), if matplotlib is installed."""
    plt = pyplot()
    if plt is None:
        return
    pairs = [(results[i], results[i + 1]) for i in range(0, len(results), 2)]
    labels = [f"{s['preset']}\n{'x'.join(map(str, s['grid']))} b{s['batch']}\n{s['occupancy']:.1%} {s['pattern'][:6]}"
              for _, s in pairs]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(pairs) * 2), 4.5))
    for ax, key, scale, title in ((axes[0], "step_ms", 1e3, "step time (s)"),
                                  (axes[1], "peak_bytes", 1e9, "peak memory (GB)")):
        dense = [d.get(key, d["estimated_bytes"] if key == "peak_bytes" else float("nan")) / scale for d, _ in pairs]
        grouped_bars(ax, labels, {"dense": dense, "sparse": [s.get(key, float("nan")) / scale for _, s in pairs]},
                     title, log=True)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=list(SETS), default="target")
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per configuration and path")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds per configuration and path after which no further timed step starts (at least "
                        "one always runs; benchmarks.step_worker); 0: all --steps")
    p.add_argument("--precision", choices=("preset", "fp32"), default="preset",
                   help="preset: the preset's use_fp16/use_checkpoint; fp32: both off")
    p.add_argument("--mmap-threshold", type=int, default=MMAP_THRESHOLD,
                   help="CPU allocator setting of the workers (benchmarks.step_worker); 0: glibc's dynamic default")
    add_device_argument(p, "where the workers run (peak memory on cuda: torch.cuda.max_memory_allocated above the "
                           "idle baseline)")
    p.add_argument("--field", choices=("fresh", "cached"), default="fresh",
                   help="sparse path: fresh builds each step's field and kernel maps, as the trainer does; cached "
                        "reuses one field (the kernel-map cost left out)")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--reuse", action="append", default=[],
                   help="a log (its JSON lines) or JSON report of an earlier run, repeatable: measured rows are "
                        "not run again")
    p.add_argument("--report-only", action="store_true",
                   help="with --reuse: run nothing, report the configurations the log measured (a partial sweep)")
    args = p.parse_args(argv)
    if args.report_only and not args.reuse:
        p.error("--report-only needs --reuse LOG")
    check_device(p, args.device)
    cache = load_rows(*args.reuse)
    results = []
    for preset, grid, batch, occ, pattern in SETS[args.set]:
        keys = {path: row_key(preset, grid, batch, occ, pattern, path, args.precision, args.mmap_threshold,
                              args.device, args.field) for path in ("dense", "sparse")}
        if args.report_only and not any(k in cache for k in keys.values()):
            continue
        for path in ("dense", "sparse"):
            row = cache.get(keys[path])
            # a row that timed out is an answer for the same or a shorter time-out, not for a longer one
            if row is None or (not args.report_only and 0 < timed_out(row) < args.timeout):
                row = run_one(preset, grid, batch, occ, pattern, path, args.steps, args.timeout, args.precision,
                              args.mmap_threshold, not args.report_only, args.time_budget, args.device, args.field)
            if row.get("status") == "ok" or timed_out(row):
                cache[keys[path]] = row
            print(json.dumps(row), flush=True)
            results.append(row)
    table = (f"UNet training step, dense vs sparse, {device_name(args.device)}\n\n"
             + markdown_table(HEADER, pair_rows(results)))
    print(table)
    write_report(args.out, f"unet_{args.set}", {"machine": machine(), "results": results}, table)
    plot(results, f"{args.out}/unet_{args.set}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
