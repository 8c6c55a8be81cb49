"""`python -m benchmarks.host_instructions`: the host instructions of the counter's forward and backward (and of
its AdamW step), counted by valgrind's callgrind: a measure of host cost that a shared machine's drifting clock
does not move (its times drift by tens of per cent; these counts by about one per cent).

The counter's model, data and settings as `benchmarks.host_time` runs them (Triton stubbed, attention's CUDA
path). It runs a worker under callgrind twice, with --warm steps and with --warm + --steps steps, and divides the
difference of the two totals by --steps, so the imports and the warm-up (first launches, autotuner, caches) cancel.
Needs valgrind (not a dependency of the project: apt install valgrind); about two minutes a run.

The counter stubs the map builders too, so its coarse voxel sets are whatever their buffers held: they change with a
run's allocations, and a change that only moves allocations moves the count with them. --real_levels compares two
versions on the field's real voxel sets instead (the builders run in the first step and are replayed after).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile


def _worker(preset: str, steps: int, part: str, real_levels: bool = False) -> None:
    """`steps` steps of the counter's model, of which `part` (fwd_bwd: forward and backward; opt: also AdamW);
    real_levels: the map builders run (interpreted) in the first step and their results are written back in every
    later one, so each step works on the field's real coarse voxel sets, the same in every run."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import gc

    from sparse_radar.kernels.backends import kernel_settings

    from .host_time import counter_model, counter_paths, stubbed_triton
    from .launch_count import BuilderTape, counting
    model, run_forward, optimizer = counter_model(preset)
    params = list(model.parameters())
    tape = BuilderTape()
    gc.collect()
    gc.disable()  # a collection's place in the run moves with the run's allocations: leave it out of both runs
    try:
        launches = counting(dispatch=False, tape=tape) if real_levels else stubbed_triton()
        with counter_paths(False), kernel_settings(backend="triton"), launches as stub:
            for step in range(steps):
                if real_levels and step:
                    tape.rewind()
                run_forward().feats.float().square().mean().backward()
                if part == "opt":
                    optimizer.step()
                for p in params:
                    p.grad = None
        if real_levels and stub.replay_misses:
            raise RuntimeError(f"{stub.replay_misses} map builds differed from the first step's: not replayed")
    finally:
        gc.enable()


def _total(preset: str, steps: int, part: str, real_levels: bool = False) -> int:
    """callgrind's instruction total of a worker run of `steps` steps."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                   "benchmarks.host_instructions", "--worker", str(steps), "--preset", preset, "--part", part] + \
            (["--real_levels"] if real_levels else [])
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
    parser.add_argument("--real_levels", action="store_true",
                        help="the field's real coarse voxel sets (the map builders run once, then replayed) instead "
                             "of the counter's stubbed ones, which change with the run's allocations: for comparing "
                             "two versions; forward and backward then also compute on them")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.preset, args.worker, "opt" if args.part == "opt" else "fwd_bwd", args.real_levels)
        return
    if args.steps < 1 or args.warm < 1:
        parser.error("--steps and --warm must be at least 1")
    if shutil.which("valgrind") is None:
        sys.exit("benchmarks.host_instructions needs valgrind (apt install valgrind)")
    print("| part | host instructions per step (M) |\n|---|---|")
    per_part = {}
    for part in (("fwd_bwd", "opt") if args.part == "both" else (args.part,)):
        low = _total(args.preset, args.warm, part, args.real_levels)
        high = _total(args.preset, args.warm + args.steps, part, args.real_levels)
        per_part[part] = (high - low) / args.steps / 1e6
    if "opt" in per_part and "fwd_bwd" in per_part:
        per_part["optimizer"] = per_part.pop("opt") - per_part["fwd_bwd"]
    names = {"fwd_bwd": "forward + backward", "opt": "forward + backward + AdamW", "optimizer": "AdamW"}
    for part, millions in per_part.items():
        print(f"| {names[part]} | {millions:.1f} |")


if __name__ == "__main__":
    main()
