"""One configuration of the UNet training-step benchmark, run in a fresh process so peak memory is clean.

Prints one JSON line: median step time (ms) and peak memory above the idle baseline (bytes), for one path.
`python -m benchmarks.step_worker --preset tiny --grid 16,64,64 --batch 2 --occupancy 0.03 --path sparse`
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import resource
import statistics
import sys
import time

import numpy as np
import torch

from sparse_radar import DenseVoxels, SparseVoxels, UNet3D
from sparse_radar.models import PRESETS


def current_rss() -> int:
    """Resident memory of this process now, in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    """High-water mark of resident memory of this process (VmHWM), in bytes.

    Not getrusage's ru_maxrss: Linux carries that across exec, so a worker would inherit its parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


MMAP_THRESHOLD = 128 << 10  # default of --mmap-threshold: glibc's own starting value, kept fixed


def fix_mmap_threshold(nbytes: int) -> bool:
    """glibc: serve every allocation of nbytes or more by mmap, a fixed threshold (mallopt M_MMAP_THRESHOLD).

    glibc's default raises the threshold (up to 32 MiB) each time a mapped block is freed, so tensors of a few MiB
    end up in the heap, where freed space stays resident and fragments; peak RSS then measures the allocator's
    slack as well as the tensors. With a fixed threshold peak RSS follows the live tensors, which is what CUDA's
    max_memory_allocated counts. False where there is no glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> None:
    """Reset VmHWM to the current resident size (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def structured_mask(grid, batch: int, seed: int = 0) -> torch.Tensor:
    """bool [B, 1, D, H, W]: LiDAR voxels of synthetic street scans voxelized onto `grid`.

    The reference dataset's native grid (80, 600, 200) uses its range [0, -20, -6, 120, 20, 10] at 0.2 m;
    other grids cover the default synthetic range."""
    from sparse_radar.data import NTU4DRADLM_GRID, GridSpec, TARGET_CHANNELS, generate_scan, voxelize
    d, h, w = grid
    spec = NTU4DRADLM_GRID if tuple(grid) == NTU4DRADLM_GRID.shape else \
        GridSpec((0.0, -25.6, -2.0, 51.2, 25.6, 4.4), (51.2 / h, 51.2 / w, 6.4 / d))
    mask = torch.zeros(batch, 1, d, h, w, dtype=torch.bool)
    for b in range(batch):
        coords, _ = voxelize(generate_scan(seed + b)["lidar"], spec, TARGET_CHANNELS)
        c = torch.from_numpy(coords.astype(np.int64))
        mask[b, 0, c[:, 0], c[:, 1], c[:, 2]] = True
    return mask


def make_input(grid, batch: int, occupancy: float, pattern: str, channels: int, seed: int = 0):
    """(mask, data) of a benchmark input: random voxels at `occupancy`, or synthetic scans' LiDAR voxels
    (dilated in x/y until they reach about `occupancy`)."""
    g = torch.Generator().manual_seed(seed)
    if pattern == "random":
        mask = torch.rand(batch, 1, *grid, generator=g) < occupancy
    else:  # scene voxels, dilated in x/y (as a diffusion support around them is) up to the requested share
        mask = structured_mask(grid, batch, seed)
        for _ in range(8):
            if float(mask.float().mean()) >= 0.9 * occupancy:
                break
            mask = torch.nn.functional.max_pool3d(mask.float(), (1, 3, 3), 1, (0, 1, 1)) > 0
    data = torch.randn(batch, channels, *grid, generator=g) * mask
    return mask, data


def launch_counts(events) -> dict:
    """Kernel launches (CUDA runtime and driver launch calls: torch's kernels and Triton's) and aten calls."""
    launches = sum(e.count for e in events if "LaunchKernel" in e.key)
    aten = sum(e.count for e in events if e.key.startswith("aten::"))
    return {"kernel_launches_per_step": launches, "aten_calls_per_step": aten}


def build(preset: str, grid, overrides: dict, in_channels: int = 8) -> UNet3D:
    """The preset's model for this grid, 8 channels in (latent: 4 + 5), 4 out."""
    return UNet3D(PRESETS[preset](in_channels=in_channels, out_channels=4, input_size=tuple(grid), **overrides))


