"""Per-frame outputs of a frozen network, computed once and read back after (--frame_cache_mb).

A frozen network in eval mode gives a frame the same output in every epoch, and the networks here work per sample
(per-sample norms, caps and attention). Only the last bits of a frame's output depend on its place in a batch (the
order of floating-point sums), so with a cache a frame missing from it is computed alone, as a batch of one: a kept
frame and a recomputed one (after a resume, or past the budget) are then the same bits. The diffusion stage keeps
the predicted support's fields (the structure network's prediction: the frame's support, its target and condition
on it, its coverage); the latent stages keep the VAE's latents of the target. A step whose frames are all kept skips
that network: its launches and its host reads (for the predicted support, the frame's loading too).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..structure import VoxelStructure
from ..voxels import SparseVoxels

Entry = Tuple[object, ...]


class FrameCache:
    """Entries (tuples of tensors and numbers) by dataset index, kept on the device while they fit the budget."""

    def __init__(self, budget_mb: float):
        if not budget_mb >= 0:
            raise ValueError(f"the frame cache's budget must be >= 0 MB (0 = keep nothing), got {budget_mb!r}")
        self.budget = int(float(budget_mb) * 2 ** 20)
        self.used = 0
        self.frames: Dict[int, Entry] = {}
        self.full = False  # a frame did not fit: every later frame is computed each time it comes

    def get(self, indices: Sequence[int]) -> Optional[List[Entry]]:
        """The entries of these frames, or None unless every one is kept."""
        if not indices or any(i not in self.frames for i in indices):
            return None
        return [self.frames[i] for i in indices]

    def put(self, index: int, entry: Entry) -> None:
        """Keep a frame's entry (its tensors copied into their own memory) if the budget has room; kept ones stay."""
        if index in self.frames or self.full:
            return
        size = sum(t.numel() * t.element_size() for t in entry if isinstance(t, torch.Tensor))
        if self.used + size > self.budget:
            self.full = True
            return
        self.frames[index] = tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t for t in entry)
        self.used += size

    def entries(self, indices: Sequence[int], frames: Callable[[], Sequence[object]],
                compute: Callable[[object], Entry]) -> List[Entry]:
        """The entries of these frames: the kept ones read back, the others computed each alone by compute(frame)
        on frames() (the batch's frames in the same order, asked for only when one is missing) and kept."""
        kept = self.get(indices)
        if kept is not None:
            return kept
        out = []
        for index, frame in zip(indices, frames()):
            entry = self.frames[index] if index in self.frames else compute(frame)
            self.put(index, entry)
            out.append(entry)
        return out


def frames_of(field: SparseVoxels) -> List[SparseVoxels]:
    """The samples of a batch still on the host, each as a batch of one."""
    out, start = [], 0
    for n in field.batch_counts().tolist():
        coords = field.coords[start:start + n].clone()
        coords[:, 0] = 0
        out.append(SparseVoxels(field.feats[start:start + n], coords, field.spatial_shape, 1))
        start += n
    return out


def split_support_fields(tgt: SparseVoxels, cond: SparseVoxels, cov: torch.Tensor,
                         counts: Sequence[int]) -> List[Entry]:
    """Per frame of a batch (counts: its support voxels per sample, host ints): (keys within the frame's grid,
    target feats, condition feats, coverage, count)."""
    cells = tgt.spatial_shape[0] * tgt.spatial_shape[1] * tgt.spatial_shape[2]
    entries, start = [], 0
    for b, n in enumerate(counts):
        rows = slice(start, start + int(n))
        entries.append((tgt.structure.keys[rows] - b * cells, tgt.feats[rows], cond.feats[rows], cov[b], int(n)))
        start += int(n)
    return entries


def joined_structure(keys: Sequence[torch.Tensor], counts: Sequence[int], spatial_shape: Sequence[int],
                     device: torch.device) -> VoxelStructure:
    """One batch's structure of per-frame keys (each within its frame's grid; counts: their lengths, host ints),
    without host reads."""
    cells = int(spatial_shape[0]) * int(spatial_shape[1]) * int(spatial_shape[2])
    joined = torch.cat([k if b == 0 else k + b * cells for b, k in enumerate(keys)])
    structure = VoxelStructure.from_keys(joined.to(device), tuple(spatial_shape), len(keys))
    structure.cache["host_counts"] = tuple(int(n) for n in counts)
    return structure


def join_fields(entries: Sequence[Entry], spatial_shape: Sequence[int], device: torch.device) -> SparseVoxels:
    """Per-frame (keys within the frame's grid, feats, count) as one batch's field, without host reads."""
    structure = joined_structure([e[0] for e in entries], [e[2] for e in entries], spatial_shape, device)
    return SparseVoxels.wrap(torch.cat([e[1] for e in entries]).to(device), structure)


def join_support_fields(entries: Sequence[Entry], spatial_shape: Sequence[int], device: torch.device):
    """split_support_fields' entries as one batch: (target, condition, coverage [B], counts), without host reads."""
    counts = [int(e[4]) for e in entries]
    structure = joined_structure([e[0] for e in entries], counts, spatial_shape, device)
    tgt = SparseVoxels.wrap(torch.cat([e[1] for e in entries]).to(device), structure)
    cond = SparseVoxels.wrap(torch.cat([e[2] for e in entries]).to(device), structure)
    return tgt, cond, torch.stack([e[3] for e in entries]), counts
