"""Kernel settings and backend choice, with scoped overrides for tests and benchmarks."""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, replace
from typing import Iterator, Optional

import torch

# Backends that compute the kernels of this package. "torch" is the reference and runs everywhere;
# faster ones register here once they exist and are tested against it.
KNOWN_BACKENDS = ("torch",)

# elements per gathered chunk when not overridden: on a CPU a small chunk keeps the step's transient buffers
# (and the heap fragmentation they cause) small at no measured cost in time; a GPU wants fewer, larger GEMMs
DEFAULT_GATHER_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 24}  # 4 MiB / 64 MiB of fp32


@dataclass(frozen=True)
class KernelSettings:
    """What kernels read at call time: backend, gather-buffer budget, deterministic scatter."""

    backend: str = "auto"
    gather_elements: Optional[int] = None  # None: DEFAULT_GATHER_ELEMENTS of the tensors' device type
    deterministic: bool = False

    def gather_rows(self, device: torch.device, width: int) -> int:
        """Rows of `width` channels one gathered chunk may hold on `device`."""
        budget = self.gather_elements or DEFAULT_GATHER_ELEMENTS.get(device.type, DEFAULT_GATHER_ELEMENTS["cuda"])
        return max(1, budget // max(width, 1))


_state = threading.local()


def current() -> KernelSettings:
    """The settings in force on this thread."""
    return getattr(_state, "settings", None) or KernelSettings()


def resolve_backend(requested: Optional[str] = None) -> str:
    """Turn a requested backend ("auto" or a name) into one that can run here."""
    name = requested or current().backend
    if name == "auto":
        return "torch"
    if name not in KNOWN_BACKENDS:
        raise ValueError(f"unknown or unavailable kernel backend {name!r}; available: 'auto', " +
                         ", ".join(repr(b) for b in KNOWN_BACKENDS))
    return name


@contextlib.contextmanager
def kernel_settings(backend: Optional[str] = None, gather_elements: Optional[int] = None,
                    deterministic: Optional[bool] = None) -> Iterator[KernelSettings]:
    """Override kernel settings inside a with-block (restored on exit, also on error)."""
    old = current()
    new = old
    if backend is not None:
        resolve_backend(backend)
        new = replace(new, backend=backend)
    if gather_elements is not None:
        if isinstance(gather_elements, bool) or not isinstance(gather_elements, int) or gather_elements < 1:
            raise ValueError(f"gather_elements must be a positive int, got {gather_elements!r}")
        new = replace(new, gather_elements=gather_elements)
    if deterministic is not None:
        new = replace(new, deterministic=bool(deterministic))
    _state.settings = new
    try:
        yield new
    finally:
        _state.settings = old
