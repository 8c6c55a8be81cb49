"""Where a run writes, and what --resume / --out / --overwrite may touch: a plan made before anything is written.

Rules (README "Resuming and run folders"):
- a new run refuses an --out that already holds a run's files, unless --overwrite;
- --resume RUN (or RUN/checkpoints/<file>.pt) continues RUN; resuming from a step older than RUN's latest would
  discard RUN's later steps, so it needs --overwrite (or --out to branch);
- --resume FILE outside a run folder needs --out; --out elsewhere branches into a new run folder that starts
  with the source run's metrics up to the checkpoint's step;
- flags that define the run (model, diffusion, data, batch, seed) must agree with the checkpoint; only
  RESUMABLE_FLAGS may change, and each change is logged.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional

from ..models.config import UNetConfig
from .checkpoint import load_checkpoint, save_checkpoint
from .config import CONTROL_FLAGS, DEFAULT_OUT, MODEL_FLAGS, RESUMABLE_FLAGS, TrainConfig, given_flags

STEP_FILE = re.compile(r"step_(\d+)\.pt$")
PREVIEW_STEP_FILE = re.compile(r"preview_step_(\d+)\.png$")


class RunFolderError(ValueError):
    """The flags would overwrite or mix up a run's files; the message says which flag to add."""


@dataclass
class RunPlan:
    """A resolved TrainConfig, the checkpoint to resume (or None) and the file changes the run makes first."""

    cfg: TrainConfig
    state: Optional[dict] = None
    history: Optional[str] = None  # metrics.csv whose rows up to the resumed step start the run's metrics.csv
    remove: List[str] = field(default_factory=list)  # run files deleted before writing (--overwrite)
    reset_latest: bool = False  # rewrite checkpoints/latest.pt as the resumed checkpoint (cut-back run)
    notes: List[str] = field(default_factory=list)  # changed flags, logged at start


def run_outputs(folder: str) -> List[str]:
    """The files of a training run present in folder (config, metrics, checkpoints, previews)."""
    found = [os.path.join(folder, n) for n in ("config.json", "metrics.csv", "ddp.json", "preview.png")
             if os.path.exists(os.path.join(folder, n))]
    found += sorted(glob.glob(os.path.join(folder, "preview_step_*.png")))
    ckpt = os.path.join(folder, "checkpoints")
    if os.path.isdir(ckpt):
        found += sorted(os.path.join(ckpt, n) for n in os.listdir(ckpt)
                        if STEP_FILE.match(n) or n == "latest.pt" or n.startswith(".tmp-"))
    return found


def is_run_folder(folder: str) -> bool:
    """True for a folder a training run wrote: config.json beside a checkpoints/ folder."""
    return os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, "checkpoints"))


def _same(a: str, b: str) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def _refuse_existing(out: str, overwrite: bool, hint: str) -> List[str]:
    present = run_outputs(out)
    if present and not overwrite:
        shown = ", ".join(os.path.relpath(p, out) for p in present[:4]) + (" ..." if len(present) > 4 else "")
        raise RunFolderError(f"--out {out} already holds a training run ({shown}); {hint}, pass --overwrite to "
                             f"replace it, or choose another --out")
    return present


