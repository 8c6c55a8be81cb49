"""The training loop: EDM / consistency distillation / consistency training on voxel supports."""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import os
from typing import Dict, List, Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from ..data.datasets import FolderDataset, collate, open_dataset
from ..data.validate import validate_dataset
from ..diffusion.consistency import ct_schedule, ema_update
from ..diffusion.edm import DiffusionConfig
from ..models.unet import UNet3D
from ..nn.conv import set_weight_layout
from . import distributed
from .batches import BatchStream
from .checkpoint import newest_checkpoint, save_checkpoint
from .config import TrainConfig
from .data_record import data_record, metric_grid
from .diffusion_stage import DiffusionStage
from .latent_stage import LatentStage
from .occupancy_stages import StructureStage, VAEStage
from .preview import save_preview
from .run_folder import RunPlan, plan_run
from .stage_base import Stage

STAGE_OBJECTS = {"diffusion": DiffusionStage, "structure": StructureStage, "vae": VAEStage, "ldm": LatentStage,
                 "cd": LatentStage}


def metrics_columns(stage: Stage) -> List[str]:
    """metrics.csv's columns for a stage: step, loss, grad_norm, lr, what the stage logs, seconds."""
    return ["step", "loss", "grad_norm", "lr", *stage.columns, "seconds"]


class TrainingStopped(RuntimeError):
    """Training cannot go on (a non-finite loss); the message says where and what to try."""


class Trainer:
    """Builds model, data and optimizer from a TrainConfig and trains with exact resume."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.DistContext, plan: Optional[RunPlan] = None):
        self.ctx, self.device = ctx, ctx.device
        self.plan = plan_run(cfg) if plan is None else plan
        cfg, state = self.plan.cfg, self.plan.state
        self.cfg = cfg
        self.dataset = open_dataset(cfg.data, cfg.data_format, "train", cfg.train_size, cfg.grid_spec(),
                                    cfg.calibration, cfg.radar_scans, cfg.split_file,
                                    cfg.max_dt, cfg.radar, cfg.target_cone())
        if isinstance(self.dataset, FolderDataset):  # every file read once now (cached), not mid-run
            validate_dataset(self.dataset, progress=cfg.progress and ctx.main)
        self.grid_shape = tuple(self.dataset.grid_shape)
        self.grid = metric_grid(cfg, self.grid_shape)
        self.diffusion = DiffusionConfig()
        self.stream = BatchStream(self.dataset, self.grid_shape, cfg.seed, cfg.batch_size, cfg.grad_accum, ctx.rank,
                                  ctx.world_size)
        self.stage = STAGE_OBJECTS[cfg.stage](self)
        cfg = self.cfg = self.stage.build(cfg, state)  # (a distillation run takes the teacher's model flags only)
        self.model, self.teacher = self.stage.model, self.stage.teacher
        # conv weights laid out for the field each part runs on: the kernels' layout (the default), or conv3d's for
        # a dense run and a latent denoiser (a learned radar encoder stays sparse on a sparse run)
        set_weight_layout(self.model, "torch" if cfg.field == "dense" or self.stage.codec is not None else "kernel")
        if cfg.field == "sparse" and hasattr(self.model, "radar_encoder"):
            set_weight_layout(self.model.radar_encoder, "kernel")
        if self.teacher is not None:  # the student starts as the teacher
            self.model.load_state_dict(self.teacher.state_dict())
        self.ema = {rate: copy.deepcopy(self.model).eval().requires_grad_(False) for rate in cfg.ema_rates()}
        self.cm_target = None
        if cfg.objective in ("cd", "ct"):
            self.cm_target = copy.deepcopy(self.model).requires_grad_(False)
        # fused: one multi-tensor kernel for every parameter (CUDA and CPU), not a few ops per parameter
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     fused=self.device.type in ("cuda", "cpu"))
        use_scaler = getattr(self.model.config, "use_fp16", False) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.step = 0
        if state is not None:
            self._restore(state)
            for group in self.opt.param_groups:  # --lr may change on resume (RESUMABLE_FLAGS)
                group["lr"] = cfg.lr
        self.net = DistributedDataParallel(self.model) if ctx.active else self.model

    def train_step(self) -> Dict[str, float]:
        """One optimizer step over grad_accum fresh micro-batches; returns the logged values (metrics_columns)."""
        cfg, stage = self.cfg, self.stage
        torch.manual_seed(cfg.seed * 104729 + self.step * 31 + self.ctx.rank)  # dropout: a function of the step
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        logged = []  # per micro-batch: the loss, then the stage's columns (tensors or numbers)
        for micro in range(cfg.grad_accum):
            sync = micro == cfg.grad_accum - 1 or not self.ctx.active
            with contextlib.nullcontext() if sync else self.net.no_sync():
                loss, logs = stage.micro_step(self.stream.positions(self.step, micro), micro)
                loss = loss / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            logged += [loss.detach()] + [logs[c] for c in stage.columns]
        norm = None
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf  # 0 = no clipping; the norm is still logged
        if self.scaler is None:  # clipped now, so the norm is read with the rest (the grads of a step whose loss
            # is not finite are never applied)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        values = read_host(logged + ([] if norm is None else [norm]))  # the step's one host read
        width = 1 + len(stage.columns)
        loss_value = distributed.mean_scalar(self.ctx, sum(values[0:width * cfg.grad_accum:width]))
        row = {}
        for i, column in enumerate(stage.columns, start=1):
            total = sum(values[i:width * cfg.grad_accum:width])
            if column in stage.mean_columns:  # a share: the mean over micro-batches and processes
                row[column] = distributed.mean_scalar(self.ctx, total / cfg.grad_accum)
            else:  # a count: the sum over micro-batches and processes
                row[column] = round(distributed.mean_scalar(self.ctx, float(total)) * self.ctx.world_size)
        if distributed.any_true(self.ctx, not math.isfinite(loss_value)):
            raise TrainingStopped(
                f"the loss became {loss_value} at step {self.step + 1}; no update was applied. {self._last_saved()} "
                f"Try a lower --lr (now {cfg.lr}), --use_fp16 False, or a smaller --grad_clip (now {cfg.grad_clip}).")
        grad_norm = 0.0
        if row.get("skipped_samples", 0) < self.samples_per_step:  # else: every sample was empty, no update
            if self.scaler:
                self.scaler.unscale_(self.opt)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
            else:
                grad_norm = values[-1]
            self._apply_update()
        self.step += 1
        return {"step": self.step, "loss": loss_value, "grad_norm": grad_norm, "lr": self.opt.param_groups[0]["lr"],
                **row}

    @property
    def samples_per_step(self) -> int:
        """Samples of one optimizer step over all processes and micro-batches."""
        return self.cfg.batch_size * self.cfg.grad_accum * self.ctx.world_size

    def _apply_update(self) -> None:
        """Optimizer step, then the EMA and consistency-target updates."""
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        for rate, ema_model in self.ema.items():
            ema_update(ema_model, self.model, rate)
        if self.cm_target is not None:
            mu = self.cfg.cd_target_ema if self.cfg.objective == "cd" else ct_schedule(self.step, self.cfg.steps)[1]
            ema_update(self.cm_target, self.model, mu)

    def _last_saved(self) -> str:
        found = newest_checkpoint(self.cfg.out)
        if found:
            return f"The last checkpoint is {found[0]} (step {found[1]['step']})."
        return f"No checkpoint was written yet (the first is due at step {self.cfg.save_every})."

    # ----- checkpoints ----------------------------------------------------------------------------------
    def payload(self) -> dict:
        """Everything needed to resume, as tensors and plain values."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": {repr(rate): m.state_dict() for rate, m in self.ema.items()},
            "cm_target": None if self.cm_target is None else self.cm_target.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "train_config": self.cfg.to_dict(),
            "model_config": self.model.config.to_dict(),
            "diffusion_config": self.diffusion.to_dict(),
            "data_config": data_record(self.cfg, self.grid, getattr(self.dataset, "target_fov", None)),
            "model_kind": self.cfg.stage,
            **self.stage.payload(),
        }

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for rate, m in self.ema.items():
            m.load_state_dict(state["ema"][repr(rate)])
        if self.cm_target is not None and state.get("cm_target") is not None:
            self.cm_target.load_state_dict(state["cm_target"])
        self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    def save(self) -> str:
        """Write checkpoints/step_XXXXXX.pt and latest.pt (atomically); returns the step file."""
        folder = os.path.join(self.cfg.out, "checkpoints")
        path = os.path.join(folder, f"step_{self.step:06d}.pt")
        payload = self.payload()
        save_checkpoint(path, payload)
        save_checkpoint(os.path.join(folder, "latest.pt"), payload)
        return path

    # ----- preview --------------------------------------------------------------------------------------
    @torch.no_grad()
    def preview(self, path: str) -> None:
        """Sample the first validation scan with the (first) EMA model and save the BEV/side preview."""
        data = open_dataset(self.cfg.data, self.cfg.data_format, "val", 1, self.grid) if self.cfg.data == "synthetic" \
            else self.dataset
        radar, target = collate([data[0]], self.grid_shape)
        model = next(iter(self.ema.values())) if self.ema else self.model
        model.eval()
        save_preview(path, radar, target, self.stage.preview_sample(model, radar, target).to("cpu"))


