"""`python -m sparse_radar.estimate`: predicted peak training memory of the dense and the sparse path.

Method: run the model's forward once on a small probe grid (same depth, fewer rows/columns; for the sparse
path random voxels at the requested occupancy) while counting the bytes autograd saves, scale them by the
number of voxels, then add gradients and AdamW state (3 x parameters) and the backward pass's transient
buffers (a factor per path, calibrated on CPU measurements: peak RSS above the idle baseline, glibc mmap
threshold fixed as benchmarks.step_worker sets it; below 1 where saved tensors are freed early in the backward).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from .models.config import PRESETS, UNetConfig
from .models.unet import UNet3D
from .nn import recompute
from .nn.attention import AttentionBlock
from .nn.attention_by_hand import attention_by_hand
from .nn.blocks import ResBlock
from .nn.resblock_by_hand import by_hand
from .voxels import DenseVoxels

# What the two constants are: CPU calibrations. BACKWARD_FACTOR is the peak over the saved-activation bytes of a
# training step, STEP_OVERHEAD the bytes a step adds regardless of size (thread pools, kernel maps, allocator
# slack), both from peak RSS above the idle process on this project's CPU (glibc mmap threshold fixed, see
# tests/test_estimate.py: predicted/measured 1.17 for tiny and 0.90 for ultra_lightweight on the sparse path). They
# have not been calibrated on a GPU: there the CUDA context (a few hundred MB), the caching allocator's rounding and
# cuDNN/Triton workspaces come on top, so a "fits" near the budget needs headroom. The sparse factor was
# recalibrated (0.8 -> 0.95) when the norms and convs stopped passing index tensors through autograd's saved tensors.
CALIBRATED_ON = "cpu"
BACKWARD_FACTOR = {"dense": 1.0, "sparse": 0.95}
STEP_OVERHEAD = 40_000_000
PROBE_SPARSE_VOXELS = 3000  # active voxels per probe sample, enough that fixed costs do not dominate


@dataclass
class Estimate:
    """Predicted peak bytes of one training step (forward, backward, AdamW step) on one path."""

    path: str
    voxels: int
    weights: int
    grads_and_optimizer: int
    activations: int
    overhead: int = STEP_OVERHEAD

    @property
    def total(self) -> int:
        """Weights + gradients + AdamW state + activations (with the backward's transient buffers) + overhead."""
        return self.weights + self.step_peak

    @property
    def step_peak(self) -> int:
        """What the step adds above a process that already holds the model (what the benchmarks measure)."""
        return self.grads_and_optimizer + self.activations + self.overhead

    def to_dict(self) -> dict:
        """Plain dict with the totals."""
        return {**asdict(self), "total": self.total, "step_peak": self.step_peak}


def _probe_grid(config: UNetConfig, grid: Sequence[int], cells_wanted: int):
    """A small grid whose every level divides like the real one: about 16 deep, rows and columns the smallest
    multiples of the total strides that give `cells_wanted` cells (never more than the real grid)."""
    strides = config.level_strides()
    fz, fy, fx = (math.prod(s[a] for s in strides) for a in range(3))
    d, h, w = grid
    depth = min(d, fz * max(1, math.ceil(16 / fz)))
    m = 1
    while depth * fy * m * fx * m < cells_wanted and fy * (m + 1) <= h and fx * (m + 1) <= w:
        m += 1
    return (depth, min(h, fy * m), min(w, fx * m))


def _saved_bytes(model: UNet3D, field, batch: int, scale: float = 1.0) -> int:
    """Bytes autograd keeps for the backward of one forward pass; with checkpointing, modelled from a pass
    without it: every ResBlock and AttentionBlock that recomputes keeps only its input, and the backward recomputes
    one block at a time. A block recomputes unless it runs by hand on a field whose values, `scale` times the
    probe's, hold fewer than recompute.MIN_RECOMPUTE_BYTES (then it keeps its activations: recompute.keep)."""
    seen, per_block, block_inputs, kept, current, alive = {}, {}, {}, set(), [], []

    def pack(t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen[key] = storage.nbytes()
            if current:
                per_block[current[-1]] = per_block.get(current[-1], 0) + storage.nbytes()
        # the graph gets an index, not the tensor: a tensor an op saves of its own output would otherwise keep its
        # graph alive for good, a reference cycle autograd cannot see; `alive` keeps every saved storage until
        # the count is done (so no address is reused) and is emptied then, as the graph holds these hooks
        alive.append(t)
        return len(alive) - 1

    def unpack(_):
        raise RuntimeError("the estimator's probe forward has no backward")

    def enter(module, args):
        current.append(id(module))
        values = args[0].feats if hasattr(args[0], "feats") else args[0].data
        block_inputs[id(module)] = values.numel() * values.element_size()
        covered = by_hand(module, args[0]) if isinstance(module, ResBlock) else attention_by_hand(module, args[0])
        if covered and block_inputs[id(module)] * scale < recompute.MIN_RECOMPUTE_BYTES:
            kept.add(id(module))

    checkpointing = model.config.use_checkpoint
    model.config.use_checkpoint = False
    blocks = [m for m in model.modules() if isinstance(m, (ResBlock, AttentionBlock))]
    for b in blocks:
        b.use_checkpoint = False
    handles = [b.register_forward_pre_hook(enter) for b in blocks]
    handles += [b.register_forward_hook(lambda m, a, o: current.pop() and None) for b in blocks]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            model.train()
            model(field, torch.zeros(batch))
    finally:
        alive.clear()
        for h in handles:
            h.remove()
        model.config.use_checkpoint = checkpointing
        for b in blocks:
            b.use_checkpoint = checkpointing
    total = sum(seen.values())
    recomputed = [block for block in block_inputs if block not in kept]
    if not checkpointing or not recomputed:
        return total
    sizes = [per_block.get(block, 0) for block in recomputed]
    return total - sum(sizes) + sum(block_inputs[block] for block in recomputed) + max(sizes)


def estimate(config: UNetConfig, grid: Sequence[int], batch: int, occupancy: float, path: str,
             seed: int = 0) -> Estimate:
    """Peak memory estimate of a training step of UNet3D(config) on `batch` samples of `grid` (D, H, W)."""
    if path not in BACKWARD_FACTOR:
        raise ValueError(f"path must be 'dense' or 'sparse', got {path!r}")
    if not 0 < occupancy <= 1:
        raise ValueError(f"occupancy must be in (0, 1], got {occupancy}")
    grid = tuple(int(g) for g in grid)
    config.check_grid(grid)
    cells = grid[0] * grid[1] * grid[2]
    wanted = 32768 if path == "dense" else int(PROBE_SPARSE_VOXELS / occupancy)
    probe = _probe_grid(config, grid, wanted)
    torch.manual_seed(seed)
    model = UNet3D(config)
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(1, config.in_channels, *probe, generator=g)
    if path == "dense":
        field, probe_voxels, voxels = DenseVoxels(data), math.prod(probe), cells * batch
    else:
        mask = torch.rand(1, 1, *probe, generator=g) < occupancy
        mask.view(-1)[0] = True  # never an empty probe
        field = DenseVoxels(data * mask, mask).to_sparse()
        probe_voxels, voxels = field.num_voxels, max(1, round(occupancy * cells * batch))
    saved = _saved_bytes(model, field, 1, voxels / probe_voxels)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    activations = int(saved * voxels / probe_voxels * BACKWARD_FACTOR[path])
    return Estimate(path, voxels, params, 3 * params, activations)


def parse_bytes(text: str) -> int:
    """'24GB', '24GiB', '512MB', '1e9' -> bytes (GB = 1e9, GiB = 2^30)."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?i?B?)?\s*", str(text))
    if not m:
        raise ValueError(f"cannot read a memory size from {text!r} (e.g. 24GB, 16GiB, 512MB)")
    unit = (m.group(2) or "B").upper().replace("IB", "I")
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KI": 2**10, "MI": 2**20, "GI": 2**30,
             "TI": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(unit)
    if scale is None:
        raise ValueError(f"unknown memory unit in {text!r}")
    return int(float(m.group(1)) * scale)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_radar.estimate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="lightweight", choices=list(PRESETS))
    p.add_argument("--grid", default="32,128,128", help="D,H,W (default 32,128,128)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--occupancy", type=float, default=0.03, help="share of active voxels (sparse path)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="fp16/bf16 = the preset with use_fp16 (autocast); default: the preset's setting")
    p.add_argument("--checkpoint", choices=("on", "off"), default=None, help="activation checkpointing")
    p.add_argument("--budget", default="24GB", help="memory to fit in, e.g. 24GB")
    args = p.parse_args(argv)
    try:
        grid = tuple(int(v) for v in args.grid.split(","))
        budget = parse_bytes(args.budget)
        overrides = {}
        if args.dtype:
            overrides["use_fp16"] = args.dtype != "fp32"
        if args.checkpoint:
            overrides["use_checkpoint"] = args.checkpoint == "on"
        config = PRESETS[args.preset](in_channels=8, out_channels=4, input_size=grid, **overrides)
        results = [estimate(config, grid, args.batch, args.occupancy, path) for path in ("dense", "sparse")]
    except ValueError as exc:
        p.error(str(exc))
    print(f"{args.preset}, grid {args.grid}, batch {args.batch}, {args.occupancy:.1%} active, "
          f"{'fp16/bf16' if config.use_fp16 else 'fp32'}, checkpointing {'on' if config.use_checkpoint else 'off'}")
    for r in results:
        verdict = "fits" if r.total <= budget else "does NOT fit"
        print(f"  {r.path:6s} {r.total / 1e9:8.2f} GB (activations {r.activations / 1e9:.2f}, weights "
              f"{r.weights / 1e9:.3f}, grads+AdamW {r.grads_and_optimizer / 1e9:.3f}) -> {verdict} in "
              f"{budget / 1e9:.1f} GB")
    print(f"  (factors calibrated on {CALIBRATED_ON} peak memory; on a GPU the CUDA context, allocator rounding and "
          "kernel workspaces come on top: leave headroom near the budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
