"""The training loop: EDM / consistency distillation / consistency training on voxel supports."""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import os
from typing import Dict, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from ..data.datasets import FolderDataset, collate, open_dataset
from ..data.validate import validate_dataset
from ..data.support import training_fields
from ..data.voxelize import RADAR_CHANNELS, TARGET_CHANNELS
from ..diffusion.consistency import consistency_loss, ct_schedule, ema_update
from ..diffusion.edm import DiffusionConfig, Denoiser, edm_loss, karras_sigmas, sample_sigma
from ..diffusion.fields import has_voxels
from ..diffusion.guidance import GuidedDenoiser, drop_condition, dropped_samples
from ..diffusion.samplers import sample_consistency, sample_heun
from ..models.config import UNetConfig
from ..models.structure_net import occupancy_loss
from ..models.latent import LATENT_CONDITION_CHANNELS, LatentCodec, fit_scale
from ..models.radar_encoder import attach_encoder, encoder_config, latent_condition
from ..models.vae import autoencoder_loss
from ..models.unet import UNet3D
from ..nn.conv import set_weight_layout
from ..voxels import DenseVoxels, SparseVoxels
from . import distributed
from .checkpoint import load_checkpoint, newest_checkpoint, save_checkpoint
from .data_record import data_record, metric_grid
from .config import TrainConfig, given_flags
from .run_folder import ARCH_FLAGS, RunPlan, adopt_teacher, plan_run
from .stages import (STRUCTURE_STAGE, best_weights, build_structure, build_vae, check_teacher, load_codec, load_structure,
                     structure_record, support_fields)
from .preview import save_preview

