"""A Densifier from a training checkpoint or run folder: the model with its EMA weights, grid, feature scaling,
support rule, structure network or latent codec, and the device it runs on."""
from __future__ import annotations

from typing import Optional

import torch

from .data.fov import TargetFov
from .data.grid import GridSpec
from .data.voxelize import Channel
from .diffusion.edm import DiffusionConfig
from .models.config import UNetConfig
from .models.latent import LatentCodec
from .models.radar_encoder import attach_encoder, structure_radius
from .models.unet import UNet3D
from .sampling_settings import DTYPES
from .training.checkpoint import load_checkpoint
from .training.config import DEFAULT_RADIUS, LATENT_STAGES, TrainConfig
from .training.data_record import data_record_of
from .training.stages import STRUCTURE_STAGE, checkpoint_kind, load_structure, trained_cond_drop


def load_densifier(cls, path_or_run_folder, device=None, ema: bool = True, dtype="float32",
                   support: Optional[str] = None, structure: Optional[str] = None):
    """cls (a Densifier) rebuilt from a checkpoint or run folder (see Densifier.from_checkpoint)."""
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
    reads_structure = structure_radius(state.get("radar_encoder")) is not None  # --ldm_condition structure
    if kind in LATENT_STAGES and support:
        raise ValueError(f"{path_or_run_folder} is a latent-diffusion model ({kind}): it decodes its own voxels, "
                         f"so a support does not apply")
    if kind in LATENT_STAGES and structure and not reads_structure:
        raise ValueError(f"{path_or_run_folder} is a latent-diffusion model ({kind}) whose radar encoder reads no "
                         f"structure network, so a structure network does not apply")
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
    grid = GridSpec.from_dict(record["grid"])
    if kind in LATENT_STAGES:  # its encoder may read the structure network it carries (--ldm_condition structure)
        net = _checked_structure(structure or state, grid) if reads_structure else None
        return _sourced(cls, source, model, DiffusionConfig(**state["diffusion_config"]),
                        grid, [Channel(**c) for c in record["radar_channels"]],
                        [Channel(**c) for c in record["target_channels"]],
                        consistency=train.objective in ("cd", "ct"), device=device, dtype=DTYPES[dtype],
                        codec=LatentCodec.from_record(state["latent"]), target_fov=fov, cond_drop=cond_drop,
                        structure=net)
    rule, radius = record["support"], record["support_radius"]
    if support is not None and support != rule:
        rule, radius = support, DEFAULT_RADIUS.get(support, (1, 2, 2))
    if structure is not None and rule != "predicted":
        raise ValueError(f"a structure network is used only with support 'predicted', not {rule!r}")
    net = _checked_structure(structure or state, grid) if rule == "predicted" else None
    return _sourced(cls, source, model, DiffusionConfig(**state["diffusion_config"]), grid,
                    [Channel(**c) for c in record["radar_channels"]],
                    [Channel(**c) for c in record["target_channels"]], rule, radius,
                    consistency=train.mode in ("cd", "ct"), field=train.field, device=device, dtype=DTYPES[dtype],
                    structure=net, target_fov=fov, cond_drop=cond_drop)


def _checked_structure(path_or_state, grid: GridSpec):
    """The structure network of a run, checkpoint or checkpoint state, refused unless trained on grid."""
    net = load_structure(path_or_state, grid)
    net.check_grid(grid.shape)
    return net


def _sourced(cls, source: dict, *args, cond_drop: float = 0.0, **kwargs):
    densifier = cls(*args, **kwargs)
    densifier.cond_drop = cond_drop
    densifier.source = source  # which checkpoint (step, content hash) the weights came from
    return densifier


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
