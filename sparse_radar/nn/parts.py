"""A module's submodules and parameters read from its own dicts, for code that runs per block every step.

nn.Module keeps them out of the instance dict, so `module.weight` first fails Python's attribute lookup (which builds
an AttributeError message) and then runs Module.__getattr__: about half a microsecond a read, and the by-hand blocks
read some 2,000 a lightweight step (a tenth of its host instructions). These read the dicts at once, and fall back to
the attribute where a name is not in them (a parametrized weight, a plain attribute).
"""
from __future__ import annotations

from torch import nn

_ABSENT = object()


def param(module: nn.Module, name: str):
    """module.<name> of a parameter (None for one registered as None, such as an absent bias)."""
    found = module._parameters.get(name, _ABSENT)
    return getattr(module, name) if found is _ABSENT else found


def child(module: nn.Module, name: str):
    """module.<name> of a submodule."""
    found = module._modules.get(name, _ABSENT)
    return getattr(module, name) if found is _ABSENT else found


def parametrized(*modules: nn.Module) -> bool:
    """Whether any of modules has a parametrized tensor (torch.nn.utils.parametrize): code that differentiates by
    hand would read its computed value and hand no gradient to the parametrization's own tensors."""
    return any("parametrizations" in module._modules for module in modules)
