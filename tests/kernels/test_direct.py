"""The direct kernels of a layer's torch-layout weight (kernels.direct layer_conv, layer_conv_vjp): read in place
where the weight's memory is in kernel layout, through a view where not, the same values and gradients either way,
equal to torch autograd of the float64 gather-matmul-scatter reference."""
import pytest
import torch

from sparse_radar.kernels.backends import kernel_settings
from sparse_radar.kernels.direct import kernels_for
from sparse_radar.kernels.weight_layout import in_kernel_layout, torch_to_kernel_weight
from sparse_radar.nn.conv import kernel_layout
from tests.kernels.triton_cases import DEVICE, make_map


def _reference(feats, weight, bias, kmap):
    """sum over the map's pairs of feats[in] @ W[k], scattered to out, plus bias: float64 torch ops."""
    packed = torch_to_kernel_weight(weight)
    out = torch.zeros(kmap.n_out, weight.shape[0], dtype=feats.dtype)
    table = kmap.table.cpu().long()
    for k in range(table.shape[1]):
        rows = table[:, k]
        found = rows >= 0  # -1: no input through this offset
        out = out.index_add(0, torch.nonzero(found).flatten(), feats[rows[found]] @ packed[k])
    return out + bias


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("layout", ["kernel", "torch"])
def test_layer_conv_and_its_vjp_match_autograd_of_the_reference(backend, layout):
    if backend == "triton":
        pytest.importorskip("triton")
    kmap = make_map("subm")
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(24, 16, 3, 3, 3, generator=g, dtype=torch.float64) / 20
    weight = kernel_layout(weight) if layout == "kernel" else weight.contiguous()
    assert in_kernel_layout(weight) == (layout == "kernel")
    feats = torch.randn(kmap.n_in, 16, generator=g, dtype=torch.float64)
    bias, grad_out = torch.randn(24, generator=g, dtype=torch.float64), torch.randn(kmap.n_out, 24, generator=g,
                                                                                       dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (feats, weight, bias)]
    expected = _reference(*leaves, kmap)
    expected.backward(grad_out)
    with kernel_settings(backend=backend):
        k = kernels_for(feats.float().to(DEVICE))
        as32 = lambda t: t.float().to(DEVICE)  # noqa: E731
        w32 = kernel_layout(weight.float()) if layout == "kernel" else weight.float().contiguous()
        out = k.layer_conv(as32(feats), w32.to(DEVICE), as32(bias), kmap)
        d_feats, d_weight, d_bias = k.layer_conv_vjp(as32(feats), w32.to(DEVICE), True, kmap, as32(grad_out))
    torch.testing.assert_close(out.double().cpu(), expected.detach(), atol=1e-4, rtol=1e-4)
    assert d_weight.shape == weight.shape
    for got, leaf in zip((d_feats, d_weight, d_bias), leaves):
        torch.testing.assert_close(got.double().cpu(), leaf.grad, atol=1e-4, rtol=1e-4)


def test_weight_grad_takes_a_view_or_a_layout_not_both():
    pytest.importorskip("triton")
    from sparse_radar.kernels.triton.conv import weight_grad
    kmap = make_map("subm")
    x, g = torch.zeros(kmap.n_in, 4, device=DEVICE), torch.zeros(kmap.n_out, 4, device=DEVICE)
    with pytest.raises(ValueError, match="not both"):
        weight_grad(x, g, kmap.table, layout=(16, 4, 1), view=((4, 4, 3, 3, 3), (1, 4, 144, 48, 16)))


def test_kernels_for_resolves_a_named_backend_once_per_settings_device_and_dtype(monkeypatch):
    """kernels_for keeps what a named backend resolved to per settings object, device and dtype: the same Kernels as
    resolving anew, a new kernel_settings block resolves again, a tensor the backend refuses still raises every
    time, and "auto" resolves on every call (it reads the environment)."""
    pytest.importorskip("triton")
    from sparse_radar.kernels import backends, direct
    resolved = []
    real = backends.resolve_backend
    monkeypatch.setattr(backends, "resolve_backend", lambda *a: resolved.append(a[0]) or real(*a))
    x = torch.zeros(3, 2, device=DEVICE)
    with kernel_settings(backend="torch") as settings:
        first = kernels_for(x)
        assert kernels_for(x) is first and first == direct.backend_kernels("torch", settings)
        assert kernels_for(x.double()) == direct.backend_kernels("torch", settings)
    assert resolved == ["torch", "torch"]  # once for float32, once for float64
    with kernel_settings(backend="triton") as settings:
        assert kernels_for(x) == direct.backend_kernels("triton", settings) != first
        for _ in range(2):
            with pytest.raises(ValueError, match="float32, float16 and bfloat16"):
                kernels_for(x.double())
    assert resolved == ["torch", "torch", "triton", "triton", "triton"]
    with kernel_settings(backend="auto"):
        kernels_for(x), kernels_for(x)
    assert resolved[5:] == ["auto", "auto"]
