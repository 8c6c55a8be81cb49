"""stacked_linears: every ResBlock's [scale | shift] in one matmul equals each block's own projection, values and
gradients, and a UNet3D that uses it computes what its blocks compute from the embedding themselves."""
import pytest
import torch

from sparse_radar import SparseVoxels, UNet3D
from sparse_radar.models import PRESETS
from sparse_radar.nn import blocks as blocks_module
from sparse_radar.nn.modulation import stacked_linears


def _layers(dtype=torch.float64):
    torch.manual_seed(0)
    return [torch.nn.Linear(5, n).to(dtype) for n in (4, 6, 2)]


def test_stacked_linears_equal_each_layer_with_their_gradients():
    layers = _layers()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    params = [x] + [p for layer in layers for p in layer.parameters()]
    grads = [torch.randn(3, layer.out_features, dtype=torch.float64) for layer in layers]
    got = stacked_linears(x, layers)
    want = [layer(x) for layer in layers]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    g_got = torch.autograd.grad(got, params, grads)
    g_want = torch.autograd.grad(want, params, grads)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)
    # a layer whose output takes no gradient; gradcheck over the input (the weights are checked above)
    torch.testing.assert_close(torch.autograd.grad(stacked_linears(x, layers)[1].sum(), x)[0],
                               torch.autograd.grad(layers[1](x).sum(), x)[0])
    assert torch.autograd.gradcheck(lambda v: torch.cat(stacked_linears(v, layers), 1), (x,))


def test_stacked_linears_without_gradients_build_no_graph_and_check_their_layers():
    layers = _layers(torch.float32)
    x = torch.randn(2, 5)
    with torch.no_grad():
        got = stacked_linears(x, layers)
    assert all(t.grad_fn is None for t in got)
    for a, layer in zip(got, layers):
        torch.testing.assert_close(a, layer(x).detach())
    with pytest.raises(ValueError, match="bias"):
        stacked_linears(x, [torch.nn.Linear(5, 3, bias=False)])
    assert stacked_linears(x, []) == []


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_unet_gives_each_block_its_own_modulation(checkpointing, monkeypatch):
    """The UNet's one matmul hands every block the modulation its own projection gives (a block that got another
    block's would change the output): output and every gradient equal those of blocks projecting emb themselves."""
    torch.manual_seed(0)
    model = UNet3D(PRESETS["tiny"](use_checkpoint=checkpointing, dropout=0.0)).train()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    mask = torch.rand(2, 1, 8, 16, 16) < 0.2
    x = SparseVoxels.from_dense(torch.randn(2, model.config.in_channels, 8, 16, 16) * mask, mask)
    labels = torch.tensor([0.3, -1.2])
    seen = []
    real_stacked = stacked_linears

    def recording(emb, layers):
        seen.append(emb)
        return real_stacked(emb, layers)

    import sparse_radar.models.unet as unet_module
    monkeypatch.setattr(unet_module, "stacked_linears", recording)
    results = []
    for own_projection in (False, True):
        if own_projection:  # each block ignores the handed modulation and projects the same embedding itself
            real_forward = blocks_module.ResBlock.forward
            monkeypatch.setattr(blocks_module.ResBlock, "forward", lambda self, h, emb=None, activated=False,
                                modulation=None: real_forward(self, h, seen[-1], True))
        out = model(x, labels).feats
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
