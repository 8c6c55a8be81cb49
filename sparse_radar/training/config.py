"""TrainConfig and the `python -m sparse_radar.train` flags (the reference's names where it has them)."""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence

from ..data.datasets import DATA_FORMATS
from ..data.fov import parse_target_fov, resolve_target_fov
from ..data.grid import NAMED_GRIDS, GridSpec, parse_grid
from ..data.support import SUPPORT_TYPES
from ..models.config import PRESETS, UNetConfig, dataclass_from_dict
from ..nn.attention import ATTENTION_TYPES
from ..nn.norm import NORM_TYPES

PROG = "python -m sparse_radar.train"
MODES = ("edm", "cd", "ct")
STAGES = ("diffusion", "structure", "vae", "ldm", "cd", "all")
LDM_CONDITIONS = ("learned", "structure", "pooled")  # --stage ldm: how the radar conditions the latent denoiser
LATENT_STAGES = ("ldm", "cd")
VAE_PRESET_NAMES = ("lightweight", "standard")
VAE_KINDS = ("vae", "vqvae")
TRAIN_SUPPORTS = SUPPORT_TYPES + ("predicted",)
DEFAULT_RADIUS = {"predicted": (0, 0, 0)}  # every other support: (1, 2, 2)
DEFAULT_OUT = "runs/latest"
# Flags a resumed run may change; their meaning is documented in the README and logged when they change.
RESUMABLE_FLAGS = ("steps", "lr", "save_every", "preview_every", "preview_steps", "progress", "frame_cache_mb")
# Flags that say where and how to resume, not what the run is.
CONTROL_FLAGS = ("resume", "out", "overwrite")
FIELDS = ("sparse", "dense")  # what --field chooses: the field type the model runs on
MODEL_FLAGS = ("attention_type", "attention_resolutions", "downsample_type", "downsample_stride",
               "model_channels", "channel_mult", "num_res_blocks", "norm_type", "use_fp16", "use_checkpoint",
               "use_depthwise", "dropout")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as config.json in the run folder and inside every checkpoint."""

    preset: str = "tiny"
    field: str = "sparse"
    attention_type: Optional[str] = None
    attention_resolutions: Optional[str] = None
    downsample_type: Optional[str] = None
    downsample_stride: Optional[str] = None
    model_channels: Optional[int] = None
    channel_mult: Optional[str] = None
    num_res_blocks: Optional[int] = None
    norm_type: Optional[str] = None
    use_fp16: Optional[bool] = None
    use_checkpoint: Optional[bool] = None
    use_depthwise: Optional[bool] = None
    dropout: Optional[float] = None
    batch_size: int = 2
    data: str = "synthetic"
    data_format: str = "reference"
    calibration: str = "auto"
    radar_scans: int = 1
    split_file: Optional[str] = None
    max_dt: float = 0.05
    radar: str = "arbe"
    target_fov: str = "auto"
    grid: str = "default"
    train_size: int = 64
    support: str = "radar_dilated"
    support_radius: Optional[str] = None
    structure: Optional[str] = None
    stage: str = "diffusion"
    structure_cap: int = 20000
    structure_prob: bool = True
    frame_cache_mb: float = 1024.0
    ldm_condition: str = "learned"
    dice_weight: float = 1.0
    vae_preset: str = "lightweight"
    vae_kind: str = "vae"
    vae: Optional[str] = None
    stage_steps: Optional[str] = None
    mode: str = "edm"
    teacher: Optional[str] = None
    cm_steps: int = 40
    cd_target_ema: float = 0.95
    cond_drop: float = 0.1
    cd_guidance: float = 1.0
    steps: int = 400
    lr: float = 2e-3
    weight_decay: float = 0.0
    ema_rate: str = "0.999"
    grad_accum: int = 1
    grad_clip: float = 1.0
    save_every: int = 100
    preview_every: int = 0
    preview_steps: int = 12
    resume: Optional[str] = None
    seed: int = 0
    out: Optional[str] = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        checks = (("preset", PRESETS), ("field", FIELDS), ("mode", MODES), ("support", TRAIN_SUPPORTS),
                  ("calibration", ("auto", "none")), ("radar", ("arbe", "ars548")),
                  ("ldm_condition", LDM_CONDITIONS),
                  ("stage", STAGES), ("vae_preset", VAE_PRESET_NAMES), ("vae_kind", VAE_KINDS),
                  ("data_format", DATA_FORMATS), ("attention_type", ATTENTION_TYPES), ("norm_type", NORM_TYPES))
        for name, allowed in checks:
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"--{name}: unknown value {value!r}; expected one of {', '.join(allowed)}")
        if self.radar_scans not in (1, 3, 5):
            raise ValueError(f"--radar_scans must be 1, 3 or 5 (View-of-Delft's radar, radar_3_scans, radar_5_scans), "
                             f"got {self.radar_scans}")
        parse_target_fov(self.target_fov)  # a ValueError saying the form
        if not (isinstance(self.max_dt, (int, float)) and 0 < self.max_dt < 10):
            raise ValueError(f"--max_dt must be a time in seconds in (0, 10), got {self.max_dt!r}")
        for name in ("batch_size", "steps", "grad_accum", "save_every", "train_size", "cm_steps", "preview_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        self._check_stage()
        if self.mode == "cd" and not self.teacher:  # voxel-space distillation
            raise ValueError("--mode cd distils a trained EDM model: pass its checkpoint with --teacher")
        if self.mode == "cd" and self.cm_steps < 2:
            raise ValueError(f"--cm_steps must be >= 2 (the boundaries sigma_min and sigma_max), got {self.cm_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr}")
        for name, meaning in (("grad_clip", " (0 = no clipping)"), ("weight_decay", "")):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"--{name} must be a finite number >= 0{meaning}, got {getattr(self, name)}")
        if not (math.isfinite(self.frame_cache_mb) and self.frame_cache_mb >= 0):
            raise ValueError(f"--frame_cache_mb must be a number of megabytes >= 0 (0 = recompute every step), "
                             f"got {self.frame_cache_mb}")
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"--cond_drop must be in [0, 1) (the share of training samples whose radar condition is "
                             f"dropped, for classifier-free guidance), got {self.cond_drop}")
        if not 0 <= self.cd_guidance <= 20:
            raise ValueError(f"--cd_guidance must be in [0, 20] (1 = the unguided teacher), got {self.cd_guidance}")
        if self.cd_guidance != 1.0 and not (self.mode == "cd" or self.stage == "cd"):
            raise ValueError("--cd_guidance sets the guidance of a distilled teacher: it needs --mode cd or --stage cd")
        if not 0 <= self.cd_target_ema < 1:
            raise ValueError(f"--cd_target_ema must be in [0, 1) (the target network's EMA decay), "
                             f"got {self.cd_target_ema}")
        if self.preview_every < 0:
            raise ValueError(f"--preview_every must be >= 0 (0 = only the final preview), got {self.preview_every}")
        if self.out is not None and not str(self.out).strip():
            raise ValueError("--out must name a folder, got an empty string")
        self.ema_rates()
        self.radius()
        self.grid_spec()

    def _check_stage(self) -> None:
        if self.stage == "all" and (self.vae or self.teacher or self.resume):
            raise ValueError("--stage all passes each stage the run before it and resumes by itself (run the same "
                             "command again): leave out --vae, --teacher and --resume")
        if self.stage_steps is not None and self.stage != "all":
            raise ValueError("--stage_steps sets the steps of --stage all's three stages; use --steps for one stage")
        if self.stage == "ldm" and not self.vae:
            raise ValueError("--stage ldm diffuses in the latent of a trained autoencoder: pass its run with --vae "
                             "(a --stage vae run)")
        if self.vae and self.stage != "ldm":
            raise ValueError(f"--vae gives the autoencoder of --stage ldm; with --stage {self.stage} it would be "
                             f"unused")
        if self.stage == "cd" and not self.teacher:
            raise ValueError("--stage cd distils a latent diffusion model: pass its run with --teacher "
                             "(a --stage ldm run)")
        if self.stage != "diffusion" and self.mode != "edm":
            raise ValueError(f"--stage {self.stage} trains a network of its own; --mode {self.mode} belongs to "
                             f"the diffusion stage (leave --mode out)")
        if self.stage != "diffusion" and self.support == "predicted":
            raise ValueError(f"--stage {self.stage} learns the target's voxels; --support predicted is for the "
                             f"diffusion stage")
        if self.support == "predicted" and not self.structure:
            raise ValueError("--support predicted needs --structure RUN_OR_CHECKPOINT: a run trained with "
                             "--stage structure")
        if self.structure_conditioned_ldm and not self.structure:
            raise ValueError("--ldm_condition structure needs --structure RUN_OR_CHECKPOINT: a run trained with "
                             "--stage structure")
        if self.structure and self.support != "predicted" and not self.structure_conditioned_ldm:
            raise ValueError(f"--structure gives the network of --support predicted (or of --stage ldm "
                             f"--ldm_condition structure); with --support {self.support} it would be unused")
        if self.structure_cap < 0:
            raise ValueError(f"--structure_cap must be >= 0 (0 = no cap), got {self.structure_cap}")
        if not (math.isfinite(self.dice_weight) and self.dice_weight >= 0):
            raise ValueError(f"--dice_weight must be a finite number >= 0, got {self.dice_weight}")

    def target_cone(self):
        """(azimuth, elevation, range) of the target crop --target_fov asks for on this data, or None."""
        return resolve_target_fov(self.target_fov, "synthetic" if self.data == "synthetic" else self.data_format,
                                  self.radar)

    def grid_spec(self) -> GridSpec:
        """The metric grid --grid names (for voxel folders, whose files fix the shape, see Trainer)."""
        return parse_grid(self.grid)

    def ema_rates(self):
        """EMA decay rates, e.g. '0.999,0.9999' -> [0.999, 0.9999]."""
        try:
            rates = [float(r) for r in str(self.ema_rate).split(",") if r.strip()]
        except ValueError:
            raise ValueError(f"--ema_rate must be comma-separated floats, got {self.ema_rate!r}") from None
        if any(not 0 < r < 1 for r in rates):
            raise ValueError(f"--ema_rate values must be in (0, 1), got {self.ema_rate!r}")
        return rates

    def radius(self):
        """Support dilation radius (z, y, x): --support_radius, else 0,0,0 for predicted and 1,2,2 otherwise."""
        if self.support_radius is None:
            return DEFAULT_RADIUS.get(self.support, (1, 2, 2))
        try:
            r = tuple(int(v) for v in str(self.support_radius).split(","))
        except ValueError:
            r = ()
        if len(r) != 3 or min(r) < 0:
            raise ValueError(f"--support_radius must be three ints >= 0 (z,y,x), got {self.support_radius!r}")
        return r

    @property
    def objective(self) -> str:
        """What the UNet learns: edm, cd (voxel --mode cd, or --stage cd in the latent) or ct."""
        return "cd" if self.stage == "cd" else self.mode

    @property
    def structure_conditioned_ldm(self) -> bool:
        """Whether this is an ldm run whose radar encoder also reads the --structure network's prediction."""
        return self.stage in ("ldm", "all") and self.ldm_condition == "structure"

    def condition_radius(self):
        """--ldm_condition structure: the dilation of the structure network's support the encoder reads (z, y, x):
        --support_radius, else 0,0,0."""
        return (0, 0, 0) if self.support_radius is None else self.radius()

    @property
    def structure_channel(self) -> bool:
        """Whether the denoiser reads the structure network's occupancy probability as a condition channel."""
        return self.support == "predicted" and bool(self.structure_prob)

    def model_config(self, grid_shape: Sequence[int], in_channels: int = 8, out_channels: int = 4) -> UNetConfig:
        """The UNetConfig of this run: the preset and the flags given; by default 8 channels in (target + radar),
        4 out."""
        overrides = {k: getattr(self, k) for k in MODEL_FLAGS if getattr(self, k) is not None}
        if self.stage == "ldm" and self.use_fp16 is None:
            # the latent grid is small (a VAE's cell of 4x4x4 voxels): the step is bound by launches, not math, and
            # autocast adds about 1,000 casts (issue 20's ldm row: 2,356 launches against 1,374): fp32 unless asked
            overrides["use_fp16"] = False
        return PRESETS[self.preset](in_channels=in_channels, out_channels=out_channels, input_size=tuple(grid_shape),
                                    **overrides)

    def to_dict(self) -> dict:
        """Plain dict (JSON and checkpoint safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """From a dict; unknown keys are an error (a run saved before --field was named --backend is read)."""
        if "backend" in values and "field" not in values:
            values = {("field" if k == "backend" else k): v for k, v in values.items()}
        return dataclass_from_dict(cls, values, "unknown training option(s):")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if text.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser; every TrainConfig field is a flag."""
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False,
                                description="Train an EDM / consistency model that turns sparse radar voxels into "
                                            "a dense LiDAR-like scene. With no flags: a small sparse model on the "
                                            "built-in synthetic street scenes.")
    helps = {
        "preset": f"model preset: {', '.join(PRESETS)}", "field": "the field the model runs on: sparse (submanifold convs) or dense (the dense fallback on the same "
                 "voxels); the kernels' backend is $SPARSE_RADAR_BACKEND",
        "attention_resolutions": "downsample factors with attention, e.g. 8,4", "channel_mult": "e.g. 1,2,2,4",
        "data": "'synthetic' or a folder", "data_format": f"folder layout: {', '.join(DATA_FORMATS)}",
        "calibration": "--data_format vod or coloradar: auto (the official tree's calib files put the radar into the LiDAR frame) "
                       "or none (take the points as they are: a flat radar/, lidar/ layout already in one frame)",
        "radar_scans": "--data_format vod: 1, 3 or 5 accumulated radar scans (the dataset's radar_3_scans, "
                       "radar_5_scans)",
        "split_file": "--data_format vod: frame ids to train on, one per line (default: lidar/ImageSets/train.txt); "
                      "coloradar: run names (default: splits/train.txt, else every run)",
        "target_fov": "crop the target to the radar's field of view: auto (the dataset's default, see README), none, "
                      "or AZIMUTH,ELEVATION,RANGE (full angles in degrees, metres); recorded in the checkpoint and "
                      "applied by the Densifier",
        "radar": "--data_format dual_radar: arbe (Arbe Phoenix) or ars548 (Continental ARS548), the radar read",
        "max_dt": "--data_format coloradar: pair a radar scan with the nearest LiDAR scan only this close, in seconds "
                  "(farther ones are dropped with one warning)",
        "support": f"where diffusion runs: {', '.join(TRAIN_SUPPORTS)} (predicted: by the --structure network)",
        "support_radius": "dilation z,y,x (default 1,2,2; predicted 0,0,0)",
        "structure": "checkpoint or run folder of a --stage structure run (for --support predicted, or --stage ldm "
                     "--ldm_condition structure)",
        "ldm_condition": "--stage ldm: the radar's condition on the latent grid: learned (a sparse conv encoder trained "
                         "with the LDM), structure (that encoder reading the radar on the --structure network's "
                         "predicted support with its occupancy probability; --support_radius dilates it, default "
                         "0,0,0) or pooled (the radar's channels pooled per latent cell)",
        "structure_prob": "--support predicted: give the denoiser the structure network's occupancy probability of "
                          "each support voxel as one more input channel (False: the radar channels only)",
        "frame_cache_mb": "device memory for a frozen network's per-frame outputs (--support predicted: the "
                          "structure network's support and fields; ldm and latent cd: the VAE's latents), computed "
                          "once per frame and read back in later epochs (0 = recompute every step)",
        "structure_cap": "structure network and VAE decoder: most voxels kept per sample and level (0 = no cap; "
                         "generation warns when it drops voxels: raise it for large grids)",
        "dice_weight": "structure network and VAE: weight of the Dice term beside BCE",
        "stage": "diffusion (voxel-space UNet, --mode), structure (the network that predicts where the scene is), "
                 "vae (the autoencoder of latent diffusion), ldm (EDM in its latent, --vae) or cd (consistency "
                 "distillation of an ldm run, --teacher), or all (vae -> ldm -> cd in --out/vae, ldm, cd; run it "
                 "again to resume)",
        "vae_preset": f"--stage vae: {', '.join(VAE_PRESET_NAMES)} (the reference's presets)",
        "vae_kind": "--stage vae: vae (Gaussian latent, KL) or vqvae (codebook)",
        "vae": "--stage ldm: run or checkpoint of the --stage vae run whose latent is diffused",
        "stage_steps": "--stage all: steps of vae,ldm,cd (default --steps each)",
        "mode": "edm training, cd (consistency distillation, needs --teacher) or ct (consistency training)",
        "teacher": "EDM checkpoint to distil (mode cd)", "ema_rate": "comma-separated EMA rates",
        "grad_accum": "micro-batches per optimizer step", "resume": "checkpoint file or run folder to continue",
        "out": f"run folder (default {DEFAULT_OUT}; with --resume: the checkpoint's run)",
        "overwrite": "replace the run at --out, or cut a resumed run back to the checkpoint's step",
        "grad_clip": "clip the gradient norm to this value; 0 = no clipping",
        "train_size": "synthetic scans in the training split",
        "grid": f"voxel grid: {', '.join(NAMED_GRIDS)} (8x64x64 at 0.8 m, 32x128x128, 80x600x200 at 0.2 m) or "
                "'x0,y0,z0,x1,y1,z1@voxel' in metres; recorded in the checkpoint",
    }
    for f in fields(TrainConfig):
        kind = {"Optional[int]": int, "int": int, "Optional[float]": float, "float": float}.get(str(f.type), str)
        if str(f.type) in ("Optional[bool]", "bool"):
            p.add_argument(f"--{f.name}", type=_bool, nargs="?", const=True, default=f.default,
                           help=helps.get(f.name, "True/False"))
        else:
            p.add_argument(f"--{f.name}", type=kind, default=f.default, help=helps.get(f.name))
    p.add_argument("--backend", dest="deprecated_backend", default=None, help="deprecated: --field")
    return p


