"""Densifier: radar points in, LiDAR-like points out, from a training checkpoint alone (the library use)."""
from __future__ import annotations

import threading
import time
import warnings
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from .cloud_io import Cloud, field_points, voxelize_radar
from .data.fov import TargetFov
from .data.grid import GridSpec
from .data.support import on_field_path, on_support, support_structure
from .data.voxelize import Channel
from .densifier_loading import load_densifier, resolve_device
from .densifier_sampling import generate_latent, guided, run_sampler, support_noise
from .diffusion.edm import DiffusionConfig, Denoiser
from .frames import radar_field, target_field
from .models.latent import LatentCodec
from .models.structure_net import StructureNet, occupancy_probability, predicted_support
from .models.unet import UNet3D
from .nn.field_ops import cat_channels
from .sampling_settings import DTYPES, MAX_SEED, MAX_STEPS, SAMPLERS, SamplerSettings, whole_number
from .structure import VoxelStructure
from .training.config import FIELDS, TRAIN_SUPPORTS
from .voxels import SparseVoxels

# the sampling settings and their checks live in sampling_settings; sample and evaluate import them from here
__all__ = ["Densifier", "SamplerSettings", "generate_batches", "resolve_device", "whole_number", "DTYPES",
           "MAX_SEED", "MAX_STEPS", "SAMPLERS"]


