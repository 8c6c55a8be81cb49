"""The triton backend against the torch backend (float64) on every kind of map, dtype and gradient.

Without a GPU these run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""
import pytest
import torch

from sparse_radar.kernels import backends
from sparse_radar.kernels import conv as kconv
from sparse_radar.kernels.backends import kernel_settings
from tests.kernels.triton_cases import DEVICE, MAPS, make_map, random_inputs

pytest.importorskip("triton")
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def run(backend, kmap, feats, weight, bias, grad, dtype, depthwise=False):
    """(out, dX, dW, dbias) of one backend, inputs cast to dtype on DEVICE, results in float64."""
    f = feats.to(DEVICE, dtype).requires_grad_(True)
    w = weight.to(DEVICE, dtype).requires_grad_(True)
    b = None if depthwise or bias is None else bias.to(DEVICE, dtype).requires_grad_(True)
    with kernel_settings(backend=backend):
        out = kconv.depthwise_conv(f, w, kmap) if depthwise else kconv.sparse_conv(f, w, b, kmap)
        out.backward(grad.to(DEVICE, dtype))
    assert out.dtype == dtype and f.grad.dtype == dtype and w.grad.dtype == dtype
    grads = (out, f.grad, w.grad) + (() if b is None else (b.grad,))
    return [t.detach().double().cpu() for t in grads]


def reference(kmap, feats, weight, bias, grad, dtype, depthwise=False):
    """The torch backend in float64 on the inputs rounded to dtype: what exact sums of those inputs give."""
    rounded = [None if t is None else t.to(dtype).double() for t in (feats, weight, bias, grad)]
    return run("torch", kmap, *rounded, torch.float64, depthwise)


def assert_close_scaled(ours, ref, tol, what):
    scale = max(ref.abs().max().item(), 1e-6)
    err = (ours - ref).abs().max().item()
    assert err <= tol * scale * 4, f"{what}: max error {err:.3g} against scale {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(MAPS))
def test_conv_matches_torch_backend(name, dtype):
    kmap = make_map(name)
    feats, weight, bias, grad = random_inputs(kmap, 5, 7, dtype, seed=len(name))
    ours = run("triton", kmap, feats, weight, bias, grad, dtype)
    ref = reference(kmap, feats, weight, bias, grad, dtype)
    for what, a, b in zip(("out", "dX", "dW", "dbias"), ours, ref):
        assert_close_scaled(a, b, TOLERANCE[dtype], f"{name} {dtype} {what}")


def test_channel_tiles_and_row_splits(monkeypatch):
    """Cin and Cout wider than one tile (loops over channel blocks), dW split over many row ranges (86 rows: two
    full row blocks of 32 and a partial one; the interpreter's time grows with the rows)."""
    kmap = make_map("subm", shape=(4, 6, 6), occupancy=(0.3, 0.3))
    feats, weight, bias, grad = random_inputs(kmap, 70, 80, torch.float32, seed=4)
    ref = reference(kmap, feats, weight, bias, grad, torch.float32)
    ours = run("triton", kmap, feats, weight, bias, grad, torch.float32)
    for what, a, b in zip(("out", "dX", "dW", "dbias"), ours, ref):
        assert_close_scaled(a, b, TOLERANCE[torch.float32], what)
    from sparse_radar.kernels.triton import conv as tconv
    from sparse_radar.kernels.triton import launch
    x = feats.float().to(DEVICE)
    g = grad.float().to(DEVICE)
    n_rows, least = kmap.table.shape[0], launch.MIN_SPLIT_ROWS
    assert 64 < n_rows < 96
    assert launch.row_splits(n_rows, 32, 1) == (least, launch.cdiv(n_rows, least))  # MIN_SPLIT_ROWS rows a split
    one_split = tconv.weight_grad(x, g, kmap.table, True)
    monkeypatch.setattr(launch, "TARGET_PROGRAMS", 10 ** 6)
    monkeypatch.setattr(launch, "MIN_SPLIT_ROWS", 1)  # as many splits as row blocks
    assert launch.row_splits(kmap.table.shape[0], 32, 1)[1] == launch.cdiv(kmap.table.shape[0], 32) > 1
    many = tconv.weight_grad(x, g, kmap.table, True)
    again = tconv.weight_grad(x, g, kmap.table, True)
    for a, b, c in zip(many, one_split, again):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(a, c)  # partials and one sum: no atomics, bitwise repeatable
    torch.testing.assert_close(many[1], g.sum(0), rtol=1e-5, atol=1e-5)  # db rides along in the same launch
    assert tconv.weight_grad(x, g, kmap.table)[1] is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_depthwise_matches_torch_backend(dtype):
    kmap = make_map("subm")
    feats, weight, _, grad = random_inputs(kmap, 20, 20, dtype, seed=2, depthwise=True)
    ours = run("triton", kmap, feats, weight, None, grad, dtype, depthwise=True)
    ref = reference(kmap, feats, weight, None, grad, dtype, depthwise=True)
    for what, a, b in zip(("out", "dX", "dW"), ours, ref):
        assert_close_scaled(a, b, TOLERANCE[dtype], f"depthwise {dtype} {what}")


def test_empty_map_and_sites_without_neighbours():
    kmap = make_map("subm", shape=(4, 4, 4), occupancy=(0.0, 0.0))
    assert kmap.n_in == 0
    out = run("triton", kmap, *random_inputs(kmap, 3, 4, torch.float32), torch.float32)
    assert out[0].shape == (0, 4) and torch.count_nonzero(out[2]) == 0
    lonely = make_map("strided", shape=(9, 9, 9), occupancy=(0.01, 0.01))  # most outputs see one input
    ours = run("triton", lonely, *random_inputs(lonely, 3, 4, torch.float32), torch.float32)
    ref = reference(lonely, *random_inputs(lonely, 3, 4, torch.float32), torch.float32)
    for a, b in zip(ours, ref):
        assert_close_scaled(a, b, TOLERANCE[torch.float32], "sparse strided map")


def test_float64_is_refused_by_name_and_left_to_torch_by_auto():
    kmap = make_map("subm")
    feats, weight, bias, _ = random_inputs(kmap, 3, 2, torch.float64)
    with kernel_settings(backend="triton"), pytest.raises(ValueError, match="float32, float16 and bfloat16"):
        kconv.sparse_conv(feats.to(DEVICE), weight.to(DEVICE), None, kmap)
    assert backends.resolve_backend("auto", feats.to(DEVICE)) == "torch"


def spy_on_implicit_gemm(monkeypatch, pick):
    """A list that receives pick(positional args) of every implicit GEMM launch (which still runs)."""
    from sparse_radar.kernels.triton import conv as tconv
    seen = []

    class Spy:  # the autotuned kernel, and (fn) the kernel its chosen config is launched with directly
        def __init__(self, real):
            self.real = real

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(pick(args))
                return self.real[grid](*args, **kwargs)
            return launch

        def run(self, *args, **kwargs):  # how launch_tuned launches a config it has chosen
            seen.append(pick(args))
            return self.real.run(*args, **kwargs)

        fn = property(lambda self: Spy(self.real.fn))
        best_config = property(lambda self: self.real.best_config)

    monkeypatch.setattr(tconv, "implicit_gemm_kernel", Spy(tconv.implicit_gemm_kernel))
    return seen


def test_implicit_gemm_reads_contiguous_weights(monkeypatch):
    """The kernel gets [K, Cin, Cout] contiguous (forward) and its transpose [K, Cout, Cin] in place (dX: unit stride
    along Cout, the tile's reduction axis), not the permuted view of torch's [Cout, Cin, kD, kH, kW] layout
    (strides (1, K, Cin * K): a sector per element); dW comes back in the weight's own strides (no copy by autograd)."""
    seen = spy_on_implicit_gemm(monkeypatch, lambda args: tuple(args[10:13]))  # stride_wk, stride_wi, stride_wo
    kmap = make_map(sorted(MAPS)[0])
    feats, _, bias, grad = random_inputs(kmap, 16, 32, torch.float32, seed=1)
    torch_layout = torch.randn(32, 16, kmap.kernel_volume)  # [Cout, Cin, K]
    weight = kconv.torch_to_kernel_weight(torch_layout.view(32, 16, kmap.kernel_volume, 1, 1))
    assert weight.stride() == (1, kmap.kernel_volume, 16 * kmap.kernel_volume)
    w = weight.requires_grad_(True)
    with kernel_settings(backend="triton"):
        f = feats.to(DEVICE, torch.float32).requires_grad_(True)
        kconv.sparse_conv(f, w, None, kmap).backward(grad.to(DEVICE, torch.float32))
    assert seen == [(16 * 32, 32, 1), (16 * 32, 1, 32)]
    assert w.grad.stride() == weight.stride()


def test_strided_output_gradient_is_read_in_place(monkeypatch):
    """A conv whose output is concatenated gets its gradient as a column slice (rows 2 * Cout apart): dX, dW and db
    equal those of the same gradient made contiguous, with no copy of it."""
    row_strides = spy_on_implicit_gemm(monkeypatch, lambda args: args[9])  # stride_x
    kmap = make_map("subm")
    feats, weight, bias, grad = random_inputs(kmap, 5, 6, torch.float32, seed=3)
    results = []
    for strided in (True, False):
        f = feats.to(DEVICE, torch.float32).requires_grad_(True)
        w = weight.to(DEVICE, torch.float32).requires_grad_(True)
        b = bias.to(DEVICE, torch.float32).requires_grad_(True)
        g = grad.to(DEVICE, torch.float32)
        with kernel_settings(backend="triton"):
            out = kconv.sparse_conv(f, w, b, kmap)
            if strided:
                both = torch.cat([out, out.detach()], dim=1)
                both.backward(torch.cat([g, torch.zeros_like(g)], dim=1))
            else:
                out.backward(g.contiguous())
        results.append([t.grad.clone() for t in (f, w, b)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert row_strides == [5, 12, 5, 6]  # forward, dX of the strided gradient (read in place), then contiguous


def test_kernels_are_autotuned_on_a_gpu_and_take_the_first_config_interpreted(monkeypatch):
    """The implicit GEMM, dW and norm kernels are @triton.autotune'd, keyed on their channel counts (and kernel
    volume); under the interpreter, which cannot time a kernel, the config list is its first entry alone."""
    import triton
    from sparse_radar.kernels import backends as kb
    from sparse_radar.kernels.triton import conv_kernels, launch, norm_kernels
    configs = [triton.Config({"BLOCK_N": n}) for n in (32, 64, 128)]
    monkeypatch.setattr(kb, "triton_interpreting", lambda: False)
    assert launch.tuning(*configs) == configs
    monkeypatch.setattr(kb, "triton_interpreting", lambda: True)
    assert launch.tuning(*configs) == configs[:1]
    for kernel, key in ((conv_kernels.implicit_gemm_kernel, ["c_in", "c_out", "kernel_volume"]),
                        (conv_kernels.weight_grad_kernel, ["c_in", "c_out", "kernel_volume"]),
                        (norm_kernels.norm_apply_kernel, ["channels"]),
                        (norm_kernels.norm_statistics_kernel, ["channels", "group_size"])):
        assert isinstance(kernel, triton.runtime.Autotuner) and kernel.keys == key
        assert len(kernel.configs) == 1  # interpreted here


def test_the_host_launch_helpers_match_tritons():
    """cdiv and next_pow2 (plain Python on every launch) against triton's own helpers."""
    import triton
    from sparse_radar.kernels.triton.launch import cdiv, next_pow2, pow2_block
    for n in range(1, 2100):
        assert next_pow2(n) == triton.next_power_of_2(n)
        for b in (1, 16, 64, 256):
            assert cdiv(n, b) == triton.cdiv(n, b)
    assert (next_pow2(0), cdiv(0, 64), pow2_block(3, 16, 64), pow2_block(100, 16, 64)) == (1, 0, 16, 64)


def test_a_tuned_launch_takes_the_autotuners_choice_once_per_key(monkeypatch):
    """launch_tuned: the first launch for a key goes through the autotuner with the key's constexprs (asked of
    `constants` then only); later ones launch the config it chose straight on its kernel (no autotuner call), with
    the same constexprs and the chosen BLOCK_N tiling the rows, and compute the same; a new key asks again."""
    import triton
    import triton.language as tl
    from sparse_radar.kernels.triton import launch

    @triton.autotune(configs=[triton.Config({"BLOCK_N": 4}), triton.Config({"BLOCK_N": 8})], key=["n"],
                     prune_configs_by={"early_config_prune": lambda configs, nargs, **kw: configs[1:]})
    @triton.jit
    def scaled(x_ptr, out_ptr, n, SCALE: tl.constexpr, BLOCK_N: tl.constexpr):
        offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + offs, SCALE * tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

    tuner_calls, seen, asked = [], [], []
    real_run, real_direct = type(scaled).run, type(scaled.fn).run
    monkeypatch.setattr(type(scaled), "run", lambda self, *a, **k: tuner_calls.append(1) or real_run(self, *a, **k))
    monkeypatch.setattr(type(scaled.fn), "run", lambda self, *a, **k: seen.append((k["BLOCK_N"], k["SCALE"], k["grid"]))
                        or real_direct(self, *a, **k))

    def constants(n, dtype, scale):
        asked.append((n, scale))
        return {"SCALE": scale}

    x = torch.arange(11, dtype=torch.float32, device=DEVICE)
    for n, scale in ((11, 2), (11, 2), (11, 2), (5, 3)):
        out = torch.zeros(11, device=DEVICE)
        launch.launch_tuned(scaled, (n, x.dtype, scale), constants, n, (), x, out, n)
        assert torch.equal(out[:n], scale * x[:n]) and not out[n:].any()
    assert len(tuner_calls) == 2 and asked == [(11, 2), (5, 3)]  # the first launch of each key
    direct = seen[-3:-1]  # the two launches of key 11 after its first: the chosen config's rows, 11 rows in 8s
    assert direct == [(8, 2, (2,)), (8, 2, (2,))]  # the pruner's choice (a GPU times it too)
    later = []  # a tool that patches the kernel's run after the choice (a launch counter) still sees each launch
    monkeypatch.setattr(type(scaled.fn), "run", lambda self, *a, **k: later.append(k["grid"]) or real_direct(self, *a, **k))
    out = torch.zeros(11, device=DEVICE)
    launch.launch_tuned(scaled, (11, x.dtype, 2), constants, None, (3,), x, out, 11)  # an explicit grid: as given
    assert later == [(3,)] and torch.equal(out, 2 * x) and len(asked) == 2
