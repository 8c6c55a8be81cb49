"""Kernel settings and backend choice, with scoped overrides for tests and benchmarks."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from dataclasses import dataclass, replace
from typing import Iterator, Optional

import torch

# Backends that compute the kernels of this package. "torch" is the reference and runs everywhere;
# "triton" (implicit GEMM over neighbour tables) runs on CUDA tensors, or on CPU tensors under
# TRITON_INTERPRET=1 (how the tests check it without a GPU), and is tested against "torch".
KNOWN_BACKENDS = ("torch", "triton")
BACKEND_ENV = "SPARSE_RADAR_BACKEND"  # overrides what "auto" picks
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)

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
_DEFAULT = KernelSettings()


def current() -> KernelSettings:
    """The settings in force on this thread."""
    return getattr(_state, "settings", None) or _DEFAULT


def _check_name(name: str, origin: str) -> str:
    if name != "auto" and name not in KNOWN_BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r} ({origin}); expected 'auto' or one of " +
                         ", ".join(repr(b) for b in KNOWN_BACKENDS))
    return name


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    """True when the triton package can be found (checked on first use, never at import time)."""
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def triton_interpreting() -> bool:
    """True when Triton kernels run in its interpreter (TRITON_INTERPRET=1), which takes CPU tensors: read once, on
    first use (Triton reads it once too, when it defines a kernel; reading os.environ costs a microsecond, and the
    kernel wrappers ask hundreds of times a step)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_refusal(tensor: Optional[torch.Tensor]) -> Optional[str]:
    """Why the triton backend cannot take this tensor, or None when it can."""
    if not triton_importable():
        return "triton is not installed (pip install triton)"
    if tensor is None:
        return None
    if tensor.device.type != "cuda" and not triton_interpreting():
        return f"its kernels need CUDA tensors (got {tensor.device.type}; TRITON_INTERPRET=1 runs them on the CPU)"
    if tensor.dtype not in TRITON_DTYPES:
        return f"it computes float32, float16 and bfloat16, not {tensor.dtype}"
    return None


def resolve_backend(requested: Optional[str] = None, tensor: Optional[torch.Tensor] = None) -> str:
    """The backend that runs a kernel on `tensor`: a named one, or for "auto" $SPARSE_RADAR_BACKEND,
    else triton for CUDA tensors when it imports, else torch."""
    name = _check_name(requested or current().backend, "kernel settings")
    if name == "auto" and os.environ.get(BACKEND_ENV):
        name = _check_name(os.environ[BACKEND_ENV], f"${BACKEND_ENV}")
    if name == "auto":
        usable = tensor is not None and tensor.device.type == "cuda" and _triton_refusal(tensor) is None
        return "triton" if usable else "torch"
    if name == "triton":
        why = _triton_refusal(tensor)
        if why is not None:
            raise ValueError(f"kernel backend 'triton' cannot run here: {why}")
    return name


def index_kernels_on_triton(device: torch.device) -> bool:
    """Whether index work (kernel maps) on this device runs as triton kernels under the settings in force: the
    backend the float kernels would take there (float dtype checks do not apply to integer index tensors)."""
    return resolve_backend(None, torch.empty(0, device=device)) == "triton"


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """tensor.to(dtype), without the call where it already is dtype (a no-op .to costs a dispatch: ~1 us of host
    time, over a thousand times a step)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def records_graph(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether an op on these tensors would be recorded by autograd (grad mode on and one of them needs a gradient):
    where not, an op can skip its autograd Function (several microseconds of host time per call)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is summed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# The op families each backend implements, as lazy loaders (a backend's modules are imported on first use, so the
# triton package is never imported unless its backend runs). One entry module per family dispatches through it:
# kernels/conv.py ("conv", "depthwise") and kernels/segment.py ("segment"); no backend imports an entry module.
def _torch_conv():
    from .torch.conv import TorchSparseConv
    return TorchSparseConv


def _torch_depthwise():
    from .torch.depthwise import TorchDepthwiseConv
    return TorchDepthwiseConv


def _torch_segment():
    from .torch import segment
    return segment


def _triton_conv():
    from .triton.conv import TritonSparseConv
    return TritonSparseConv


def _triton_depthwise():
    from .triton.conv import TritonDepthwiseConv
    return TritonDepthwiseConv


def _triton_segment():
    from .triton import segment
    return segment


OPS = {
    ("torch", "conv"): _torch_conv, ("torch", "depthwise"): _torch_depthwise, ("torch", "segment"): _torch_segment,
    ("triton", "conv"): _triton_conv, ("triton", "depthwise"): _triton_depthwise,
    ("triton", "segment"): _triton_segment,
}


@functools.lru_cache(maxsize=None)
def op(backend: str, family: str):
    """What `backend` implements for op `family` (an autograd op, or the module of the segment functions)."""
    try:
        loader = OPS[(backend, family)]
    except KeyError:
        raise ValueError(f"no {family!r} op in backend {backend!r}; registered: {sorted(OPS)}") from None
    return loader()


@contextlib.contextmanager
def kernel_settings(backend: Optional[str] = None, gather_elements: Optional[int] = None,
                    deterministic: Optional[bool] = None) -> Iterator[KernelSettings]:
    """Override kernel settings inside a with-block (restored on exit, also on error)."""
    old = current()
    new = old
    if backend is not None:
        _check_name(backend, "kernel_settings")
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


def autocast_off(device_type: str):
    """A context with autocast off on device_type: torch.autocast(enabled=False) where autocast is on, else none
    (entering and leaving an autocast context costs host time on every op that would otherwise skip it)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
