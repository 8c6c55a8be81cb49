"""SubMConv3d benchmark: our sparse conv against spconv's forward and dense conv3d, side by side.

Reference case (foundation issue): grid 32x128x128, batch 1, 3% of voxels active uniformly at random,
SubMConv3d 64->64, kernel 3, fp32. `python -m benchmarks.conv` runs it; `--quick` a smaller grid.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

import torch
import torch.nn.functional as F

from sparse_radar import SparseVoxels
from sparse_radar.kernels import keys_to_coords, submanifold_kmap, to_spconv_weight
from sparse_radar.nn import SubMConv3d

from .common import (add_device_argument, check_device, device_name, grouped_bars, machine, markdown_table,
                     median_ms, pyplot, save_figure, write_report)


def random_sites(shape, occupancy: float, generator: torch.Generator) -> torch.Tensor:
    """Coords [N, 4] of a uniformly random share of a batch-1 grid."""
    cells = shape[0] * shape[1] * shape[2]
    n = max(1, int(round(occupancy * cells)))
    keys = torch.sort(torch.randperm(cells, generator=generator)[:n]).values
    return keys_to_coords(keys, shape)


def measure(shape, occupancy: float, channels: int, repeats: int, dense_repeats: int, with_dense: bool = True,
            device: str = "cpu"):
    """Median times (ms) of each step of the reference case, and FLOP rates."""
    g = torch.Generator().manual_seed(0)
    coords = random_sites(shape, occupancy, g)
    feats = torch.randn(coords.shape[0], channels, generator=g)
    layer = SubMConv3d(channels, channels, 3, bias=False)
    spconv_ms = spconv_forward_ms(layer, feats, coords, shape, repeats) if device == "cpu" else None
    coords, feats, layer = coords.to(device), feats.to(device), layer.to(device)
    sv = SparseVoxels(feats, coords, shape, 1)
    res = {"grid": list(shape), "occupancy": occupancy, "channels": channels, "active": int(coords.shape[0]),
           "device": device}
    # the table, and the offset-grouped pairs the torch backend reads (the triton backend needs the table only)
    res["kmap_build_ms"] = median_ms(lambda: submanifold_kmap(sv.coords, shape, 1, (3, 3, 3), (1, 1, 1)).offset_ptr,
                                     repeats)
    kmap = sv.structure.submanifold_map((3, 3, 3), (1, 1, 1))
    with torch.no_grad():
        res["ours_forward_ms"] = median_ms(lambda: layer(sv), repeats)
        res["ours_forward_with_kmap_ms"] = median_ms(lambda: layer(SparseVoxels(feats, coords, shape, 1)), repeats)
    flops = 2.0 * kmap.num_pairs * channels * channels
    res["pairs"] = kmap.num_pairs
    res["ours_gflops"] = flops / res["ours_forward_ms"] / 1e6
    a, b = torch.randn(coords.shape[0], channels, device=device), torch.randn(channels, channels, device=device)
    res["mm_gflops"] = 2.0 * coords.shape[0] * channels * channels / median_ms(lambda: torch.mm(a, b), repeats) / 1e6
    res["flop_efficiency"] = res["ours_gflops"] / res["mm_gflops"]
    res["spconv_forward_ms"] = spconv_ms  # spconv's CPU build: measured on CPU runs only

    def ours_fwd_bwd():
        f = feats.clone().requires_grad_(True)
        layer(sv.replace(f)).feats.sum().backward()
    res["ours_fwd_bwd_ms"] = median_ms(ours_fwd_bwd, repeats)
    if with_dense:
        dense = sv.to_dense().data
        weight = layer.weight.detach()
        with torch.no_grad():
            res["dense_forward_ms"] = median_ms(lambda: F.conv3d(dense, weight, padding=1), dense_repeats)

        def dense_fwd_bwd():
            x = dense.clone().requires_grad_(True)
            w = weight.clone().requires_grad_(True)
            F.conv3d(x, w, padding=1).sum().backward()
        res["dense_fwd_bwd_ms"] = median_ms(dense_fwd_bwd, dense_repeats)
        res["fwd_bwd_speedup_vs_dense"] = res["dense_fwd_bwd_ms"] / res["ours_fwd_bwd_ms"]
    if res["spconv_forward_ms"] is not None:
        res["forward_vs_spconv"] = res["ours_forward_ms"] / res["spconv_forward_ms"]
        res["forward_with_kmap_vs_spconv"] = res["ours_forward_with_kmap_ms"] / res["spconv_forward_ms"]
    return res


def spconv_forward_ms(layer, feats, coords, shape, repeats):
    """spconv's forward (it builds its pairs inside), or None when spconv is not installed."""
    try:
        import spconv.pytorch as spconv
    except ImportError:
        return None
    ref = spconv.SubMConv3d(layer.in_channels, layer.out_channels, 3, bias=False)
    ref.weight.data = to_spconv_weight(layer.weight.data)
    with torch.no_grad():
        return median_ms(lambda: ref(spconv.SparseConvTensor(feats, coords, list(shape), 1)), repeats)


