"""The training data of a run: the endless, per-epoch shuffled sample stream, its micro-batches, and the per-sample
random draws (noise level, noise, condition dropout) seeded by stream position, so a run gives the same samples
and draws on any number of processes."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from ..data.datasets import collate
from ..diffusion.edm import DiffusionConfig, sample_sigma
from ..diffusion.guidance import drop_condition, dropped_samples
from ..voxels import SparseVoxels


class BatchStream:
    """Micro-batches of a dataset for one process of a run (seed, batch size, gradient accumulation, ranks)."""

    def __init__(self, dataset, grid_shape, seed: int, batch_size: int, grad_accum: int, rank: int = 0,
                 world_size: int = 1):
        self.dataset, self.grid_shape, self.seed = dataset, tuple(grid_shape), seed
        self.batch_size, self.grad_accum, self.rank, self.world_size = batch_size, grad_accum, rank, world_size
        self._perm_cache: Dict[int, List[int]] = {}

    def index(self, position: int) -> int:
        """Dataset index at a position of the endless, per-epoch shuffled sample stream."""
        epoch, offset = divmod(position, len(self.dataset))
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perm_cache = {epoch: torch.randperm(len(self.dataset), generator=g).tolist()}  # once an epoch
        return self._perm_cache[epoch][offset]

    def positions(self, step: int, micro: int) -> List[int]:
        """Stream positions of this rank's micro-batch: every sample once, none reused (distributed sampler)."""
        b = self.batch_size
        start = (step * self.grad_accum + micro) * b * self.world_size + self.rank * b
        return list(range(start, start + b))

    def pair(self, positions: List[int]):
        """(radar, target) of the samples at these stream positions, on the host."""
        return collate([self.dataset[self.index(p)] for p in positions], self.grid_shape)

    def draws(self, positions: List[int], shapes, diffusion: DiffusionConfig, device) -> tuple:
        """Per sample, a noise level (EDM's log-normal) and unit noise of the given shape, seeded by the sample's
        stream position: (sigma [B] on the device, noises on the host)."""
        sigmas, noises = [], []
        for shape, pos in zip(shapes, positions):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + pos)
            sigmas.append(sample_sigma(1, diffusion, g))
            noises.append(torch.randn(shape, generator=g))
        return torch.cat(sigmas).to(device), noises

    def drop_condition(self, cond, positions: List[int], rate: float, counts: Optional[List[int]] = None):
        """cond with each sample's radar dropped (the null condition) with probability rate, decided on the host by
        the sample's stream position (classifier-free guidance's training, Ho & Salimans 2022)."""
        return drop_condition(cond, dropped_samples(self.seed, positions, rate), counts)


def host_counts(field: SparseVoxels) -> List[int]:
    """Voxels per sample as host ints: those its structure was read with (a strided level, a predicted support),
    else counted (a device sync for a field on the device, none for one still on the host)."""
    counts = field.structure.host_counts()
    return list(counts) if counts is not None else field.batch_counts().tolist()
