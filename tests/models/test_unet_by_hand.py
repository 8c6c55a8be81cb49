"""The body of a checkpointed sparse UNet3D as one autograd node (models.unet_by_hand): the same output and
gradients as the blocks' own nodes (bitwise: the same kernels on the same operands) and as plain autograd without
checkpointing; one node in the graph; the RNG and the fallbacks (hooks, eval, dense fields)."""
import collections

import pytest
import torch

import sparse_radar.models.unet as unet
import sparse_radar.nn.recompute as rc
from sparse_radar.kernels.backends import kernel_settings
from sparse_radar.models import UNet3D
from sparse_radar.models.config import create_tiny_unet_config
from sparse_radar.models.unet_by_hand import body_by_hand
from tests.factory import random_fields


def _model(dtype=torch.float64, **overrides):
    cfg = create_tiny_unet_config(**{
        "in_channels": 5, "out_channels": 3, "model_channels": 8, "channel_mult": (1, 2, 2),
        "attention_resolutions": (1, 2, 4), "num_heads": 2, "num_groups": 4, "window_size": (2, 2, 2),
        "min_z_size": 4, "input_size": (8, 8, 8), "dropout": 0.3, "use_checkpoint": True, "attention_type": "window",
        **overrides})
    model = UNet3D(cfg).to(dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random non-zero parameters: zero-initialised convs would hide differences
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.3)
    return model.train()


def _step(model, body: bool, backend="torch", dtype=torch.float64, monkeypatch=None, seed=1, occupancy=(0.3, 0.5)):
    """(output, input gradient, {name: gradient}, RNG state after the backward) of one loss, with the body as one
    node (body) or as the blocks' own nodes."""
    sv, _ = random_fields(2, 5, (8, 8, 8), list(occupancy), seed=7, dtype=dtype)
    feats = sv.feats.clone().requires_grad_(True)
    if not body:
        monkeypatch.setattr(unet, "body_by_hand", lambda model, h: None)
    torch.manual_seed(seed)
    with kernel_settings(backend=backend):
        out = model(sv.replace(feats), torch.tensor([0.3, -0.7], dtype=dtype))
        weights = torch.linspace(-1, 1, out.feats.numel(), dtype=dtype).view_as(out.feats)
        (out.feats * weights).sum().backward()
    monkeypatch.undo()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.feats.detach(), feats.grad, grads, torch.get_rng_state()


def _body_input():
    """A field as the input conv hands it to the body (8 channels)."""
    sv, _ = random_fields(2, 5, (8, 8, 8), [0.3, 0.5], seed=7, dtype=torch.float64)
    return sv.replace(torch.zeros(sv.num_voxels, 8, dtype=torch.float64))


