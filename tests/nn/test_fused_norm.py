"""The one-op sparse group norm: float64 gradcheck, the unmasked dense path, and what it keeps for backward."""
import numpy as np
import pytest
import torch

from sparse_radar import DenseVoxels
from sparse_radar.kernels.segment import row_pointers
from sparse_radar.nn.fused_norm import segment_group_norm
from sparse_radar.nn.norm import build_norm
from tests.nn.test_norm import reference


@pytest.mark.parametrize("groups,center,with_bias", [(3, True, True), (1, True, True), (6, True, False),
                                                     (1, False, False), (2, False, True)])
def test_gradcheck_float64(groups, center, with_bias):
    g = torch.Generator().manual_seed(groups)
    seg = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2, 2, 2])  # rows sorted by sample; sample 1 has no rows
    row_ptr = row_pointers(seg, 3)
    rows = (torch.randn(10, 6, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    weight = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_(True)
    bias = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_(True) if with_bias else None
    fn = lambda r, w, b: segment_group_norm(r, w, b, seg, row_ptr, groups, center, 1e-5)
    assert torch.autograd.gradcheck(fn, (rows, weight, bias))
    ref = reference(rows.detach().numpy(), seg.numpy(), 3, groups, center, 1e-5, weight.detach().numpy(),
                    None if bias is None else bias.detach().numpy())
    np.testing.assert_allclose(fn(rows, weight, bias).detach().numpy(), ref, rtol=1e-10, atol=1e-12)


def test_unmasked_dense_path_matches_the_reference():
    g = torch.Generator().manual_seed(4)
    data = torch.randn(2, 12, 3, 4, 5, generator=g) * 2 + 0.5
    norm = build_norm("group", 12, num_groups=4)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    out = norm(DenseVoxels(data)).data  # every voxel active: torch's group_norm
    feats = data.permute(0, 2, 3, 4, 1).reshape(-1, 12)
    batch = torch.arange(2).repeat_interleave(60)
    ref = reference(feats.numpy(), batch.numpy(), 2, 4, True, 1e-5, norm.weight.detach().numpy(),
                    norm.bias.detach().numpy())
    np.testing.assert_allclose(out.permute(0, 2, 3, 4, 1).reshape(-1, 12).detach().numpy(), ref, rtol=1e-4,
                               atol=1e-5)


def test_bf16_rows_keep_only_the_input_and_statistics():
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(500, 32, generator=g).to(torch.bfloat16).requires_grad_(True)
    seg = torch.arange(2).repeat_interleave(250)
    weight = torch.randn(32, generator=g).requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = segment_group_norm(rows, weight, None, seg, row_pointers(seg, 2), 8)
    assert out.dtype == torch.bfloat16
    big = [t for t in saved if t.numel() >= rows.numel()]
    assert len(big) == 1 and big[0].dtype == torch.bfloat16  # the input itself, no fp32 copies
    out.float().square().sum().backward()
    ref_rows = rows.detach().float().requires_grad_(True)
    ref_w = weight.detach().clone().requires_grad_(True)
    segment_group_norm(ref_rows, ref_w, None, seg, row_pointers(seg, 2), 8).square().sum().backward()
    torch.testing.assert_close(weight.grad, ref_w.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(rows.grad.float(), ref_rows.grad, rtol=2e-2, atol=2e-2)


def values_and_grads(fn, params, grad):
    """[fn()'s value, then its gradient for each of params under the output gradient grad]."""
    out = fn()
    return [out.detach(), *torch.autograd.grad(out, params, grad)]


def assert_all_close(got, want, tol):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("groups,center,with_bias,strided", [(3, True, True, False), (6, True, False, True),
                                                             (1, False, True, True)])
def test_modulated_norm_against_norm_then_scale_shift(backend, groups, center, with_bias, strided):
    """norm(x) * (1 + scale) + shift per (sample, channel) in one op ([scale | shift] = modulation [B, 2C]) equals
    the norm followed by the ResBlock's modulation, values and every gradient (float64 on torch, float32 on triton),
    and passes gradcheck; a modulation that is a column slice of a wider tensor (rows further apart) is read in
    place."""
    from sparse_radar.kernels.backends import kernel_settings
    g = torch.Generator().manual_seed(groups + 10)
    seg = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2, 2, 2])
    row_ptr = row_pointers(seg, 3)
    dtype = torch.float64 if backend == "torch" else torch.float32
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    rows, weight, source = make(10, 6), make(6), make(3, 20 if strided else 12)
    mod = source[:, 5:17] if strided else source
    bias = make(6) if with_bias else None
    params = [p for p in (rows, weight, source, bias) if p is not None]
    grad = torch.randn(10, 6, generator=g, dtype=torch.float64).to(dtype)
    with kernel_settings(backend=backend):
        got = values_and_grads(lambda: segment_group_norm(rows, weight, bias, seg, row_ptr, groups, center, 1e-5,
                                                          mod), params, grad)
        want = values_and_grads(lambda: segment_group_norm(rows, weight, bias, seg, row_ptr, groups, center, 1e-5)
                                * (1 + mod[seg, :6]) + mod[seg, 6:], params, grad)
    assert_all_close(got, want, 1e-10 if dtype == torch.float64 else 2e-5)
    if backend == "torch":
        fn = lambda r, w, src: segment_group_norm(r, w, bias, seg, row_ptr, groups, center, 1e-5,
                                                  src[:, 5:17] if strided else src)
        assert torch.autograd.gradcheck(fn, (rows, weight, source))


def test_modulation_of_the_wrong_shape_is_refused():
    seg = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match=r"modulation must be \[2, 8\]"):
        segment_group_norm(torch.randn(3, 4), torch.ones(4), None, seg, row_pointers(seg, 2), 2,
                           modulation=torch.zeros(2, 4))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("groups,center,with_bias,modulated", [(3, True, True, True), (6, True, False, False),
                                                               (1, False, True, True), (2, True, True, False)])
