"""Densifier: radar points in, LiDAR-like points out, from a training checkpoint alone (the library use)."""
from __future__ import annotations

import math
import numbers
import threading
import time
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from .data.datasets import batch_voxels
from .data.grid import GridSpec
from .data.support import on_support, support_structure
from .data.voxelize import Channel, voxelize
from .frames import centres, kept_rows, radar_field, target_field
from .diffusion.edm import DiffusionConfig, Denoiser, karras_sigmas
from .diffusion.samplers import sample_consistency, sample_euler, sample_heun
from .models.config import UNetConfig
from .models.latent import LatentCodec
from .models.structure_net import StructureNet, occupancy_probability, predicted_support
from .models.radar_encoder import attach_encoder, latent_condition
from .models.unet import UNet3D
from .nn.field_ops import cat_channels
from .structure import VoxelStructure
from .training.checkpoint import load_checkpoint
from .training.config import DEFAULT_RADIUS, FIELDS, LATENT_STAGES, TRAIN_SUPPORTS, TrainConfig
from .data.fov import TargetFov
from .data.point_fields import radar_columns, structured_columns
from .diffusion.guidance import GuidedDenoiser
from .training.data_record import data_record_of
from .training.stages import STRUCTURE_STAGE, checkpoint_kind, load_structure, trained_cond_drop
from .voxels import DenseVoxels, SparseVoxels

SAMPLERS = ("heun", "euler", "onestep", "multistep")
MAX_STEPS = 10_000  # sampler steps (EDM uses 18-256); memory and time grow with them
MAX_SEED = 2**40 - 1  # a frame's noise is seeded with seed * 1_000_003 + frame id, which must fit in int64
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
Cloud = Union[np.ndarray, torch.Tensor]


@dataclass
class SamplerSettings:
    """How to sample: sampler, steps, noise range, Heun churn and the occupancy threshold (channel 0 > it)."""

    sampler: str = "heun"
    steps: int = 18
    sigma_max: Optional[float] = None  # None: the checkpoint's
    sigma_min: Optional[float] = None
    s_churn: float = 0.0
    threshold: float = 0.0
    guidance: float = 1.0  # classifier-free guidance scale (1 = off; needs a model trained with --cond_drop > 0)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        self.steps = whole_number(self.steps, "steps", 1, MAX_STEPS)
        for name in ("sigma_max", "sigma_min"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, real_number(value, name, low=0.0, low_open=True))
        if self.sigma_min is not None and self.sigma_max is not None and not self.sigma_min < self.sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        self.s_churn = real_number(self.s_churn, "s_churn", low=0.0)
        self.guidance = real_number(self.guidance, "guidance", 0.0, 20.0, why=" (1.0 = off)")
        self.threshold = real_number(self.threshold, "threshold", -1.0, 1.0,
                                     why=" (occupancy is scaled to [-1, 1]; a voxel is kept where it is > threshold)")

    def sigmas(self, diffusion: DiffusionConfig) -> tuple:
        """(sigma_min, sigma_max): these settings', else the model's; refused unless 0 < sigma_min < sigma_max."""
        low = diffusion.sigma_min if self.sigma_min is None else self.sigma_min
        high = diffusion.sigma_max if self.sigma_max is None else self.sigma_max
        if not 0 < low < high:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {low} and {high} (the model's sigma range is "
                             f"{diffusion.sigma_min}..{diffusion.sigma_max})")
        return low, high


