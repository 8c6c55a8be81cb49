"""A small UNet case and a runner that returns outputs and every gradient, for device and backend comparisons."""
import copy

import torch

from sparse_radar.kernels.backends import kernel_settings
from tests.factory import random_fields
from tests.models.test_unet_parity import small_model


def outputs_and_grads(module, field, loss_weights, device, backend="auto"):
    """(output values, input gradient, parameter gradients), all copied to the CPU, of a fresh copy of module.

    A copy per run, a fresh leaf for the input, and cloned gradients: moving the module or reusing the
    field's own tensor would move or drop the gradients being compared.
    """
    m = copy.deepcopy(module).to(device)
    feats = field.feats.detach().to(device).clone().requires_grad_(True)
    with kernel_settings(backend=backend):
        out = m(field.to(device).replace(feats))
        (out.feats * loss_weights.to(device)).sum().backward()
    grads = [p.grad.detach().cpu().clone() for p in m.parameters()]
    assert all(g is not None for g in grads) and feats.grad is not None
    return out.feats.detach().cpu(), feats.grad.detach().cpu(), grads


class WithTimes(torch.nn.Module):
    """A UNet called with fixed noise levels, so it takes one field like the layers."""

    def __init__(self, model, t):
        super().__init__()
        self.model, self.t = model, t

    def forward(self, x):
        return self.model(x, self.t.to(x.feats.device))


def unet_case(**overrides):
    model = small_model(**{"attention_type": "window", "norm_type": "group", "downsample_stride": "xy_only",
                           **overrides})
    sv, _ = random_fields(2, 5, (8, 8, 8), [0.1, 0.3], seed=7)
    weights = torch.randn(sv.num_voxels, 3, generator=torch.Generator().manual_seed(8))
    return WithTimes(model, torch.tensor([0.3, -0.7])), sv, weights
