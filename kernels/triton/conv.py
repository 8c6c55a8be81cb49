"""Triton backend: sparse and depthwise convolution as autograd ops, one launch per forward, dX and dW."""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import backends
from ..backends import as_dtype
from ..kernel_map import KernelMap
from .conv_kernels import depthwise_kernel, depthwise_weight_grad_kernel, implicit_gemm_kernel, weight_grad_kernel
from .launch import cdiv, interpreted_bf16, launch_tuned, out_buffer, pow2_block, row_splits


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 GEMMs use TF32 exactly when torch's matmul flag allows it; halves are exact products anyway."""
    if dtype == torch.float32 and not backends.triton_interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _gemm_constants(c_in: int, c_out: int, kernel_volume: int, dtype: torch.dtype, weight_dtype: torch.dtype,
                    has_bias: bool, reverse: bool, precision: str) -> dict:
    """The implicit GEMM's constexpr launch arguments (made on a launch key's first launch)."""
    return dict(REVERSE=reverse, HAS_BIAS=has_bias, PRECISION=precision, UPCAST=interpreted_bf16(dtype),
                BLOCK_CI=pow2_block(c_in, 16, 64), BLOCK_CO=pow2_block(c_out, 16, 64))


@functools.lru_cache(maxsize=None)
def _cout_tiles(c_out: int) -> tuple:
    """The implicit GEMM's grid after its row tiles: its Cout tiles."""
    return (cdiv(c_out, pow2_block(c_out, 16, 64)),)


def implicit_gemm(x: torch.Tensor, weight: torch.Tensor, table: torch.Tensor, n_out: int,
                  bias: Optional[torch.Tensor] = None, reverse: bool = False, layout=None) -> torch.Tensor:
    """out[o] = sum_k x[table[o, k']] @ weight[k] (+ bias), k' = k, or K - 1 - k when reverse: x [N_in, Cin],
    weight [K, Cin, Cout] -> [n_out, Cout]; or, given layout (Cin, Cout, stride of k, of Cin, of Cout), weight's
    memory read as that [K, Cin, Cout] (a weight Parameter read in place, without a view)."""
    if layout is None:
        layout = (weight.shape[1], weight.shape[2], *weight.stride())
    c_in, c_out = layout[0], layout[1]
    row_stride, column_stride = x.stride()  # (each metadata read is a dispatch: read once)
    if column_stride != 1:  # rows may be strided, columns must be adjacent
        x = x.contiguous()
        row_stride = c_in
    dtype = x.dtype
    out = out_buffer(n_out, c_out, dtype, x.device)
    if n_out == 0:
        return as_dtype(out, dtype)
    has_bias = bias is not None
    kernel_volume = table.shape[1]
    launch_tuned(implicit_gemm_kernel,  # BLOCK_N autotuned
                 (c_in, c_out, kernel_volume, dtype, weight.dtype, has_bias, reverse, _dot_precision(dtype)),
                 _gemm_constants, n_out, _cout_tiles(c_out),
                 x, weight, table, bias if has_bias else x, out, n_out, c_in, c_out, kernel_volume, row_stride,
                 layout[2], layout[3], layout[4])
    return as_dtype(out, dtype)


@functools.lru_cache(maxsize=256)
def dense_strides(shape: tuple, stride: tuple) -> bool:
    """Whether a tensor of this shape and these strides covers its elements exactly once (no gaps, no overlap)."""
    expected = 1
    for size, step in sorted(zip(shape, stride), key=lambda pair: (pair[1], pair[0])):
        if size > 1 and step != expected:
            return False
        expected *= size
    return True


def _weight_grad_constants(c_in: int, c_out: int, k: int, dtype: torch.dtype, grad_dtype: torch.dtype,
                           has_bias: bool, precision: str) -> dict:
    """dW's constexpr launch arguments (made on a launch key's first launch)."""
    return dict(PRECISION=precision, UPCAST=interpreted_bf16(dtype), HAS_BIAS=has_bias, BLOCK_N=32,
                BLOCK_CI=pow2_block(c_in, 16, 64), BLOCK_CO=pow2_block(c_out, 16, 64))


@functools.lru_cache(maxsize=None)
def _weight_grad_grid(c_in: int, c_out: int, k: int) -> tuple:
    """dW's (K, channel tiles) grid, its number of tiles."""
    channel_tiles = cdiv(c_in, pow2_block(c_in, 16, 64)) * cdiv(c_out, pow2_block(c_out, 16, 64))
    return (k, channel_tiles), k * channel_tiles