def _assert_same(a, b, exact: bool):
    check = torch.equal if exact else (lambda x, y: torch.allclose(x, y, rtol=1e-6, atol=1e-9))
    assert check(a[0], b[0]) and check(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert check(a[2][name], b[2][name]), name


@pytest.mark.parametrize("attention_type", ["window", "flash", "none"])
@pytest.mark.parametrize("recompute_bytes", [1 << 30, 0, 3000])
def test_the_body_node_matches_the_blocks_own_nodes_bitwise(attention_type, recompute_bytes, monkeypatch):
    """Kept blocks, recomputed blocks (their dropout redrawn from the forward's RNG state) and a mix; attention with
    a trained position bias (window), global and none: the same kernels on the same operands, so equal bits; and
    the RNG after the backward is where the forward left it in both."""
    monkeypatch.setattr(rc, "MIN_RECOMPUTE_BYTES", recompute_bytes)
    model = _model(attention_type=attention_type)
    body = [name for name, _ in model.named_parameters() if name.split(".")[0] in ("encoder", "middle", "decoder",
                                                                                    "downs", "ups")]
    read = {id(p): name for name, p in model.named_parameters()}
    names = [read[id(p)] for p in body_by_hand(model, _body_input())]  # every body weight but ResBlock.emb's, once
    assert len(names) == len(set(names)) and set(names) == {name for name in body if ".emb." not in name}
    by_body = _step(model, True, monkeypatch=monkeypatch)
    monkeypatch.setattr(rc, "MIN_RECOMPUTE_BYTES", recompute_bytes)
    by_blocks = _step(model, False, monkeypatch=monkeypatch)
    _assert_same(by_body, by_blocks, exact=True)
    assert torch.equal(by_body[3], by_blocks[3])
    assert all(g.abs().sum() > 0 for g in by_body[2].values())  # every parameter reached, the bias table too


def _assert_matches_plain_autograd(model, monkeypatch):
    """model's step (checkpointed) against the same model's without checkpointing (plain autograd); the first."""
    checkpointed = _step(model, True, monkeypatch=monkeypatch)
    for module in model.modules():
        if hasattr(module, "use_checkpoint"):
            module.use_checkpoint = False
    _assert_same(checkpointed, _step(model, True, monkeypatch=monkeypatch), exact=False)
    return checkpointed


def test_the_body_node_matches_plain_autograd_without_checkpointing(monkeypatch):
    """The reference that shares no code with the by-hand ops' backward: the modules under autograd, no
    checkpointing, the same dropout draws."""
    _assert_matches_plain_autograd(_model(attention_type="window"), monkeypatch)


def test_the_body_node_under_bf16_autocast_matches_the_blocks_own_nodes(monkeypatch):
    """Autocast (bf16 on the CPU): the compute dtypes of the convs, the concatenation of an fp32 and a bf16 part
    and their gradients' casts as the modules' own ops give them."""
    model = _model(torch.float32, attention_type="flash", use_fp16=True)
    by_body = _step(model, True, dtype=torch.float32, monkeypatch=monkeypatch)
    by_blocks = _step(model, False, dtype=torch.float32, monkeypatch=monkeypatch)
    _assert_same(by_body, by_blocks, exact=True)


def test_the_body_node_on_the_triton_backend(monkeypatch):
    """The Triton kernels (interpreted on the CPU) through the body node: the blocks' own nodes' bits."""
    pytest.importorskip("triton")
    model = _model(torch.float32, attention_type="flash", channel_mult=(1, 2), attention_resolutions=(2,),
                   num_res_blocks=1)  # small: the interpreter runs every kernel program on the CPU
    by_body = _step(model, True, "triton", torch.float32, monkeypatch, occupancy=(0.03, 0.05))
    by_blocks = _step(model, False, "triton", torch.float32, monkeypatch, occupancy=(0.03, 0.05))
    _assert_same(by_body, by_blocks, exact=True)


def _graph_nodes(tensor) -> collections.Counter:
    seen, kinds, stack = set(), collections.Counter(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kinds[type(node).__name__] += 1
        stack.extend(n for n, _ in node.next_functions)
    return kinds


def test_a_training_step_records_the_body_as_one_node():
    """One kept node for the whole body (no node per block, conv or concatenation), the convs outside it (input,
    output) and the embedding as usual."""
    model = _model(attention_type="window")
    sv, _ = random_fields(2, 5, (8, 8, 8), [0.3, 0.5], seed=7, dtype=torch.float64)
    kinds = _graph_nodes(model(sv, torch.tensor([0.3, -0.7], dtype=torch.float64)).feats)
    assert kinds["_KeptBackward"] == 1 and kinds["CatBackward0"] == 0
    assert kinds["AccumulateGrad"] == sum(1 for _ in model.parameters())


def test_hooks_eval_and_dense_fields_take_the_modules():
    """A forward hook on a block still fires (the body falls back to the modules); a hook on a strided conv, eval
    mode (of the model or of one block), a block without checkpointing, no grad and a dense field fall back too."""
    model = _model()
    sv, dv = random_fields(2, 5, (8, 8, 8), [0.3, 0.5], seed=7, dtype=torch.float64)
    h = _body_input()
    assert body_by_hand(model, h)
    seen = []
    handle = model.decoder[0].blocks[1].register_forward_hook(lambda m, i, o: seen.append(o.num_voxels))
    assert not body_by_hand(model, h)
    model(sv, torch.tensor([0.3, -0.7], dtype=torch.float64))
    assert len(seen) == 1
    handle.remove()
    assert body_by_hand(model, h)
    with torch.no_grad():
        assert not body_by_hand(model, h)
    assert not body_by_hand(model.eval(), h)
    assert not body_by_hand(model.train(), dv)
    handle = model.downs[0].conv.register_forward_pre_hook(lambda m, i: None)
    assert not body_by_hand(model, h)
    handle.remove()
    model.middle.blocks[0].eval()
    assert not body_by_hand(model, h)
    model.middle.blocks[0].train()
    model.middle.blocks[0].use_checkpoint = False
    assert not body_by_hand(model, h)


def test_a_parametrized_weight_takes_the_modules_and_gets_its_gradient(monkeypatch):
    """A weight under torch.nn.utils.parametrize (in a block's conv, an attention projection, a downsample): the by-hand
    ops would read its computed value and leave the parametrization's own tensor without a gradient, so the block
    (and the body) run their modules, and the gradient is plain autograd's."""
    from torch.nn.utils import parametrize

    class Doubled(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    model = _model(attention_type="flash")
    for layer in (model.encoder[0].blocks[0].in_conv, model.middle.attns[0].qkv, model.downs[0].conv):
        parametrize.register_parametrization(layer, "weight", Doubled())
    assert not body_by_hand(model, _body_input())
    by_modules = _assert_matches_plain_autograd(model, monkeypatch)
    assert by_modules[2]["encoder.0.blocks.0.in_conv.parametrizations.weight.original"].abs().sum() > 0