def whole_number(value, name: str, low: int, high: int) -> int:
    """value as an int in [low, high] (numpy integers too; bools, floats and None are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


def real_number(value, name: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
                why: str = "") -> float:
    """value as a finite float in [low, high) ((low, high) with low_open); NaN, inf and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value < low or (low_open and value == low) or value >= high:
        span = f"{'(' if low_open else '['}{low:g}, {high:g})"
        raise ValueError(f"{name} must be a finite number in {span}{why}, got {value}")
    return value


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
        resolve_device(device)  # an unavailable device is refused before the checkpoint is read
        state = load_checkpoint(path_or_run_folder)
        if checkpoint_kind(state) == STRUCTURE_STAGE:
            raise ValueError(f"{path_or_run_folder} is a structure-network checkpoint (--stage structure): it predicts "
                             f"where the scene is, not the scene; sample a diffusion checkpoint with --support "
                             f"predicted --structure {path_or_run_folder}")
        kind = checkpoint_kind(state)
        if kind not in ("diffusion",) + LATENT_STAGES:
            raise ValueError(f"{path_or_run_folder} is a {kind}-stage checkpoint; sampling needs a diffusion "
                             f"checkpoint (voxel-space, --stage ldm or --stage cd)")
        if kind in LATENT_STAGES and (support or structure):
            raise ValueError(f"{path_or_run_folder} is a latent-diffusion model ({kind}): it decodes its own voxels, "
                             f"so support and structure do not apply")
        train = TrainConfig.from_dict(state["train_config"])
        model = attach_encoder(UNet3D(UNetConfig.from_dict(state["model_config"])), state.get("radar_encoder"))
        weights = state["model"]
        if ema:
            if not state.get("ema"):
                raise ValueError(f"{path_or_run_folder}: the checkpoint holds no EMA weights; pass ema=False")
            weights = next(iter(state["ema"].values()))
        model.load_state_dict(weights)
        source = {"step": int(state.get("step", 0)), "content_sha256": state.get("content_sha256")}
        cond_drop = trained_cond_drop(state)
        record = data_record_of(state)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        fov = TargetFov.from_dict(record.get("target_fov"))
        if kind in LATENT_STAGES:
            return cls._sourced(source, model, DiffusionConfig(**state["diffusion_config"]), GridSpec.from_dict(record["grid"]),
                       [Channel(**c) for c in record["radar_channels"]],
                       [Channel(**c) for c in record["target_channels"]], consistency=train.objective in ("cd", "ct"),
                       device=device, dtype=DTYPES[dtype], codec=LatentCodec.from_record(state["latent"]),
                       target_fov=fov, cond_drop=cond_drop)
        rule, radius = record["support"], record["support_radius"]
        if support is not None and support != rule:
            rule, radius = support, DEFAULT_RADIUS.get(support, (1, 2, 2))
        if structure is not None and rule != "predicted":
            raise ValueError(f"a structure network is used only with support 'predicted', not {rule!r}")
        grid = GridSpec.from_dict(record["grid"])
        net = load_structure(structure or state, grid) if rule == "predicted" else None
        if net is not None:
            net.check_grid(grid.shape)
        return cls._sourced(source, model, DiffusionConfig(**state["diffusion_config"]), grid,
                   [Channel(**c) for c in record["radar_channels"]], [Channel(**c) for c in record["target_channels"]],
                   rule, radius, consistency=train.mode in ("cd", "ct"), field=train.field, device=device,
                   dtype=DTYPES[dtype], structure=net, target_fov=fov, cond_drop=cond_drop)

    @classmethod
    def _sourced(cls, source: dict, *args, cond_drop: float = 0.0, **kwargs) -> "Densifier":
        densifier = cls(*args, **kwargs)
        densifier.cond_drop = cond_drop
        densifier.source = source  # which checkpoint (step, content hash) the weights came from
        return densifier

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
        coords, feats, dropped = [], [], []
        need = max([c.column for c in self.radar_channels] + [-1]) + 4
        for b, cloud in enumerate(clouds):
            pts = _as_points(cloud, f"radar cloud {b}")
            if pts.shape[1] < need:
                warnings.warn(f"radar cloud {b} has {pts.shape[1]} columns; the model reads {need} (x, y, z, rcs, "
                              f"doppler): the missing ones are taken as 0", stacklevel=3)
                pts = np.column_stack([pts, np.zeros((len(pts), need - pts.shape[1]))])
            inside = self.grid.voxel_coords(pts[:, :3])[1]
            dropped.append(int((~inside).sum()))
            c, f = voxelize(pts, self.grid, self.radar_channels)
            coords.append(c)
            feats.append(f)
        self._calls.dropped = dropped
        if sum(dropped):
            warnings.warn(f"{sum(dropped)} radar point(s) outside the grid {self.grid.point_range} were dropped "
                          f"(per cloud: {dropped})", stacklevel=3)
        return batch_voxels(coords, feats, self.grid.shape)

    def to_points(self, field: SparseVoxels, sample: int, threshold: float) -> np.ndarray:
        """[M, 3 + C] float32 of one sample: voxel centres (x, y, z, metres) whose occupancy exceeds threshold,
        then the output channels in physical units."""
        keep = kept_rows(field, sample, threshold)
        feats = field.feats.detach().float().cpu().numpy()[keep]
        cols = [centres(field, sample, self.grid, threshold)]
        for c in self.output_channels:
            j = self.target_channels.index(c)
            cols.append((c.lo + (np.clip(feats[:, j], -1, 1) + 1) / 2 * (c.hi - c.lo))[:, None])
        return np.concatenate(cols, axis=1).astype(np.float32)

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
            return self.crop_to_fov(self._generate_latent(radar, settings, seed, frame_ids, progress, sigma_min,
                                                          sigma_max))
        prob = None
        if support is None and self.structure_channel:
            support, prob = predicted_support(self.structure, radar, self.radius, probability=True)
        support = self.support_of(radar) if support is None else support.to(self.device)
        cond = on_support(radar, support)
        if self.structure_channel:  # the structure network's occupancy probability, the model's last input channel
            prob = occupancy_probability(self.structure, radar, support) if prob is None else prob
            cond = cat_channels(cond, prob)
        noise = self._initial_noise(support, seed, frame_ids).to(self.device)
        x = SparseVoxels.wrap(noise * sigma_max, support)
        if support.num_voxels == 0:  # no radar voxel in any cloud: nothing to generate
            return x
        den = self._guided(Denoiser(self.model, self.diffusion, self._backend(cond), consistency=self.consistency),
                           settings)
        out = self._sample(den, self._backend(x), settings, seed, progress, sigma_min, sigma_max)
        out = out if isinstance(out, SparseVoxels) else out.to_sparse()
        return self.crop_to_fov(out.replace(out.feats.float()))

    def crop_to_fov(self, field: SparseVoxels) -> SparseVoxels:
        """field without the voxels whose centres lie outside target_fov (unchanged when there is none)."""
        if self.target_fov is None or field.num_voxels == 0:
            return field
        inside = self.target_fov.mask(self.grid.voxel_centers(field.coords[:, 1:].cpu().numpy()))
        return field.prune(torch.from_numpy(inside).to(field.feats.device))

    def _sample(self, den: Denoiser, x, settings: SamplerSettings, seed: int, progress: bool, sigma_min: float,
                sigma_max: float):
        """Run the chosen sampler from x (noise at sigma_max)."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        with self._autocast():
            if settings.sampler in ("onestep", "multistep"):
                n = 1 if settings.sampler == "onestep" else settings.steps
                levels = karras_sigmas(n, sigma_min, sigma_max, self.diffusion.rho)[:-1].tolist()
                return sample_consistency(den, x, levels, self.diffusion.sigma_min, g, progress)
            sigmas = karras_sigmas(settings.steps, sigma_min, sigma_max, self.diffusion.rho).to(self.device)
            if settings.sampler == "heun":
                return sample_heun(den, x, sigmas, settings.s_churn, generator=g, progress=progress)
            return sample_euler(den, x, sigmas, progress)

    def _generate_latent(self, radar: SparseVoxels, settings: SamplerSettings, seed: int, frame_ids, progress: bool,
                         sigma_min: float, sigma_max: float) -> SparseVoxels:
        """Sample scaled latents conditioned on the pooled radar, then decode them to voxels with features."""
        cond = latent_condition(self.model, self.codec, radar)  # [B, 5, D', H', W']: learned or pooled
        shape = (self.codec.config.latent_channels,) + tuple(cond.shape[2:])
        noise = torch.stack(_frame_noise([shape] * radar.batch_size, seed, frame_ids)).to(self.device)
        den = self._guided(Denoiser(self.model, self.diffusion, DenseVoxels(cond), consistency=self.consistency),
                           settings)
        out = self._sample(den, DenseVoxels(noise * sigma_max), settings, seed, progress, sigma_min, sigma_max)
        decoded = self.codec.decode(out.data.float())
        return decoded.replace(decoded.feats.float())

    def _guided(self, den: Denoiser, settings: SamplerSettings):
        """den, guided at settings.guidance (classifier-free, Ho & Salimans 2022) unless that is 1."""
        if settings.guidance == 1.0:
            return den
        if not self.cond_drop > 0:
            raise ValueError(f"guidance {settings.guidance:g} needs a model trained with condition dropout "
                             f"(--cond_drop > 0); this one was trained with --cond_drop 0, so it has no "
                             f"unconditional branch: sample with guidance 1")
        return GuidedDenoiser(den, settings.guidance)

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

    def _initial_noise(self, support: VoxelStructure, seed: int, frame_ids: Optional[Sequence[int]]) -> torch.Tensor:
        """Unit noise on the support, drawn per sample from (seed, frame id): a frame's noise does not depend on
        the other frames of its batch."""
        row_ptr = support.row_ptr().cpu()
        channels = len(self.target_channels)
        parts = _frame_noise([(int(n), channels) for n in row_ptr[1:] - row_ptr[:-1]], seed, frame_ids)
        return torch.cat(parts) if parts else torch.zeros(0, channels)

    def _backend(self, field: SparseVoxels):
        if self.field == "sparse":
            return field
        dense = field.to_dense()
        return DenseVoxels(dense.data) if self.support == "full" else dense

    def _autocast(self):
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)


def resolve_device(device=None) -> torch.device:
    """torch.device of a name (None: cuda if available, else cpu); a device this machine lacks is a ValueError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: torch sees no CUDA GPU on this machine; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise ValueError(f"device {device!r} is not available here (meta holds no data; mps needs Apple silicon); "
                     f"use cpu" + (" or cuda" if torch.cuda.is_available() else ""))