def weight_grad(x: torch.Tensor, grad_out: torch.Tensor, table: torch.Tensor, with_bias: bool = False,
                layout=None, view=None):
    """(dW[k] = sum_o x[table[o, k]]^T @ grad_out[o], fp32 [K, Cin, Cout], laid out with the strides `layout` (a
    dense layout, e.g. the weight's own, so autograd need not copy it; default contiguous), or given view (shape,
    strides) and no layout, that contiguous memory read as them (a torch-layout weight whose memory is [K, Cin,
    Cout]); with_bias, db = sum_o grad_out[o], fp32 [Cout], else None): one launch and one sum of its per-split
    partials (deterministic)."""
    n_rows, k = table.shape
    c_in, c_out = x.shape[1], grad_out.shape[1]
    contiguous = (c_in * c_out, c_out, 1)
    if view is not None and layout is not None:
        raise ValueError("weight_grad takes a view of its contiguous result or a layout, not both")
    layout = contiguous if layout is None else tuple(layout)
    if layout != contiguous and not dense_strides((k, c_in, c_out), layout):
        layout = contiguous
    dtype = x.dtype
    grid, tiles = _weight_grad_grid(c_in, c_out, k)
    per, n_split = row_splits(n_rows, 32, tiles)
    weights = k * c_in * c_out
    partial = torch.empty(n_split, weights + (c_out if with_bias else 0), dtype=torch.float32, device=x.device)
    launch_tuned(weight_grad_kernel, (c_in, c_out, k, dtype, grad_out.dtype, with_bias, _dot_precision(dtype)),
                 _weight_grad_constants, None, (*grid, n_split),
                 x, grad_out, table, partial, n_rows, c_in, c_out, k, per, grad_out.stride()[0], *layout)
    total = partial.sum(0) if n_split > 1 else partial  # either starts its storage: offsets below are absolute
    shape, strides = ((k, c_in, c_out), layout) if view is None else view
    grad_weight = total.as_strided(shape, strides, 0)
    return grad_weight, (total.as_strided((c_out,), (1,), weights) if with_bias else None)


class TritonSparseConv(torch.autograd.Function):
    """Autograd op: out[o] = sum_k feats[table[o, k]] @ weight[k], plus bias; fp32 sums for every dtype."""

    @staticmethod
    def forward(ctx, feats, weight, bias, kmap: KernelMap, settings: backends.KernelSettings):
        # the weight in its own dtype (fp32 under autocast), laid out [K, Cin, Cout] contiguous (a layer's weight is
        # a view of its Parameter's memory; another layout is copied here), cast in registers; dX reads its
        # transpose in place (coalesced along Cout)
        packed = weight.contiguous()
        out = TritonSparseConv.forward_of(feats, packed, bias, kmap, settings)
        ctx.save_for_backward(feats, packed)
        ctx.kmap, ctx.has_bias, ctx.layout = kmap, bias is not None, weight.stride()
        return out

    @staticmethod
    def forward_of(feats, weight, bias, kmap: KernelMap, settings: backends.KernelSettings):
        """The op's output, without autograd."""
        return implicit_gemm(feats, weight.contiguous(), kmap.table, kmap.n_out, bias)

    # the op calls no op that autocast casts (its products are the kernels'; its one sum adds fp32 partials), so the
    # direct calls (kernels.direct) need not turn autocast off around it
    autocast_free = True

    @staticmethod
    def forward_of_param(feats, weight, bias, kmap: KernelMap, settings: backends.KernelSettings, layout=None):
        """forward_of of a torch-layout weight [Cout, Cin, kD, kH, kW] whose memory is [K, Cin, Cout] contiguous
        (kernels.conv.in_kernel_layout), read in place; layout: its (shape, strides) where already read."""
        shape = weight.shape if layout is None else layout[0]
        c_out, c_in = shape[0], shape[1]
        return implicit_gemm(feats, weight, kmap.table, kmap.n_out, bias, layout=(c_in, c_out, c_in * c_out, c_out, 1))

    @staticmethod
    def backward_of_param(feats, weight, has_bias: bool, kmap: KernelMap, settings, grad_out, layout=None):
        """(dfeats, dweight in weight's shape and strides, dbias or None) of forward_of_param's output gradient;
        layout: the weight's (shape, strides) where already read."""
        shape, strides = (weight.shape, weight.stride()) if layout is None else layout
        c_out, c_in = shape[0], shape[1]
        return _conv_backward(feats, weight, (c_out, c_in, c_in * c_out, 1, c_out), weight.dtype, has_bias, kmap,
                              grad_out, view=(shape, strides))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        feats, packed = ctx.saved_tensors
        grads = TritonSparseConv.backward_of(feats, packed, ctx.has_bias, ctx.kmap, None, grad_out,
                                             ctx.needs_input_grad[:3], ctx.layout)
        return (*grads, None, None)

    @staticmethod
    def backward_of(feats, packed, has_bias: bool, kmap: KernelMap, settings, grad_out,
                    needs=(True, True, True), layout=None):
        """(dfeats, dweight, dbias) of the op's output gradient (each None where not needed); packed: the weight
        [K, Cin, Cout] contiguous, layout: the strides of the weight the op was given (dweight comes back in them;
        default packed's)."""
        strides = packed.stride()  # dX reads its transpose [K, Cout, Cin] in place (unit stride along Cout)
        return _conv_backward(feats, packed, (packed.shape[2], packed.shape[1], strides[0], strides[2], strides[1]),
                              packed.dtype, has_bias, kmap, grad_out, needs, strides if layout is None else layout)


