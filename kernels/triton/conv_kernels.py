"""Triton kernels of sparse convolution over a neighbour table [N_out, K] (int32, -1 for none).

Implicit GEMM: one program computes a [BLOCK_N, BLOCK_CO] tile of the output, looping over every kernel
offset and input-channel block, gathering the input rows the table names and multiplying them with the
offset's weight slice; products are summed in fp32. The same kernel gives dX over the transposed table
with transposed weights. dW is one launch over (offset, channel tile, row split) writing fp32 partials
that one sum reduces, so no result depends on the order of atomics.

UPCAST multiplies in fp32: the CPU interpreter (TRITON_INTERPRET=1) computes bf16 dots wrongly, so the
launchers set it for bf16 there only; on a GPU, halves go to the tensor cores as they are.
"""
import triton
import triton.language as tl

from .launch import tuning

CONV_KEY = ["c_in", "c_out", "kernel_volume"]  # what an autotuned conv config is chosen for (and the dtypes)


@triton.autotune(configs=tuning(
    triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=2), triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3), triton.Config({"BLOCK_N": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 128}, num_warps=8, num_stages=3)), key=CONV_KEY)
@triton.jit
def implicit_gemm_kernel(x_ptr, w_ptr, table_ptr, bias_ptr, out_ptr, n_out, c_in, c_out, kernel_volume, stride_x,
                         stride_wk, stride_wi, stride_wo, REVERSE: tl.constexpr,
                         HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr):
    """out[o, :] = sum_k x[table[o, k], :] @ w[k] (+ bias); x [N_in, Cin] (rows stride_x apart, columns adjacent),
    w [K, Cin, Cout] (unit stride on one of its last two axes, so a tile of w is read in whole sectors; any float
    dtype, cast to x's); REVERSE reads the table's offsets last to first (a mirrored submanifold map's transpose)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    row_ok = rows < n_out
    col_ok = cols < c_out
    acc = tl.zeros((BLOCK_N, BLOCK_CO), dtype=tl.float32)
    for k in range(0, kernel_volume):
        column = kernel_volume - 1 - k if REVERSE else k
        src = tl.load(table_ptr + rows.to(tl.int64) * kernel_volume + column, mask=row_ok, other=-1)
        src_ok = src >= 0
        if tl.max(src, axis=0) >= 0:  # skip offsets no row of this tile uses
            src_off = src.to(tl.int64) * stride_x
            for c0 in range(0, c_in, BLOCK_CI):
                ci = c0 + tl.arange(0, BLOCK_CI)
                ci_ok = ci < c_in
                a = tl.load(x_ptr + src_off[:, None] + ci[None, :], mask=src_ok[:, None] & ci_ok[None, :], other=0.0)
                b = tl.load(w_ptr + k * stride_wk + ci[:, None] * stride_wi + cols[None, :] * stride_wo,
                            mask=ci_ok[:, None] & col_ok[None, :], other=0.0)
                if UPCAST:
                    a, b = a.to(tl.float32), b.to(tl.float32)
                else:
                    b = b.to(a.dtype)  # the fp32 weight, cast in registers (no cast launch)
                acc += tl.dot(a, b, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows.to(tl.int64)[:, None] * c_out + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.autotune(configs=tuning(
    triton.Config({}, num_warps=4, num_stages=2), triton.Config({}, num_warps=4, num_stages=3),
    triton.Config({}, num_warps=8, num_stages=3)), key=CONV_KEY)
@triton.jit
def weight_grad_kernel(x_ptr, dy_ptr, table_ptr, partial_ptr, n_out, c_in, c_out, kernel_volume, rows_per_split,
                       stride_dy, stride_k, stride_ci, stride_co, PRECISION: tl.constexpr, UPCAST: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr):
    """partial[s, k] = sum over rows o of split s of x[table[o, k], :]^T @ dy[o, :] (fp32; per split s the flat
    K * Cin * Cout weight part, element (k, ci, co) at k * stride_k + ci * stride_ci + co * stride_co, then with HAS_BIAS [Cout]: the sum of dy over the split's rows, which the
    programs of offset 0 and the first input-channel tile add up on the way); dy's rows are stride_dy apart."""
    k = tl.program_id(0)
    n_co_tiles = tl.cdiv(c_out, BLOCK_CO)
    ci = (tl.program_id(1) // n_co_tiles) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co = (tl.program_id(1) % n_co_tiles) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    split = tl.program_id(2)
    ci_ok = ci < c_in
    co_ok = co < c_out
    first = split * rows_per_split
    last = tl.minimum(first + rows_per_split, n_out)
    acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    bias_program = (k == 0) & (tl.program_id(1) // n_co_tiles == 0)
    for n0 in range(first, last, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_ok = rows < last
        if HAS_BIAS:
            if bias_program:
                dy = tl.load(dy_ptr + rows.to(tl.int64)[:, None] * stride_dy + co[None, :],
                             mask=row_ok[:, None] & co_ok[None, :], other=0.0)
                bias_acc += tl.sum(dy.to(tl.float32), axis=0)
        src = tl.load(table_ptr + rows.to(tl.int64) * kernel_volume + k, mask=row_ok, other=-1)
        src_ok = src >= 0
        if tl.max(src, axis=0) >= 0:
            a = tl.load(x_ptr + src.to(tl.int64)[:, None] * c_in + ci[None, :],
                        mask=src_ok[:, None] & ci_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_CI]
            g = tl.load(dy_ptr + rows.to(tl.int64)[:, None] * stride_dy + co[None, :],
                        mask=src_ok[:, None] & co_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_CO]
            if UPCAST:
                a, g = a.to(tl.float32), g.to(tl.float32)
            acc += tl.dot(tl.trans(a), g, input_precision=PRECISION)
    weights = kernel_volume * c_in * c_out
    base = partial_ptr + split.to(tl.int64) * (weights + HAS_BIAS * c_out)
    dst = base + k * stride_k + ci[:, None].to(tl.int64) * stride_ci + co[None, :].to(tl.int64) * stride_co
    tl.store(dst, acc, mask=ci_ok[:, None] & co_ok[None, :])
    if HAS_BIAS:
        if bias_program:
            tl.store(base + weights + co, bias_acc, mask=co_ok)


@triton.jit
def depthwise_kernel(x_ptr, w_ptr, table_ptr, out_ptr, n_out, channels, kernel_volume,
                     BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[o, c] = sum_k x[table[o, k], c] * w[k, c]; x [N_in, C], w [K, C]."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n_out
    col_ok = cols < channels
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for k in range(0, kernel_volume):
        src = tl.load(table_ptr + rows.to(tl.int64) * kernel_volume + k, mask=row_ok, other=-1)
        src_ok = src >= 0
        a = tl.load(x_ptr + src.to(tl.int64)[:, None] * channels + cols[None, :],
                    mask=src_ok[:, None] & col_ok[None, :], other=0.0)
        w = tl.load(w_ptr + k * channels + cols, mask=col_ok, other=0.0)
        acc += a.to(tl.float32) * w.to(tl.float32)[None, :]
    out = out_ptr + rows.to(tl.int64)[:, None] * channels + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def depthwise_weight_grad_kernel(x_ptr, dy_ptr, table_ptr, partial_ptr, n_out, channels, kernel_volume,
                                 rows_per_split, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """partial[s, k, c] = sum over rows o of split s of x[table[o, k], c] * dy[o, c]  (fp32 [S, K, C])."""
    k = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    col_ok = cols < channels
    first = split * rows_per_split
    last = tl.minimum(first + rows_per_split, n_out)
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for n0 in range(first, last, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_ok = rows < last
        src = tl.load(table_ptr + rows.to(tl.int64) * kernel_volume + k, mask=row_ok, other=-1)
        ok = (src >= 0)[:, None] & col_ok[None, :]
        a = tl.load(x_ptr + src.to(tl.int64)[:, None] * channels + cols[None, :], mask=ok, other=0.0)
        g = tl.load(dy_ptr + rows.to(tl.int64)[:, None] * channels + cols[None, :], mask=ok, other=0.0)
        acc += a.to(tl.float32) * g.to(tl.float32)
    tl.store(partial_ptr + (split * kernel_volume + k).to(tl.int64) * channels + cols, tl.sum(acc, axis=0),
             mask=col_ok)
