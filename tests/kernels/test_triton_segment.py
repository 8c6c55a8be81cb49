"""Sorted-segment sums and affine maps: triton backend (CPU interpreter here) and the deterministic torch path
against float64 sums; the group norm built on them, forward and backward, on the triton backend."""
import pytest
import torch

from sparse_radar.kernels.backends import kernel_settings
from sparse_radar.kernels.segment import row_pointers, segment_affine, sorted_segment_sums
from sparse_radar.nn.fused_norm import segment_group_norm
from tests.kernels.triton_cases import DEVICE

pytest.importorskip("triton")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def sorted_rows(counts=(40, 0, 75, 9), channels=20, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    segment = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    u = (torch.randn(segment.numel(), channels, generator=g) * 2 + 1).to(dtype)
    v = torch.randn(segment.numel(), channels, generator=g).to(dtype)
    shift = torch.randn(len(counts), channels, generator=g)
    return segment.to(DEVICE), row_pointers(segment, len(counts)).to(DEVICE), u.to(DEVICE), v.to(DEVICE), \
        shift.to(DEVICE)


def exact_sums(u, v, shift, segment, shift_u):
    u, v, per = u.double().cpu(), v.double().cpu(), shift.double().cpu()[segment.cpu()]
    a = u - per if shift_u else u
    b = v - per
    n_seg = shift.shape[0]
    z = torch.zeros(n_seg, u.shape[1], dtype=torch.float64)
    return z.index_add(0, segment.cpu(), a), z.clone().index_add(0, segment.cpu(), a * b)


@pytest.mark.parametrize("backend,deterministic", [("triton", False), ("torch", True), ("torch", False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shift_u", [False, True])
def test_sorted_segment_sums(backend, deterministic, dtype, shift_u):
    segment, row_ptr, u, v, shift = sorted_rows(dtype=dtype)
    with kernel_settings(backend=backend, deterministic=deterministic):
        s_a, s_ab = sorted_segment_sums(u, row_ptr, segment, v=v, shift=shift, shift_u=shift_u)
        only_a, none = sorted_segment_sums(u, row_ptr, segment)
    ref_a, ref_ab = exact_sums(u, v, shift, segment, shift_u)
    assert none is None and s_a.dtype == torch.float32
    torch.testing.assert_close(s_a.double().cpu(), ref_a, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s_ab.double().cpu(), ref_ab, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(only_a.double().cpu(), exact_sums(u, v, shift * 0, segment, False)[0],
                               rtol=1e-5, atol=1e-4)
    assert torch.count_nonzero(s_a[1]) == 0  # the empty segment


def test_segment_sums_split_over_many_programs_are_bitwise_repeatable(monkeypatch):
    from sparse_radar.kernels.triton import launch
    segment, row_ptr, u, v, shift = sorted_rows(counts=(300, 1, 150), channels=40)
    monkeypatch.setattr(launch, "TARGET_PROGRAMS", 10 ** 5)
    monkeypatch.setattr(launch, "MIN_SPLIT_ROWS", 1)  # one split per row block
    assert launch.row_splits(451, 32, 3 * 2) == (32, 15)
    with kernel_settings(backend="triton"):
        first = sorted_segment_sums(u, row_ptr, segment, v=v, shift=shift)
        again = sorted_segment_sums(u, row_ptr, segment, v=v, shift=shift)
    ref_a, ref_ab = exact_sums(u, v, shift, segment, False)
    torch.testing.assert_close(first[1].double().cpu(), ref_ab, rtol=1e-5, atol=1e-4)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_segment_affine(dtype):
    segment, row_ptr, u, v, shift = sorted_rows(dtype=dtype)
    scale, v_scale = shift * 0.5 + 1, -shift
    with kernel_settings(backend="triton"):
        out = segment_affine(u, scale, shift, segment, v=v, v_scale=v_scale)
    per = lambda t: t.double().cpu()[segment.cpu()]
    ref = u.double().cpu() * per(scale) + v.double().cpu() * per(v_scale) + per(shift)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double().cpu(), ref, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("groups,center,with_bias,silu", [(4, True, True, False), (20, True, False, True),
                                                          (1, False, False, False), (5, True, True, True)])
def test_group_norm_on_triton_matches_float64(groups, center, with_bias, silu):
    segment, row_ptr, u, _, _ = sorted_rows(channels=20, seed=3)
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(20, generator=g).to(DEVICE)
    bias = torch.randn(20, generator=g).to(DEVICE) if with_bias else None
    grad = torch.randn(u.shape, generator=g).to(DEVICE)
    results = []
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        rows = u.to(dtype).clone().requires_grad_(True)
        w = weight.to(dtype).clone().requires_grad_(True)
        b = None if bias is None else bias.to(dtype).clone().requires_grad_(True)
        with kernel_settings(backend=backend):
            out = segment_group_norm(rows, w, b, segment, row_ptr, groups, center, silu=silu)
            out.backward(grad.to(dtype))
        results.append([t.double().cpu() for t in (out, rows.grad, w.grad) + (() if b is None else (b.grad,))])
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_expand_segments_gradient():
    from sparse_radar.kernels.segment import expand_segments
    segment, row_ptr, u, _, _ = sorted_rows(counts=(5, 0, 7), channels=3)
    rows = torch.randn(3, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: expand_segments(r, segment, row_ptr), (rows,))
    grad = torch.randn(12, 3, device=DEVICE)
    ours = rows.detach().float().requires_grad_(True)
    with kernel_settings(backend="triton"):
        expand_segments(ours, segment, row_ptr).backward(grad)
    ref = torch.zeros(3, 3, dtype=torch.float64).index_add(0, segment.cpu(), grad.double().cpu())
    torch.testing.assert_close(ours.grad.double().cpu(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows", [(40, 0, 75, 9), (0, 0)])
def test_norm_backward_gradients_match_the_torch_backend_with_and_without_rows(rows):
    """The triton norm's backward (its work planes, dW, db and the modulation's gradient carved from one buffer)
    against the torch backend's, with modulation: equal within fp32 rounding; a field of no rows gives zero dW, db
    and modulation gradient, and an empty dX."""
    from sparse_radar.kernels import segment as ks
    segment, row_ptr, x, _, _ = sorted_rows(counts=rows, channels=16, seed=4)
    g = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(16, generator=g).to(DEVICE), torch.randn(16, generator=g).to(DEVICE)
    modulation = torch.randn(len(rows), 32, generator=g).to(DEVICE)
    grad_y = torch.randn(x.shape, generator=g).to(DEVICE)
    results = {}
    for backend in ("triton", "torch"):
        with kernel_settings(backend=backend, deterministic=True):
            _, stats, _ = ks.norm_forward(x, weight, bias, segment, row_ptr, 4, True, 1e-5, modulation, True)
            results[backend] = ks.norm_backward(grad_y, x, weight, bias, segment, row_ptr, stats, 4, True,
                                                modulation, True)
    for ours, theirs in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if not sum(rows):
        d_x, d_w, d_b, d_mod = results["triton"]
        assert d_x.shape == (0, 16) and not d_w.any() and not d_b.any() and not d_mod.any()