def plan_run(cfg: TrainConfig, given: Optional[frozenset] = None) -> RunPlan:
    """Decide where the run writes and what it resumes; raise RunFolderError before anything would be lost."""
    given = given_flags(cfg) if given is None else given
    if not cfg.resume:
        out = cfg.out or DEFAULT_OUT
        remove = _refuse_existing(out, cfg.overwrite, f"pass --resume {out} to continue it")
        return RunPlan(_with(cfg, out=out), remove=remove)
    path, source = _locate(cfg.resume)
    state = load_checkpoint(path)
    step = int(state["step"])
    if cfg.out:
        out = cfg.out
    elif source is not None:
        out = source
    else:
        raise RunFolderError(f"--resume {cfg.resume}: this checkpoint is not inside a run folder "
                             f"(<run>/checkpoints/<file>.pt), so there is no run to continue: pass --out FOLDER "
                             f"for the continued run")
    plan = RunPlan(_resumed_config(cfg, state, given, out), state)
    plan.notes = _changes(cfg, state, given)
    if source is not None and (_same(out, source) or os.path.abspath(out) == os.path.abspath(source)):
        latest = _latest_step(out)
        if latest is not None and latest > step:
            if not cfg.overwrite:
                raise RunFolderError(
                    f"--resume {cfg.resume} is step {step} of the run {out}, which has gone on to step {latest}: "
                    f"continuing it there would discard steps {step + 1}..{latest}. Pass --out NEW_FOLDER to branch "
                    f"from step {step}, or --overwrite to cut the run back to step {step}")
            plan.remove, plan.reset_latest = _files_after(out, step), True
        plan.history = os.path.join(out, "metrics.csv")
    else:
        plan.remove = _refuse_existing(out, cfg.overwrite, "a resumed run branches into a new folder")
        plan.history = os.path.join(source, "metrics.csv") if source is not None else None
    return plan


def _with(cfg: TrainConfig, **values) -> TrainConfig:
    out = TrainConfig.from_dict({**cfg.to_dict(), **values})
    out.given_flags = given_flags(cfg)
    return out


def _locate(resume: str):
    """(checkpoint file, run folder it belongs to or None)."""
    if os.path.isdir(resume):
        path = os.path.join(resume, "checkpoints", "latest.pt")
        if not os.path.isfile(path):
            raise RunFolderError(f"--resume {resume}: a folder, but not a run folder (no checkpoints/latest.pt)")
        return path, resume
    if not os.path.isfile(resume):
        raise RunFolderError(f"--resume {resume}: no such checkpoint file or run folder")
    parent = os.path.dirname(os.path.abspath(resume))
    run = os.path.dirname(parent)
    if os.path.basename(parent) == "checkpoints" and is_run_folder(run):
        return resume, run
    return resume, None


def _latest_step(folder: str) -> Optional[int]:
    """The highest step a run folder holds (step files and latest.pt), or None."""
    steps = [int(m.group(1)) for n in os.listdir(os.path.join(folder, "checkpoints"))
             if (m := STEP_FILE.match(n))] if os.path.isdir(os.path.join(folder, "checkpoints")) else []
    latest = os.path.join(folder, "checkpoints", "latest.pt")
    if os.path.isfile(latest):
        steps.append(int(load_checkpoint(latest)["step"]))
    return max(steps) if steps else None


def _files_after(folder: str, step: int) -> List[str]:
    """Step checkpoints and step previews of a run that lie after `step`."""
    out = []
    for sub, pattern in (("checkpoints", STEP_FILE), ("", PREVIEW_STEP_FILE)):
        base = os.path.join(folder, sub)
        if os.path.isdir(base):
            out += [os.path.join(base, n) for n in sorted(os.listdir(base))
                    if (m := pattern.match(n)) and int(m.group(1)) > step]
    return out