def _frame_noise(shapes, seed: int, frame_ids: Optional[Sequence[int]]) -> List[torch.Tensor]:
    """Unit noise of each sample's shape, drawn from (seed, its frame id; default its place in the batch), so a
    frame's noise does not depend on the other frames of its batch."""
    ids = list(range(len(shapes))) if frame_ids is None else list(frame_ids)
    if len(ids) != len(shapes):
        raise ValueError(f"frame_ids must name each of the {len(shapes)} samples, got {len(ids)}")
    return [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
            for i, shape in zip(ids, shapes)]


def _as_points(cloud: Cloud, name: str) -> np.ndarray:
    if isinstance(cloud, np.ndarray) and cloud.dtype.names:  # named fields: taken by name
        points, names = structured_columns(cloud)
        return radar_columns(name, points, names).astype(np.float64)
    if isinstance(cloud, torch.Tensor):
        cloud = cloud.detach().cpu()
        cloud = (cloud.double() if cloud.is_floating_point() else cloud).numpy()  # bf16 has no numpy dtype
    if not isinstance(cloud, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or tensor [N, >=3], got {type(cloud).__name__}")
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f"{name}: expected an [N, >=3] array (x, y, z, then rcs, doppler), got shape {cloud.shape}")
    if cloud.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected numbers, got dtype {cloud.dtype}")
    pts = cloud.astype(np.float64)
    if not np.isfinite(pts).all():
        raise ValueError(f"{name}: {int((~np.isfinite(pts).all(1)).sum())} point(s) hold NaN or inf")
    return pts


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
