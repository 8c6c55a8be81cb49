"""`python -m benchmarks.host_time`: the host time of a training step of the issue's counter
(../shared/tools/count_step.py) split into forward, backward and the optimizer, on this CPU.

The counter's model and data: the preset with model_channels 16, grid 8x32x32, batch 2, 5% random voxels, the triton
backend under TRITON_INTERPRET=1, attention's CUDA path (all samples in one padded call) and every launch stubbed as
the counter stubs them, the map builders' too (so the time is the host's: Python, torch's dispatcher and autograd,
and the CPU arithmetic of the ops that run on it; the coarse voxel sets are whatever the builders' buffers held, as
in the counter), AdamW(foreach=True). Medians and minima over --steps steps after two warm-up steps; run it with
OMP_NUM_THREADS=1, and alternate two checkouts to compare them (the times of a shared machine drift by tens of per
cent). The counter's fields are small, so its checkpointed blocks keep their activations (recompute.keep);
--always_recompute times them recomputing, as blocks on fields of MIN_RECOMPUTE_BYTES and more do.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels interpreted, here stubbed

import torch  # noqa: E402

from sparse_radar import DenseVoxels, SparseVoxels, UNet3D  # noqa: E402
from sparse_radar.kernels.backends import kernel_settings  # noqa: E402
from sparse_radar.models import PRESETS  # noqa: E402

PARTS = ("forward", "backward", "optimizer", "step")


@contextlib.contextmanager
def stubbed_triton():
    """Every interpreted Triton launch returns at once (its outputs keep what their buffers held)."""
    import triton.runtime.interpreter as interpreter
    original = interpreter.InterpretedFunction.run
    interpreter.InterpretedFunction.run = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        interpreter.InterpretedFunction.run = original


@contextlib.contextmanager
def counter_paths(always_recompute: bool):
    """Attention's CUDA path (all samples in one padded call), as the counter sets it; always_recompute: every
    checkpointed block recomputes (recompute.MIN_RECOMPUTE_BYTES 0), small ones too. Both restored on exit."""
    from sparse_radar.nn import attention_cores, recompute
    saved = attention_cores.ALL_SAMPLES_AT_ONCE_ON_CPU, recompute.MIN_RECOMPUTE_BYTES
    attention_cores.ALL_SAMPLES_AT_ONCE_ON_CPU = True
    if always_recompute:
        recompute.MIN_RECOMPUTE_BYTES = 0
    try:
        yield
    finally:
        attention_cores.ALL_SAMPLES_AT_ONCE_ON_CPU, recompute.MIN_RECOMPUTE_BYTES = saved


def time_steps(preset: str, steps: int, checkpointing: bool = True, always_recompute: bool = False) -> dict:
    """{part: [seconds per step]} of `steps` steps of the counter's model, Triton stubbed."""
    with counter_paths(always_recompute):
        return _time_steps(preset, steps, checkpointing)


def counter_model(preset: str, checkpointing: bool = True):
    """(model, forward and backward of one step, AdamW(foreach=True) on its weights): the counter's."""
    torch.manual_seed(0)
    grid = (8, 32, 32)
    model = UNet3D(PRESETS[preset](model_channels=16, use_fp16=False, use_checkpoint=checkpointing))
    mask = torch.rand(2, 1, *grid) < 0.05
    sparse = DenseVoxels(torch.randn(2, model.config.in_channels, *grid) * mask, mask).to_sparse()
    labels = torch.zeros(2)

    def forward():
        return model(SparseVoxels(sparse.feats, sparse.coords, grid, 2), labels)
    return model, forward, torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)


def _time_steps(preset: str, steps: int, checkpointing: bool) -> dict:
    model, run_forward, optimizer = counter_model(preset, checkpointing)
    times = {part: [] for part in PARTS}
    with kernel_settings(backend="triton"), stubbed_triton():
        for step in range(steps + 2):
            start = time.perf_counter()
            out = run_forward()
            forward = time.perf_counter()
            out.feats.float().square().mean().backward()
            backward = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            end = time.perf_counter()
            if step >= 2:
                for part, seconds in zip(PARTS, (forward - start, backward - forward, end - backward, end - start)):
                    times[part].append(seconds)
    return times


def main(argv=None) -> None:
    """Print a markdown table of the parts' medians and minima in ms."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lightweight", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=31)
    parser.add_argument("--no_checkpoint", action="store_true", help="the preset without activation checkpointing")
    parser.add_argument("--always_recompute", action="store_true",
                        help="every checkpointed block recomputes, small ones too (recompute.MIN_RECOMPUTE_BYTES 0)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    times = time_steps(args.preset, args.steps, not args.no_checkpoint, args.always_recompute)
    print("| part | median ms | min ms |\n|---|---|---|")
    for part in PARTS:
        print(f"| {part} | {1e3 * statistics.median(times[part]):.1f} | {1e3 * min(times[part]):.1f} |")


if __name__ == "__main__":
    main()