def _conv_backward(feats, weight, transposed, dtype, has_bias: bool, kmap: KernelMap, grad_out,
                   needs=(True, True, True), layout=None, view=None):
    """(dfeats, dweight, dbias) of a conv whose weight's memory, read as [K, Cout, Cin], has `transposed` (implicit
    gemm's layout: Cout, Cin and the three strides); dweight in layout, or view (weight_grad's), in dtype."""
    grad_out = as_dtype(grad_out, feats.dtype)
    if grad_out.stride()[1] != 1:  # rows may be strided (a slice of a concatenation's gradient): columns adjacent
        grad_out = grad_out.contiguous()
    grad_feats = grad_weight = grad_bias = None
    if needs[0]:  # a mirrored (submanifold) map's transposed table is its table read last offset first
        mirrored = kmap.mirrored
        table_t = kmap.table if mirrored else kmap.table_t
        grad_feats = implicit_gemm(grad_out, weight, table_t, kmap.n_in, reverse=mirrored, layout=transposed)
    want_bias = has_bias and needs[2]
    if needs[1]:  # dW (in the weight's own layout) and db in one launch
        grad_weight, grad_bias = weight_grad(feats, grad_out, kmap.table, want_bias, layout, view)
        grad_weight = as_dtype(grad_weight, dtype)
    elif want_bias:
        grad_bias = grad_out.sum(0, dtype=torch.float32)
    if grad_bias is not None:
        grad_bias = as_dtype(grad_bias, dtype)
    return grad_feats, grad_weight, grad_bias


def depthwise(x: torch.Tensor, weight: torch.Tensor, table: torch.Tensor, n_out: int) -> torch.Tensor:
    """out[o, c] = sum_k x[table[o, k], c] * weight[k, c] -> [n_out, C] in x's dtype."""
    channels = x.shape[1]
    out = out_buffer(n_out, channels, x.dtype, x.device)
    if n_out == 0:
        return out.to(x.dtype)
    block_c = pow2_block(channels, 16, 128)
    grid = (cdiv(n_out, 64), cdiv(channels, block_c))
    depthwise_kernel[grid](x, weight.contiguous(), table, out, n_out, channels, table.shape[1],
                           BLOCK_N=64, BLOCK_C=block_c)
    return out.to(x.dtype)


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """dW[k, c] = sum_o x[table[o, k], c] * grad_out[o, c], fp32 [K, C]; deterministic."""
    k, channels = table.shape[1], x.shape[1]
    block_c = pow2_block(channels, 16, 128)
    tiles = k * cdiv(channels, block_c)
    per, n_split = row_splits(table.shape[0], 32, tiles)
    partial = torch.empty(n_split, k, channels, dtype=torch.float32, device=x.device)
    depthwise_weight_grad_kernel[(k, cdiv(channels, block_c), n_split)](
        x, grad_out, table, partial, table.shape[0], channels, k, per, BLOCK_N=32, BLOCK_C=block_c)
    return partial.sum(0) if n_split > 1 else partial[0]


class TritonDepthwiseConv(torch.autograd.Function):
    """Autograd op: out[o, c] = sum_k feats[table[o, k], c] * weight[k, c]."""

    @staticmethod
    def forward(ctx, feats, weight, kmap: KernelMap, settings=None):
        ctx.save_for_backward(feats, weight)
        ctx.kmap = kmap
        return depthwise(feats, weight.to(feats.dtype), kmap.table, kmap.n_out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        feats, weight = ctx.saved_tensors
        kmap = ctx.kmap
        grad_out = grad_out.to(feats.dtype).contiguous()
        grad_feats = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_feats = depthwise(grad_out, weight.to(feats.dtype), kmap.table_t, kmap.n_in)
        if ctx.needs_input_grad[1]:
            grad_weight = depthwise_weight_grad(feats, grad_out, kmap.table).to(weight.dtype)
        return grad_feats, grad_weight, None, None