ROWS = [
    ("kernel-map build", "kmap_build_ms"),
    ("ours forward (cached map)", "ours_forward_ms"),
    ("ours forward incl. field + map build", "ours_forward_with_kmap_ms"),
    ("spconv CPU forward (builds its pairs)", "spconv_forward_ms"),
    ("dense conv3d forward", "dense_forward_ms"),
    ("ours forward+backward", "ours_fwd_bwd_ms"),
    ("dense forward+backward", "dense_fwd_bwd_ms"),
]


def report(res) -> str:
    """Markdown table of one measurement."""
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    rows = [(name, fmt(res.get(key))) for name, key in ROWS]
    table = markdown_table(["step", "median ms"], rows)
    ratios = [
        f"- active voxels: {res['active']}, kernel-map pairs: {res['pairs']}",
        f"- our forward FLOP rate: {res['ours_gflops']:.1f} GFLOP/s = {res['flop_efficiency']:.0%} of a same-run "
        f"torch.mm ({res['mm_gflops']:.1f} GFLOP/s on [N, C] x [C, C])",
    ]
    if res.get("forward_vs_spconv") is not None:
        ratios.append(f"- our forward / spconv forward: {res['forward_vs_spconv']:.2f}x "
                      f"(incl. building the field and its map: {res['forward_with_kmap_vs_spconv']:.2f}x; target <= 1.25x)")
    if res.get("fwd_bwd_speedup_vs_dense") is not None:
        ratios.append(f"- forward+backward speed-up over dense: {res['fwd_bwd_speedup_vs_dense']:.0f}x (target >= 20x)")
    return table + "\n\n" + "\n".join(ratios)


def sweep(shape, repeats: int, dense_repeats: int, device: str = "cpu"):
    """Channel sweep at 3% and occupancy sweep at 64 channels; dense timed once per channel count."""
    rows, dense = [], {}
    points = [(c, 0.03) for c in (16, 32, 64, 128)] + [(64, o) for o in (0.005, 0.01, 0.1, 0.3)]
    for channels, occ in points:
        res = measure(shape, occ, channels, repeats, dense_repeats, with_dense=channels not in dense, device=device)
        if channels not in dense:
            dense[channels] = (res["dense_forward_ms"], res["dense_fwd_bwd_ms"])
        res["dense_forward_ms"], res["dense_fwd_bwd_ms"] = dense[channels]
        res["fwd_bwd_speedup_vs_dense"] = res["dense_fwd_bwd_ms"] / res["ours_fwd_bwd_ms"]
        print(json.dumps(res), flush=True)
        rows.append(res)
    return rows


