"""A whole UNet on the triton backend (Triton's CPU interpreter here) computes what the torch backend does."""
import pytest
import torch

from tests.models.unet_cases import outputs_and_grads, unet_case

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests/test_cuda.py runs this on the GPU")


def test_triton_backend_equals_torch_backend_through_a_unet():
    """Submanifold, strided, inverse and depthwise convs of a UNet, forward and every gradient. Group norms of 4
    groups (an instance norm's statistics program per channel made this test 1.7 times slower; tests/nn/test_keep.py
    and test_recompute.py run instance norms through Triton ResBlocks)."""
    module, sv, weights = unet_case(use_depthwise=True)
    (out_a, gx_a, gp_a), (out_b, gx_b, gp_b) = [outputs_and_grads(module, sv, weights, "cpu", backend)
                                                for backend in ("torch", "triton")]
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx_b, gx_a, rtol=1e-4, atol=1e-5)
    assert len(gp_a) == len(gp_b) > 10
    for a, b in zip(gp_a, gp_b):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
