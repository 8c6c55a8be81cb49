"""SubMConv3d at two fixed cases, per library and precision, each library in its own process with a time limit.

Cases: `published` (C=256, about 50k voxels of LiDAR-like structure on 41x1600x1408, batch 1: the case
spconv-triton's docs report for spconv, spconv-triton, FlexGEMM and fVDB on an H100) and `scene` (C=32,
about 1.35 M voxels of walls and ground on 64x512x512). Libraries: our `triton` and `torch` backends,
cuDNN `dense` conv3d (where the grid fits in memory), and `spconv` / `spconv-triton` where they import.
Precisions: fp32 (TF32 off), tf32, fp16. A library that gives no result within --timeout seconds is
reported as "no result in N s". `python -m benchmarks.conv_cases --device cuda` runs everything;
`--scale` shrinks both cases (grid sides and voxel count) for a quick CPU check.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from sparse_radar.kernels import keys_to_coords

from .common import add_device_argument, check_device, device_name, machine, markdown_table, median_ms, write_report

CASES = {
    "published": {"grid": (41, 1600, 1408), "voxels": 50_000, "channels": 256},
    "scene": {"grid": (64, 512, 512), "voxels": 1_350_000, "channels": 32},
}
LIBRARIES = ("triton", "torch", "dense", "spconv", "spconv-triton")
PRECISIONS = ("fp32", "tf32", "fp16")
TARGETS = "published: triton forward <= 0.45 ms fp32 and <= 0.15 ms fp16; scene: triton fwd+bwd >= 10x torch"


def scaled(case: Dict, scale: float) -> Dict:
    """A case with grid sides and voxel count multiplied by scale (at least 4 cells a side, 64 voxels)."""
    grid = tuple(max(4, int(round(n * scale))) for n in case["grid"])
    voxels = min(max(64, int(case["voxels"] * scale ** 2)), grid[0] * grid[1] * grid[2] // 8)
    return {"grid": grid, "voxels": voxels, "channels": case["channels"]}


def wall_sites(grid, target: int, generator: torch.Generator) -> torch.Tensor:
    """Coords [N, 4] (batch 0) of a ground patch and vertical walls, exactly `target` voxels, key-sorted."""
    depth, height, width = grid
    if target > depth * height * width // 4:
        raise ValueError(f"{target} wall voxels do not fit sparsely in grid {tuple(grid)}")
    side = int(min(height, width, (target // 3) ** 0.5))  # a square of ground at z = 0: a third of the target
    y0 = int(torch.randint(height - side + 1, (1,), generator=generator))
    x0 = int(torch.randint(width - side + 1, (1,), generator=generator))
    ys, xs = torch.meshgrid(torch.arange(y0, y0 + side), torch.arange(x0, x0 + side), indexing="ij")
    keys = [(ys * width + xs).reshape(-1)]
    raw, need = keys[0].numel(), target
    while True:
        while raw < need * 1.1:  # walls overlap a little: place about 10% more than needed
            keys.append(_wall(depth, height, width, generator))
            raw += keys[-1].numel()
        flat = torch.cat(keys)
        unique, inverse = torch.unique(flat, return_inverse=True)
        if unique.numel() >= target:
            break
        need += target - unique.numel()
    first = torch.full((unique.numel(),), flat.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(flat.numel()), reduce="amin")
    unique = unique[torch.argsort(first)[:target]]  # the first `target` voxels placed: the last wall is cut short
    return keys_to_coords(torch.sort(unique).values, grid)


def _wall(depth: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Keys of one wall: a run along x or y, some cells high from the ground, one voxel thick."""
    along_x = bool(torch.randint(2, (1,), generator=generator))
    length = int(torch.randint(8, max(9, (width if along_x else height) // 3), (1,), generator=generator))
    tall = int(torch.randint(2, max(3, depth), (1,), generator=generator))
    y0 = int(torch.randint(height, (1,), generator=generator))
    x0 = int(torch.randint(width, (1,), generator=generator))
    run = torch.arange(length)
    ys = (y0 + (0 * run if along_x else run)).clamp_max(height - 1)
    xs = (x0 + (run if along_x else 0 * run)).clamp_max(width - 1)
    zs = torch.arange(tall)
    return ((zs[:, None] * height + ys[None, :]) * width + xs[None, :]).reshape(-1)


def _precision(name: str):
    dtype = torch.float16 if name == "fp16" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    return dtype


def measure(case: Dict, library: str, precision: str, device: str, repeats: int) -> Dict[str, object]:
    """Median forward and forward+backward ms of one library on one case, or a reason why not."""
    dtype = _precision(precision)
    if device == "cpu" and dtype == torch.float16 and library == "dense":
        return {"status": "fp16 conv3d is not run on the CPU"}
    g = torch.Generator().manual_seed(0)
    coords = wall_sites(case["grid"], case["voxels"], g).to(device)
    c = case["channels"]
    feats = torch.randn(coords.shape[0], c, generator=g).to(device, dtype)
    weight = (torch.randn(c, c, 3, 3, 3, generator=g) / (27 * c) ** 0.5).to(device, dtype)
    res: Dict[str, object] = {"voxels": int(coords.shape[0])}
    if library in ("triton", "torch"):
        from sparse_radar import SparseVoxels
        from sparse_radar.kernels import kernel_settings, sparse_conv, torch_to_kernel_weight
        kw = torch_to_kernel_weight(weight)
        sv = SparseVoxels(feats, coords, case["grid"], 1)
        res["map_ms"] = median_ms(lambda: SparseVoxels(feats, coords, case["grid"], 1).structure.submanifold_map(
            (3, 3, 3), (1, 1, 1)).table, max(1, repeats // 3))
        kmap = sv.structure.submanifold_map((3, 3, 3), (1, 1, 1))
        with kernel_settings(backend=library):
            forward = lambda: sparse_conv(feats, kw, None, kmap)
            fwd_bwd = lambda: sparse_conv(feats.detach().requires_grad_(True), kw.detach().requires_grad_(True),
                                          None, kmap).sum().backward()
            return _timed(res, forward, fwd_bwd, repeats)
    if library == "dense":
        need = torch.Size(case["grid"]).numel() * c * (2 if dtype == torch.float16 else 4) * 6
        free = torch.cuda.mem_get_info()[0] if device == "cuda" else 8 << 30
        if need > 0.8 * free:
            return {"status": f"does not fit ({need / 2**30:.0f} GB needed, {free / 2**30:.0f} GB free)"}
        from sparse_radar import SparseVoxels
        dense = SparseVoxels(feats, coords, case["grid"], 1).to_dense().data
        forward = lambda: F.conv3d(dense, weight, padding=1)
        fwd_bwd = lambda: F.conv3d(dense.detach().requires_grad_(True), weight.detach().requires_grad_(True),
                                   padding=1).sum().backward()
        return _timed(res, forward, fwd_bwd, repeats)
    module = _spconv_module(library)
    if module is None:
        return {"status": "not installed"}
    layer = module.SubMConv3d(c, c, 3, bias=False)
    if device != "cpu":
        layer = layer.to(device, dtype)
    from sparse_radar.kernels import to_spconv_weight
    layer.weight.data = to_spconv_weight(weight)
    tensor = lambda f: module.SparseConvTensor(f, coords, list(case["grid"]), 1)
    forward = lambda: layer(tensor(feats))  # spconv builds (and caches per tensor) its indices inside
    fwd_bwd = lambda: layer(tensor(feats.detach().requires_grad_(True))).features.sum().backward()
    if device == "cpu":  # spconv's CPU build has a forward only
        with torch.no_grad():
            res["forward_ms"] = median_ms(forward, repeats)
        res["status"] = "ok (forward only: no CPU backward)"
        return res
    return _timed(res, forward, fwd_bwd, repeats)


def _timed(res, forward, fwd_bwd, repeats):
    with torch.no_grad():
        res["forward_ms"] = median_ms(forward, repeats)
    res["fwd_bwd_ms"] = median_ms(fwd_bwd, repeats)
    res["status"] = "ok"
    return res


def _spconv_module(library: str):
    """spconv.pytorch, or spconv-triton's module of the same API, or None where it does not import."""
    import importlib
    names = ("spconv.pytorch",) if library == "spconv" else ("spconv_triton.pytorch", "spconv_triton")
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a broken optional install counts as absent
            continue
        if hasattr(module, "SubMConv3d") and hasattr(module, "SparseConvTensor"):
            return module
    return None


def run_one(case: str, library: str, precision: str, args) -> Dict[str, object]:
    """One measurement in a fresh process, killed after args.timeout seconds."""
    cmd = [sys.executable, "-m", "benchmarks.conv_cases", "--worker", case, library, precision,
           "--device", args.device, "--repeats", str(args.repeats), "--scale", str(args.scale)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"no result in {args.timeout:.0f} s"}
    if done.returncode != 0:
        return {"status": "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows) -> str:
    """Markdown table of every (case, precision, library) row."""
    fmt = lambda v: "" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return markdown_table(
        ["case", "precision", "library", "voxels", "map ms", "forward ms", "fwd+bwd ms", "status"],
        [[r["case"], r["precision"], r["library"], r.get("voxels", ""), fmt(r.get("map_ms")),
          fmt(r.get("forward_ms")), fmt(r.get("fwd_bwd_ms")), r["status"]] for r in rows])


def ratio_lines(rows) -> str:
    """Same-run ratios the targets are stated in."""
    get = lambda case, lib, prec, key: next((r.get(key) for r in rows if (r["case"], r["library"], r["precision"])
                                             == (case, lib, prec)), None)
    lines = []
    for prec in PRECISIONS:
        t, ref = get("scene", "triton", prec, "fwd_bwd_ms"), get("scene", "torch", prec, "fwd_bwd_ms")
        if t and ref:
            lines.append(f"- scene {prec}: triton fwd+bwd is {ref / t:.3g}x faster than the torch backend")
        d = get("scene", "dense", prec, "fwd_bwd_ms")
        if t and d:
            lines.append(f"- scene {prec}: triton fwd+bwd is {d / t:.3g}x faster than cuDNN dense")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "LIBRARY", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--cases", default="published,scene", help="comma-separated of: " + ", ".join(CASES))
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated of: " + ", ".join(LIBRARIES))
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated of: fp32, tf32, fp16")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each library may take per case")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the cases (grid sides x scale)")
    parser.add_argument("--out", default="bench_out", help="folder for conv_cases.json and conv_cases.md")
    add_device_argument(parser, "where to measure")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    if args.worker:
        case, library, precision = args.worker
        print(json.dumps(measure(scaled(CASES[case], args.scale), library, precision, args.device, args.repeats)))
        return 0
    picks = {}
    for flag, known in (("cases", CASES), ("libraries", LIBRARIES), ("precisions", PRECISIONS)):
        picks[flag] = [v for v in getattr(args, flag).split(",") if v]
        bad = [v for v in picks[flag] if v not in known]
        if bad or not picks[flag]:
            parser.error(f"--{flag}: unknown {bad or 'empty list'}; expected some of {', '.join(known)}")
    rows = []
    for case in picks["cases"]:
        for precision in picks["precisions"]:
            for library in picks["libraries"]:
                row = {"case": case, "precision": precision, "library": library,
                       **run_one(case, library, precision, args)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    header = (f"SubMConv3d k3 at fixed cases (scale {args.scale}), {device_name(args.device)}; median of "
              f"{args.repeats}; targets: {TARGETS}")
    text = header + "\n\n" + table(rows) + "\n\n" + ratio_lines(rows)
    print(text)
    write_report(args.out, "conv_cases", {"machine": machine(), "results": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
