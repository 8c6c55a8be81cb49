"""Per-segment (per-sample) reductions over rows [N, ...] with a segment id per row."""
from __future__ import annotations

import torch


def segment_sum(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum of the rows of values [N, ...] in each segment -> [S, ...] (differentiable)."""
    out = values.new_zeros((num_segments,) + tuple(values.shape[1:]))
    return out.index_add(0, segment, values)


def segment_counts(segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Rows per segment, int64 [S]."""
    return torch.bincount(segment, minlength=num_segments)
