"""`python -m benchmarks.host_instructions`: the host instructions of the counter's forward and backward (and of
its AdamW step), counted by valgrind's callgrind: a measure of host cost that a shared machine's drifting clock
does not move (its times drift by tens of per cent; these counts by about one per cent).

The counter's model, data and settings as `benchmarks.host_time` runs them (Triton stubbed, attention's CUDA
path). It runs a worker under callgrind twice, with --warm steps and with --warm + --steps steps, and divides the
difference of the two totals by --steps, so the imports and the warm-up (first launches, autotuner, caches) cancel.
Needs valgrind (not a dependency of the project: apt install valgrind); about two minutes a run.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile


def _worker(preset: str, steps: int, part: str) -> None:
    """`steps` steps of the counter's model, of which `part` (fwd_bwd: forward and backward; opt: also AdamW)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import gc

    from sparse_radar.kernels.backends import kernel_settings

    from .host_time import counter_model, counter_paths, stubbed_triton
    model, run_forward, optimizer = counter_model(preset)
    params = list(model.parameters())
    gc.collect()
    gc.disable()  # a collection's place in the run moves with the run's allocations: leave it out of both runs
    try:
        with counter_paths(False), kernel_settings(backend="triton"), stubbed_triton():
            for _ in range(steps):
                run_forward().feats.float().square().mean().backward()
                if part == "opt":
                    optimizer.step()
                for p in params:
                    p.grad = None
    finally:
        gc.enable()


def _total(preset: str, steps: int, part: str) -> int:
    """callgrind's instruction total of a worker run of `steps` steps."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                   "benchmarks.host_instructions", "--worker", str(steps), "--preset", preset, "--part", part]
        env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as handle:
            found = re.search(r"^totals: (\d+)", handle.read(), re.M)
    if found is None:
        raise RuntimeError(f"no instruction total in callgrind's output of {command}")
    return int(found.group(1))


def main(argv=None) -> None:
    """Print the instructions per step (millions) of forward and backward, and of the optimizer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lightweight")
    parser.add_argument("--steps", type=int, default=6, help="steps counted (after the warm-up)")
    parser.add_argument("--warm", type=int, default=3, help="warm-up steps, in both runs")
    parser.add_argument("--part", choices=("fwd_bwd", "opt", "both"), default="fwd_bwd")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.preset, args.worker, "opt" if args.part == "opt" else "fwd_bwd")
        return
    if args.steps < 1 or args.warm < 1:
        parser.error("--steps and --warm must be at least 1")
    if shutil.which("valgrind") is None:
        sys.exit("benchmarks.host_instructions needs valgrind (apt install valgrind)")
    print("| part | host instructions per step (M) |\n|---|---|")
    per_part = {}
    for part in (("fwd_bwd", "opt") if args.part == "both" else (args.part,)):
        low, high = _total(args.preset, args.warm, part), _total(args.preset, args.warm + args.steps, part)
        per_part[part] = (high - low) / args.steps / 1e6
    if "opt" in per_part and "fwd_bwd" in per_part:
        per_part["optimizer"] = per_part.pop("opt") - per_part["fwd_bwd"]
    names = {"fwd_bwd": "forward + backward", "opt": "forward + backward + AdamW", "optimizer": "AdamW"}
    for part, millions in per_part.items():
        print(f"| {names[part]} | {millions:.1f} |")


if __name__ == "__main__":
    main()
