"""On a GPU: the sparse path on CUDA computes what it computes on the CPU (outputs and gradients), for the
conv kernel, every attention type and a whole UNet; the triton backend computes what the torch backend does;
deterministic mode is bitwise repeatable; and a benchmark worker measures on CUDA.
Skipped where torch sees no CUDA device (tests/kernels runs the kernel claims on CUDA there too)."""
import json
import subprocess
import sys

import pytest
import torch

from sparse_radar.kernels.backends import kernel_settings
from sparse_radar.nn import SubMConv3d
from sparse_radar.nn.attention import ATTENTION_TYPES
from tests.factory import random_fields
from tests.models.unet_cases import outputs_and_grads, unet_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_both(module, field, loss_weights):
    """(output values, input gradient, parameter gradients) on the CPU and on CUDA."""
    return [outputs_and_grads(module, field, loss_weights, device) for device in ("cpu", "cuda")]


def assert_same(results, rtol=1e-4, atol=1e-5):
    (out_c, gx_c, gp_c), (out_g, gx_g, gp_g) = results
    torch.testing.assert_close(out_g, out_c, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx_g, gx_c, rtol=rtol, atol=atol)
    assert len(gp_g) == len(gp_c) > 0
    for a, b in zip(gp_g, gp_c):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def exact_matmuls():
    """TF32 would round the GPU's matrix products to 10 mantissa bits: compare in full fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_submanifold_conv_on_cuda_equals_cpu():
    sv, _ = random_fields(2, 16, (8, 16, 16), [0.05, 0.3], seed=3)
    conv = SubMConv3d(16, 24, 3)
    weights = torch.randn(sv.num_voxels, 24, generator=torch.Generator().manual_seed(4))
    assert_same(run_both(conv, sv, weights))


@pytest.mark.parametrize("attention_type", [t for t in ATTENTION_TYPES if t != "none"])
def test_attention_on_cuda_equals_cpu(attention_type):
    from sparse_radar.nn.attention import AttentionBlock
    sv, _ = random_fields(2, 16, (4, 8, 8), [0.2, 0.4], seed=5)
    block = AttentionBlock(16, attention_type, 2, "group", 4, (2, 2, 2), topk=4, patch_size=8)
    torch.nn.init.normal_(block.proj.weight, std=0.3)
    weights = torch.randn(sv.num_voxels, 16, generator=torch.Generator().manual_seed(6))
    assert_same(run_both(block, sv, weights))


def test_unet_on_cuda_equals_cpu():
    module, sv, weights = unet_case()
    assert_same(run_both(module, sv, weights), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("overrides", [{}, {"use_depthwise": True, "norm_type": "instance"},
                                       {"downsample_stride": "full", "attention_type": "linear"}])
def test_triton_backend_equals_torch_backend_on_a_unet(overrides):
    module, sv, weights = unet_case(**overrides)
    results = [outputs_and_grads(module, sv, weights, "cuda", backend) for backend in ("torch", "triton")]
    assert_same(results, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_deterministic_mode_is_bitwise_on_cuda(backend):
    """Convs, norms and attention: two runs in deterministic mode give the same bits, gradients included."""
    module, sv, weights = unet_case(attention_type="sparse", norm_type="adaptive")
    with kernel_settings(deterministic=True):
        first = outputs_and_grads(module, sv, weights, "cuda", backend)
        again = outputs_and_grads(module, sv, weights, "cuda", backend)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert all(torch.equal(a, b) for a, b in zip(first[2], again[2]))


def test_step_worker_measures_on_cuda():
    done = subprocess.run([sys.executable, "-m", "benchmarks.step_worker", "--preset", "tiny", "--grid", "8,32,32",
                           "--batch", "1", "--steps", "1", "--device", "cuda"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout)
    assert row["device"] == "cuda" and row["step_ms"] > 0 and row["peak_bytes"] > 0


@pytest.mark.parametrize("optimizer", ["fused", "foreach"])
def test_adamw_on_cuda_updates_kernel_layout_weights_as_contiguous_ones(optimizer):
    """Conv weights keep their memory in the kernels' layout: CUDA's fused and foreach AdamW (which read params,
    grads and states as flat memory) update them exactly as the same weights laid out contiguously."""
    from sparse_radar.nn.conv import set_weight_layout
    from sparse_radar.models import UNet3D, create_tiny_unet_config
    sv, _ = random_fields(2, 8, (8, 16, 16), [0.1, 0.2], seed=11)
    results = []
    for layout in ("kernel", "torch"):
        torch.manual_seed(0)
        model = set_weight_layout(UNet3D(create_tiny_unet_config(use_checkpoint=True)), layout).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, **{optimizer: True})
        for _ in range(3):
            model(sv.to("cuda"), torch.tensor([0.1, 0.5], device="cuda")).feats.square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        results.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("min_recompute_bytes", [0, 1 << 20])
def test_checkpointed_block_with_dropout_recomputes_the_same_mask_on_cuda(min_recompute_bytes, monkeypatch):
    """recompute() restores the CUDA generator for the backward's second run, and keep (a small field) uses the
    forward's dropout state: with dropout the gradients equal those of the block run without checkpointing."""
    import sparse_radar.nn.recompute as rc
    from sparse_radar.nn.blocks import ResBlock
    monkeypatch.setattr(rc, "MIN_RECOMPUTE_BYTES", min_recompute_bytes)
    torch.manual_seed(0)
    block = ResBlock(8, 16, 12, num_groups=4, dropout=0.4).cuda().train()
    sv, _ = random_fields(2, 8, (4, 8, 8), [0.3, 0.5], seed=12)
    x, emb = sv.to("cuda"), torch.randn(2, 12, device="cuda")
    grads = []
    for checkpointing in (False, True):
        block.use_checkpoint = checkpointing
        torch.manual_seed(5)
        block(x, emb).feats.square().sum().backward()
        grads.append([p.grad.clone() for p in block.parameters()])
        block.zero_grad(set_to_none=True)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
