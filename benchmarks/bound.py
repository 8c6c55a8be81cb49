"""The most the sparse path can save in arithmetic: multiply-adds of the dense and the sparse forward, per level.

`python -m benchmarks.bound --preset lightweight --grid 32,128,128 --batch 2 --occupancy 0.03`
Counts, from the input's active voxels at each level of the UNet (no model run at that size), the multiply-adds
of every convolution (a sparse conv does one per active (output, input) pair of its kernel map) and of every
attention block (qkv/proj projections and the attention product). The dense/sparse ratio is the speed-up a
sparse implementation would reach if it ran at the dense kernels' FLOP rate; elementwise work (norms,
activations) is left out. Writes bound.json and bound.md to --out.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from sparse_radar import DenseVoxels, UNet3D
from sparse_radar.models import PRESETS
from sparse_radar.nn.attention import AttentionBlock
from sparse_radar.nn.attention_cores import GlobalAttention, HeightAttention, LinearAttention, WindowAttention
from sparse_radar.nn.conv import SparseConv3d, SparseInverseConv3d, SubMConv3d
from sparse_radar.nn.depthwise import DepthwiseSubMConv3d

from .common import grouped_bars, machine, markdown_table, pyplot, save_figure, write_report
from .step_worker import make_input

Shape = Tuple[int, int, int]


@dataclass
class Layer:
    """One conv or attention call of the forward: what it is and the grid it runs on."""
    kind: str  # "subm", "down", "up", "attention"
    shape: Shape  # grid of the call's (finer) input
    macs_per_pair: int = 0  # convs: Cin*Cout/groups
    taps: int = 1  # convs: kernel volume
    channels: int = 0  # attention
    heads: int = 1
    core: str = ""
    window: Shape = (1, 1, 1)


def record_layers(preset: str, grid: Shape, **overrides) -> List[Layer]:
    """The conv and attention calls of the preset's forward on `grid`, from a sparse probe with one voxel a sample."""
    model = UNet3D(PRESETS[preset](in_channels=8, out_channels=4, input_size=tuple(grid), **overrides))
    layers: List[Layer] = []

    def hook(module, inputs, _output):
        shape = tuple(inputs[0].spatial_shape)
        if isinstance(module, DepthwiseSubMConv3d):
            layers.append(Layer("subm", shape, module.channels, math.prod(module.kernel_size)))
        elif isinstance(module, (SubMConv3d, SparseConv3d, SparseInverseConv3d)):
            kind = "subm" if isinstance(module, SubMConv3d) else "down" if isinstance(module, SparseConv3d) else "up"
            if kind == "up":  # an inverse conv's pairs are those of the finer grid it returns to
                shape = tuple(n * s for n, s in zip(shape, module.stride))
            layers.append(Layer(kind, shape, module.in_channels * module.out_channels, math.prod(module.kernel_size)))
        elif isinstance(module, AttentionBlock):
            core = module.core
            window = tuple(getattr(core, "window_size", (1, 1, 1)))
            if getattr(core, "shift", (0, 0, 0)) != (0, 0, 0) or not isinstance(
                    core, (GlobalAttention, LinearAttention, WindowAttention, HeightAttention)):
                raise ValueError(f"benchmarks.bound counts flash, linear, height and unshifted window attention, "
                                 f"not {type(core).__name__}")
            layers.append(Layer("attention", shape, channels=module.channels, heads=module.num_heads,
                                core=type(core).__name__, window=window))

    kinds = (DepthwiseSubMConv3d, SubMConv3d, SparseConv3d, SparseInverseConv3d, AttentionBlock)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    mask = torch.zeros(1, 1, *grid, dtype=torch.bool)
    mask[0, 0, 0, 0, 0] = True
    with torch.no_grad():
        model(DenseVoxels(torch.ones(1, 8, *grid) * mask, mask).to_sparse(), torch.zeros(1))
    for h in handles:
        h.remove()
    return layers


