"""Conv layers against torch.nn.functional.conv3d / conv_transpose3d: outputs, dX, dW; sparse = masked dense."""
import pytest
import torch
import torch.nn.functional as F

from sparse_radar import DenseVoxels, SparseVoxels
from sparse_radar.nn import SparseConv3d, SparseInverseConv3d, SubMConv3d
from tests.factory import gather_dense, random_fields

RTOL, ATOL = 1e-4, 1e-4


def close(a, b):
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def random_params(layer, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return layer


def check_against_dense(layer, sv, reference, out_sites):
    """Forward, dX and dW of layer(sv) against reference(dense x, weight, bias) read at out_sites."""
    dense_x = sv.to_dense().data.clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = None if layer.bias is None else layer.bias.detach().clone().requires_grad_(True)
    feats = sv.feats.clone().requires_grad_(True)
    out = layer(sv.replace(feats))
    ref_dense = reference(dense_x, w, b)
    sites = out_sites(out)
    assert torch.equal(out.coords, sites.to(torch.int32))
    ref = gather_dense(ref_dense, sites)
    close(out.feats, ref)
    g = torch.randn(out.feats.shape, generator=torch.Generator().manual_seed(9))
    (out.feats * g).sum().backward()
    (ref * g).sum().backward()
    close(feats.grad, gather_dense(dense_x.grad, sv.coords))
    close(layer.weight.grad, w.grad)
    if b is not None:
        close(layer.bias.grad, b.grad)
    return out


def active_sites(dense_mask):
    return torch.nonzero(dense_mask[:, 0])


SUBM_CASES = [  # batch, cin, cout, shape, occupancy, kernel, dilation
    (1, 1, 4, (5, 6, 7), 0.5, 3, 1),
    (3, 16, 8, (8, 9, 10), [0.01, 0.3, 0.1], 3, 1),
    (2, 64, 64, (6, 8, 8), [0.05, 0.2], 3, 1),
    (2, 5, 3, (7, 8, 9), 0.2, (1, 3, 5), (2, 1, 1)),
    (1, 4, 2, (6, 6, 6), 0.3, 5, 1),
]


@pytest.mark.parametrize("batch,cin,cout,shape,occ,kernel,dilation", SUBM_CASES)
def test_subm_conv_matches_conv3d(batch, cin, cout, shape, occ, kernel, dilation):
    sv, dv = random_fields(batch, cin, shape, occ, seed=cin)
    layer = random_params(SubMConv3d(cin, cout, kernel, dilation=dilation), seed=1)
    pad = tuple(d * (k // 2) for k, d in zip(layer.kernel_size, layer.dilation))
    ref = lambda x, w, b: F.conv3d(x, w, b, padding=pad, dilation=dilation)
    out = check_against_dense(layer, sv, ref, lambda o: sv.coords.long())
    assert out.structure is sv.structure
    dense_out = layer(dv)
    close(dense_out.to_sparse().feats, out.feats.detach())
    assert torch.equal(dense_out.mask, dv.mask)


STRIDED_CASES = [  # kernel, stride, padding, dilation
    (3, 2, 1, 1), ((1, 2, 2), (1, 2, 2), 0, 1), (3, (1, 2, 2), 1, 1), (2, 2, 0, 1),
    (3, 2, 0, 2), ((3, 1, 5), (2, 1, 3), (2, 0, 1), (1, 1, 2)),
]


@pytest.mark.parametrize("kernel,stride,padding,dilation", STRIDED_CASES)
@pytest.mark.parametrize("batch,cin,cout,occ", [(2, 3, 5, [0.02, 0.4]), (1, 32, 16, 0.1)])
def test_strided_and_inverse_conv_match_torch(kernel, stride, padding, dilation, batch, cin, cout, occ):
    sv, dv = random_fields(batch, cin, (9, 10, 11), occ, seed=cout)
    down = random_params(SparseConv3d(cin, cout, kernel, stride, padding, dilation), seed=2)
    ones = torch.ones(1, 1, *down.kernel_size)
    coarse_mask = F.conv3d(dv.mask.float(), ones, None, stride, padding, dilation) > 0
    ref = lambda x, w, b: F.conv3d(x, w, b, stride, padding, dilation)
    out = check_against_dense(down, sv, ref, lambda o: active_sites(coarse_mask))
    dense_out = down(dv)
    assert torch.equal(dense_out.mask, coarse_mask)
    close(dense_out.to_sparse().feats, out.feats.detach())
    # inverse conv, after a submanifold layer, back onto the exact input sites
    mid = SubMConv3d(cout, cout, 3)(out)
    mid = mid.replace(mid.feats.detach())
    up = random_params(SparseInverseConv3d(cout, 2, kernel, stride, padding, dilation), seed=3)
    fine = dv.spatial_shape

    def ref_up(x, w, b):
        size = [(n - 1) * s - 2 * p + d * (k - 1) + 1 for n, s, p, d, k in
                zip(x.shape[2:], up.stride, up.padding, up.dilation, up.kernel_size)]
        extra = [f - s for f, s in zip(fine, size)]
        return F.conv_transpose3d(x, w.transpose(0, 1), b, stride, padding, extra, 1, dilation)

    back = check_against_dense(up, mid, ref_up, lambda o: sv.coords.long())
    assert back.structure is sv.structure
    dense_back = up(SubMConv3d(cout, cout, 3)(dense_out).replace(mid.to_dense().data))
    assert torch.equal(dense_back.mask, dv.mask) and dense_back.spatial_shape == dv.spatial_shape
    close(dense_back.to_sparse().feats, back.feats.detach())


def test_sparse_chain_equals_masked_dense_chain_with_gradients():
    """In float64 the two paths agree to rounding: same sites, same values, same parameter gradients."""
    sv, dv = random_fields(2, 4, (8, 12, 12), [0.05, 0.25], seed=7, dtype=torch.float64)
    layers = torch.nn.ModuleList([SubMConv3d(4, 8, 3), SparseConv3d(8, 8, 3, (1, 2, 2), 1), SubMConv3d(8, 8, 3),
                                  SparseConv3d(8, 6, 2, 2), SparseInverseConv3d(6, 8, 2, 2),
                                  SparseInverseConv3d(8, 3, 3, (1, 2, 2), 1)])
    for i, layer in enumerate(layers):
        random_params(layer, seed=10 + i)
    layers.double()
    tight = dict(rtol=1e-10, atol=1e-10)

    def run(x):
        for layer in layers:
            x = layer(x)
        return x

    out_s, out_d = run(sv), run(dv)
    assert torch.equal(out_s.coords, sv.coords) and torch.equal(out_d.mask, dv.mask)
    torch.testing.assert_close(out_s.feats, out_d.to_sparse().feats, **tight)
    g = torch.randn(out_d.data.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * out_d.mask
    (out_s.feats * gather_dense(g, out_s.coords)).sum().backward()
    grads_s = [p.grad.clone() for p in layers.parameters()]
    layers.zero_grad()
    (out_d.data * g).sum().backward()
    for gs, p in zip(grads_s, layers.parameters()):
        torch.testing.assert_close(gs, p.grad, **tight)


def test_full_occupancy_sparse_equals_unmasked_dense():
    data = torch.randn(2, 3, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    dv = DenseVoxels(data)
    sv = dv.to_sparse()
    for layer in (SubMConv3d(3, 4, 3), SparseConv3d(3, 4, 3, 2, 1)):
        close(layer(sv).to_dense().data, layer(dv).data)
    assert layer(dv).mask is None
    up = SparseInverseConv3d(4, 2, 3, 2, 1)
    close(up(layer(sv)).to_dense().data, up(layer(dv)).data)
    assert up(layer(dv)).data.shape == (2, 2, 5, 6, 7)


def test_autocast_bfloat16_on_both_paths():
    sv, dv = random_fields(2, 8, (6, 6, 6), 0.3, seed=8)
    layer = SubMConv3d(8, 8, 3)
    ref = layer(sv).feats
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, d = layer(sv), layer(dv)
    assert s.feats.dtype == torch.bfloat16 and d.data.dtype == torch.bfloat16
    torch.testing.assert_close(s.feats.float(), ref, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(d.to_sparse().feats.float(), ref, rtol=3e-2, atol=3e-2)


def test_layer_errors():
    sv, dv = random_fields(1, 3, (6, 6, 6), 0.3)
    with pytest.raises(ValueError, match="channels"):
        SubMConv3d(4, 4, 3)(sv)
    with pytest.raises(ValueError, match="channels"):
        SubMConv3d(4, 4, 3)(dv)
    with pytest.raises(TypeError, match="SparseVoxels or DenseVoxels"):
        SubMConv3d(3, 4, 3)(sv.feats)
    with pytest.raises(ValueError, match="odd"):
        SubMConv3d(3, 4, 2)
    with pytest.raises(ValueError, match="stride"):
        SubMConv3d(3, 4, 3, stride=2)
    with pytest.raises(ValueError, match="padding"):
        SubMConv3d(3, 4, 3, padding=2)
    with pytest.raises(ValueError, match="padding"):
        SparseConv3d(3, 4, 3, padding=-1)
    with pytest.raises(ValueError, match="in_channels"):
        SparseConv3d(0, 4, 3)
    for field in (sv, dv):
        with pytest.raises(ValueError, match="strided"):
            SparseInverseConv3d(3, 4, 3, 2, 1)(field)
        coarse = SparseConv3d(3, 4, 3, 2, 1)(field)
        with pytest.raises(ValueError, match="stride"):
            SparseInverseConv3d(4, 4, 3, 1, 1)(coarse)
    with pytest.raises(ValueError, match="no output cell"):
        SparseConv3d(3, 4, 9)(sv)


def test_huge_grid_with_few_voxels_analytic():
    """4096^3 x batch 64: two neighbouring voxels in the last sample's far corner, checked by hand."""
    n = 4096
    coords = torch.tensor([[63, n - 1, n - 1, n - 1], [63, n - 1, n - 1, n - 2], [0, 0, 0, 0]])
    feats = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    sv = SparseVoxels(feats, coords, (n, n, n), 64)
    layer = SubMConv3d(2, 1, 3, bias=False)
    out = layer(sv)
    w = layer.weight.detach()[0]  # [Cin, 3, 3, 3]
    # row order is key order: (0,0,0,0), (63,..,n-2), (63,..,n-1)
    expected = torch.stack([
        w[:, 1, 1, 1] @ feats[2],
        w[:, 1, 1, 1] @ feats[1] + w[:, 1, 1, 2] @ feats[0],  # x + 1 is the corner voxel
        w[:, 1, 1, 1] @ feats[0] + w[:, 1, 1, 0] @ feats[1],  # x - 1 is its neighbour
    ]).unsqueeze(1)
    close(out.feats.detach(), expected)
    down = SparseConv3d(2, 3, 2, 2)
    coarse = down(sv)
    assert coarse.spatial_shape == (n // 2,) * 3 and coarse.num_voxels == 2
    back = SparseInverseConv3d(3, 2, 2, 2)(coarse)
    assert torch.equal(back.coords, sv.coords)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_half_autocast_weight_gradients_stay_fp32(backend):
    """Under fp16 autocast the op gets the fp32 weight: dW and dbias are summed and returned in fp32, so a dW
    beyond fp16's range (65504) stays finite and exact, as in an fp32 run on the same fp16-rounded inputs."""
    from sparse_radar.kernels.backends import kernel_settings
    from sparse_radar.nn import DepthwiseSubMConv3d
    torch.manual_seed(0)
    mask = torch.rand(1, 1, 4, 6, 6) < 0.5
    x = SparseVoxels.from_dense(torch.full((1, 4, 4, 6, 6), 30.0), mask)
    for layer in (SubMConv3d(4, 4, 3), DepthwiseSubMConv3d(4, 3)):
        grads = []
        for autocast in (True, False):
            layer.zero_grad()
            with kernel_settings(backend=backend):
                with torch.autocast("cpu", torch.float16, enabled=autocast):
                    out = layer(x)
                (out.feats.float().sum() * 1000).backward()  # outside autocast, as torch recommends
            grads.append([p.grad.clone() for p in layer.parameters()])
        for half, full in zip(*grads):
            assert half.dtype == torch.float32 and torch.isfinite(half).all()
            assert half.abs().max() > 65504  # beyond fp16: an fp16 dW would be inf
            torch.testing.assert_close(half, full, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend,optimizer", [("torch", "sgd"), ("triton", "sgd"), ("torch", "fused adamw"),
                                               ("triton", "foreach adamw")])
def test_kernels_read_the_weight_in_place(backend, optimizer):
    """A layer's weight keeps conv3d's shape with its memory in the kernels' [K, Cin, Cout] layout, so a forward
    copies no weight; dW, the optimizer's state and every update keep that layout, and the output always equals a
    conv3d with the weight as it is now (after an optimizer step, an in-place write, load_state_dict, a new
    contiguous Parameter, or set_weight_layout either way)."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode
    from sparse_radar.kernels import torch_to_kernel_weight
    from sparse_radar.kernels.backends import kernel_settings
    from sparse_radar.nn.conv import set_weight_layout

    class Copies(TorchDispatchMode):  # ops that copy the weight's memory
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            src = args[1] if func._schema.name == "aten::copy_" else args[0]
            if (func._schema.name in ("aten::clone", "aten::copy_", "aten::_to_copy") and isinstance(src, torch.Tensor)
                    and src.untyped_storage().data_ptr() == layer.weight.untyped_storage().data_ptr()
                    and not any("triton/runtime/interpreter" in f.filename for f in traceback.extract_stack())):
                self.seen.append(func._schema.name)  # (the interpreter's own copy of a kernel's arguments aside)
            return func(*args, **(kwargs or {}))

    sv, dense = random_fields(2, 3, (5, 6, 6), 0.3, seed=7)
    layer = SubMConv3d(3, 4, 3)
    view = torch_to_kernel_weight(layer.weight)
    assert view.is_contiguous() and view.data_ptr() == layer.weight.data_ptr()
    expect = lambda: gather_dense(F.conv3d(dense.masked_data(), layer.weight, layer.bias, padding=1), sv.coords)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5) if optimizer == "sgd" else torch.optim.AdamW(
        layer.parameters(), lr=0.5, **({"fused": True} if optimizer == "fused adamw" else {"foreach": True}))
    with kernel_settings(backend=backend):
        with Copies():
            out = layer(sv).feats
        assert Copies.seen == []  # no weight copy in the forward
        close(out, expect())
        layer(sv).feats.square().sum().backward()
        assert layer.weight.grad.stride() == layer.weight.stride()
        before = layer.weight.detach().clone()
        opt.step()
        assert not torch.equal(layer.weight, before)
        assert torch_to_kernel_weight(layer.weight).is_contiguous()
        assert all(t.stride() == layer.weight.stride() for t in opt.state[layer.weight].values() if t.dim() == 5)
        close(layer(sv).feats, expect())
        with torch.no_grad():
            layer.weight.mul_(-2)
        close(layer(sv).feats, expect())
        layer.load_state_dict({k: torch.randn_like(v) for k, v in layer.state_dict().items()})
        close(layer(sv).feats, expect())
        layer.weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3, 3))  # conv3d's contiguous layout: still right
        close(layer(sv).feats, expect())
        values = layer.weight.detach().clone()
        set_weight_layout(layer, "kernel")
        assert torch_to_kernel_weight(layer.weight).is_contiguous() and torch.equal(layer.weight, values)
        close(layer(sv).feats, expect())
        set_weight_layout(layer, "torch")
        assert layer.weight.is_contiguous() and torch.equal(layer.weight, values)
    with pytest.raises(ValueError, match="'kernel' or 'torch'"):
        set_weight_layout(layer, "cudnn")


def test_new_layers_start_from_conv3d_initial_values():
    """The kernel layout changes no initial value: a seeded SubMConv3d holds what a seeded torch Conv3d holds."""
    torch.manual_seed(3)
    ours = SubMConv3d(5, 7, 3)
    torch.manual_seed(3)
    ref = torch.nn.Conv3d(5, 7, 3)
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
