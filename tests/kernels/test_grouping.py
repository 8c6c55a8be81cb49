"""Padded buckets against a direct construction, and their reuse across attention blocks."""
import pytest
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


def test_bucket_gather_and_scatter_gradients_against_index_select():
    """gather_buckets and scatter_buckets are autograd ops whose backward is one gather: through a bucketwise op
    that leaves padding without gradient (as masked attention does), the gradients equal index_select's, and
    gradcheck passes in float64."""
    ids = torch.tensor([4, 1, 4, 2, 4, 1, 2, 2, 2])
    b = grouping.bucketize(ids)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(ids), 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*b.index.shape, 3, generator=g, dtype=torch.float64)

    def bucketwise(t):  # mixes each bucket's valid rows; padding rows neither read nor given gradient
        keep = b.valid[..., None].to(t.dtype)
        return (t * keep).sum(1, keepdim=True) * w * keep + t * w

    assert torch.autograd.gradcheck(lambda t: grouping.scatter_buckets(bucketwise(grouping.gather_buckets(t, b)),
                                                                      b), (x,))
    ours = grouping.scatter_buckets(bucketwise(grouping.gather_buckets(x, b)), b)
    grad = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad(ours, x, grad)
    flat = b.index.clamp_min(0).reshape(-1)
    ref = bucketwise(x.index_select(0, flat).view(*b.index.shape, 3)).reshape(-1, 3)
    ref = torch.zeros_like(x).index_copy(0, flat[b.valid.reshape(-1)], ref[b.valid.reshape(-1)])
    (want,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_an_attention_blocks_qkv_slices_are_gathered_once(monkeypatch):
    """q, k, v that are the slices of one [N, 3, h, d] projection go through one gather, with the same outputs and
    gradients as three separate tensors."""
    from sparse_radar.nn import attention_cores
    torch.manual_seed(1)
    mask = torch.rand(2, 1, 4, 8, 8) < 0.3
    sv = SparseVoxels.from_dense(torch.randn(2, 4, 4, 8, 8), mask)
    proj = torch.randn(sv.num_voxels, 24, dtype=torch.float64, requires_grad=True)
    calls = []
    real = grouping.gather_buckets
    monkeypatch.setattr(grouping, "gather_buckets", lambda t, bk: calls.append(t.shape) or real(t, bk))
    monkeypatch.setattr(attention_cores, "ALL_SAMPLES_AT_ONCE_ON_CPU", True)  # the padded path CUDA takes
    for kind in ("window", "height", "flash", "linear", "sparse"):
        core = build_attention_core(kind, 2, window_size=(2, 4, 4), topk=4)
        results = []
        for stacked in (True, False):
            calls.clear()
            q, k, v = proj.view(-1, 3, 2, 4).unbind(1)
            if not stacked:
                q, k, v = q.clone(), k.clone(), v.clone()
            out = core.sparse(q, k, v, sv)
            results.append([out] + list(torch.autograd.grad(out.square().sum(), proj)))
            assert len(calls) == (1 if stacked else 3), kind
        for a, c in zip(*results):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_segment_buckets_from_host_counts_equal_bucketize():
    """Per-sample buckets built from CSR offsets and host counts (no host read) equal bucketize's."""
    from sparse_radar.kernels.segment import row_pointers
    segment = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2])
    ours = grouping.segment_buckets(row_pointers(segment, 3), (3, 1, 5), segment)
    ref = grouping.bucketize(segment)
    for a, b in zip(ours[:4], ref[:4]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="non-empty"):
        grouping.segment_buckets(row_pointers(segment, 4), (3, 1, 5, 0), segment)
