"""`--stage all`: the reference's latent pipeline in one command, vae -> ldm -> cd, each stage in its own folder
under --out and handed the previous stage's run. Running the same command again resumes it: a finished stage is
skipped, a stage cut short continues from its latest checkpoint."""
from __future__ import annotations

import dataclasses
import os
from typing import List, Tuple

from .checkpoint import newest_checkpoint
from .config import DEFAULT_OUT, MODEL_FLAGS, TrainConfig
from .run_folder import run_outputs

PIPELINE = ("vae", "ldm", "cd")
VAE_ONLY = ("vae_preset", "vae_kind")
UNET_ONLY = ("preset",) + MODEL_FLAGS + ("cm_steps", "cd_target_ema")


def stage_steps(cfg: TrainConfig) -> Tuple[int, int, int]:
    """Steps of vae, ldm and cd: --stage_steps, else --steps for each."""
    if cfg.stage_steps is None:
        return (cfg.steps,) * 3
    try:
        steps = tuple(int(v) for v in cfg.stage_steps.split(","))
    except ValueError:
        steps = ()
    if len(steps) != 3 or min(steps) < 1:
        raise ValueError(f"--stage_steps must be three ints >= 1 (vae,ldm,cd), got {cfg.stage_steps!r}")
    return steps  # type: ignore[return-value]


def next_stage(cfg: TrainConfig, stage: str, given: frozenset) -> Tuple[TrainConfig, frozenset, bool]:
    """The TrainConfig of one stage of the pipeline, the flags it counts as given, and whether it is finished."""
    root = cfg.out or DEFAULT_OUT
    steps = dict(zip(PIPELINE, stage_steps(cfg)))[stage]
    folder = os.path.join(root, stage)
    found = newest_checkpoint(folder) if os.path.isdir(folder) else None
    done_step = int(found[1]["step"]) if found else 0
    # a stage stopped before its first checkpoint left only its own run files: it starts again (--overwrite)
    restart = not found and bool(run_outputs(folder))
    values = dict(stage=stage, out=folder, steps=steps, stage_steps=None, resume=folder if done_step else None,
                  overwrite=cfg.overwrite or restart,
                  vae=os.path.join(root, "vae") if stage == "ldm" else None,
                  teacher=os.path.join(root, "ldm") if stage == "cd" else None,
                  structure=cfg.structure if stage == "ldm" else None)  # --ldm_condition structure's network
    dropped = VAE_ONLY if stage != "vae" else UNET_ONLY
    values.update({name: getattr(TrainConfig(), name) for name in dropped})
    stage_cfg = dataclasses.replace(cfg, **values)
    unused = {"stage", "stage_steps", "out"} | ({"structure"} if stage != "ldm" else set())
    stage_given = frozenset(given - set(dropped) - unused) | {"steps"}
    stage_cfg.given_flags = stage_given
    return stage_cfg, stage_given, done_step >= steps


def describe(cfg: TrainConfig) -> List[str]:
    """One line per stage: its folder and steps."""
    root = cfg.out or DEFAULT_OUT
    return [f"{name}: {os.path.join(root, name)}, {n} steps" for name, n in zip(PIPELINE, stage_steps(cfg))]
