"""The sparse-conv autograd op: gradcheck, chunking, determinism, half precision, bad inputs."""
import pytest
import torch

from sparse_radar.kernels import conv as kconv
from sparse_radar.kernels import torch as ktorch
from sparse_radar.kernels import kmap_builders as km
from sparse_radar.kernels.backends import kernel_settings
from tests.factory import random_fields


def subm_map(sv, kernel=(3, 3, 3), dilation=(1, 1, 1)):
    return km.submanifold_kmap(sv.coords, sv.spatial_shape, sv.batch_size, kernel, dilation)


def strided_map(sv, geo=((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))):
    return km.strided_kmap(sv.coords, sv.spatial_shape, *geo)[0]


@pytest.mark.parametrize("make_map", [subm_map, strided_map, lambda sv: strided_map(sv).transposed()])
def test_gradcheck_float64(make_map):
    sv, _ = random_fields(2, 3, (4, 5, 5), [0.3, 0.15], seed=1, dtype=torch.float64)
    kmap = make_map(sv)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(kmap.n_in, 3, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(kmap.kernel_volume, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w, b: kconv.sparse_conv(f, w, b, kmap), (feats, weight, bias))


def _run(feats, weight, kmap, grad):
    f = feats.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    out = kconv.sparse_conv(f, w, None, kmap)
    out.backward(grad)
    return out.detach(), f.grad, w.grad


def test_chunked_path_equals_unchunked_and_deterministic_is_bitwise():
    sv, _ = random_fields(2, 16, (8, 10, 12), [0.2, 0.05], seed=2)
    kmap = subm_map(sv)
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(27, 16, 8, generator=g)
    grad = torch.randn(kmap.n_out, 8, generator=g)
    whole = _run(sv.feats, weight, kmap, grad)
    with kernel_settings(gather_elements=16 * 5):  # 5 rows a chunk: many chunks, segments split
        assert len(ktorch.plan_chunks(kmap, 5)) > kmap.kernel_volume
        chunked = _run(sv.feats, weight, kmap, grad)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with kernel_settings(deterministic=True, gather_elements=16 * 7):
        first = _run(sv.feats, weight, kmap, grad)
        again = _run(sv.feats, weight, kmap, grad)
    for a, b, c in zip(first, again, whole):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_plan_chunks_covers_every_non_identity_pair_once():
    sv, _ = random_fields(1, 1, (6, 6, 6), 0.3, seed=3)
    kmap = subm_map(sv)
    seen = []
    for chunk in ktorch.plan_chunks(kmap, 11):
        assert sum(hi - lo for _, lo, hi in chunk) <= 11
        assert all(b[1] == a[2] for a, b in zip(chunk, chunk[1:])), "chunk not contiguous"
        seen.extend(range(lo, hi) for _, lo, hi in chunk)
    flat = [i for r in seen for i in r]
    lo, hi = kmap.offset_ptr[13], kmap.offset_ptr[14]
    assert flat == [i for i in range(kmap.num_pairs) if not lo <= i < hi]


# (device, backend) pairs that can run here: on a machine without a GPU the CUDA rows are absent, so
# tests/test_cuda.py re-runs these claims on CUDA (where index_add_ uses atomics and halves use tensor cores).
RUNNABLE = [("cpu", "torch"), ("cpu", "triton")] + ([("cuda", "torch"), ("cuda", "triton")]
                                                    if torch.cuda.is_available() else [])


def _runnable(device, backend):
    if backend == "triton":
        pytest.importorskip("triton")
        if device == "cpu" and torch.cuda.is_available():
            pytest.skip("Triton's CPU interpreter is only switched on where no GPU is")


@pytest.mark.parametrize("device,backend", RUNNABLE)
def test_bfloat16_accumulates_in_float32(device, backend):
    _runnable(device, backend)
    sv, _ = random_fields(1, 64, (10, 10, 10), 0.5, seed=4)
    kmap = subm_map(sv.to(device))
    g = torch.Generator().manual_seed(2)
    feats = sv.feats.to(torch.bfloat16)
    weight = torch.randn(27, 64, 32, generator=g).to(torch.bfloat16)
    with kernel_settings(backend=backend):
        out = kconv.sparse_conv(feats.to(device), weight.to(device), None, kmap).cpu()
    assert out.dtype == torch.bfloat16
    with kernel_settings(backend="torch"):
        ref = kconv.sparse_conv(feats.double().to(device), weight.double().to(device), None, kmap).cpu()
    # fp32 accumulation leaves only the final rounding to bf16 (relative 2^-8); bf16 sums would not
    err = (out.double() - ref).abs()
    assert bool((err <= ref.abs() * 2.0**-8 + 1e-4).all()), float((err / ref.abs().clamp_min(1e-3)).max())


@pytest.mark.parametrize("device,backend", RUNNABLE)
def test_deterministic_mode_is_bitwise_repeatable(device, backend):
    _runnable(device, backend)
    sv, _ = random_fields(2, 16, (8, 10, 12), [0.2, 0.05], seed=2)
    kmap = subm_map(sv.to(device))
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(27, 16, 8, generator=g).to(device)
    grad = torch.randn(kmap.n_out, 8, generator=g).to(device)
    feats = sv.feats.to(device)
    with kernel_settings(backend=backend, deterministic=True):
        first = _run(feats, weight, kmap, grad)
        again = _run(feats, weight, kmap, grad)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_empty_map_gives_zero_rows_and_grads():
    kmap = km.submanifold_kmap(torch.zeros(0, 4, dtype=torch.int32), (4, 4, 4), 2, (3, 3, 3), (1, 1, 1))
    feats = torch.zeros(0, 3, requires_grad=True)
    weight = torch.randn(27, 3, 5, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    out = kconv.sparse_conv(feats, weight, bias, kmap)
    assert out.shape == (0, 5)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(bias.grad, torch.zeros(5))


def test_bad_inputs():
    sv, _ = random_fields(1, 3, (4, 4, 4), 0.3)
    kmap = subm_map(sv)
    with pytest.raises(ValueError, match="feats"):
        kconv.sparse_conv(sv.feats[:-1], torch.zeros(27, 3, 2), None, kmap)
    with pytest.raises(ValueError, match="weight"):
        kconv.sparse_conv(sv.feats, torch.zeros(26, 3, 2), None, kmap)
    with pytest.raises(ValueError, match="weight"):
        kconv.sparse_conv(sv.feats, torch.zeros(27, 4, 2), None, kmap)
    with pytest.raises(ValueError, match="backend"):
        with kernel_settings(backend="cuda-magic"):
            pass
    with pytest.raises(ValueError, match="gather_elements"):
        with kernel_settings(gather_elements=0):
            pass


def test_spconv_weight_layout_round_trip():
    w = torch.randn(5, 3, 1, 2, 3)
    sp = kconv.to_spconv_weight(w)
    assert sp.shape == (5, 1, 2, 3, 3)
    assert sp[4, 0, 1, 2, 1] == w[4, 1, 0, 1, 2]
    assert torch.equal(kconv.from_spconv_weight(sp), w)
    kw = kconv.torch_to_kernel_weight(w)  # [K, Cin, Cout], K in row-major (kd, kh, kw) order
    assert kw.shape == (6, 3, 5) and kw[5, 1, 4] == w[4, 1, 0, 1, 2]
    with pytest.raises(ValueError):
        kconv.to_spconv_weight(torch.zeros(3, 3))


def test_depthwise_gradcheck_float64_and_saves_only_inputs():
    from sparse_radar.kernels.conv import depthwise_conv
    sv, _ = random_fields(2, 3, (4, 5, 5), [0.3, 0.4], seed=5, dtype=torch.float64)
    kmap = subm_map(sv)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(kmap.n_in, 3, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(27, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: depthwise_conv(f, w, kmap), (feats, weight))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        depthwise_conv(feats, weight, kmap)
    assert sum(saved) == feats.numel() + weight.numel()  # no [pairs, C] buffers kept for backward