def parse_args(argv=None) -> TrainConfig:
    """TrainConfig from command-line flags (errors exit 2 with a message naming the flag).

    The result's `given_flags` holds the names of the flags on the command line (what --resume checks)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    deprecated = vars(args).pop("deprecated_backend")
    given = {name for name in vars(args) if _on_command_line(name, argv)}
    if deprecated is not None:  # --backend sparse|dense, the flag's name before --field
        print(f"{PROG}: --backend is deprecated, use --field {deprecated} (the field the model runs on; the "
              "kernels' backend is chosen by $SPARSE_RADAR_BACKEND)", file=sys.stderr)
        if "field" in given and args.field != deprecated:
            parser.error(f"--backend {deprecated} contradicts --field {args.field}")
        args.field = deprecated
        given.add("field")
    try:
        cfg = TrainConfig(**vars(args))
        # model flags are checked now, on a grid every preset divides (the data's grid is checked at start-up)
        cfg.model_config((64, 1024, 1024))
    except ValueError as exc:
        parser.error(str(exc))
    cfg.given_flags = frozenset(given)
    return cfg


def _on_command_line(name: str, argv) -> bool:
    words = sys.argv[1:] if argv is None else list(argv)
    flag = f"--{name}"
    return any(w == flag or w.startswith(flag + "=") for w in words)


def given_flags(cfg: TrainConfig) -> frozenset:
    """Flags set by the user: those parse_args saw, else (a TrainConfig built in code) those off their default."""
    given = getattr(cfg, "given_flags", None)
    if given is not None:
        return given
    return frozenset(f.name for f in fields(cfg) if getattr(cfg, f.name) != f.default)
