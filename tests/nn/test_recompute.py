"""recompute(): a checkpointed block gives the output and gradients of the same block run without checkpointing,
under autocast, with frozen weights, on both field types; and it keeps only its inputs. (A checkpointed block on a
small field keeps its activations instead: tests/nn/test_keep.py; here every block recomputes.)"""
import pytest
import torch

from sparse_radar import DenseVoxels, SparseVoxels
from sparse_radar.nn.attention import AttentionBlock
from sparse_radar.nn.blocks import ResBlock
from sparse_radar.nn.recompute import recompute, trainable


@pytest.fixture(autouse=True)
def always_recompute(monkeypatch):
    import sparse_radar.nn.recompute as rc
    monkeypatch.setattr(rc, "MIN_RECOMPUTE_BYTES", 0)


def _block(seed=0, out_ch=16, use_depthwise=False):
    torch.manual_seed(seed)
    block = ResBlock(8, out_ch, 12, num_groups=4, dropout=0.3, use_depthwise=use_depthwise).train()
    with torch.no_grad():
        for prm in block.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
    return block


def _field(dense: bool):
    torch.manual_seed(1)
    mask = torch.rand(2, 1, 4, 6, 6) < 0.4
    data = torch.randn(2, 8, 4, 6, 6) * mask
    return DenseVoxels(data, mask) if dense else SparseVoxels.from_dense(data, mask)


