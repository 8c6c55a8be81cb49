"""Backend choice: what "auto" picks per tensor, the environment override, clear refusals; table forms agree."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from sparse_radar.kernels import backends
from sparse_radar.kernels.backends import kernel_settings, resolve_backend
from sparse_radar.kernels.kernel_map import KernelMap, invert_table
from tests.kernels.triton_cases import MAPS, make_map


@pytest.fixture
def reread_interpreting():
    """backends.triton_interpreting reads TRITON_INTERPRET once: read it again in a test that sets it, and after."""
    backends.triton_interpreting.cache_clear()
    yield
    backends.triton_interpreting.cache_clear()


def test_auto_picks_torch_for_cpu_tensors_and_the_environment_overrides(monkeypatch, reread_interpreting):
    x = torch.zeros(3, 2)
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    assert resolve_backend("auto", x) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(backends.BACKEND_ENV, "triton")
    assert resolve_backend("auto", x) == "triton"
    assert resolve_backend("torch", x) == "torch"  # a backend named in the settings wins over the variable
    monkeypatch.setenv(backends.BACKEND_ENV, "cuda-magic")
    with pytest.raises(ValueError, match="SPARSE_RADAR_BACKEND"):
        resolve_backend("auto", x)


def test_triton_refuses_cpu_tensors_outside_the_interpreter(monkeypatch, reread_interpreting):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        resolve_backend("triton", torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unknown kernel backend"):
        with kernel_settings(backend="cuda-magic"):
            pass


def test_triton_is_not_imported_until_a_kernel_needs_it():
    code = ("import sys, torch, sparse_radar; from sparse_radar.kernels import resolve_backend; "
            "resolve_backend('auto', torch.zeros(1)); print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _pair_set(kmap):
    rows = []
    for k in range(kmap.kernel_volume):
        i, o = kmap.pairs_of(k)
        rows += [(k, int(a), int(b)) for a, b in zip(i.cpu(), o.cpu())]
    return sorted(rows)


@pytest.mark.parametrize("name", sorted(MAPS))
def test_table_transposed_table_and_pairs_hold_the_same_pairs(name):
    kmap = make_map(name)
    table, table_t = kmap.table.cpu(), kmap.table_t.cpu()
    from_table = sorted((k, int(table[o, k]), o) for o, k in zip(*np.nonzero(table.numpy() >= 0)))
    from_t = sorted((k, i, int(table_t[i, k])) for i, k in zip(*np.nonzero(table_t.numpy() >= 0)))
    assert from_table == from_t == _pair_set(kmap)
    assert len(from_table) > 0
    # each form rebuilt from another alone gives the same pairs
    again = KernelMap(kmap.n_in, kmap.n_out, kmap.kernel_volume, pairs=(kmap.in_idx, kmap.out_idx, kmap.offset_ptr))
    assert torch.equal(again.table, kmap.table) and torch.equal(again.table_t, kmap.table_t)
    assert torch.equal(invert_table(invert_table(kmap.table, kmap.n_in), kmap.n_out), kmap.table)
    flipped = kmap.transposed()
    assert torch.equal(flipped.table, kmap.table_t) and _pair_set(flipped) == sorted(
        (k, o, i) for k, i, o in _pair_set(kmap))


def test_a_map_needs_one_form():
    with pytest.raises(ValueError, match="table"):
        KernelMap(1, 1, 1)


def test_map_tables_and_pairs_are_checked():
    """The kernels assume contiguous int32 [N, K] tables with entries in [-1, partners): a public map is checked."""
    good = torch.tensor([[0, -1], [1, 0]], dtype=torch.int32)
    assert KernelMap(2, 2, 2, table=good).table is good
    bad = [(dict(table=good.long()), "contiguous int32"), (dict(table=good.t()), "not contiguous"),
           (dict(table=good[:, :1].contiguous()), r"\[2, 2\]"), (dict(table=good + 1), r"outside \[-1, 2\)"),
           (dict(table_t=good - 2), r"outside \[-1, 2\)"),
           (dict(pairs=(torch.tensor([0, 5]), torch.tensor([0, 1]), (0, 1, 2))), r"outside \[0, 2\)"),
           (dict(pairs=(torch.tensor([0, 1]), torch.tensor([0, 1]), (0, 2))), "offset_ptr")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            KernelMap(2, 2, 2, **kwargs)


def test_structure_rows_must_be_sorted_by_key():
    """Both segment backends take a sample's rows as one run (ids on one, row_ptr on the other): unsorted rows are
    refused rather than normalised differently by the two."""
    from sparse_radar.structure import VoxelStructure
    coords = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match="strictly ascending"):
        VoxelStructure(coords, torch.tensor([64, 1]), (4, 4, 4), 2)
    with pytest.raises(ValueError, match=r"coords \[N, 4\] and keys \[N\]"):
        VoxelStructure(coords, torch.tensor([1]), (4, 4, 4), 2)
    assert VoxelStructure(coords.flip(0), torch.tensor([1, 64]), (4, 4, 4), 2).row_ptr().tolist() == [0, 1, 2]


def test_deterministic_gather_backward_sums_repeated_rows():
    """The gather deterministic mode uses on CUDA (run here on the CPU): gradients against float64 gradcheck."""
    from sparse_radar.kernels.grouping import _DeterministicGather
    src = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([4, 0, 4, 4, 2, 0])  # rows 0 and 4 repeat, rows 1 and 3 unused
    assert torch.autograd.gradcheck(lambda s: _DeterministicGather.apply(s, index), (src,))
    torch.testing.assert_close(_DeterministicGather.apply(src, index), src.index_select(0, index))


def test_the_registry_names_each_backends_ops_and_refuses_an_unknown_pair():
    """backends.op: one explicit lazy loader per (backend, op family); the entry modules dispatch through it."""
    from sparse_radar.kernels import backends
    from sparse_radar.kernels.torch.conv import TorchSparseConv
    from sparse_radar.kernels.torch.depthwise import TorchDepthwiseConv
    import sparse_radar.kernels.torch.segment as torch_segment
    assert backends.op("torch", "conv") is TorchSparseConv
    assert backends.op("torch", "depthwise") is TorchDepthwiseConv
    assert backends.op("torch", "segment") is torch_segment
    assert {b for b, _ in backends.OPS} == set(backends.KNOWN_BACKENDS)
    assert {f for _, f in backends.OPS} == {"conv", "depthwise", "segment"}
    with pytest.raises(ValueError, match="no 'pool' op in backend 'torch'"):
        backends.op("torch", "pool")


def test_no_backend_imports_an_entry_module():
    """A backend's modules import kernel_map, backends and their own package, never the entry modules that
    dispatch to them (kernels/conv.py, kernels/segment.py)."""
    import ast
    import os
    import sparse_radar.kernels as kernels
    root = os.path.dirname(kernels.__file__)
    for backend in ("torch", "triton"):
        for name in os.listdir(os.path.join(root, backend)):
            if not name.endswith(".py"):
                continue
            tree = ast.parse(open(os.path.join(root, backend, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 2:
                    assert node.module in (None, "backends", "kernel_map"), (backend, name, node.module)
                    if node.module is None:
                        assert [a.name for a in node.names] == ["backends"], (backend, name)


def test_autocast_off_turns_autocast_off_only_where_it_is_on():
    import contextlib
    from sparse_radar.kernels.backends import autocast_off
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    assert isinstance(autocast_off("cpu"), contextlib.nullcontext)  # nothing to turn off: no context entered
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        with autocast_off("cpu"):
            assert not torch.is_autocast_enabled("cpu") and (a @ b).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")  # restored on leaving


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_an_op_that_autograd_would_not_record_skips_its_function_and_computes_the_same(backend, monkeypatch):
    """With grad off (a checkpointed block's forward, sampling) the conv, the fused norm, the attention buckets
    and the segment sums and copies skip their autograd Functions (records_graph) and give the same bits as them."""
    if backend == "triton":
        pytest.importorskip("triton")
    from sparse_radar import SparseVoxels
    from sparse_radar.kernels import conv as kconv
    from sparse_radar.kernels import grouping, segment
    from sparse_radar.nn.fused_norm import segment_group_norm
    from tests.kernels.triton_cases import DEVICE
    applied = []
    real_apply = torch.autograd.Function.apply.__func__
    monkeypatch.setattr(torch.autograd.Function, "apply",
                        classmethod(lambda cls, *a, **k: applied.append(cls.__name__) or real_apply(cls, *a, **k)))
    torch.manual_seed(0)
    mask = torch.rand(2, 1, 4, 6, 6) < 0.4
    x = SparseVoxels.from_dense(torch.randn(2, 8, 4, 6, 6) * mask, mask).to(DEVICE)
    s = x.structure
    kmap = s.submanifold_map((3, 3, 3), (1, 1, 1))
    weight, bias = torch.randn(27, 8, 4, device=DEVICE), torch.randn(4, device=DEVICE)
    norm_w, norm_b = torch.randn(8, device=DEVICE), torch.randn(8, device=DEVICE)
    mod = torch.randn(2, 16, device=DEVICE)
    buckets = grouping.bucketize(torch.arange(x.num_voxels, device=DEVICE) % 5)
    ops = {
        "conv": lambda f: kconv.sparse_conv(f, weight, bias, kmap),
        "norm": lambda f: segment_group_norm(f, norm_w, norm_b, s.sample_ids(), s.row_ptr(), 4, modulation=mod,
                                             silu=True),
        "total": lambda f: segment.segment_total(f, s.row_ptr(), s.sample_ids()),
        "expand": lambda f: segment.expand_segments(f[:2], s.sample_ids(), s.row_ptr()),
        "gather": lambda f: grouping.gather_buckets(f, buckets),
        "scatter": lambda f: grouping.scatter_buckets(grouping.gather_buckets(f, buckets) * 2, buckets),
    }
    with kernel_settings(backend=backend):
        for name, op in ops.items():
            applied.clear()
            with torch.no_grad():
                plain = op(x.feats)
            assert applied == [], name
            recorded = op(x.feats.clone().requires_grad_(True))
            assert len(applied) == (2 if name == "scatter" else 1) and recorded.grad_fn is not None, name
            assert torch.equal(plain, recorded.detach()), name
