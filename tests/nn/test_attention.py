"""Each attention core against a naive float64 computation: explicit softmax over the allowed key set."""
import math

import pytest
import torch

from sparse_radar.nn.attention import AttentionBlock, build_attention_core
from tests.factory import random_fields

HEADS, DIM = 2, 3


@pytest.fixture(params=[False, True], ids=["per-sample", "all-at-once"])
def one_call(request, monkeypatch):
    """Run global and top-k attention both ways on the CPU: per sample, and all samples in one padded call
    (what CUDA runs)."""
    import sparse_radar.nn.attention_cores as cores
    monkeypatch.setattr(cores, "ALL_SAMPLES_AT_ONCE_ON_CPU", request.param)
    return request.param


def tokens(seed=0, shape=(4, 6, 6), occupancy=(0.2, 0.35)):
    sv, _ = random_fields(2, 1, shape, list(occupancy), seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 100)
    q, k, v = (torch.randn(sv.num_voxels, HEADS, DIM, generator=g, dtype=torch.float64) for _ in range(3))
    return sv, q, k, v


def both_paths(core, q, k, v, sv):
    """(sparse output, dense output read at the active voxels); the dense inputs hold garbage elsewhere."""
    return core.sparse(q, k, v, sv), dense_at_active(core, q, k, v, sv)


