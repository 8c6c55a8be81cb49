"""Counting what a training step would launch on a GPU, and where it would wait, on the CPU.

Kernel launches: aten dispatches that run a kernel (VIEW_OPS, which only make views or metadata, are left out)
plus Triton launches (under TRITON_INTERPRET=1, counted and not executed: their outputs are zero-filled so the
step's values stay finite; the counts do not depend on values; the kernel-map builders do run, so the sites are
real). Host syncs: scalar reads (`item`, `int`,
`float`, `bool` of a tensor), `nonzero`, `unique*`, `bincount`, `masked_select`, boolean-mask indexing and
`index_put`, `repeat_interleave` without `output_size`, `equal`, host tensors made for the device
(`torch.tensor(list)`), `.cpu()` and `.tolist()`. Each is charged to a component by the innermost frame of this
project's code that made it, and to the forward or the backward pass.
"""
from __future__ import annotations

import collections
import contextlib
import os
import time
import traceback
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VIEW_OPS = frozenset({
    "detach", "view", "_unsafe_view", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "select",
    "slice", "unbind", "as_strided", "alias", "split", "split_with_sizes", "chunk", "reshape", "empty", "empty_like",
    "empty_strided", "_reshape_alias", "unfold", "lift_fresh", "lift_fresh_copy", "movedim", "view_as", "expand_as",
    "narrow", "_to_copy_noop", "set_", "resize_", "is_same_size", "_has_compatible_shallow_copy_type",
    "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "dim", "size", "stride"})
SYNC_OPS = frozenset({"nonzero", "_unique2", "unique_consecutive", "unique_dim", "bincount", "_local_scalar_dense",
                      "masked_select", "equal", "is_nonzero"})
TRITON_OUTPUTS = frozenset({"out_ptr", "partial_ptr", "sum_a_ptr", "sum_ab_ptr"})  # zero-filled when stubbed
# index kernels (kernel-map builders) run even when stubbing: the sites a step builds, and the counts it reads
# back, are then the real ones (stubbed, they would be garbage); they are cheap even interpreted
EXECUTED_KERNELS = frozenset({"site_scatter_kernel", "submanifold_table_kernel", "strided_candidates_kernel",
                              "rows_of_keys_kernel", "keys_to_coords_kernel", "invert_table_kernel"})

# innermost project file -> component (first match wins)
COMPONENTS = (
    ("data", ("sparse_radar/data/", "sparse_radar/frames.py", "training/batches.py:pair")),
    ("maps", ("kernels/kmap_builders.py", "kernels/triton/kmap_builders.py", "kernels/coords.py", "kernels/kernel_map.py",
              "sparse_radar/structure.py")),
    ("convs", ("kernels/conv.py", "kernels/torch/conv.py", "kernels/torch/depthwise.py", "kernels/triton/conv.py",
               "sparse_radar/nn/conv.py", "sparse_radar/nn/depthwise.py", "sparse_radar/nn/generative.py")),
    ("norms", ("sparse_radar/nn/norm.py", "sparse_radar/nn/fused_norm.py", "kernels/segment.py",
               "kernels/triton/segment.py", "kernels/torch/segment.py")),
    ("attention", ("sparse_radar/nn/attention", "kernels/grouping.py")),
    ("embeddings", ("sparse_radar/nn/embedding", "sparse_radar/models/unet.py")),
    ("blocks", ("sparse_radar/nn/blocks.py", "sparse_radar/nn/field_ops.py", "sparse_radar/voxels.py")),
    ("support", ("sparse_radar/models/structure_net.py", "sparse_radar/models/generative.py",
                 "training/stages.py")),
    ("latent", ("sparse_radar/models/latent.py", "sparse_radar/models/vae.py")),
    ("EMA", ("diffusion/consistency.py:ema_update",)),
    ("loss", ("sparse_radar/diffusion/",)),
    ("optimizer", ("torch/optim/", "torch/nn/utils/clip_grad")),
    ("trainer", ("training/trainer.py", "training/stage_base.py", "training/diffusion_stage.py",
                 "training/latent_stage.py", "training/occupancy_stages.py", "training/batches.py")),
)


DATA_FRAMES = ("training/batches.py:pair", "data/support.py:training_fields", "training/batches.py:draws",
               "training/batches.py:index", "training/batches.py:host_counts")


def component_of(stack) -> str:
    """The component of the innermost frame of this project (or torch's optimizer) in a traceback stack; work
    done for the batch on the host before it moves to the device (collate, a radar support) is data."""
    if any(m in f"{f.filename.replace(os.sep, '/')}:{f.name}" for f in stack for m in DATA_FRAMES):
        return "data"
    for frame in reversed(stack):
        path = frame.filename.replace(os.sep, "/")
        where = f"{path}:{frame.name}"
        if "site-packages/torch/" in path and "torch/optim/" not in path and "clip_grad" not in path:
            continue
        for name, marks in COMPONENTS:
            if any(m in where for m in marks):
                return name
        if "/sparse_radar/" in path or "/kernels/" in path or "/main/" in path:
            return "other"
    return "other"


class BuilderTape:
    """The kernel-map builders' results of one step, recorded as they run and written back in later steps of the
    same batch in place of running them (timed steps then pay what a GPU's host pays for a launch, not the
    interpreter's run)."""

    def __init__(self):
        self.calls: List[List[torch.Tensor]] = []
        self.replaying, self.position = False, 0

    def record(self, tensors: List[torch.Tensor]) -> None:
        """Keep a copy of a builder's tensor arguments after it ran."""
        self.calls.append([t.detach().clone() for t in tensors])

    def replay(self, tensors: List[torch.Tensor]) -> bool:
        """Write the next recorded call's tensors into these arguments; False if the step's builders differ."""
        if self.position >= len(self.calls):
            return False
        saved = self.calls[self.position]
        if [t.shape for t in saved] != [t.shape for t in tensors]:
            return False
        for target, value in zip(tensors, saved):
            target.copy_(value)
        self.position += 1
        return True

    def rewind(self) -> None:
        """Replay from the first recorded call (at the start of each timed step)."""
        self.replaying, self.position = True, 0


class Tally:
    """Launches and syncs by (component, pass) and by op."""

    def __init__(self):
        self.launches: Dict[Tuple[str, str], int] = collections.Counter()
        self.syncs: Dict[Tuple[str, str], int] = collections.Counter()
        self.sync_kinds: Dict[str, int] = collections.Counter()
        self.sync_sites: Dict[str, int] = collections.Counter()
        self.ops: Dict[str, int] = collections.Counter()
        self.component_ops: Dict[str, int] = collections.Counter()
        self.triton = 0
        self.executed_seconds = 0.0  # spent running EXECUTED_KERNELS in the interpreter (not a GPU's host cost)
        self.replay_misses = 0  # builders a replaying tape could not answer (run instead)

    def total(self, what: str = "launches", components=None, phase=None) -> int:
        """Sum over components (default all) and pass (default both)."""
        table = self.launches if what == "launches" else self.syncs
        return sum(v for (c, p), v in table.items()
                   if (components is None or c in components) and (phase is None or p == phase))

    def add_launch(self, name: str, component: str, phase: str) -> None:
        self.launches[(component, phase)] += 1
        self.ops[name] += 1
        self.component_ops[f"{component} {phase} {name}"] += 1

    def add_sync(self, kind: str, component: str, phase: str, site: str) -> None:
        self.syncs[(component, phase)] += 1
        self.sync_kinds[kind] += 1
        self.sync_sites[f"{kind} {site}"] += 1


def _where():
    stack = [f for f in traceback.extract_stack() if not f.filename.endswith("launch_count.py")]
    site = next((f"{f.filename.split('/main/')[-1]}:{f.lineno}" for f in reversed(stack)
                 if "site-packages" not in f.filename and "launch_count.py" not in f.filename), "?")
    return component_of(stack), site


def _phase() -> str:
    return "backward" if torch._C._current_autograd_node() is not None else "forward"


class _Dispatch(TorchDispatchMode):
    def __init__(self, tally: Tally, inside: list):
        super().__init__()
        self.tally, self.inside = tally, inside

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.inside[0]:
            name = func._schema.name.split("::")[1]
            kind = None
            if name == "lift_fresh":
                kind = "host tensor"
            elif name in SYNC_OPS:
                kind = name
            elif name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) > 1:
                kind = name
            elif name in ("index", "index_put", "index_put_") and any(
                    i is not None and getattr(i, "dtype", None) == torch.bool for i in args[1]):
                kind = name + "[bool]"
            if kind or name not in VIEW_OPS:
                component, site = _where()
                if component == "trainer" and _phase() == "backward":
                    component = "autograd"  # torch's own backward of torch ops, run from loss.backward()
                if kind:
                    self.tally.add_sync(kind, component, _phase(), site)
                if name not in VIEW_OPS:
                    self.tally.add_launch(name, component, _phase())
        return func(*args, **kwargs)


@contextlib.contextmanager
def counting(run_triton: bool = False, dispatch: bool = True, tape: Optional[BuilderTape] = None) -> Iterator[Tally]:
    """Count inside the block; Triton launches are counted and (unless run_triton) not executed. dispatch=False
    only stubs the Triton launches (to time the host's work without the counter's own cost). tape: the map builders'
    results are recorded into it, or, once rewound, written back from it instead of running the builders."""
    tally, inside = Tally(), [0]
    patches = []
    try:
        import triton.runtime.interpreter as ti
        original = ti.InterpretedFunction.run

        def run(fn, *args, **kwargs):
            tally.triton += 1
            if dispatch:  # attributing costs a traceback: not while only stubbing (timing the host's work)
                tally.add_launch("triton:" + fn.__name__, _where()[0], _phase())
            inside[0] += 1
            try:
                if run_triton:
                    return original(fn, *args, **kwargs)
                if fn.__name__ in EXECUTED_KERNELS:
                    tensors = [v for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor)]
                    if tape is not None and tape.replaying:
                        if tape.replay(tensors):
                            return None
                        tally.replay_misses += 1
                    start = time.perf_counter()
                    try:
                        return original(fn, *args, **kwargs)
                    finally:
                        tally.executed_seconds += time.perf_counter() - start
                        if tape is not None and not tape.replaying:
                            tape.record(tensors)
                for name, value in list(zip(fn.arg_names, args)) + list(kwargs.items()):
                    if name in TRITON_OUTPUTS and isinstance(value, torch.Tensor):
                        value.zero_()
                return None
            finally:
                inside[0] -= 1
        ti.InterpretedFunction.run = run
        patches.append((ti.InterpretedFunction, "run", original))
        if not run_triton:  # stubbed kernels: halves are kept as a GPU keeps them (no interpreter-only fp32 copies)
            from sparse_radar.kernels.triton import conv as triton_conv, launch
            for module in (launch, triton_conv):
                patches.append((module, "interpreted_bf16", module.interpreted_bf16))
                module.interpreted_bf16 = lambda dtype: False
    except ImportError:
        pass
    for method in ("tolist", "cpu") if dispatch else ():
        tensor_method = getattr(torch.Tensor, method)

        def wrapped(self, *args, _original=tensor_method, _method=method, **kwargs):
            if not inside[0] and (_method == "tolist" or self.device.type != "cpu"):
                component, site = _where()
                tally.add_sync(f".{_method}()", component, _phase(), site)
            return _original(self, *args, **kwargs)
        setattr(torch.Tensor, method, wrapped)
        patches.append((torch.Tensor, method, tensor_method))
    try:
        with _Dispatch(tally, inside) if dispatch else contextlib.nullcontext():
            yield tally
    finally:
        for owner, name, original in patches:
            setattr(owner, name, original)
