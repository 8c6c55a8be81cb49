"""parts.param / parts.child: the module's own entries, and its attribute where a name is not in its dicts;
parts.parametrized."""
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparse_radar.nn.parts import child, param, parametrized


class _Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


def test_param_and_child_are_the_registered_objects():
    block = nn.Sequential()
    block.add_module("layer", nn.Linear(3, 2, bias=False))
    layer = block.layer
    assert child(block, "layer") is layer
    assert param(layer, "weight") is layer.weight
    assert param(layer, "bias") is None  # registered as None: an absent bias, not a fallback


def test_a_parametrized_weight_is_read_as_the_module_computes_it():
    layer = nn.Linear(3, 2)
    parametrize.register_parametrization(layer, "weight", _Doubled())
    assert "weight" not in layer._parameters
    torch.testing.assert_close(param(layer, "weight"), 2 * layer.parametrizations.weight.original)
    assert param(layer, "bias") is layer.bias


def test_an_attribute_that_is_no_entry_falls_back():
    layer = nn.Linear(3, 2)
    layer.note = "plain"
    assert param(layer, "in_features") == 3 and child(layer, "note") == "plain"


def test_parametrized_sees_a_registered_parametrization():
    plain, changed = nn.Linear(3, 4), nn.Linear(3, 4)
    assert not parametrized(plain, changed)
    parametrize.register_parametrization(changed, "weight", _Doubled())
    assert parametrized(changed) and parametrized(plain, changed) and not parametrized(plain)