def _run(block, x, emb, checkpointing, autocast=False, activated=False):
    block.use_checkpoint = checkpointing
    values = (x.data if isinstance(x, DenseVoxels) else x.feats).clone().requires_grad_(True)
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = block(x.replace(values), emb, activated)
    out_values = out.data if isinstance(out, DenseVoxels) else out.feats
    out_values.float().square().sum().backward()
    grads = [values.grad] + [None if p.grad is None else p.grad.clone() for p in block.parameters()]
    block.zero_grad(set_to_none=True)
    return out_values.detach(), grads


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_checkpointed_resblock_equals_the_plain_block(dense, autocast):
    block, x, emb = _block(), _field(dense), torch.randn(2, 12)
    out0, grads0 = _run(block, x, emb, False, autocast)
    out1, grads1 = _run(block, x, emb, True, autocast)
    torch.testing.assert_close(out1, out0)
    if autocast:
        assert out1.dtype == torch.bfloat16  # the recompute ran under the same autocast
    for a, b in zip(grads0, grads1):
        torch.testing.assert_close(b, a)
    assert all(g is not None for g in grads1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("out_ch,use_depthwise", [(8, False), (16, False), (16, True)])
def test_last_conv_is_not_rerun_and_gradients_match(backend, dense, out_ch, use_depthwise, monkeypatch):
    """The backward recomputes the body and takes the last conv and the skip by their backward alone (identity and
    1x1 skips); a depthwise last conv falls back to re-running the whole block. Both give the plain block's
    gradients, on either kernel backend. A sparse block with full convs runs its convs as kernel calls (no module):
    the forward runs each conv once, the backward the first conv alone."""
    if backend == "triton":
        pytest.importorskip("triton")
    from sparse_radar.kernels.backends import kernel_settings
    block, x, emb = _block(out_ch=out_ch, use_depthwise=use_depthwise), _field(dense), torch.randn(2, 12)
    import sparse_radar.nn.resblock_by_hand as by_hand
    with kernel_settings(backend=backend):
        out0, grads0 = _run(block, x, emb, False)
        calls, kernel_calls = [], []
        last = block.out_conv if not use_depthwise else block.out_conv[1]
        original, kernels_for = last.forward, by_hand.kernels_for

        def counted(tensor):
            k = kernels_for(tensor)
            return k._replace(layer_conv=lambda *a: kernel_calls.append(a[1].shape) or k.layer_conv(*a))
        monkeypatch.setattr(last, "forward", lambda v: calls.append(torch.is_grad_enabled()) or original(v))
        monkeypatch.setattr(by_hand, "kernels_for", counted)
        out1, grads1 = _run(block, x, emb, True)
    torch.testing.assert_close(out1, out0)
    for a, b in zip(grads0, grads1):
        torch.testing.assert_close(b, a)
    if dense or use_depthwise:  # the modules: the last conv's forward pass only (no graph: checkpointed)
        assert calls == ([False, True] if use_depthwise else [False]) and kernel_calls == []
    else:  # in, out (and skip) forward, then the first conv again in backward; never the last conv's module
        first, last_w = block.in_conv.weight.shape, block.out_conv.weight.shape
        skip = [] if out_ch == 8 else [block.skip.weight.shape]
        assert calls == [] and kernel_calls == [first, last_w, *skip, first]


@pytest.mark.parametrize("min_recompute_bytes", [0, 1 << 20])  # recompute, and keep
def test_frozen_weights_get_no_gradient_and_the_rest_match(min_recompute_bytes, monkeypatch):
    import sparse_radar.nn.recompute as rc
    monkeypatch.setattr(rc, "MIN_RECOMPUTE_BYTES", min_recompute_bytes)
    block, x, emb = _block(), _field(False), torch.randn(2, 12)
    block.in_conv.weight.requires_grad_(False)
    _, grads0 = _run(block, x, emb, False)
    _, grads1 = _run(block, x, emb, True)
    names = ["input"] + [n for n, _ in block.named_parameters()]
    for name, a, b in zip(names, grads0, grads1):
        if name == "in_conv.weight":
            assert a is None and b is None
        else:
            torch.testing.assert_close(b, a)
    assert all(p is not block.in_conv.weight for p in trainable(block))


def test_recompute_redraws_the_same_random_numbers_and_restores_the_generator():
    weight = torch.randn(5, requires_grad=True)
    x = torch.randn(5, requires_grad=True)
    run = lambda v: torch.nn.functional.dropout(v * weight, 0.5)  # noqa: E731
    torch.manual_seed(3)
    out = recompute(run, (x,), (weight,))
    torch.manual_seed(3)
    ref = run(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn(5)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    out.backward(g)
    assert torch.equal(torch.get_rng_state(), state)  # backward leaves the caller's generator where it was
    gx, gw = x.grad.clone(), weight.grad.clone()
    x.grad = weight.grad = None
    ref.backward(g)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, weight.grad)


def test_a_block_without_random_numbers_leaves_the_generator_alone(monkeypatch):
    import sparse_radar.nn.recompute as rc
    weight = torch.randn(5, requires_grad=True)
    x = torch.randn(5, requires_grad=True)
    reads = []
    monkeypatch.setattr(rc, "_rng_state", lambda device: reads.append(device) or torch.get_rng_state())
    out = recompute(lambda v: (v * weight).sin(), (x,), (weight,), random=False)
    out.backward(torch.ones(5))
    assert reads == []  # neither saved in forward nor swapped in backward
    torch.testing.assert_close(x.grad, weight.detach() * (x.detach() * weight.detach()).cos())
    recompute(lambda v: (v * weight).sin(), (x,), (weight,)).sum().backward()
    assert len(reads) == 2  # the default saves it, and backward reads the caller's to restore it


def test_checkpointed_attention_keeps_only_its_input():
    x = _field(False)
    block = AttentionBlock(8, "window", num_heads=2, num_groups=4, use_checkpoint=True).train()
    torch.nn.init.normal_(block.proj.weight, std=0.3)
    feats = x.feats.clone().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = block(x.replace(feats))
    out.feats.sum().backward()
    assert saved == [feats.numel()]
    assert block.qkv.weight.grad is not None and block.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("norm_type,out_ch,activated,autocast", [
    ("group", 16, False, False), ("layer", 8, True, False), ("instance", 16, True, True), ("rms", 8, False, True)])
def test_a_sparse_resblock_is_differentiated_by_hand(backend, norm_type, out_ch, activated, autocast, monkeypatch):
    """A checkpointed sparse ResBlock with group-type norms and full convs recomputes and differentiates itself with
    no autograd graph (resblock_grads; torch.autograd.grad is never called) and gives the plain block's output and
    gradients: every norm type that is a VoxelGroupNorm, identity and 1x1 skips, an activated embedding or not,
    dropout, autocast, either kernel backend. An adaptive norm recomputes under autograd."""
    if backend == "triton":
        pytest.importorskip("triton")
    import sparse_radar.nn.blocks as blocks
    import sparse_radar.nn.recompute as rc
    torch.manual_seed(0)
    block = ResBlock(8, out_ch, 12, norm_type=norm_type, num_groups=4, dropout=0.3).train()
    with torch.no_grad():
        for prm in block.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
    x, emb = _field(False), torch.randn(2, 12, requires_grad=True)
    by_hand, graphs = [], []
    real_grads, real_grad = blocks.resblock_grads, rc.torch.autograd.grad
    monkeypatch.setattr(blocks, "resblock_grads", lambda *a: by_hand.append(1) or real_grads(*a))
    monkeypatch.setattr(rc.torch.autograd, "grad", lambda *a, **k: graphs.append(1) or real_grad(*a, **k))
    assert_checkpointed_resblock_matches(block, x, emb, backend, autocast, activated)
    assert by_hand == [1] and graphs == []


def assert_checkpointed_resblock_matches(block, x, emb, backend: str, autocast: bool, activated: bool) -> None:
    """The block run plain, then checkpointed, on a kernel backend: the same output and gradients (emb's too)."""
    from sparse_radar.kernels.backends import kernel_settings
    results = []
    for checkpointing in (False, True):
        with kernel_settings(backend=backend):
            out, grads = _run(block, x, emb if not activated else torch.nn.functional.silu(emb), checkpointing,
                              autocast, activated)
        results.append((out, grads + [emb.grad.clone()]))
        emb.grad = None
    (out0, grads0), (out1, grads1) = results
    torch.testing.assert_close(out1, out0)
    for a, b in zip(grads0, grads1):
        assert a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(b, a)


def test_an_adaptive_norm_block_recomputes_under_autograd(monkeypatch):
    import sparse_radar.nn.blocks as blocks
    torch.manual_seed(0)
    block = ResBlock(8, 8, 12, norm_type="adaptive", num_groups=4).train()
    x, emb = _field(False), torch.randn(2, 12)
    monkeypatch.setattr(blocks, "resblock_grads", lambda *a: pytest.fail("an adaptive norm is not covered"))
    out0, grads0 = _run(block, x, emb, False)
    out1, grads1 = _run(block, x, emb, True)
    for a, b in zip(grads0, grads1):
        torch.testing.assert_close(b, a)


def test_trainable_lists_what_parameters_lists_that_takes_gradients():
    """trainable walks the module dicts itself: the same tensors, in parameters()' order, a shared layer's once,
    frozen ones left out."""
    from sparse_radar.models import PRESETS, UNet3D
    model = UNet3D(PRESETS["tiny"]())
    model.encoder[0].blocks[0].in_conv.weight.requires_grad_(False)
    shared = torch.nn.Linear(3, 3)
    twice = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.Linear(3, 2, bias=False))
    for module in (model, model.encoder[0].blocks[0], twice):
        expected = [p for p in module.parameters() if p.requires_grad]
        got = trainable(module)
        assert len(got) == len(expected) and all(a is b for a, b in zip(got, expected))


