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
from .checkpoint import STEP_FILE, load_checkpoint, newest_checkpoint, save_checkpoint
from .config import CONTROL_FLAGS, DEFAULT_OUT, MODEL_FLAGS, RESUMABLE_FLAGS, TrainConfig, given_flags

ARCH_FLAGS = ("preset",) + MODEL_FLAGS  # the flags that choose the network
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
    """True when a and b name one folder (the same file, or the same absolute path)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


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
    if source is not None and _same(out, source):
        latest = _latest_step(out, path, step)
        if latest > step:
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
        found = newest_checkpoint(resume)  # latest.pt, or a newer step file where a stop fell between the two
        if found is None:
            raise RunFolderError(f"--resume {resume}: a folder, but not a run folder (no checkpoint in "
                                 f"{os.path.join(resume, 'checkpoints')})")
        return found[0], resume
    if not os.path.isfile(resume):
        raise RunFolderError(f"--resume {resume}: no such checkpoint file or run folder")
    parent = os.path.dirname(os.path.abspath(resume))
    run = os.path.dirname(parent)
    if os.path.basename(parent) == "checkpoints" and is_run_folder(run):
        return resume, run
    return resume, None


def _latest_step(folder: str, resumed: str, resumed_step: int) -> int:
    """The highest step a run folder holds (step files and latest.pt); the resumed file is not loaded again."""
    ckpt = os.path.join(folder, "checkpoints")
    steps = [resumed_step] + [int(m.group(1)) for n in os.listdir(ckpt) if (m := STEP_FILE.match(n))]
    latest = os.path.join(ckpt, "latest.pt")
    if os.path.isfile(latest) and not os.path.samefile(latest, resumed):
        try:
            steps.append(int(load_checkpoint(latest)["step"]))
        except ValueError:  # a latest.pt cut short by a stop: the step files tell the run's progress
            pass
    return max(steps)


def _files_after(folder: str, step: int) -> List[str]:
    """Step checkpoints and step previews of a run that lie after `step`."""
    out = []
    for sub, pattern in (("checkpoints", STEP_FILE), ("", PREVIEW_STEP_FILE)):
        base = os.path.join(folder, sub)
        if os.path.isdir(base):
            out += [os.path.join(base, n) for n in sorted(os.listdir(base))
                    if (m := pattern.match(n)) and int(m.group(1)) > step]
    return out


def _model_conflicts(cfg: TrainConfig, given: frozenset, base: dict, reference: UNetConfig, who: str) -> List[str]:
    """The preset and model flags given on cfg that would change `reference`, the architecture built from the
    train config `base` (a checkpoint's or a teacher's); a flag equal to what base already builds is no conflict."""
    names = [n for n in ARCH_FLAGS if n in given]
    if not names:
        return []
    wanted = TrainConfig.from_dict({**base, **{n: getattr(cfg, n) for n in names}}).model_config(reference.input_size)
    conflicts = []
    for name in names:
        if name == "preset":  # a preset names a whole architecture
            if wanted != reference:
                conflicts.append(f"--preset {cfg.preset} ({who}: {base.get('preset')})")
        elif getattr(wanted, name) != getattr(reference, name):
            conflicts.append(f"--{name} {getattr(cfg, name)} ({who}: {_show(getattr(reference, name))})")
    return conflicts


def _resumed_config(cfg: TrainConfig, state: dict, given: frozenset, out: str) -> TrainConfig:
    saved = TrainConfig.from_dict(state["train_config"])
    conflicts = [] if state.get("model_kind") in ("structure", "vae") else _model_conflicts(
        cfg, given, state["train_config"], UNetConfig.from_dict(state["model_config"]), "checkpoint")
    for name in sorted(given - set(ARCH_FLAGS) - set(RESUMABLE_FLAGS) - set(CONTROL_FLAGS)):
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
    teacher_train = teacher_state.get("train_config") or {}
    bad = _model_conflicts(cfg, given, teacher_train, UNetConfig.from_dict(teacher_state["model_config"]), "teacher")
    if bad:
        raise RunFolderError(f"--mode cd trains a student of the teacher's architecture, and these flags contradict "
                             f"it: {'; '.join(bad)}. Leave them out")
    values = {n: teacher_train.get(n, getattr(cfg, n)) for n in ARCH_FLAGS}
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
