"""`python -m benchmarks.launches`: what one real training step of the trainer would launch on a GPU and where it
would wait, counted on the CPU (see benchmarks/launch_count.py for what counts), with its host time.

The step is the trainer's own `train_step()`: a batch from the data, the support, the loss, backward, gradient
clipping, the optimizer and the EMA. Rows: each preset in voxel space, a `--support predicted` step and an ldm
step (fp32 and with the preset's autocast, which an ldm run takes only when --use_fp16 True is given; their frozen
network's per-frame outputs read back from the frame cache, as in every step after the first epoch, and once with
--frame_cache_mb 0), each beside the dense path of the same
model (model_channels 16, which changes no count; grid 8x32x32, batch 2). Sparse rows use the triton kernel backend
under TRITON_INTERPRET=1, its launches counted and stubbed. Host time: median of 5 steps, Triton stubbed (the
kernel-map builders run, interpreted, and their run time is left out), no counter, one thread. On a GPU the kernels
run compiled (the aten count then leaves Triton out) and it also reports the profiler's `cudaLaunchKernel` count and
the step time. Writes launches.json and launches.md (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch  # noqa: E402

if not torch.cuda.is_available():  # before triton is imported: kernels are interpreted (and stubbed) on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sparse_radar.nn.attention_cores as attention_cores  # noqa: E402

from benchmarks.common import machine, markdown_table  # noqa: E402
from benchmarks.launch_count import BuilderTape, counting  # noqa: E402

GRID = "0,-12.8,-2,25.6,12.8,4.4@0.8"  # 8 x 32 x 32
STEP_COMPONENTS = ("maps", "convs", "norms", "attention", "embeddings", "blocks", "loss", "support", "latent",
                   "autograd", "other")  # the forward and backward of the model and its loss
UPDATE_COMPONENTS = ("optimizer", "EMA")
ROWS = {  # name: extra train flags
    "tiny": ["--preset", "tiny"],
    "lightweight": ["--preset", "lightweight"],
    "lightweight-fp32": ["--preset", "lightweight", "--use_fp16", "False"],  # the counter's setting
    "balanced": ["--preset", "balanced"],
    "lightweight-predicted": ["--preset", "lightweight", "--support", "predicted"],  # --support predicted
    "lightweight-predicted-fp32": ["--preset", "lightweight", "--support", "predicted", "--use_fp16", "False"],
    # what a step pays without the frame cache (every step predicts its batch's support): the first epoch's cost
    "lightweight-predicted-fp32-uncached": ["--preset", "lightweight", "--support", "predicted", "--use_fp16", "False",
                                            "--frame_cache_mb", "0"],
    "lightweight-ldm": ["--preset", "lightweight", "--stage", "ldm"],  # --stage ldm on a VAE's latent grid (fp32)
    "lightweight-ldm-fp16": ["--preset", "lightweight", "--stage", "ldm", "--use_fp16", "True"],  # autocast asked
    "lightweight-ldm-uncached": ["--preset", "lightweight", "--stage", "ldm", "--frame_cache_mb", "0"],
    # the LDM whose radar encoder reads the structure network's prediction (kept with the latent in the frame cache)
    "lightweight-ldm-structure": ["--preset", "lightweight", "--stage", "ldm", "--ldm_condition", "structure"],
}


def build_trainer(flags: List[str], folder: str, backend: str):
    """A Trainer on synthetic data for these flags (a structure or VAE run is trained first where needed)."""
    from sparse_radar.train import run as train
    from sparse_radar.training.config import parse_args
    from sparse_radar.training.distributed import DistContext
    from sparse_radar.training.trainer import Trainer
    common = ["--train_size", "2", "--batch_size", "2", "--grid", GRID, "--progress", "False", "--seed", "0"]
    flags = list(flags)
    # the earlier stages a row's run reads (a structure network: --support predicted or --ldm_condition structure),
    # each trained for one step, once per folder
    for needs, stage, flag in (({"predicted", "structure"}, "structure", "--structure"), ({"ldm"}, "vae", "--vae")):
        if needs & set(flags):
            run = os.path.join(folder, stage)
            if not os.path.isdir(run):
                with counting(dispatch=False), contextlib.redirect_stdout(sys.stderr):
                    assert train(common + ["--stage", stage, "--steps", "1", "--out", run]) == 0
            flags += [flag, run]
    out = os.path.join(folder, f"run-{len(os.listdir(folder))}")
    cfg = parse_args(common + flags + ["--model_channels", "16", "--field", backend, "--steps", "100",
                                       "--out", out])
    return Trainer(cfg, DistContext(device=torch.device("cuda" if torch.cuda.is_available() else "cpu")))


def count_step(flags: List[str], backend: str, folder: str, timed_steps: int = 5) -> Dict[str, object]:
    """Counts of one trainer step (after a warm step) and its host time (median of timed_steps, 0: not timed)."""
    trainer = build_trainer(flags, folder, backend)
    kernels = "triton" if backend == "sparse" else "torch"
    cpu_path = attention_cores.ALL_SAMPLES_AT_ONCE_ON_CPU
    attention_cores.ALL_SAMPLES_AT_ONCE_ON_CPU = True  # count the CUDA code path (one padded call for all samples)
    try:
        return _count(trainer, kernels, timed_steps)
    finally:
        attention_cores.ALL_SAMPLES_AT_ONCE_ON_CPU = cpu_path


def _count(trainer, kernels: str, timed_steps: int) -> Dict[str, object]:
    """count_step's work, on a built trainer."""
    from sparse_radar.kernels.backends import kernel_settings
    with kernel_settings(backend=kernels):
        weights = _trained_state(trainer)
        with counting():  # warm: the optimizer's state, cached constants
            trainer.train_step()
        state = weights + _trained_state(trainer, optimizer=True)
        _restore(state)
        with counting() as tally:
            trainer.train_step()
        times, updates, misses = _host_times(trainer, state, timed_steps) if timed_steps else ([], [], None)
    step = tally.total("launches", STEP_COMPONENTS)
    return {
        "launches_fwd_bwd": step, "launches_update": tally.total("launches", UPDATE_COMPONENTS),
        "launches_step": step + tally.total("launches", UPDATE_COMPONENTS),
        "launches_trainer_and_data": tally.total("launches", ("trainer", "data")),
        "triton": tally.triton, "syncs_fwd_bwd": tally.total("syncs", STEP_COMPONENTS),
        "syncs_step": tally.total("syncs", STEP_COMPONENTS + UPDATE_COMPONENTS + ("trainer",)),
        "syncs_data": tally.total("syncs", ("data",)),
        "host_ms": round(1e3 * statistics.median(times), 1) if times else None,
        # of it, the optimizer and EMA: on this CPU their arithmetic over every weight (a few fused launches on CUDA)
        "update_ms": round(1e3 * statistics.median(updates), 1) if updates else None,
        "builder_replay_misses": misses,
        "by_component": {f"{c} {p}": n for (c, p), n in sorted(tally.launches.items())},
        "syncs_by_component": {f"{c} {p}": n for (c, p), n in sorted(tally.syncs.items())},
        "sync_sites": dict(tally.sync_sites.most_common()), "top_ops": tally.ops.most_common(15),
        **(gpu_step(trainer) if torch.cuda.is_available() else {}),
    }


