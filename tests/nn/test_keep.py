"""keep(): a checkpointed block on a small field (input under recompute.MIN_RECOMPUTE_BYTES) runs by hand as one
autograd node that keeps what its backward reads: the plain block's output and gradients, no recompute, no autograd
graph of its own ops, its saved tensors seen by saved-tensor hooks; a larger field recomputes."""
import pytest
import torch

import sparse_radar.nn.recompute as rc
from sparse_radar.nn.attention import AttentionBlock
from sparse_radar.nn.blocks import ResBlock
from tests.nn.test_recompute import (_field, _run, assert_checkpointed_attention_matches,
                                     assert_checkpointed_resblock_matches)


def _randomized(block):
    with torch.no_grad():
        for prm in block.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
    return block


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("norm_type,out_ch,activated,autocast", [
    ("group", 16, False, False), ("layer", 8, True, False), ("instance", 16, True, True), ("rms", 8, False, True)])
def test_a_small_checkpointed_resblock_keeps_and_matches_the_plain_block(backend, norm_type, out_ch, activated,
                                                                         autocast, monkeypatch):
    """Every group-type norm, identity and 1x1 skips, dropout, autocast, both backends: the forward runs once (no
    recompute in backward), the backward is resblock_grads from the kept ops, no autograd graph is walked, the
    dropout mask is the forward's and the generator is not touched by the backward."""
    if backend == "triton":
        pytest.importorskip("triton")
    import sparse_radar.nn.blocks as blocks
    torch.manual_seed(0)
    block = _randomized(ResBlock(8, out_ch, 12, norm_type=norm_type, num_groups=4, dropout=0.3).train())
    x, emb = _field(False), torch.randn(2, 12, requires_grad=True)
    forwards, saved_given, graphs = [], [], []
    real_forward, real_grads, real_grad = blocks.resblock_forward, blocks.resblock_grads, rc.torch.autograd.grad
    monkeypatch.setattr(blocks, "resblock_forward", lambda *a, **k: forwards.append(1) or real_forward(*a, **k))
    monkeypatch.setattr(blocks, "resblock_grads", lambda *a: saved_given.append(a[4] is not None) or real_grads(*a))
    monkeypatch.setattr(rc.torch.autograd, "grad", lambda *a, **k: graphs.append(1) or real_grad(*a, **k))
    assert_checkpointed_resblock_matches(block, x, emb, backend, autocast, activated)
    assert forwards == [1] and saved_given == [True] and graphs == []


def test_a_kept_block_draws_its_dropout_once():
    """The dropout's random numbers are drawn in the forward only: the generator after backward is where the
    forward left it."""
    torch.manual_seed(0)
    block = _randomized(ResBlock(8, 8, 12, num_groups=4, dropout=0.5, use_checkpoint=True).train())
    x = _field(False)
    feats = x.feats.clone().requires_grad_(True)
    out = block(x.replace(feats), torch.randn(2, 12))
    state = torch.get_rng_state()
    out.feats.sum().backward()
    assert torch.equal(torch.get_rng_state(), state)
    assert feats.grad.abs().sum() > 0


@pytest.mark.parametrize("attention_type,one_call", [("flash", False), ("flash", True), ("window", False),
                                                   ("linear", False), ("sparse", False), ("height", False),
                                                   ("serialized", False)])
@pytest.mark.parametrize("autocast", [False, True])
def test_a_small_checkpointed_attention_block_keeps_and_matches_the_plain_block(attention_type, one_call, autocast,
                                                                                monkeypatch):
    """The norm and projections by hand, the core's graph kept from the forward (of a core over padded buckets,
    SDPA's alone: flash with every sample in one call, as on CUDA, window, height, serialized): one forward, the
    plain block's output and gradients (window attention's position bias included)."""
    import sparse_radar.nn.attention_cores as cores
    monkeypatch.setattr(cores, "ALL_SAMPLES_AT_ONCE_ON_CPU", one_call)
    import sparse_radar.nn.attention as attention
    x = _field(False)
    torch.manual_seed(0)
    block = _randomized(AttentionBlock(8, attention_type, num_heads=2, num_groups=4, window_size=(2, 3, 3), topk=4,
                                       patch_size=8).train())
    forwards, real = [], attention.attention_forward
    monkeypatch.setattr(attention, "attention_forward", lambda *a, **k: forwards.append(1) or real(*a, **k))
    assert_checkpointed_attention_matches(block, x, autocast)
    assert forwards == [1]


def test_kept_tensors_go_through_saved_tensor_hooks():
    """What a kept block saves is packed and unpacked by saved_tensors_hooks (as offloading would), and the
    gradients come from the unpacked tensors; an attention block's core graph survives them."""
    torch.manual_seed(0)
    block = _randomized(ResBlock(8, 16, 12, num_groups=4, use_checkpoint=True).train())
    x, emb = _field(False), torch.randn(2, 12)
    reference = _run(block, x, emb, False)[1]
    packed = []

    def pack(t):
        packed.append(t.numel())
        return t.clone()
    block.use_checkpoint = True
    feats = x.feats.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block(x.replace(feats), emb)
    assert feats.numel() in packed and len(packed) > 5  # the input and the block's ops' operands
    out.feats.float().square().sum().backward()
    for a, b in zip(reference, [feats.grad] + [p.grad for p in block.parameters()]):
        torch.testing.assert_close(b, a)