def sweep_table(rows) -> str:
    """Markdown table of a sweep."""
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    return markdown_table(
        ["channels", "active", "map ms", "ours fwd ms", "spconv fwd ms", "ours/spconv", "ours fwd+bwd ms",
         "dense fwd+bwd ms", "speed-up vs dense", "FLOP efficiency"],
        [[r["channels"], f"{r['occupancy']:.1%}", fmt(r["kmap_build_ms"]), fmt(r["ours_forward_ms"]),
          fmt(r["spconv_forward_ms"]), fmt(r.get("forward_vs_spconv")), fmt(r["ours_fwd_bwd_ms"]),
          fmt(r["dense_fwd_bwd_ms"]), f"{r['fwd_bwd_speedup_vs_dense']:.0f}x", f"{r['flop_efficiency']:.0%}"]
         for r in rows])


def plot_one(res, title: str, path: str) -> None:
    """Bar chart of the median time of each step of one measurement (log scale), if matplotlib is installed."""
    plt = pyplot()
    if plt is None:
        return
    steps = [(name, res[key]) for name, key in ROWS if res.get(key) is not None]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    grouped_bars(ax, [textwrap.fill(name, 16) for name, _ in steps],
                 {"median ms": [ms for _, ms in steps]}, title, log=True, fontsize=6)
    save_figure(fig, path)


def plot_sweep(rows, path: str) -> None:
    """Forward+backward time of ours vs dense against occupancy (64 channels), if matplotlib is installed."""
    plt = pyplot()
    if plt is None:
        return
    pts = sorted((r["occupancy"], r["ours_fwd_bwd_ms"], r["dense_fwd_bwd_ms"], r["ours_forward_ms"],
                  r["spconv_forward_ms"]) for r in rows if r["channels"] == 64)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="ours forward+backward")
    ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="s", label="dense conv3d forward+backward")
    ax.plot([p[0] for p in pts], [p[3] for p in pts], marker="^", label="ours forward")
    if all(p[4] is not None for p in pts):
        ax.plot([p[0] for p in pts], [p[4] for p in pts], marker="v", label="spconv CPU forward")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("share of active voxels")
    ax.set_ylabel("ms (median)")
    ax.set_title("SubMConv3d 64->64, kernel 3")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="32,128,128", help="D,H,W (default 32,128,128)")
    parser.add_argument("--occupancy", type=float, default=0.03, help="share of active voxels (default 0.03)")
    parser.add_argument("--channels", type=int, default=64, help="Cin = Cout (default 64)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each sparse step (median)")
    parser.add_argument("--dense-repeats", type=int, default=3, help="timed runs of each dense step (median)")
    parser.add_argument("--quick", action="store_true", help="small grid 16,64,64 and few repeats")
    parser.add_argument("--out", default="bench_out", help="folder for conv.json and conv.md")
    parser.add_argument("--sweep", action="store_true", help="also sweep channels and occupancy (conv_sweep.*)")
    add_device_argument(parser, "where to measure")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    try:
        shape = tuple(int(v) for v in args.grid.split(","))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--grid must be three positive ints D,H,W, got {args.grid!r}")
    if not 0 < args.occupancy <= 1:
        parser.error(f"--occupancy must be in (0, 1], got {args.occupancy}")
    if args.quick:
        shape, args.repeats, args.dense_repeats = (16, 64, 64), 5, 2
    res = measure(shape, args.occupancy, args.channels, args.repeats, args.dense_repeats, device=args.device)
    text = report(res)
    header = (f"SubMConv3d {args.channels}->{args.channels}, kernel 3, grid {'x'.join(map(str, shape))}, batch 1, "
              f"{args.occupancy:.1%} active, fp32, {device_name(args.device)}")
    print(header + "\n\n" + text)
    write_report(args.out, "conv", {"machine": machine(), "result": res}, header + "\n\n" + text)
    plot_one(res, header.split(", batch")[0], f"{args.out}/conv.png")
    if args.sweep:
        rows = sweep(shape, args.repeats, args.dense_repeats, args.device)
        table = sweep_table(rows)
        print(table)
        write_report(args.out, "conv_sweep", {"machine": machine(), "results": rows}, table)
        plot_sweep(rows, f"{args.out}/conv_sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