CSV_COLUMNS = ["step", "loss", "grad_norm", "lr", "support_voxels", "coverage", "seconds", "skipped_samples"]


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
        self._perm_cache: Dict[int, List[int]] = {}
        self.grid_shape = tuple(self.dataset.grid_shape)
        self.grid = metric_grid(cfg, self.grid_shape)
        self.diffusion = DiffusionConfig()
        self.teacher = self.structure = self.codec = None
        if cfg.support == "predicted":  # a frozen structure network predicts where diffusion runs (a resumed run
            # keeps the one its checkpoint carries)
            self.structure = load_structure(state if state is not None else cfg.structure, self.grid).to(self.device)
            self.structure.check_grid(self.grid_shape)
        cfg = self.cfg = self._build_model(cfg, state)
        # conv weights laid out for the field each part runs on: the kernels' layout (the default), or conv3d's for
        # a dense run and a latent denoiser (a learned radar encoder stays sparse on a sparse run)
        set_weight_layout(self.model, "torch" if cfg.field == "dense" or self.codec is not None else "kernel")
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

    def _build_model(self, cfg: TrainConfig, state: Optional[dict]) -> TrainConfig:
        """self.model for the stage (with the teacher and the latent codec where the stage has them); returns the
        config, which a distillation run takes the teacher's architecture into."""
        model_cfg, self.encoder_config = None, None
        if cfg.objective == "cd":
            teacher_state = load_checkpoint(cfg.teacher)
            check_teacher(cfg, teacher_state)
            if state is None:
                cfg = adopt_teacher(cfg, teacher_state, given_flags(cfg))
            model_cfg = UNetConfig.from_dict(teacher_state["model_config"])
            if cfg.stage == "diffusion" and model_cfg.in_channels != 8 + int(cfg.structure_channel):
                raise ValueError(f"--teacher reads {model_cfg.in_channels} input channels but this run gives "
                                 f"{8 + int(cfg.structure_channel)}: distil with the teacher's --support and "
                                 f"--structure_prob")
            self.teacher = UNet3D(model_cfg).to(self.device).eval().requires_grad_(False)
            self.encoder_config = teacher_state.get("radar_encoder")  # a latent teacher's learned radar encoder
            attach_encoder(self.teacher, self.encoder_config).requires_grad_(False)
            self.teacher.load_state_dict(best_weights(teacher_state))
            if cfg.stage == "cd":
                self.codec = LatentCodec.from_record(teacher_state["latent"]).to(self.device)
        elif cfg.stage == "ldm":  # a resumed run keeps the VAE and scale its checkpoint carries
            self.codec = load_codec(cfg.vae, self.grid) if state is None else LatentCodec.from_record(state["latent"])
            self.codec.to(self.device)
            latent = self.codec.config.latent_channels
            model_cfg = cfg.model_config(self.codec.latent_shape(self.grid_shape), latent + LATENT_CONDITION_CHANNELS,
                                         latent)
            if cfg.ldm_condition == "learned":  # a resumed run keeps its checkpoint's encoder configuration
                self.encoder_config = state.get("radar_encoder") if state is not None else encoder_config(
                    len(RADAR_CHANNELS), self.codec)
            if state is None:  # the latents' scale, from the first 16 training samples (the same on every process)
                self.codec.scale = fit_scale(self.codec, [self._pair(list(range(i, i + 4)))[1].to(self.device)
                                                          for i in range(0, 16, 4)], self.diffusion.sigma_data)
        elif cfg.stage == "diffusion":  # target + radar channels in, and the structure's probability where read
            model_cfg = cfg.model_config(self.grid_shape, 8 + int(cfg.structure_channel))
        if cfg.stage in (STRUCTURE_STAGE, "vae"):
            unused = sorted(given_flags(cfg) & set(ARCH_FLAGS))
            if unused:
                raise ValueError(f"--stage {cfg.stage} trains a network of its own; the UNet flags "
                                 f"{', '.join('--' + n for n in unused)} do not apply to it")
        torch.manual_seed(cfg.seed)
        if cfg.stage == STRUCTURE_STAGE:
            self.model = build_structure(len(RADAR_CHANNELS), cfg.structure_cap, cfg.dice_weight).to(self.device)
            self.model.check_grid(self.grid_shape)
        elif cfg.stage == "vae":
            self.model = build_vae(cfg, len(TARGET_CHANNELS), self.grid_shape).to(self.device)
        else:
            self.model = attach_encoder(UNet3D(model_cfg).to(self.device), self.encoder_config)
            if cfg.stage == "cd" and self.encoder_config:  # the student conditions through the teacher's encoder
                self.model.radar_encoder.requires_grad_(False)
        return cfg

    # ----- data -----------------------------------------------------------------------------------------
    def _stream(self, position: int) -> int:
        """Dataset index at a position of the endless, per-epoch shuffled sample stream."""
        epoch, offset = divmod(position, len(self.dataset))
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
            self._perm_cache = {epoch: torch.randperm(len(self.dataset), generator=g).tolist()}  # once an epoch
        return self._perm_cache[epoch][offset]

    def batch_positions(self, step: int, micro: int) -> List[int]:
        """Stream positions of this rank's micro-batch: every sample once, none reused (distributed sampler)."""
        b, world = self.cfg.batch_size, self.ctx.world_size
        start = (step * self.cfg.grad_accum + micro) * b * world + self.ctx.rank * b
        return list(range(start, start + b))

    def _pair(self, positions: List[int]):
        """(radar, target) of the samples at these stream positions."""
        return collate([self.dataset[self._stream(p)] for p in positions], self.grid_shape)

    def _support_fields(self, radar: SparseVoxels, target: SparseVoxels):
        """(target on the support, radar on it, coverage [B]) on the device, and the support voxels per sample (a
        list, taken on the host before the move; a predicted support is made on the device, and read back)."""
        if self.structure is not None:
            tgt, cond, cov = support_fields(self.structure, radar.to(self.device), target.to(self.device),
                                            self.cfg.radius(), self.cfg.structure_channel)
            return tgt, cond, cov, tgt.batch_counts().tolist()
        tgt, cond, cov = training_fields(self.cfg.support, radar, target, self.cfg.radius())
        return tgt.to(self.device), cond.to(self.device), cov, host_counts(tgt)

    def _draws(self, positions: List[int], shapes) -> tuple:
        """Per sample, sigma and noise of the given shape, seeded by the sample's stream position (the same on any
        process layout): (sigma [B] on the device, noises on the CPU)."""
        sigmas, noises = [], []
        for shape, pos in zip(shapes, positions):
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + pos)
            sigmas.append(sample_sigma(1, self.diffusion, g))
            noises.append(torch.randn(shape, generator=g))
        return torch.cat(sigmas).to(self.device), noises

    def _drop_condition(self, cond, positions: List[int], counts: Optional[List[int]] = None):
        """cond with each sample's radar dropped (the null condition) with probability --cond_drop, decided on the
        host by the sample's stream position (classifier-free guidance's training, Ho & Salimans 2022)."""
        return drop_condition(cond, dropped_samples(self.cfg.seed, positions, self.cfg.cond_drop), counts)

    def _noise(self, target: SparseVoxels, positions: List[int], counts: List[int]):
        """Per-sample sigma and noise on the target's voxels, counts per sample (see _draws)."""
        shapes = [(n, target.num_channels) for n in counts]
        sigma, noises = self._draws(positions, shapes)
        return sigma, target.replace(torch.cat(noises).to(self.device))

    def _as_backend(self, field: SparseVoxels):
        if self.cfg.field == "sparse":
            return field
        dense = field.to_dense()
        return DenseVoxels(dense.data) if self.cfg.support == "full" else dense

    # ----- one optimizer step ---------------------------------------------------------------------------
    def _loss(self, tgt, cond, sigma, noise, micro: int):
        if self.cfg.objective == "edm":
            return edm_loss(Denoiser(self.net, self.diffusion, cond), tgt, sigma, noise)
        g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.step) * 131 + micro * 17 + self.ctx.rank)
        student = Denoiser(self.net, self.diffusion, cond, consistency=True)
        target = Denoiser(self.cm_target, self.diffusion, cond, consistency=True)
        if self.cfg.objective == "cd":  # the teacher guided at --cd_guidance (1: unguided), recorded in the config
            teacher = GuidedDenoiser(Denoiser(self.teacher, self.diffusion, cond), self.cfg.cd_guidance)
            return consistency_loss(student, target, tgt, self.cfg.cm_steps, teacher, g)
        n, _ = ct_schedule(self.step, self.cfg.steps)
        return consistency_loss(student, target, tgt, n, None, g)

    def train_step(self) -> Dict[str, float]:
        """One optimizer step over grad_accum fresh micro-batches; returns the logged values."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 104729 + self.step * 31 + self.ctx.rank)  # dropout: a function of the step
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        micro_step = {STRUCTURE_STAGE: self._structure_micro, "vae": self._vae_micro, "ldm": self._latent_micro,
                      "cd": self._latent_micro}.get(cfg.stage, self._diffusion_micro)
        logged = []  # per micro-batch: loss, support voxels, empty samples, coverage (tensors or numbers)
        for micro in range(cfg.grad_accum):
            sync = micro == cfg.grad_accum - 1 or not self.ctx.active
            with contextlib.nullcontext() if sync else self.net.no_sync():
                loss, n_voxels, n_empty, cov = micro_step(self.batch_positions(self.step, micro), micro)
                loss = loss / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            logged += [loss.detach(), n_voxels, n_empty, cov]
        norm = None
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf  # 0 = no clipping; the norm is still logged
        if self.scaler is None:  # clipped now, so the norm is read with the rest (the grads of a step whose loss
            # is not finite are never applied)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        values = read_host(logged + ([] if norm is None else [norm]))  # the step's one host read
        total, voxels = sum(values[0:4 * cfg.grad_accum:4]), sum(values[1:4 * cfg.grad_accum:4])
        empty, cover = sum(values[2:4 * cfg.grad_accum:4]), sum(values[3:4 * cfg.grad_accum:4]) / cfg.grad_accum
        loss_value = distributed.mean_scalar(self.ctx, total)
        voxels = round(distributed.mean_scalar(self.ctx, float(voxels)) * self.ctx.world_size)
        cover = distributed.mean_scalar(self.ctx, cover)
        empty = round(distributed.mean_scalar(self.ctx, float(empty)) * self.ctx.world_size)
        if distributed.any_true(self.ctx, not math.isfinite(loss_value)):
            raise TrainingStopped(
                f"the loss became {loss_value} at step {self.step + 1}; no update was applied. {self._last_saved()} "
                f"Try a lower --lr (now {cfg.lr}), --use_fp16 False, or a smaller --grad_clip (now {cfg.grad_clip}).")
        grad_norm = 0.0
        if empty < self.samples_per_step:  # else: every sample was empty, no update
            if self.scaler:
                self.scaler.unscale_(self.opt)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
            else:
                grad_norm = values[-1]
            self._apply_update()
        self.step += 1
        return {"step": self.step, "loss": loss_value, "grad_norm": grad_norm, "lr": self.opt.param_groups[0]["lr"],
                "support_voxels": voxels, "coverage": cover, "skipped_samples": empty}

    def _diffusion_micro(self, positions: List[int], micro: int):
        """(loss, support voxels, empty samples, mean coverage) of one diffusion micro-batch (the last two as
        tensors, read with the step's other logs)."""
        tgt, cond, cov, counts = self._support_fields(*self._pair(positions))
        sigma, noise = self._noise(tgt, positions, counts)
        voxels = tgt.num_voxels
        empty = (~has_voxels(tgt)).sum()  # empty samples: skipped by the loss
        cond = self._drop_condition(cond, positions, counts)  # cond lies on the target's support: the same counts
        tgt, cond, noise = self._as_backend(tgt), self._as_backend(cond), self._as_backend(noise)
        return self._loss(tgt, cond, sigma, noise, micro), voxels, empty, cov.mean()

    def _structure_micro(self, positions: List[int], micro: int):
        """(occupancy loss, predicted finest voxels, 0, their recall of the target) of one structure micro-batch."""
        radar, target = (f.to(self.device) for f in self._pair(positions))
        levels = self.net(self._as_backend(radar), target).levels
        return _occupancy_row(*occupancy_loss(levels, self.cfg.dice_weight), levels)

    def _latent_micro(self, positions: List[int], micro: int):
        """(loss, latent cells, 0, 1) of one latent-diffusion micro-batch: EDM or distillation on scaled latents,
        conditioned on the radar pooled onto the latent grid."""
        radar, target = (f.to(self.device) for f in self._pair(positions))
        x0 = self.codec.encode(target)  # [B, L, D', H', W']
        sigma, noises = self._draws(positions, [x0.shape[1:]] * len(positions))
        noise = torch.stack(noises).to(self.device, x0.dtype)
        encoder_owner = self.teacher if self.cfg.objective == "cd" else self.model  # cd: the frozen teacher's
        cond = self._drop_condition(DenseVoxels(latent_condition(encoder_owner, self.codec, radar)), positions)
        loss = self._loss(DenseVoxels(x0), cond, sigma, DenseVoxels(noise), micro)
        return loss, x0[:, 0].numel(), 0, 1.0

    def _vae_micro(self, positions: List[int], micro: int):
        """(autoencoder loss, decoded finest voxels, 0, their recall of the target) of one VAE micro-batch."""
        target = self._pair(positions)[1].to(self.device)
        out = self.net(self._as_backend(target), target)
        return _occupancy_row(*autoencoder_loss(self.model, target, out), out.generation.levels)

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
            "latent": None if self.codec is None else self.codec.record(),
            "radar_encoder": self.encoder_config,
            "structure": None if self.structure is None else structure_record(self.structure, self.grid),
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
        if self.cfg.stage in (STRUCTURE_STAGE, "vae"):
            source = radar if self.cfg.stage == STRUCTURE_STAGE else target
            out = model(self._as_backend(source.to(self.device)))
            kept = out.field if self.cfg.stage == STRUCTURE_STAGE else out.generation.field
            kept = kept if isinstance(kept, SparseVoxels) else kept.to_sparse()
            save_preview(path, radar, target, kept.replace(kept.feats.new_ones(kept.num_voxels, 1)).to("cpu"))
            return
        g = torch.Generator().manual_seed(self.cfg.seed)
        if self.codec is not None:
            with torch.no_grad():
                cond = latent_condition(model, self.codec, radar.to(self.device))
            shape = (1, self.codec.config.latent_channels) + tuple(cond.shape[2:])
            x = DenseVoxels(torch.randn(shape, generator=g).to(self.device) * self.diffusion.sigma_max)
            cond = DenseVoxels(cond)
        else:
            tgt, cond, *_ = self._support_fields(radar, target)
            tgt = tgt.to("cpu")
            x = tgt.replace(torch.randn(tgt.feats.shape, generator=g) * self.diffusion.sigma_max).to(self.device)
            cond = cond.to(self.device)
        consistency = self.cfg.objective in ("cd", "ct")
        den = Denoiser(model, self.diffusion, self._as_backend(cond), consistency=consistency)
        x_b = self._as_backend(x)
        if consistency:
            out = sample_consistency(den, x_b, [self.diffusion.sigma_max], self.diffusion.sigma_min)
        else:
            sigmas = karras_sigmas(self.cfg.preview_steps, self.diffusion.sigma_min, self.diffusion.sigma_max)
            out = sample_heun(den, x_b, sigmas.to(self.device))
        if self.codec is not None:
            sample = self.codec.decode(out.data)
        else:
            sample = out if isinstance(out, SparseVoxels) else out.to_sparse()
        save_preview(path, radar, target, sample.to("cpu"))


def host_counts(field: SparseVoxels) -> List[int]:
    """Voxels per sample of a field still on the host (no device sync)."""
    return field.batch_counts().tolist()


def read_host(values: list) -> List[float]:
    """values as floats, every tensor among them read in one transfer (one host sync for the step's logs)."""
    out = [v if isinstance(v, torch.Tensor) else float(v) for v in values]
    for device in {v.device for v in values if isinstance(v, torch.Tensor)}:  # one read per device
        at = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor) and v.device == device]
        for i, x in zip(at, torch.stack([values[i].detach().reshape(()).to(torch.float64) for i in at]).tolist()):
            out[i] = x
    return out


def _occupancy_row(loss: torch.Tensor, logs: dict, levels) -> tuple:
    """(loss, finest voxels with a positive logit, 0 empty samples, their recall of the target): what a structure
    or VAE micro-batch logs in the support_voxels and coverage columns."""
    recall = logs.get(f"recall_{len(levels) - 1}")
    return loss, (levels[-1].logits > 0).sum(), 0, 1.0 if recall is None else recall


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


def open_metrics(path: str, resume_step: int, history: Optional[str] = None):
    """metrics.csv opened for appending, starting with the rows of `history` (default: path itself) up to
    resume_step; rows after it (written after the last checkpoint, or a later branch) are dropped. The file is
    replaced atomically, so an interruption never leaves it cut short."""
    history = path if history is None else history
    rows = []
    if resume_step > 0 and os.path.exists(history):
        with open(history, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _replace_text(path, buffer.getvalue())
    fh = open(path, "a", newline="", encoding="utf-8")
    return fh, csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
