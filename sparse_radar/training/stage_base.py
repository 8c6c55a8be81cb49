"""A training stage as an object: it builds its networks, runs one micro-batch (its loss, and logs named for what
they hold), and gives what its checkpoint and its preview need. trainer.py runs the loop around it; the stages are
diffusion_stage.py (voxel space; its denoising_loss serves the latent stages too), latent_stage.py (ldm and latent
cd) and occupancy_stages.py (structure, vae)."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from ..diffusion.edm import Denoiser, karras_sigmas
from ..diffusion.samplers import sample_consistency, sample_heun
from ..models.config import UNetConfig
from ..models.radar_encoder import attach_encoder
from ..models.unet import UNet3D
from ..data.support import on_field_path
from ..voxels import SparseVoxels
from .checkpoint import load_checkpoint
from .config import TrainConfig, given_flags
from .frame_cache import FrameCache
from .run_folder import adopt_teacher
from .stages import best_weights, check_teacher, structure_record


class Stage:
    """The part of a run that depends on its stage; `trainer` gives the run's data, device and networks in training."""

    columns: Tuple[str, ...] = ()  # what metrics.csv logs for this stage, beside step, loss, grad_norm, lr, seconds
    mean_columns: Tuple[str, ...] = ()  # of those, the shares (averaged over micro-batches and processes; the rest
    # are counts, summed)

    def __init__(self, trainer):
        self.trainer = trainer
        self.model = self.teacher = self.codec = self.structure = None
        self.encoder_config = None  # a learned radar encoder's configuration (latent stages)
        self.frame_cache = None  # a frozen network's per-frame outputs (frame_cache.py), made at the first step

    @property
    def cfg(self) -> TrainConfig:
        """The run's configuration."""
        return self.trainer.cfg

    @property
    def device(self) -> torch.device:
        """The device the run trains on."""
        return self.trainer.device

    def build(self, cfg: TrainConfig, state) -> TrainConfig:
        """Build self.model (and the teacher, codec or structure network the stage has); returns the config, which a
        distillation run takes the teacher's architecture into. state: the checkpoint resumed, or None."""
        raise NotImplementedError

    def micro_step(self, positions, micro: int) -> Tuple[torch.Tensor, Dict[str, object]]:
        """(loss, logs) of the micro-batch at these stream positions; logs hold self.columns (tensors or numbers,
        read on the host once per step)."""
        raise NotImplementedError

    def preview_sample(self, model, radar: SparseVoxels, target: SparseVoxels) -> SparseVoxels:
        """What the preview draws for one scan: the model's output as a sparse field on the host's grid."""
        raise NotImplementedError

    def payload(self) -> dict:
        """The stage's part of a checkpoint: the latent codec, the radar encoder's configuration, the structure
        network (each None where the stage has none)."""
        return {"latent": None if self.codec is None else self.codec.record(), "radar_encoder": self.encoder_config,
                "structure": None if self.structure is None else structure_record(self.structure, self.trainer.grid)}

    # ----- shared by the stages -------------------------------------------------------------------------
    def frame_entries(self, positions, frames, compute) -> list:
        """A frozen network's output per frame at these stream positions, from the frame cache (--frame_cache_mb,
        frame_cache.py): frames() gives the batch's frames when one is missing, compute(frame) its entry."""
        if self.frame_cache is None:
            self.frame_cache = FrameCache(self.cfg.frame_cache_mb)
        return self.frame_cache.entries([self.trainer.stream.index(p) for p in positions], frames, compute)

    def on_field(self, field):
        """field on the path the model trains on (--field; see on_field_path)."""
        return on_field_path(field, self.cfg.field, self.cfg.support)

    def load_teacher(self, cfg: TrainConfig, state) -> tuple:
        """(config, the teacher's UNetConfig, the teacher's checkpoint) of a distillation run, with self.teacher
        built, frozen and loaded with its best weights (EMA), its learned radar encoder too."""
        teacher_state = load_checkpoint(cfg.teacher)
        check_teacher(cfg, teacher_state)
        if state is None:
            cfg = adopt_teacher(cfg, teacher_state, given_flags(cfg))
        model_cfg = UNetConfig.from_dict(teacher_state["model_config"])
        self.teacher = UNet3D(model_cfg).to(self.device).eval().requires_grad_(False)
        self.encoder_config = teacher_state.get("radar_encoder")  # a latent teacher's learned radar encoder
        attach_encoder(self.teacher, self.encoder_config).requires_grad_(False)
        self.teacher.load_state_dict(best_weights(teacher_state))
        return cfg, model_cfg, teacher_state

    def sample_preview(self, model, x, cond):
        """x (noise at sigma_max) denoised by model under cond: one consistency step, or Heun's --preview_steps."""
        diffusion = self.trainer.diffusion
        consistency = self.cfg.objective in ("cd", "ct")
        den = Denoiser(model, diffusion, self.on_field(cond), consistency=consistency)
        x = self.on_field(x)
        if consistency:
            return sample_consistency(den, x, [diffusion.sigma_max], diffusion.sigma_min)
        sigmas = karras_sigmas(self.cfg.preview_steps, diffusion.sigma_min, diffusion.sigma_max)
        return sample_heun(den, x, sigmas.to(self.device))