class Densifier:
    """A trained model with its grid, feature scaling, support rule and diffusion settings."""

    def __init__(self, model: UNet3D, diffusion: DiffusionConfig, grid: GridSpec, radar_channels: Sequence[Channel],
                 target_channels: Sequence[Channel], support: str = "radar_dilated", radius=(1, 2, 2),
                 consistency: bool = False, backend: Optional[str] = None, device=None, dtype=torch.float32,
                 structure: Optional[StructureNet] = None, codec: Optional[LatentCodec] = None,
                 target_fov: Optional[TargetFov] = None, field: str = "sparse"):
        self.device = resolve_device(device)
        self.target_fov = target_fov  # the radar's field of view the targets were cropped to: outputs are too
        self.model = model.to(self.device).eval()
        self.diffusion, self.grid = diffusion, grid
        self.radar_channels, self.target_channels = tuple(radar_channels), tuple(target_channels)
        if support == "oracle":
            support = "radar_dilated"  # an oracle model is sampled on the radar support unless given one
        self.codec = None if codec is None else codec.to(self.device)
        if codec is not None:
            support = "latent"  # a latent model decodes its own voxels
        elif support not in TRAIN_SUPPORTS:
            raise ValueError(f"support must be one of {', '.join(TRAIN_SUPPORTS)}, got {support!r}")
        if support == "predicted" and structure is None:
            raise ValueError("support 'predicted' needs a structure network (a --stage structure run)")
        self.structure = None if structure is None else structure.to(self.device).eval()
        if backend is not None:  # the field's name before it was called field
            warnings.warn("Densifier(backend=...) is deprecated: use field=", DeprecationWarning, stacklevel=2)
            field = backend
        if field not in FIELDS:
            raise ValueError(f"field must be one of {', '.join(FIELDS)}, got {field!r}")
        self.support, self.radius, self.consistency, self.field = support, tuple(radius), consistency, field
        self.dtype = dtype
        self.cond_drop = 0.0  # the --cond_drop it was trained with: guidance needs > 0
        # a predicted-support model with one input channel beyond target + radar reads the structure's probability
        self.structure_channel = codec is None and model.config.in_channels == len(target_channels) + len(
            radar_channels) + 1
        if self.structure_channel and self.structure is None:
            raise ValueError("this model reads the structure network's occupancy probability as an input channel: "
                             "it needs its structure network (support 'predicted')")
        self._calls = threading.local()  # per thread: the counts of the last call
        self.source: dict = {}

    @property
    def last_dropped(self) -> List[int]:
        """Radar points outside the grid, per cloud, of this thread's last call."""
        return list(getattr(self._calls, "dropped", []))

    @classmethod
    def from_checkpoint(cls, path_or_run_folder, device=None, ema: bool = True, dtype="float32",
                        support: Optional[str] = None, structure: Optional[str] = None) -> "Densifier":
        """Rebuild model, grid, feature scaling and diffusion settings from a checkpoint or run folder. support
        overrides its support rule (full, radar_dilated, predicted); structure: the run or checkpoint of the
        structure network for 'predicted' (default: the one the checkpoint carries)."""
        return load_densifier(cls, path_or_run_folder, device, ema, dtype, support, structure)

    @property
    def default_sampler(self) -> str:
        """heun for EDM models, onestep for consistency models."""
        return "onestep" if self.consistency else "heun"

    @property
    def output_channels(self) -> List[Channel]:
        """The target channels returned after x, y, z (those with a physical value: not occupancy or mask)."""
        return [c for c in self.target_channels if c.reducer in ("mean", "var", "max")]

    # ----- points <-> fields ----------------------------------------------------------------------------
    def radar_field(self, clouds: Sequence[Cloud]) -> SparseVoxels:
        """Voxelize radar clouds [N, >=3] into one batch; points outside the grid are dropped and counted."""
        field, self._calls.dropped = voxelize_radar(clouds, self.grid, self.radar_channels)
        return field

    def to_points(self, field: SparseVoxels, sample: int, threshold: float) -> np.ndarray:
        """[M, 3 + C] float32 of one sample: voxel centres (x, y, z, metres) whose occupancy exceeds threshold,
        then the output channels in physical units."""
        return field_points(field, sample, threshold, self.grid, self.target_channels, self.output_channels)

    # ----- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, radar: SparseVoxels, support: Optional[VoxelStructure] = None,
                 settings: Optional[SamplerSettings] = None, seed: int = 0, progress: bool = False,
                 frame_ids: Optional[Sequence[int]] = None) -> SparseVoxels:
        """The sampled target field on the support (default: the model's support rule applied to radar).

        Each sample's starting noise is drawn from (seed, its frame id; default its place in the batch)."""
        settings = settings or SamplerSettings(self.default_sampler)
        seed = whole_number(seed, "seed", 0, MAX_SEED)
        radar = radar.to(self.device)
        sigma_min, sigma_max = settings.sigmas(self.diffusion)
        if self.codec is not None:
            if support is not None:
                raise ValueError("a latent-diffusion model decodes its own voxels; it takes no support")
            return self.crop_to_fov(generate_latent(self, radar, settings, seed, frame_ids, progress, sigma_min,
                                                    sigma_max))
        prob = None
        if support is None and self.structure_channel:
            support, prob = predicted_support(self.structure, radar, self.radius, probability=True)
        support = self.support_of(radar) if support is None else support.to(self.device)
        cond = on_support(radar, support)
        if self.structure_channel:  # the structure network's occupancy probability, the model's last input channel
            prob = occupancy_probability(self.structure, radar, support) if prob is None else prob
            cond = cat_channels(cond, prob)
        noise = support_noise(support, len(self.target_channels), seed, frame_ids).to(self.device)
        x = SparseVoxels.wrap(noise * sigma_max, support)
        if support.num_voxels == 0:  # no radar voxel in any cloud: nothing to generate
            return x
        den = guided(Denoiser(self.model, self.diffusion, self._on_field(cond), consistency=self.consistency),
                     settings, self.cond_drop)
        out = run_sampler(den, self._on_field(x), settings, self.diffusion, seed, progress, sigma_min, sigma_max,
                          self.device, self._autocast)
        out = out if isinstance(out, SparseVoxels) else out.to_sparse()
        return self.crop_to_fov(out.replace(out.feats.float()))

    def crop_to_fov(self, field: SparseVoxels) -> SparseVoxels:
        """field without the voxels whose centres lie outside target_fov (unchanged when there is none)."""
        if self.target_fov is None or field.num_voxels == 0:
            return field
        inside = self.target_fov.mask(self.grid.voxel_centers(field.coords[:, 1:].cpu().numpy()))
        return field.prune(torch.from_numpy(inside).to(field.feats.device))

    def support_of(self, radar: SparseVoxels) -> VoxelStructure:
        """Where this model generates for a radar batch: its support rule (predicted: the structure network's
        voxels with the radar's, dilated by the radius)."""
        if self.support == "predicted":
            return predicted_support(self.structure, radar.to(self.device), self.radius)
        return support_structure(self.support, radar, radar, self.radius).to(self.device)

    @property
    def oracle_radius(self) -> tuple:
        """Dilation of the target that makes the oracle support: the model's radius, (1, 2, 2) for predicted."""
        return (1, 2, 2) if self.support == "predicted" else self.radius

    def __call__(self, radar_points: Union[Cloud, Sequence[Cloud]], sampler: Optional[str] = None, steps: int = 18,
                 seed: int = 0, **settings) -> Union[np.ndarray, List[np.ndarray]]:
        """Generated cloud [M, 3 + C] (x, y, z, then output_channels) of one radar cloud [N, >=3], or a list for
        a list of clouds (with heun without churn, euler or onestep each cloud gets the same result as alone, up to
        float32 round-off: features within 1e-5;
        multistep and churn draw later noise per batch). sampler None: default_sampler. Other
        settings: see SamplerSettings."""
        single = not isinstance(radar_points, (list, tuple))
        clouds = [radar_points] if single else list(radar_points)
        if not clouds:
            return []
        chosen = SamplerSettings(sampler or self.default_sampler, steps, **settings)
        radar = self.radar_field(clouds)
        out = self.generate(radar, settings=chosen, seed=seed, frame_ids=[0] * len(clouds))
        results = [self.to_points(out, b, chosen.threshold) for b in range(len(clouds))]
        return results[0] if single else results

    def _on_field(self, field: SparseVoxels):
        return on_field_path(field, self.field, self.support)

    def _autocast(self):
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)


def generate_batches(densifier: Densifier, frames, settings: SamplerSettings, seed: int = 0, batch_size: int = 4,
                     oracle: bool = False, progress: bool = False, desc: str = "sampling",
                     frame_ids: Optional[Sequence[int]] = None):
    """Yield (frames of the batch, radar field, generated field on the CPU, seconds per frame) per batch; with
    oracle the support is the target dilated (an upper bound that needs the answer). frame_ids: each frame's
    number for its noise (default its place in frames), so a subset of frames gets the noise it had in the whole."""
    shape = densifier.grid.shape
    ids = list(range(len(frames))) if frame_ids is None else list(frame_ids)
    with tqdm(total=len(frames), unit="frame", disable=not progress, dynamic_ncols=True, desc=desc) as bar:
        for start in range(0, len(frames), batch_size):
            batch = frames[start:start + batch_size]
            radar = radar_field(batch, shape)
            target = target_field(batch, shape) if oracle else None
            support = support_structure("oracle", radar, target, densifier.oracle_radius) if oracle else None
            t0 = time.perf_counter()
            out = densifier.generate(radar, support, settings, seed, frame_ids=ids[start:start + len(batch)])
            out = out.to("cpu")
            yield batch, radar, out, (time.perf_counter() - t0) / len(batch)
            bar.update(len(batch))