def read_host(values: list) -> List[float]:
    """values as floats, every tensor among them read in one transfer (one host sync for the step's logs)."""
    out = [v if isinstance(v, torch.Tensor) else float(v) for v in values]
    for device in {v.device for v in values if isinstance(v, torch.Tensor)}:  # one read per device
        at = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor) and v.device == device]
        for i, x in zip(at, torch.stack([values[i].detach().reshape(()).to(torch.float64) for i in at]).tolist()):
            out[i] = x
    return out


def write_config(cfg: TrainConfig, model: UNet3D, diffusion: DiffusionConfig) -> None:
    """config.json: the resolved training, model and diffusion configs (written atomically)."""
    os.makedirs(cfg.out, exist_ok=True)
    text = json.dumps({"train": cfg.to_dict(), "model": model.config.to_dict(), "diffusion": diffusion.to_dict()},
                      indent=2)
    _replace_text(os.path.join(cfg.out, "config.json"), text)


def _replace_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def open_metrics(path: str, resume_step: int, history: Optional[str] = None, columns: Sequence[str] = ()):
    """metrics.csv (columns: metrics_columns of the run's stage) opened for appending, starting with the rows of
    `history` (default: path itself) up to resume_step; rows after it (written after the last checkpoint, or a
    later branch) are dropped. The file is replaced atomically, so an interruption never leaves it cut short."""
    history = path if history is None else history
    rows = []
    if resume_step > 0 and os.path.exists(history):
        with open(history, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
    buffer = io.StringIO()
    columns = list(columns) or metrics_columns(DiffusionStage)
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _replace_text(path, buffer.getvalue())
    fh = open(path, "a", newline="", encoding="utf-8")
    return fh, csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