def _host_times(trainer, state: List[tuple], steps: int):
    """(seconds per step, of them the optimizer's and EMA's, map builders the tape could not answer) of `steps`
    steps of one batch, Triton stubbed and the map builders' results replayed from a step recorded before."""
    tape, times, updates = BuilderTape(), [], []
    apply_update = trainer._apply_update

    def timed_update():
        start = time.perf_counter()
        apply_update()
        updates.append(time.perf_counter() - start)
    with counting(dispatch=False, tape=tape) as stub:
        _restore(state)
        first = trainer.step  # every timed step takes this step's batch: the maps recorded are its own
        trainer.train_step()  # records the map builders' results
        trainer._apply_update = timed_update
        try:
            for _ in range(steps):
                _restore(state)
                trainer.step = first
                tape.rewind()
                start = time.perf_counter()
                trainer.train_step()
                times.append(time.perf_counter() - start)
        finally:
            trainer._apply_update = apply_update
    return times, updates, stub.replay_misses


def _trained_state(trainer, optimizer: bool = False) -> List[tuple]:
    """Finite copies of the weights and EMA (or of the optimizer's moments), to restore between stubbed steps:
    stubbed kernels return zeros, which can make a gradient NaN (a real run's are finite) and the next loss NaN."""
    if optimizer:
        tensors = [v for s in trainer.opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    else:
        tensors = list(trainer.model.state_dict().values())
        tensors += [t for ema in trainer.ema.values() for t in ema.state_dict().values()]
    return [(t, torch.nan_to_num(t.detach(), 0.0, 0.0, 0.0)) for t in tensors if t.is_floating_point()]


def _restore(state: List[tuple]) -> None:
    """Write back what _trained_state copied (in place, so the optimizer and the model keep their tensors)."""
    with torch.no_grad():
        for tensor, saved in state:
            tensor.copy_(saved)


def gpu_step(trainer) -> Dict[str, object]:
    """On a GPU: the profiler's cudaLaunchKernel count of one step and the median step time (ms)."""
    from torch.profiler import ProfilerActivity, profile
    trainer.train_step()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.train_step()
        torch.cuda.synchronize()
    launches = sum(e.count for e in prof.key_averages() if e.key == "cudaLaunchKernel")
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"cuda_launch_kernel": launches, "gpu_step_ms": round(1e3 * statistics.median(times), 1)}


def main(argv: Optional[List[str]] = None) -> int:
    """Count every row (or --rows) on both paths; write launches.json and launches.md."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.launches", description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--paths", default="sparse,dense")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [r.strip() for r in args.rows.split(",")]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for row in rows:
            for path in args.paths.split(","):
                print(f"counting {row}, {path} ...", file=sys.stderr, flush=True)
                results[f"{row} | {path}"] = count_step(ROWS[row], path, folder)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "launches.json"), "w", encoding="utf-8") as fh:
        json.dump({"machine": machine(), "rows": results}, fh, indent=2)
    table = markdown_table(
        ["step", "path", "launches fwd+bwd", "of them Triton", "optimizer + EMA", "host syncs", "data syncs (host)",
         "host ms", "of it update ms"] + (["cudaLaunchKernel", "GPU ms"] if torch.cuda.is_available() else []),
        [[key.split(" | ")[0], key.split(" | ")[1], r["launches_fwd_bwd"], r["triton"], r["launches_update"],
          r["syncs_step"], r["syncs_data"], r["host_ms"], r["update_ms"]] +
         ([r["cuda_launch_kernel"], r["gpu_step_ms"]] if "gpu_step_ms" in r else []) for key, r in results.items()])
    with open(os.path.join(args.out, "launches.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