def _resumed_config(cfg: TrainConfig, state: dict, given: frozenset, out: str) -> TrainConfig:
    saved = TrainConfig.from_dict(state["train_config"])
    conflicts = []
    model_given = [n for n in ("preset",) + MODEL_FLAGS if n in given]
    if model_given:
        saved_model = UNetConfig.from_dict(state["model_config"])
        merged = TrainConfig.from_dict({**saved.to_dict(), **{n: getattr(cfg, n) for n in model_given}})
        wanted = merged.model_config(saved_model.input_size)
        for name in model_given:
            key = name if hasattr(saved_model, name) else None
            if key is None:  # the preset: compare the whole architecture
                if wanted != saved_model:
                    conflicts.append(f"--preset {cfg.preset} (checkpoint: {saved.preset})")
                continue
            if getattr(wanted, key) != getattr(saved_model, key):
                conflicts.append(f"--{name} {getattr(cfg, name)} (checkpoint: {_show(getattr(saved_model, key))})")
    for name in sorted(given - set(model_given) - set(RESUMABLE_FLAGS) - set(CONTROL_FLAGS) - {"preset"}):
        if getattr(cfg, name) != getattr(saved, name):
            conflicts.append(f"--{name} {getattr(cfg, name)} (checkpoint: {getattr(saved, name)})")
    if conflicts:
        raise RunFolderError(
            f"--resume {cfg.resume} continues the checkpoint's run, and these flags differ from it: "
            f"{'; '.join(conflicts)}. Leave them out to continue, or start a new run (without --resume) to change "
            f"them; a resumed run may change only {', '.join('--' + n for n in RESUMABLE_FLAGS)}")
    values = {**saved.to_dict(), **{n: getattr(cfg, n) for n in RESUMABLE_FLAGS if n in given},
              "resume": cfg.resume, "out": out, "overwrite": cfg.overwrite}
    resumed = TrainConfig.from_dict(values)
    if resumed.steps <= int(state["step"]):
        raise RunFolderError(f"--steps {resumed.steps}: the checkpoint is already at step {state['step']}; pass a "
                             f"larger --steps (the run's new total) to continue")
    resumed.given_flags = given
    return resumed


def _changes(cfg: TrainConfig, state: dict, given: frozenset) -> List[str]:
    saved = state["train_config"]
    return [f"--{n} changed on resume at step {state['step']}: {saved.get(n)} -> {getattr(cfg, n)}"
            for n in RESUMABLE_FLAGS if n in given and n != "progress" and saved.get(n) != getattr(cfg, n)]


def _show(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def adopt_teacher(cfg: TrainConfig, teacher_state: dict, given: frozenset) -> TrainConfig:
    """--mode cd: the student is the teacher's architecture; model flags that contradict it are refused, and the
    run's train config records the teacher's preset and model flags (so config.json agrees with itself)."""
    teacher_model = UNetConfig.from_dict(teacher_state["model_config"])
    teacher_train = teacher_state.get("train_config", {})
    model_given = [n for n in ("preset",) + MODEL_FLAGS if n in given]
    wanted = cfg.model_config(teacher_model.input_size) if model_given else teacher_model
    bad = [f"--{n} {getattr(cfg, n)} (teacher: {_show(getattr(teacher_model, n, teacher_train.get(n)))})"
           for n in model_given if (getattr(wanted, n) != getattr(teacher_model, n) if hasattr(teacher_model, n)
                                    else wanted != teacher_model)]
    if bad:
        raise RunFolderError(f"--mode cd trains a student of the teacher's architecture, and these flags contradict "
                             f"it: {'; '.join(bad)}. Leave them out")
    values = {n: teacher_train.get(n, getattr(cfg, n)) for n in ("preset",) + MODEL_FLAGS}
    adopted = TrainConfig.from_dict({**cfg.to_dict(), **values})
    adopted.given_flags = given
    return adopted


def prepare_folder(plan: RunPlan) -> List[str]:
    """Carry out the plan's file changes (main process only, before the run writes); returns log lines."""
    out, lines = plan.cfg.out, list(plan.notes)
    for path in plan.remove:
        if os.path.isfile(path):
            os.remove(path)
    if plan.remove:
        lines.append(f"--overwrite: removed {len(plan.remove)} file(s) of the earlier run in {out}")
    ckpt = os.path.join(out, "checkpoints")
    stale = [n for n in os.listdir(ckpt) if n.startswith(".tmp-")] if os.path.isdir(ckpt) else []
    for name in stale:  # left by a process killed while saving; never a finished checkpoint
        os.remove(os.path.join(ckpt, name))
    if stale:
        lines.append(f"removed {len(stale)} unfinished temporary checkpoint file(s) from {ckpt}")
    if plan.reset_latest:
        save_checkpoint(os.path.join(ckpt, "latest.pt"), plan.state)
        lines.append(f"--overwrite: {out} cut back to step {plan.state['step']}")
    return lines
