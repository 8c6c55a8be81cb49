"""The networks of the stages before diffusion: the structure network (built from a run's flags, loaded from a
structure-stage checkpoint, embedded in diffusion checkpoints, turned into the predicted support of a batch) and
the latent-diffusion autoencoder (built from --vae_preset / --vae_kind)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..data.grid import GridSpec
from ..data.support import coverage, on_support
from ..models.structure_net import StructureConfig, StructureNet, predicted_support
from ..models.latent import LatentCodec
from ..models.vae import VAE_PRESETS, VAEConfig, build_autoencoder
from ..models.radar_encoder import structure_condition
from ..voxels import SparseVoxels
from .checkpoint import load_checkpoint
from .data_record import data_record_of

STRUCTURE_STAGE = "structure"


def checkpoint_kind(state: dict) -> str:
    """'structure' for a --stage structure checkpoint, 'diffusion' for the UNet's (older checkpoints too)."""
    return state.get("model_kind") or "diffusion"


def build_structure(radar_channels: int, cap: int, dice_weight: float) -> StructureNet:
    """A new structure network with the default levels (three 2x2x2 steps down to 1/8 resolution)."""
    return StructureNet(StructureConfig(in_channels=radar_channels, cap=cap, dice_weight=dice_weight))


def build_vae(cfg, channels: int, grid_shape):
    """A new VAE3D / VQVAE3D of --vae_preset and --vae_kind for the target's channels (the grid must divide)."""
    config = VAE_PRESETS[cfg.vae_preset](kind=cfg.vae_kind, in_channels=channels, dice_weight=cfg.dice_weight,
                                         cap=cfg.structure_cap)
    config.latent_shape(grid_shape)
    return build_autoencoder(config)


def trained_grid(state: dict) -> GridSpec:
    """The grid a checkpoint's network was trained on."""
    return GridSpec.from_dict(data_record_of(state)["grid"])


def load_codec(path: str, grid: Optional[GridSpec] = None) -> LatentCodec:
    """The autoencoder of a --stage vae run (EMA weights) as a latent codec of scale 1; given a grid, the run must
    have been trained on it."""
    state = load_checkpoint(path)
    if checkpoint_kind(state) != "vae":
        raise ValueError(f"--vae {path} is a {checkpoint_kind(state)}-stage checkpoint; pass a --stage vae run")
    if grid is not None:
        grid.require_same(trained_grid(state), f"the VAE {path}")
    autoencoder = build_autoencoder(VAEConfig.from_dict(state["model_config"]))
    autoencoder.load_state_dict(best_weights(state))
    return LatentCodec(autoencoder)


def check_teacher(cfg, teacher_state: dict) -> None:
    """ValueError unless the teacher is what the run distils: an ldm run for --stage cd, a voxel EDM run else."""
    kind, expected = checkpoint_kind(teacher_state), "ldm" if cfg.stage == "cd" else "diffusion"
    if kind != expected:
        what = "--stage cd distils a --stage ldm run" if cfg.stage == "cd" else \
            "--mode cd distils a trained voxel-space EDM model (for a latent one use --stage cd)"
        raise ValueError(f"--teacher is a {kind}-stage checkpoint; {what}")
    if getattr(cfg, "cd_guidance", 1.0) != 1.0 and not trained_cond_drop(teacher_state) > 0:
        raise ValueError(f"--cd_guidance {cfg.cd_guidance} distils the guided teacher, but --teacher was trained "
                         f"without condition dropout (--cond_drop 0), so it has no unconditional branch to guide with")


def trained_cond_drop(state: dict) -> float:
    """The --cond_drop a checkpoint was trained with (0 for checkpoints from before guidance)."""
    return float(state.get("train_config", {}).get("cond_drop", 0.0))


def best_weights(state: dict) -> dict:
    """The EMA weights of a checkpoint (its first rate), else its raw weights."""
    ema = state.get("ema") or {}
    return next(iter(ema.values())) if ema else state["model"]


def structure_from_record(record: dict) -> StructureNet:
    """The network of {'config', 'weights'} (what structure_record writes), in eval mode without gradients."""
    net = StructureNet(StructureConfig.from_dict(record["config"]))
    net.load_state_dict(record["weights"])
    return net.eval().requires_grad_(False)


def structure_record(net: StructureNet, grid: GridSpec) -> dict:
    """{'config', 'weights', 'grid'} of a network, stored inside the diffusion checkpoints that use it."""
    return {"config": net.config.to_dict(), "weights": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "grid": grid.to_dict()}


def load_structure(path_or_state, grid: Optional[GridSpec] = None) -> StructureNet:
    """The structure network of a --stage structure checkpoint (EMA weights) or of a diffusion checkpoint that
    embeds one (trained with --support predicted); given a grid, the network must have been trained on it."""
    state = load_checkpoint(path_or_state) if isinstance(path_or_state, str) else path_or_state
    name = f"the structure network of {path_or_state}" if isinstance(path_or_state, str) else \
        "the checkpoint's structure network"
    record = state.get("structure")
    if not record and checkpoint_kind(state) != STRUCTURE_STAGE:
        raise ValueError(f"{path_or_state if isinstance(path_or_state, str) else 'the checkpoint'} holds no structure "
                         f"network: pass a run of `--stage structure` (or a checkpoint trained with --support "
                         f"predicted)")
    if not record:
        record = {"config": state["model_config"], "weights": best_weights(state), "grid": trained_grid(state)
                  .to_dict()}
    if grid is not None:  # records written before the grid was kept: the grid of the run that embeds it
        grid.require_same(GridSpec.from_dict(record.get("grid") or trained_grid(state).to_dict()), name)
    return structure_from_record(record)


def support_fields(net: StructureNet, radar: SparseVoxels, target: Optional[SparseVoxels],
                   radius, probability: bool = False) -> Tuple[SparseVoxels, SparseVoxels, torch.Tensor]:
    """(target on the predicted support, radar on it (then, with probability, the network's occupancy probability
    as one more channel), coverage [B]) of a batch; without target the first is None."""
    if probability:
        cond = structure_condition(net, radar, radius)
        support = cond.structure
    else:
        support = predicted_support(net, radar, radius)
        cond = on_support(radar, support)
    if target is None:
        return None, cond, torch.ones(radar.batch_size)
    return on_support(target, support), cond, coverage(support, target)