@pytest.mark.parametrize("attention_type,norm_type", [(a, "group") for a in ("flash", "window", "linear", "sparse",
                                                                            "height", "serialized")]
                         + [("window", "adaptive")])
@pytest.mark.parametrize("autocast", [False, True])
def test_a_sparse_attention_block_is_differentiated_mostly_by_hand(attention_type, norm_type, autocast, monkeypatch):
    """A checkpointed sparse attention block recomputes its norm and projections without a graph and differentiates
    them by hand, its core alone under autograd (attention_grads), and gives the plain block's output and
    gradients, the core's own parameters (window attention's position bias) included. With the adaptive norm it
    recomputes the whole block under autograd, to the same gradients."""
    import sparse_radar.nn.attention as attention
    x = _field(False)
    torch.manual_seed(0)
    block = AttentionBlock(8, attention_type, num_heads=2, norm_type=norm_type, num_groups=4, window_size=(2, 3, 3),
                           topk=4, patch_size=8).train()
    with torch.no_grad():
        for prm in block.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
    by_hand, real = [], attention.attention_grads
    monkeypatch.setattr(attention, "attention_grads", lambda *a: by_hand.append(1) or real(*a))
    assert_checkpointed_attention_matches(block, x, autocast)
    assert by_hand == ([1] if norm_type == "group" else [])


def assert_checkpointed_attention_matches(block, x, autocast: bool) -> None:
    """The block run plain, then checkpointed: the same output and gradients (under bf16 autocast within a rounding:
    a forward without a graph may take another SDPA kernel, or round its projections apart, by an ulp)."""
    results = []
    for checkpointing in (False, True):
        block.use_checkpoint = checkpointing
        feats = x.feats.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = block(x.replace(feats)).feats
        out.float().square().sum().backward()
        results.append([out.detach(), feats.grad] + [p.grad.clone() for p in block.parameters()])
        block.zero_grad(set_to_none=True)
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        if autocast:
            torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2 * a.abs().max().item())
        else:
            torch.testing.assert_close(b, a)