def level_masks(mask: torch.Tensor, shapes) -> Dict[Shape, torch.Tensor]:
    """float [B, 1, *shape] active sets of each level: a voxel is active where any voxel it covers is."""
    full = tuple(mask.shape[2:])
    out = {}
    for shape in shapes:
        factor = tuple(f // s for f, s in zip(full, shape))
        out[shape] = F.max_pool3d(mask.float(), factor) if factor != (1, 1, 1) else mask.float()
    return out


def neighbour_pairs(mask: torch.Tensor, taps: int) -> int:
    """Active (output, input) pairs of a submanifold conv with a cubic kernel of `taps` taps on a float mask."""
    k = round(taps ** (1 / 3))
    if k ** 3 != taps:
        raise ValueError(f"benchmarks.bound counts cubic kernels, got {taps} taps")
    counts = F.conv3d(mask, torch.ones(1, 1, k, k, k), padding=k // 2)
    return int((counts * mask).sum())


def attention_macs(layer: Layer, counts: torch.Tensor) -> int:
    """Multiply-adds of one attention block whose groups (samples, windows or columns) hold `counts` tokens."""
    c, n = layer.channels, int(counts.sum())
    proj = 4 * c * c * n  # qkv (3 C^2) and proj (C^2) per token
    if layer.core == "LinearAttention":  # phi(K)^T V and phi(Q) (KV) per head, and the normaliser phi(Q) z
        return proj + 2 * n * c * (c // layer.heads) + n * c
    return proj + 2 * c * int((counts.double() ** 2).sum())  # Q K^T and A V within each group


def group_counts(m: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Tokens of each attention group of a level's float mask [B, 1, D, H, W]."""
    if layer.core == "GlobalAttention":
        return m.flatten(1).sum(1)
    if layer.core == "HeightAttention":
        return m.sum(2).flatten()
    return F.avg_pool3d(m, layer.window, ceil_mode=True, divisor_override=1).flatten()


def count(layers: List[Layer], mask: torch.Tensor) -> Dict[Shape, Dict[str, int]]:
    """{level grid: {conv/attention multiply-adds, dense and sparse}} for the active voxels of `mask`."""
    masks = level_masks(mask, {layer.shape for layer in layers})
    levels: Dict[Shape, Dict[str, int]] = {}
    pairs_of: Dict[Tuple[Shape, int], int] = {}  # every conv of a level with the same kernel has the same pairs
    for layer in layers:
        m = masks[layer.shape]
        row = levels.setdefault(layer.shape, {"cells": m.numel(), "active": int(m.sum()), "conv_dense": 0,
                                              "conv_sparse": 0, "attention_dense": 0, "attention_sparse": 0})
        if layer.kind == "attention":
            row["attention_dense"] += attention_macs(layer, group_counts(torch.ones_like(m), layer))
            row["attention_sparse"] += attention_macs(layer, group_counts(m, layer))
        else:  # a dense conv computes every tap of every cell; a strided or inverse one (kernel = stride) one each
            dense_pairs = m.numel() * (layer.taps if layer.kind == "subm" else 1)
            pairs = row["active"]
            if layer.kind == "subm":
                if (layer.shape, layer.taps) not in pairs_of:
                    pairs_of[layer.shape, layer.taps] = neighbour_pairs(m, layer.taps)
                pairs = pairs_of[layer.shape, layer.taps]
            row["conv_dense"] += dense_pairs * layer.macs_per_pair
            row["conv_sparse"] += pairs * layer.macs_per_pair
    return levels


@dataclass
class Bound:
    """Totals of one input and the per-level rows of its table."""
    dense: int
    sparse: int
    rows: List[list] = field(default_factory=list)
    levels: List[Tuple[str, int, int]] = field(default_factory=list)  # (level grid, dense, sparse multiply-adds)

    @property
    def ratio(self) -> float:
        return self.dense / max(self.sparse, 1)


def bound(layers: List[Layer], mask: torch.Tensor) -> Bound:
    """Dense and sparse multiply-adds of the whole forward, with a table row per level."""
    levels = count(layers, mask)
    result = Bound(0, 0)
    for shape, r in sorted(levels.items(), key=lambda kv: -kv[1]["cells"]):
        dense, sparse = r["conv_dense"] + r["attention_dense"], r["conv_sparse"] + r["attention_sparse"]
        result.dense, result.sparse = result.dense + dense, result.sparse + sparse
        result.levels.append(("x".join(map(str, shape)), dense, sparse))
        result.rows.append(["x".join(map(str, shape)), f"{r['active'] / r['cells']:.1%}",
                            f"{r['conv_dense'] / 1e9:.1f}", f"{r['conv_sparse'] / 1e9:.2f}",
                            f"{r['attention_dense'] / 1e9:.1f}", f"{r['attention_sparse'] / 1e9:.2f}",
                            f"{dense / max(sparse, 1):.1f}x"])
    result.rows.append(["total", "", "", "", "", "", f"{result.ratio:.1f}x"])
    return result


HEADER = ["level grid", "active", "conv GMAC dense", "conv GMAC sparse", "attention GMAC dense",
          "attention GMAC sparse", "dense / sparse"]


def plot(bounds: Dict[str, Bound], title: str, path: str) -> None:
    """Dense vs sparse multiply-adds per level, one panel per voxel pattern (log scale), if matplotlib is installed."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(bounds), figsize=(6 * len(bounds), 4.2), squeeze=False)
    for ax, (pattern, b) in zip(axes[0], bounds.items()):
        grouped_bars(ax, [name for name, _, _ in b.levels],
                     {"dense": [d / 1e9 for _, d, _ in b.levels], "sparse": [s / 1e9 for _, _, s in b.levels]},
                     f"{pattern} voxels (whole forward: {b.ratio:.1f}x)", log=True)
    fig.suptitle(f"{title}: forward multiply-adds per level (G)")
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="lightweight")
    p.add_argument("--grid", default="32,128,128", help="D,H,W")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--occupancy", type=float, default=0.03)
    p.add_argument("--patterns", nargs="+", choices=("random", "structured"), default=["random", "structured"])
    p.add_argument("--out", default="bench_out")
    args = p.parse_args(argv)
    try:
        grid = tuple(int(v) for v in args.grid.split(","))
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--grid must be three positive integers D,H,W, got {args.grid!r}")
    if args.batch < 1 or not 0 < args.occupancy <= 1:
        p.error("--batch must be >= 1 and --occupancy in (0, 1]")
    layers = record_layers(args.preset, grid)
    sections, payload = [], {"machine": machine(), "preset": args.preset, "grid": list(grid), "batch": args.batch,
                             "occupancy": args.occupancy, "results": {}}
    bounds = {}
    for pattern in args.patterns:
        mask, _ = make_input(grid, args.batch, args.occupancy, pattern, 1)
        b = bounds[pattern] = bound(layers, mask)
        payload["results"][pattern] = {"dense_macs": b.dense, "sparse_macs": b.sparse, "ratio": b.ratio,
                                       "active_share": float(mask.float().mean())}
        sections.append(f"{args.preset}, {args.grid}, batch {args.batch}, {pattern} voxels at "
                        f"{float(mask.float().mean()):.2%} (forward multiply-adds)\n\n" + markdown_table(HEADER, b.rows))
    text = "\n\n".join(sections)
    print(text)
    write_report(args.out, "bound", payload, text)
    plot(bounds, f"{args.preset} {args.grid} b{args.batch}", f"{args.out}/bound.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