def test_the_threshold_chooses_keep_or_recompute(monkeypatch):
    """A field whose values hold MIN_RECOMPUTE_BYTES or more recomputes, a smaller one keeps."""
    import sparse_radar.nn.blocks as blocks
    torch.manual_seed(0)
    block = ResBlock(8, 8, 12, num_groups=4, use_checkpoint=True).train()
    x, emb = _field(False), torch.randn(2, 12)
    size = x.feats.numel() * x.feats.element_size()
    chosen = []
    monkeypatch.setattr(blocks, "keep", lambda *a: chosen.append("keep") or rc.keep(*a))
    monkeypatch.setattr(blocks, "recompute", lambda *a: chosen.append("recompute") or rc.recompute(*a))
    for threshold in (size + 1, size, 0):
        monkeypatch.setattr(rc, "MIN_RECOMPUTE_BYTES", threshold)
        block(x.replace(x.feats.clone().requires_grad_(True)), emb).feats.sum().backward()
    assert chosen == ["keep", "recompute", "recompute"]


@pytest.mark.parametrize("attention_type", ["flash", "window"])
def test_a_kept_attention_block_survives_hooks_that_replace_saved_tensors(attention_type, monkeypatch):
    """Hooks whose unpack returns another tensor (save_on_cpu does): the kept core graph is not one of the saved
    tensors, so its backward still reaches the qkv projection, with the plain block's gradients."""
    import sparse_radar.nn.attention_cores as cores
    monkeypatch.setattr(cores, "ALL_SAMPLES_AT_ONCE_ON_CPU", True)
    x = _field(False)
    torch.manual_seed(0)
    block = _randomized(AttentionBlock(8, attention_type, num_heads=2, num_groups=4, window_size=(2, 3, 3)).train())
    results = []
    for checkpointing in (False, True):
        block.use_checkpoint = checkpointing
        feats = x.feats.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t.clone()):
            out = block(x.replace(feats)).feats
        out.square().sum().backward()
        results.append([feats.grad] + [p.grad.clone() for p in block.parameters()])
        block.zero_grad(set_to_none=True)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("attention_type", ["flash", "window", "linear", "sparse", "height", "serialized"])
@pytest.mark.parametrize("min_recompute_bytes", [0, 1 << 20])
def test_an_empty_field_runs_attention_by_hand_with_the_plain_blocks_gradients(attention_type, min_recompute_bytes,
                                                                               monkeypatch):
    """A level with no voxels (a strided level of empty samples): the by-hand block (kept or recomputed) gives the
    plain block's output and gradients, zero, or none where the plain block gives none (window attention's bias,
    unused by an empty core)."""
    import sparse_radar.nn.attention as attention
    from sparse_radar import SparseVoxels
    monkeypatch.setattr(rc, "MIN_RECOMPUTE_BYTES", min_recompute_bytes)
    calls, real = [], attention.attention_grads
    monkeypatch.setattr(attention, "attention_grads", lambda *a: calls.append(1) or real(*a))
    block = AttentionBlock(8, attention_type, num_heads=2, num_groups=4, window_size=(2, 3, 3), topk=4,
                           patch_size=8).train()
    results = []
    for checkpointing in (False, True):
        block.use_checkpoint = checkpointing
        feats = torch.zeros(0, 8, requires_grad=True)
        out = block(SparseVoxels(feats, torch.zeros(0, 4, dtype=torch.int32), (4, 6, 6), 2)).feats
        (out * 2).sum().backward()
        results.append([out.detach(), feats.grad] + [p.grad for p in block.parameters()])
        block.zero_grad(set_to_none=True)
    assert calls == [1]
    for a, b in zip(*results):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("masked", [False, True])
def test_node_backward_calls_sdpas_node_directly_with_autograds_gradients(masked, monkeypatch):
    """An attention core's SDPA (fp32: its fused CPU kernel; q, k, v the graph's leaves, a mask that takes no
    gradient): its node's backward called directly, no engine pass, the gradients torch.autograd.grad gives bit for
    bit; a graph of several nodes, or leaves in another order than the node's inputs, go through the engine."""
    import torch.nn.functional as F
    from sparse_radar.nn.attention_by_hand import node_backward
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 5, 3, 2, 4, generator=g, dtype=torch.float32)  # [G, L, (q k v), h, d], as gathered
    leaves = tuple(base[:, :, i].transpose(1, 2).requires_grad_(True) for i in range(3))  # views [G, h, L, d]
    mask = torch.zeros(1, 1, 1, 5, dtype=torch.float32) if masked else None
    out = F.scaled_dot_product_attention(*leaves, attn_mask=mask)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float32)
    expected = torch.autograd.grad(out, leaves, grad, retain_graph=True)
    engine = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: engine.append(1) or real(*a, **k))
    got = node_backward(out, leaves, grad)
    assert engine == [] and all(torch.equal(a, b) for a, b in zip(got, expected))
    two_nodes = F.scaled_dot_product_attention(*leaves, attn_mask=mask) * 2
    got = node_backward(two_nodes, leaves, grad)
    assert engine == [1] and all(torch.allclose(a, 2 * b) for a, b in zip(got, expected))
    swapped = (leaves[1], leaves[0], leaves[2])  # the node reads them, but not in this order
    node_backward(out, swapped, grad)
    assert engine == [1, 1]
