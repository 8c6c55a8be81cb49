"""Padded buckets against a direct construction, and their reuse across attention blocks."""
import torch

from sparse_radar.kernels import grouping
from sparse_radar.nn.attention import build_attention_core
from sparse_radar.voxels import SparseVoxels


def test_bucketize_against_a_loop():
    ids = torch.tensor([7, 3, 7, 7, 1, 3, 9, 1, 7])
    b = grouping.bucketize(ids)
    groups = sorted(set(ids.tolist()))
    assert b.index.shape == (len(groups), 4)  # 7 appears four times
    for g, gid in enumerate(groups):
        rows = [i for i, v in enumerate(ids.tolist()) if v == gid]  # in row order (stable)
        assert b.index[g, :len(rows)].tolist() == rows and (b.index[g, len(rows):] == -1).all()
        assert b.valid[g].sum() == len(rows)
    x = torch.randn(len(ids), 3, dtype=torch.float64, requires_grad=True)
    back = grouping.scatter_buckets(grouping.gather_buckets(x, b), b)
    assert torch.equal(back, x)
    back.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    empty = grouping.bucketize(torch.zeros(0, dtype=torch.int64))
    assert empty.index.shape == (0, 0) and empty.slot.numel() == 0


def test_attention_buckets_are_built_once_per_structure(monkeypatch):
    torch.manual_seed(0)
    mask = torch.rand(2, 1, 4, 8, 8) < 0.3
    sv = SparseVoxels.from_dense(torch.randn(2, 4, 4, 8, 8), mask)
    q, k, v = (torch.randn(sv.num_voxels, 2, 4) for _ in range(3))
    calls = []
    real = grouping.bucketize
    monkeypatch.setattr(grouping, "bucketize", lambda ids: calls.append(1) or real(ids))
    for kind in ("window", "height", "flash", "linear"):
        core = build_attention_core(kind, 2, window_size=(2, 4, 4))
        first = core.sparse(q, k, v, sv)
        n = len(calls)
        assert torch.equal(core.sparse(q, k, v, sv), first)  # a second block on the same voxels
        assert len(calls) == n, kind
