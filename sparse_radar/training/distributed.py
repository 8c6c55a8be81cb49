"""Process-group setup for torchrun (gloo on CPU, NCCL on GPU) and a synchronised teardown."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """This process's place in the run: rank, world size, device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """True on the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def setup() -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def any_true(ctx: DistContext, flag: bool) -> bool:
    """True when flag is True on any process (all processes get the same answer)."""
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_scalar(ctx: DistContext, value: float) -> float:
    """Mean of a float over the processes."""
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def max_param_gap(ctx: DistContext, model: torch.nn.Module) -> float:
    """Largest |p - p_rank0| over parameters and processes (0 when the replicas agree)."""
    if not ctx.active:
        return 0.0
    gap = torch.zeros(1, dtype=torch.float64, device=ctx.device)
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, 0)
        gap = torch.maximum(gap, (p.detach() - ref).abs().max().double().reshape(1))
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return float(gap.item())


def teardown(ctx: DistContext) -> None:
    """Barrier, then destroy the group: unsynchronised gloo teardown can abort a rank (REFERENCE.md)."""
    if ctx.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