def test_norm_with_silu_against_norm_then_silu(backend, groups, center, with_bias, modulated):
    """silu(norm(x) [* m + t]) in one op equals the norm followed by torch's SiLU, values and every gradient (float64
    on torch, float32 on triton), and passes gradcheck on torch."""
    from sparse_radar.kernels.backends import kernel_settings
    g = torch.Generator().manual_seed(groups + 20)
    seg = torch.tensor([0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2])  # sample 1 has no rows
    row_ptr = row_pointers(seg, 3)
    dtype = torch.float64 if backend == "torch" else torch.float32
    make = lambda *shape: (torch.randn(*shape, generator=g, dtype=torch.float64) * 1.5).to(dtype).requires_grad_(True)
    rows, weight = make(11, 6), make(6)
    bias = make(6) if with_bias else None
    mod = make(3, 12) if modulated else None
    params = [p for p in (rows, weight, bias, mod) if p is not None]
    grad = torch.randn(11, 6, generator=g, dtype=torch.float64).to(dtype)
    with kernel_settings(backend=backend):
        got = values_and_grads(lambda: segment_group_norm(rows, weight, bias, seg, row_ptr, groups, center, 1e-5,
                                                          mod, silu=True), params, grad)
    with kernel_settings(backend="torch"):
        want = values_and_grads(lambda: torch.nn.functional.silu(segment_group_norm(
            rows, weight, bias, seg, row_ptr, groups, center, 1e-5, mod)), params, grad)
    assert_all_close(got, want, 1e-10 if dtype == torch.float64 else 2e-5)
    if backend == "torch":
        fn = lambda r, w, b, mm: segment_group_norm(r, w, b if with_bias else None, seg, row_ptr, groups, center,
                                                    1e-5, mm if modulated else None, silu=True)
        assert torch.autograd.gradcheck(fn, (rows, weight, bias if with_bias else weight, mod if modulated else rows))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_dropout_keeps_a_share_and_its_gradient_follows_the_same_mask(backend):
    """dropout(silu(norm(x) * (1 + scale) + shift)) in one op: about p of the outputs are 0, the others are the
    undropped op's value / (1 - p), and every gradient equals that of the undropped op times the same mask (the
    triton backend recomputes the mask from its seed in the backward; the same RNG state gives the same mask)."""
    from sparse_radar.kernels.backends import kernel_settings
    g = torch.Generator().manual_seed(30)
    seg = torch.arange(2).repeat_interleave(torch.tensor([70, 130]))
    row_ptr = row_pointers(seg, 2)
    make = lambda *shape: torch.randn(*shape, generator=g).requires_grad_(True)
    rows, weight, bias, mod = make(200, 16), make(16), make(16), make(2, 32)
    params = (rows, weight, bias, mod)
    grad = torch.randn(200, 16, generator=g)
    p = 0.3
    with kernel_settings(backend=backend):
        torch.manual_seed(5)
        out = segment_group_norm(rows, weight, bias, seg, row_ptr, 4, True, 1e-5, mod, silu=True, dropout=p)
        got = torch.autograd.grad(out, params, grad)  # the mask of this very output
        torch.manual_seed(5)
        again = segment_group_norm(rows, weight, bias, seg, row_ptr, 4, True, 1e-5, mod, silu=True, dropout=p)
        plain = segment_group_norm(rows, weight, bias, seg, row_ptr, 4, True, 1e-5, mod, silu=True)
    assert torch.equal(out, again)
    keep = out != 0
    assert abs(1 - keep.float().mean().item() - p) < 0.05
    torch.testing.assert_close(out[keep], plain[keep] / (1 - p), rtol=1e-5, atol=1e-6)
    want = torch.autograd.grad(plain * keep / (1 - p), params, grad)
    assert_all_close(got, want, 1e-4)
    with pytest.raises(ValueError, match="dropout must be in"):
        segment_group_norm(rows, weight, bias, seg, row_ptr, 4, dropout=1.0)


def test_resblock_with_dropout_and_checkpointing_on_triton_matches_no_checkpointing():
    """A sparse ResBlock with dropout and gradient checkpointing: the recompute draws the same dropout seed, so the
    output and every gradient equal those of the same block without checkpointing."""
    from sparse_radar import SparseVoxels
    from sparse_radar.kernels.backends import kernel_settings
    from sparse_radar.nn.blocks import ResBlock
    torch.manual_seed(0)
    block = ResBlock(8, 16, 12, num_groups=4, dropout=0.4).train()
    with torch.no_grad():
        for prm in block.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
    mask = torch.rand(2, 1, 4, 6, 6) < 0.4
    x = SparseVoxels.from_dense(torch.randn(2, 8, 4, 6, 6), mask)
    emb = torch.randn(2, 12)
    results = []
    for checkpointing in (False, True):
        block.use_checkpoint = checkpointing
        feats = x.feats.clone().requires_grad_(True)
        with kernel_settings(backend="triton"):
            torch.manual_seed(11)
            out = block(x.replace(feats), emb).feats
            out.square().sum().backward()
        results.append([out.detach(), feats.grad] + [prm.grad.clone() for prm in block.parameters()])
        block.zero_grad()
    with kernel_settings(backend="triton"), torch.no_grad():
        torch.manual_seed(12)
        assert not torch.allclose(block(x, emb).feats, results[0][0])  # dropout ran: another seed, another output
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
