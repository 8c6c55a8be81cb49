"""`python -m sparse_radar.train`: EDM / consistency training on radar voxels (see --help).

Multi-process: `torchrun --standalone --nproc_per_node=2 -m sparse_radar.train --batch_size 2`
(gloo on CPU, NCCL on GPU; --batch_size is per process)."""
from __future__ import annotations

import json
import os
import sys
import time

from tqdm import tqdm

from .training import distributed, pipeline
from .training.checkpoint import CheckpointWriteError
from .training.config import PROG, parse_args
from .training.run_folder import plan_run, prepare_folder
from .training.trainer import Trainer, TrainingStopped, metrics_columns, open_metrics, write_config


def run(argv=None) -> int:
    """Train as the flags say; returns the exit code (2: bad flags or data, 1: training stopped)."""
    cfg = parse_args(argv)
    ctx = distributed.setup()
    if cfg.stage == "all":
        try:
            return _pipeline(cfg, ctx)
        finally:
            distributed.teardown(ctx)
    try:
        try:  # every check that needs the checkpoint, the data or the run folder, before anything is written
            trainer = Trainer(cfg, ctx, plan_run(cfg))
        except ValueError as exc:  # bad flags, a conflicting run folder, malformed data: a usage error
            if ctx.main:
                print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        return _loop(trainer, trainer.cfg, ctx)
    except (TrainingStopped, CheckpointWriteError) as exc:
        if ctx.main:
            print(f"training stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        distributed.teardown(ctx)


def _pipeline(cfg, ctx) -> int:
    """--stage all: vae, ldm and cd in turn, each skipped when finished and resumed when cut short."""
    try:
        lines = pipeline.describe(cfg)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if ctx.main:
        print("--stage all: " + "; ".join(lines), flush=True)
    given = cfg.given_flags
    for stage in pipeline.PIPELINE:
        stage_cfg, stage_given, finished = pipeline.next_stage(cfg, stage, given)
        if finished:
            if ctx.main:
                print(f"{stage}: finished ({stage_cfg.out}, {stage_cfg.steps} steps), skipped", flush=True)
            continue
        try:
            trainer = Trainer(stage_cfg, ctx, plan_run(stage_cfg, stage_given))
        except ValueError as exc:
            if ctx.main:
                print(f"{PROG}: error: --stage all, {stage}: {exc}", file=sys.stderr)
            return 2
        try:
            _loop(trainer, trainer.cfg, ctx)
        except (TrainingStopped, CheckpointWriteError) as exc:
            if ctx.main:
                print(f"training stopped at stage {stage}: {exc}; run the same command again to resume",
                      file=sys.stderr)
            return 1
    return 0


def _loop(trainer: Trainer, cfg, ctx) -> int:
    metrics = writer = None
    if ctx.main:
        for line in prepare_folder(trainer.plan):
            print(line, flush=True)
        write_config(cfg, trainer.model, trainer.diffusion)
        metrics, writer = open_metrics(os.path.join(cfg.out, "metrics.csv"), trainer.step, trainer.plan.history,
                                       metrics_columns(trainer.stage))
        params = sum(p.numel() for p in trainer.model.parameters())
        latent = f"dense {cfg.preset} UNet on the latent grid {tuple(getattr(trainer.model.config, 'input_size', ()))}"
        what = {"structure": f"{cfg.field} structure network",
                "vae": f"{cfg.field} {cfg.vae_preset} {cfg.vae_kind}", "ldm": f"ldm (EDM), {latent}",
                "cd": f"cd (consistency distillation), {latent}"}.get(cfg.stage,
                                                                     f"{cfg.mode}, {cfg.field} {cfg.preset} UNet")
        where = f", support {cfg.support}" if cfg.stage == "diffusion" else ""
        print(f"run folder {cfg.out}: {what} ({params / 1e6:.2f} M parameters) on {cfg.data} ({len(trainer.dataset)} "
              f"scans, grid {trainer.grid_shape}){where}, {ctx.world_size} process(es)" +
              (f", resuming at step {trainer.step}" if trainer.step else ""), flush=True)
    bar = tqdm(total=cfg.steps, initial=trainer.step, disable=not (ctx.main and cfg.progress), unit="step",
               dynamic_ncols=True, mininterval=1.0)
    start, skipped = time.perf_counter(), 0
    try:
        while trainer.step < cfg.steps:
            row = trainer.train_step()
            row["seconds"] = round(time.perf_counter() - start, 3)
            bar.update(1)
            if row.get("skipped_samples") and ctx.main:
                skipped += row["skipped_samples"]
                bar.write(f"step {row['step']}: {row['skipped_samples']} sample(s) with an empty support skipped "
                          f"({skipped} so far)"
                          f"{'; no update' if row['skipped_samples'] == trainer.samples_per_step else ''}",
                          file=sys.stderr)
            shares = {c: f"{row[c]:.2f}" for c in trainer.stage.mean_columns}  # coverage, or recall
            bar.set_postfix(loss=f"{row['loss']:.4f}", **shares, refresh=False)
            if ctx.main:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
                metrics.flush()
            done = trainer.step == cfg.steps
            if ctx.main and (trainer.step % cfg.save_every == 0 or done):
                trainer.save()
            if ctx.main and cfg.preview_every and trainer.step % cfg.preview_every == 0:
                trainer.preview(os.path.join(cfg.out, f"preview_step_{trainer.step:06d}.png"))
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    gap = distributed.max_param_gap(ctx, trainer.model)
    if ctx.main:
        trainer.preview(os.path.join(cfg.out, "preview.png"))
        if ctx.active:
            with open(os.path.join(cfg.out, "ddp.json"), "w", encoding="utf-8") as fh:
                json.dump({"world_size": ctx.world_size, "max_param_gap_between_ranks": gap}, fh)
        print(f"done: {trainer.step} steps; checkpoint {os.path.join(cfg.out, 'checkpoints', 'latest.pt')}, "
              f"preview {os.path.join(cfg.out, 'preview.png')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