class LatentStep(torch.nn.Module):
    """A latent-diffusion training step's network work: the frozen lightweight VAE encodes the target voxels
    (sparse, no gradients) to the 4x4x4 smaller latent grid, where the UNet runs dense on latent + radar."""

    def __init__(self, preset: str, grid, overrides: dict):
        super().__init__()
        from sparse_radar.models.latent import LATENT_CONDITION_CHANNELS
        from sparse_radar.models.vae import VAE3D, create_lightweight_vae_config
        self.vae = VAE3D(create_lightweight_vae_config()).eval().requires_grad_(False)
        self.latent_grid = self.vae.config.latent_shape(grid)
        self.unet = build(preset, self.latent_grid, overrides, 4 + LATENT_CONDITION_CHANNELS)
        self.config = self.unet.config

    def forward(self, target: SparseVoxels, labels: torch.Tensor) -> DenseVoxels:
        with torch.no_grad():
            z, _ = self.vae.encode(target)
        radar = torch.zeros(z.shape[0], 5, *z.shape[2:], device=z.device)  # the pooled radar: no network work
        return self.unet(DenseVoxels(torch.cat([z, radar], dim=1)), labels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--grid", default="16,64,64")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--occupancy", type=float, default=0.03)
    p.add_argument("--pattern", choices=("random", "structured"), default="random")
    p.add_argument("--path", choices=("sparse", "dense"), default="sparse")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds: after the first timed step, no step starts that would end past the budget "
                        "(judged by the step before); the JSON says how many ran (timed_steps). 0: no budget")
    p.add_argument("--overrides", default="{}", help="JSON dict of UNetConfig overrides")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sdpa", choices=("auto", "math"), default="auto",
                   help="math: plain softmax attention that materialises the score matrix (the ablation baseline)")
    p.add_argument("--mmap-threshold", type=int, default=MMAP_THRESHOLD,
                   help="CPU: fixed glibc mmap threshold in bytes (see fix_mmap_threshold); 0: glibc's dynamic "
                        "default, whose peak RSS includes heap fragmentation")
    p.add_argument("--profile", action="store_true",
                   help="after the timed steps, profile one more with torch.profiler: its top operators go to "
                        "stderr, its kernel launches (CUDA) and operator calls into the JSON")
    p.add_argument("--latent", action="store_true",
                   help="a latent-diffusion step instead: the lightweight VAE encodes the (sparse) target voxels, "
                        "the UNet trains on the 4x4x4 smaller latent grid (dense)")
    p.add_argument("--field", choices=("fresh", "cached"), default="fresh",
                   help="sparse path: fresh builds the field (and so its kernel maps) every step, as the trainer "
                        "does with each batch; cached reuses one field and its maps")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.time_budget < 0:
        p.error(f"--time-budget must be >= 0 seconds, got {args.time_budget}")
    if args.mmap_threshold < 0:
        p.error(f"--mmap-threshold must be >= 0, got {args.mmap_threshold}")
    fixed = args.mmap_threshold > 0 and fix_mmap_threshold(args.mmap_threshold)
    grid = tuple(int(v) for v in args.grid.split(","))
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.latent:
        model = LatentStep(args.preset, grid, json.loads(args.overrides)).to(device)
    else:
        model = build(args.preset, grid, json.loads(args.overrides)).to(device)
    mask, data = make_input(grid, args.batch, args.occupancy, args.pattern, 4 if args.latent else 8)
    # sparse: the active voxels; dense: the plain dense model on the same data (what users run today)
    field = DenseVoxels(data, mask).to_sparse() if args.path == "sparse" or args.latent else DenseVoxels(data)
    field = field.to(device)
    fresh = (args.path == "sparse" or args.latent) and args.field == "fresh"
    if fresh:
        feats, coords = field.feats, field.coords
    active = int(mask.sum())
    del mask, data
    labels = torch.zeros(args.batch, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = current_rss()

    def step():
        x = SparseVoxels(feats, coords, grid, args.batch) if fresh else field  # new structure: maps rebuilt
        out = model(x, labels)
        values = out.feats if isinstance(out, SparseVoxels) else out.data
        values.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def attention_backend():
        if args.sdpa != "math":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel([SDPBackend.MATH])

    times, began = [], time.perf_counter()
    for i in range(args.steps + 1):
        # the second step always runs: with the optimizer's state allocated, it is the steady state's peak
        if i > 1 and args.time_budget and time.perf_counter() - began + times[-1] > args.time_budget:
            break
        start = time.perf_counter()
        with attention_backend():
            step()
        if i:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else peak_rss() - base
    profile = {}
    if args.profile:  # one more step, not timed: the profiler's overhead stays out of the numbers above
        with attention_backend(), torch.profiler.profile() as prof:
            step()
        events = prof.key_averages()
        print(events.table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
        profile = launch_counts(events)
    print(json.dumps({"preset": args.preset, "grid": list(grid), "batch": args.batch, "occupancy": args.occupancy,
                      "pattern": args.pattern, "path": "latent" if args.latent else args.path, "active_voxels": active,
                      "active_share": active / (args.batch * grid[0] * grid[1] * grid[2]),
                      "step_ms": statistics.median(times) * 1e3, "timed_steps": len(times),
                      "peak_bytes": peak,
                      "params": sum(p.numel() for p in model.parameters() if p.requires_grad), "device": str(device),
                      "mmap_threshold": args.mmap_threshold if fixed else 0, "field": args.field, **profile}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