def dense_at_active(core, q, k, v, sv):
    """The dense path's output read at the active voxels; the dense inputs hold garbage elsewhere."""
    b, (d0, h0, w0) = sv.batch_size, sv.spatial_shape
    c = sv.coords.long()
    g = torch.Generator().manual_seed(77)
    dense = []
    for t in (q, k, v):
        full = torch.randn(b, d0, h0, w0, HEADS, DIM, generator=g, dtype=t.dtype) * 5  # garbage at inactive voxels
        full[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = t
        dense.append(full.permute(0, 4, 5, 1, 2, 3))  # [B, h, d, D, H, W]
    out = core.dense(*dense, sv.to_dense().mask).permute(0, 3, 4, 5, 1, 2)
    return out[c[:, 0], c[:, 1], c[:, 2], c[:, 3]]


def check(core, q, k, v, sv, ref):
    sparse, dense = both_paths(core, q, k, v, sv)
    torch.testing.assert_close(sparse, ref)
    torch.testing.assert_close(dense, ref)


def naive_softmax(q, k, v, allowed, bias=None):
    """out[i] = sum_j softmax_j(q_i.k_j / sqrt(d) + bias_ij) v_j over allowed j, looping over queries."""
    n = q.shape[0]
    out = torch.zeros_like(q)
    for i in range(n):
        js = [j for j in range(n) if allowed(i, j)]
        for h in range(HEADS):
            s = torch.stack([q[i, h] @ k[j, h] / math.sqrt(DIM) for j in js])
            if bias is not None:
                s = s + torch.stack([bias(i, j, h) for j in js])
            w = torch.softmax(s, 0)
            out[i, h] = sum(w[t] * v[j, h] for t, j in enumerate(js))
    return out


def morton(z, y, x):
    code = 0
    for bit in range(21):
        code |= ((z >> bit) & 1) << (3 * bit + 2) | ((y >> bit) & 1) << (3 * bit + 1) | ((x >> bit) & 1) << (3 * bit)
    return code


def test_flash_is_softmax_over_the_sample(one_call):
    sv, q, k, v = tokens()
    c = sv.coords.tolist()
    ref = naive_softmax(q, k, v, lambda i, j: c[i][0] == c[j][0])
    check(build_attention_core("flash", HEADS), q, k, v, sv, ref)


def test_flash_attn_is_optional(monkeypatch):
    """flash-attn (the `cuda` extra) is never imported at start-up, and without it the varlen path declines so
    GlobalAttention falls back to SDPA."""
    import subprocess
    import sys

    from sparse_radar.nn import attention_cores
    code = "import sys, sparse_radar, sparse_radar.nn, sparse_radar.train; print('flash_attn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import flash_attn now raises ImportError
    sv, q, k, v = tokens()
    assert attention_cores._flash_attn_varlen(q, k, v, sv) is None


def test_height_is_softmax_along_each_column():
    sv, q, k, v = tokens(seed=1, shape=(6, 3, 3), occupancy=(0.5, 0.4))
    c = sv.coords.tolist()
    ref = naive_softmax(q, k, v, lambda i, j: (c[i][0], c[i][2], c[i][3]) == (c[j][0], c[j][2], c[j][3]))
    check(build_attention_core("height", HEADS), q, k, v, sv, ref)


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 2, 1)])
def test_window_softmax_with_relative_position_bias(shift):
    sv, q, k, v = tokens(seed=2, shape=(4, 7, 6))
    window = (2, 3, 2)
    core = build_attention_core("window", HEADS, window_size=window, shift=shift).double()
    with torch.no_grad():
        core.bias_table.copy_(torch.randn(core.bias_table.shape, generator=torch.Generator().manual_seed(7)))
    c = sv.coords.tolist()
    moved = [[p[a + 1] + shift[a] for a in range(3)] for p in c]
    win = lambda i: (c[i][0],) + tuple(moved[i][a] // window[a] for a in range(3))
    local = lambda i: [moved[i][a] % window[a] for a in range(3)]

    def bias(i, j, h):
        r = [local(i)[a] - local(j)[a] + window[a] - 1 for a in range(3)]
        row = (r[0] * (2 * window[1] - 1) + r[1]) * (2 * window[2] - 1) + r[2]
        return core.bias_table[row, h]

    ref = naive_softmax(q, k, v, lambda i, j: win(i) == win(j), bias)
    check(core, q, k, v, sv, ref)


@pytest.mark.parametrize("shifted", [False, True])
def test_serialized_attends_within_zorder_patches(shifted):
    """Both paths against patches cut from a Morton order computed here; shifted cuts move by half a patch."""
    sv, q, k, v = tokens(seed=3)
    c = sv.coords.tolist()
    offset = 2 if shifted else 0
    patch = {}
    for b in (0, 1):
        rows = sorted((i for i in range(len(c)) if c[i][0] == b), key=lambda i: morton(*c[i][1:]))
        patch.update({i: (b, (rank + offset) // 5) for rank, i in enumerate(rows)})
    ref = naive_softmax(q, k, v, lambda i, j: patch[i] == patch[j])
    check(build_attention_core("serialized", HEADS, patch_size=5, shifted=shifted), q, k, v, sv, ref)


def test_serialized_dense_path_does_not_build_sparse_tokens(monkeypatch):
    """The dense path is a computation of its own: the sparse grouping is never called on the way."""
    from sparse_radar.kernels import grouping
    sv, q, k, v = tokens(seed=5)
    core = build_attention_core("serialized", HEADS, patch_size=4)
    expected = core.sparse(q, k, v, sv)

    def refuse(*args, **kwargs):
        raise AssertionError("the dense path called the sparse grouping")
    monkeypatch.setattr(grouping, "patch_ids", refuse)
    monkeypatch.setattr(grouping, "bucketize", refuse)
    torch.testing.assert_close(dense_at_active(core, q, k, v, sv), expected)


def test_unet_alternates_serialized_patch_cuts():
    from sparse_radar.models import UNet3D, create_tiny_unet_config
    cfg = create_tiny_unet_config(attention_type="serialized", attention_resolutions=(1, 2, 4), patch_size=8)
    offsets = [m.offset for m in UNet3D(cfg).modules() if type(m).__name__ == "SerializedAttention"]
    assert len(offsets) > 2 and set(offsets) == {0, 4}
    assert all(a != b for a, b in zip(offsets, offsets[1:]))


@pytest.mark.parametrize("occupancy", [(0.2, 0.35), (0.0, 0.3)])  # the second batch has an empty sample
def test_linear_attention_formula(occupancy):
    sv, q, k, v = tokens(seed=4, occupancy=occupancy)
    phi = lambda t: torch.nn.functional.elu(t) + 1
    c = sv.coords.tolist()
    ref = torch.zeros_like(q)
    for i in range(len(c)):
        js = [j for j in range(len(c)) if c[j][0] == c[i][0]]
        for h in range(HEADS):
            w = torch.stack([phi(q[i, h]) @ phi(k[j, h]) for j in js])
            ref[i, h] = sum(w[t] * v[j, h] for t, j in enumerate(js)) / w.sum()
    check(build_attention_core("linear", HEADS), q, k, v, sv, ref)


@pytest.mark.parametrize("topk,occupancy", [(1, (0.2, 0.35)), (4, (0.2, 0.35)), (6, (0.03, 0.8))])
def test_topk_attention_keeps_the_highest_scores(topk, occupancy, monkeypatch, one_call):
    import sparse_radar.nn.attention_cores as cores
    monkeypatch.setattr(cores, "TOPK_QUERY_ELEMENTS", 50)  # several query chunks per sample
    sv, q, k, v = tokens(seed=5, occupancy=occupancy)
    counts = sv.batch_counts().tolist()
    if occupancy[0] < 0.1:  # all samples at once: a sample with fewer keys than topk must ignore the padding
        assert 0 < min(counts) < topk < max(counts), counts
    c = sv.coords.tolist()
    ref = torch.zeros_like(q)
    for i in range(len(c)):
        js = [j for j in range(len(c)) if c[j][0] == c[i][0]]
        for h in range(HEADS):
            scores = {j: float(q[i, h] @ k[j, h]) / math.sqrt(DIM) for j in js}
            best = sorted(js, key=lambda j: -scores[j])[:topk]
            w = torch.softmax(torch.tensor([scores[j] for j in best], dtype=torch.float64), 0)
            ref[i, h] = sum(w[t] * v[j, h] for t, j in enumerate(best))
    check(build_attention_core("sparse", HEADS, topk=topk), q, k, v, sv, ref)


def test_topk_attention_gradients_match_finite_differences_on_both_paths(monkeypatch, one_call):
    import sparse_radar.nn.attention_cores as cores
    monkeypatch.setattr(cores, "TOPK_QUERY_ELEMENTS", 50)  # keys picked over several query chunks
    sv, q, k, v = tokens(seed=7, shape=(3, 4, 4))
    core = build_attention_core("sparse", HEADS, topk=3)
    inputs = tuple(t.clone().requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda *t: core.sparse(*t, sv), inputs)
    assert torch.autograd.gradcheck(lambda *t: torch.cat(both_paths(core, *t, sv)), inputs)


def test_topk_with_k_at_least_n_equals_full_attention(one_call):
    sv, q, k, v = tokens(seed=6)
    full = build_attention_core("flash", HEADS).sparse(q, k, v, sv)
    check(build_attention_core("sparse", HEADS, topk=10_000), q, k, v, sv, full)


@pytest.mark.parametrize("attention_type", ["flash", "window", "linear", "sparse", "height", "serialized"])
def test_block_sparse_equals_masked_dense_and_handles_empty_samples(attention_type):
    sv, dv = random_fields(3, 8, (4, 6, 6), [0.2, 0.0, 0.3], seed=8, dtype=torch.float64)
    block = AttentionBlock(8, attention_type, 2, "group", 4, window_size=(2, 2, 2), topk=3, patch_size=6).double()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    out_s, out_d = block(sv), block(dv)
    torch.testing.assert_close(out_d.to_sparse().feats, out_s.feats, rtol=1e-10, atol=1e-10)
    assert torch.equal(out_d.mask, dv.mask)
    assert not torch.allclose(out_s.feats, sv.feats)


def test_block_errors():
    with pytest.raises(ValueError, match="num_heads"):
        AttentionBlock(6, "flash", 4)
    with pytest.raises(ValueError, match="attention_type"):
        AttentionBlock(8, "global", 2)


@pytest.mark.parametrize("attention_type,autocast", [("flash", False), ("window", False), ("sparse", False),
                                                     ("flash", True), ("sparse", True)])
def test_checkpointed_block_saves_only_its_input_and_gives_the_same_gradients(attention_type, autocast,
                                                                              monkeypatch):
    """Checkpointed (and recomputing: MIN_RECOMPUTE_BYTES 0), the block keeps its input only; its backward
    recomputes the attention and takes the output projection and the residual sum by their backward alone (the
    plain block runs its projection module once, the checkpointed one by hand, never the module)."""
    import sparse_radar.nn.recompute as rc
    monkeypatch.setattr(rc, "MIN_RECOMPUTE_BYTES", 0)
    sv, _ = random_fields(2, 8, (4, 8, 8), [0.3, 0.5], seed=5)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        block = AttentionBlock(8, attention_type, num_heads=2, num_groups=4, topk=4, use_checkpoint=ckpt)
        torch.nn.init.normal_(block.proj.weight, std=0.3)
        torch.nn.init.normal_(block.proj.bias, std=0.3)
        projections = []
        forward = block.proj.forward
        block.proj.forward = lambda v: projections.append(1) or forward(v)
        feats = sv.feats.clone().requires_grad_(True)
        saved = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
                out = block(sv.replace(feats))
        out.feats.float().square().sum().backward()
        assert len(projections) == (0 if ckpt else 1)
        results.append((out.feats.detach(), feats.grad, [p.grad for p in block.parameters()], sum(saved)))
    (out0, gx0, gp0, saved0), (out1, gx1, gp1, saved1) = results
    # (window attention's forward without a graph differs under autocast in bf16's last bits from the one with a
    # graph, so it is compared in fp32 only)
    torch.testing.assert_close(out1, out0)
    torch.testing.assert_close(gx1, gx0)
    for a, b in zip(gp0, gp1):
        torch.testing.assert_close(b, a)
    assert all(g is not None for g in gp1)
    assert saved1 == sv.feats.numel() < saved0  # checkpointing keeps its input [N, C] and recomputes the rest
