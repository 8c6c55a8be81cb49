"""Triton kernels of the sparse group norm: two launches forward (statistics with the affine coefficients; the
affine map with an optional SiLU), two backward (the gradient's sums with the coefficients of dx; dx itself, whose
first row tile also sums the weight and bias gradients over segments).

Rows are sorted by segment (CSR row_ptr). A statistics program owns one (segment, channel group) and walks the
segment's rows, so a group's totals are in-register sums: no partials, no atomics, repeatable bits. The mean and
the centred squares are two passes over the rows inside that one program (no E[x^2] - E[x]^2 cancellation).
"""
import triton
import triton.language as tl

from .launch import tuning

ROW_CONFIGS = tuning(  # row-tiled maps: rows per program and warps, chosen per channel count
    triton.Config({"BLOCK_N": 32}, num_warps=4), triton.Config({"BLOCK_N": 64}, num_warps=4),
    triton.Config({"BLOCK_N": 128}, num_warps=8))
STAT_CONFIGS = tuning(  # (segment, group) reductions walking the rows
    triton.Config({"BLOCK_N": 32}, num_warps=2), triton.Config({"BLOCK_N": 64}, num_warps=4),
    triton.Config({"BLOCK_N": 128}, num_warps=4))


@triton.jit
def _silu_grad(grad, y):
    """d silu(y) / dy times grad, fp32."""
    sig = 1.0 / (1.0 + tl.exp(-y))
    return grad * sig * (1.0 + y * (1.0 - sig))


@triton.jit
def _dropout(value, seed_ptr, rows, cols, channels, p):
    """value / (1 - p) where the uniform draw of element (row, col) under the seed is >= p, else 0 (the same
    draws in the backward, recomputed from the seed, so no mask is stored)."""
    draw = tl.rand(tl.load(seed_ptr), rows.to(tl.int64)[:, None] * channels + cols[None, :])
    return tl.where(draw >= p, value / (1.0 - p), 0.0)


@triton.jit
def _output_grad(g, y, seed_ptr, rows, cols, channels, p, DROP: tl.constexpr, SILU: tl.constexpr):
    """The gradient reaching the affine output y from the gradient g of the op's output (through the dropout's mask
    with DROP, then SiLU' at y with SILU); fp32."""
    if DROP:
        g = _dropout(g, seed_ptr, rows, cols, channels, p)
    if SILU:
        g = _silu_grad(g, y)
    return g


@triton.jit
def _group_lanes(group, group_size, BLOCK_G: tl.constexpr):
    """(columns of the group, their in-range mask)."""
    lane = tl.arange(0, BLOCK_G)
    return group * group_size + lane, lane < group_size


@triton.autotune(configs=STAT_CONFIGS, key=["channels", "group_size"])
@triton.jit
def norm_statistics_kernel(x_ptr, row_ptr, weight_ptr, bias_ptr, mod_ptr, stats_ptr, plane, channels, group_size,
                           eps, stride_mod, CENTER: tl.constexpr, HAS_BIAS: tl.constexpr, MOD: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """Program (segment, group): mean and rstd of the group over the segment's rows, then the affine coefficients
    scale = rstd * w, offset = b - mean * scale per [s, c]; with MOD (mod [S, 2C], rows stride_mod apart, ADM's
    scale then shift), times 1 + mod[s, c] plus mod[s, C + c]. stats [4, S, C] (planes `plane` = S * C apart):
    mean, rstd, scale, offset."""
    seg, group = tl.program_id(0), tl.program_id(1)
    cols, ok = _group_lanes(group, group_size, BLOCK_G)
    first, last = tl.load(row_ptr + seg), tl.load(row_ptr + seg + 1)
    count = (tl.maximum(last - first, 1) * group_size).to(tl.float32)
    mean = 0.0
    if CENTER:
        acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
        for n0 in range(first, last, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            at = rows.to(tl.int64)[:, None] * channels + cols[None, :]
            acc += tl.load(x_ptr + at, mask=(rows < last)[:, None] & ok[None, :], other=0.0).to(tl.float32)
        mean = tl.sum(tl.sum(acc, axis=1), axis=0) / count
    squares = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for n0 in range(first, last, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        inside = (rows < last)[:, None] & ok[None, :]
        a = tl.load(x_ptr + rows.to(tl.int64)[:, None] * channels + cols[None, :], mask=inside, other=0.0)
        a = tl.where(inside, a.to(tl.float32) - mean, 0.0)
        squares += a * a
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(squares, axis=1), axis=0) / count + eps)
    at = seg.to(tl.int64) * channels + cols
    scale = rstd * tl.load(weight_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    offset = -mean * scale
    if HAS_BIAS:
        offset += tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if MOD:  # rows of mod are stride_mod apart (a column slice of all blocks' modulations)
        mod_at = seg.to(tl.int64) * stride_mod + cols
        m = 1.0 + tl.load(mod_ptr + mod_at, mask=ok, other=0.0).to(tl.float32)
        scale = scale * m
        offset = offset * m + tl.load(mod_ptr + mod_at + channels, mask=ok, other=0.0).to(tl.float32)
    tl.store(stats_ptr + at, tl.zeros(cols.shape, dtype=tl.float32) + mean, mask=ok)
    tl.store(stats_ptr + plane + at, tl.zeros(cols.shape, dtype=tl.float32) + rstd, mask=ok)
    tl.store(stats_ptr + 2 * plane + at, scale, mask=ok)
    tl.store(stats_ptr + 3 * plane + at, offset, mask=ok)


@triton.autotune(configs=ROW_CONFIGS, key=["channels"])
@triton.jit
def norm_apply_kernel(x_ptr, stats_ptr, plane, seg_ptr, out_ptr, seed_ptr, p, n_rows, channels,
                      SILU: tl.constexpr, DROP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[n] = x[n] * scale[s] + offset[s] (then silu with SILU, then dropout of rate p with DROP), s = seg[n],
    scale and offset the statistics kernel's planes 2 and 3 of stats; fp32 arithmetic."""
    scale_ptr, offset_ptr = stats_ptr + 2 * plane, stats_ptr + 3 * plane
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (rows < n_rows)[:, None] & (cols < channels)[None, :]
    per_seg = tl.load(seg_ptr + rows, mask=rows < n_rows, other=0).to(tl.int64)[:, None] * channels + cols[None, :]
    at = rows.to(tl.int64)[:, None] * channels + cols[None, :]
    y = tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32) * tl.load(scale_ptr + per_seg, mask=ok, other=0.0)
    y += tl.load(offset_ptr + per_seg, mask=ok, other=0.0)
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    if DROP:
        y = _dropout(y, seed_ptr, rows, cols, channels, p)
    tl.store(out_ptr + at, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.autotune(configs=STAT_CONFIGS, key=["channels", "group_size"])
@triton.jit
def norm_grad_statistics_kernel(grad_ptr, x_ptr, row_ptr, stats_ptr, weight_ptr, bias_ptr, mod_ptr, work_ptr,
                                grad_mod_ptr, seed_ptr, p, plane, channels, group_size, stride_mod,
                                CENTER: tl.constexpr, HAS_BIAS: tl.constexpr, MOD: tl.constexpr, SILU: tl.constexpr,
                                DROP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """Program (segment, group): with dy' the gradient reaching the affine output (through the dropout's mask with
    DROP, and SiLU' of the recomputed y = x * fwd_scale + fwd_offset with SILU) and dy = dy' * m (m = 1 + mod[s, c], else 1): dx = dy' * (rstd w m)
    + x * x_scale + offset, x_scale = -rstd^2 mean_g(w dy xhat), offset = -mean x_scale (- rstd mean_g(w dy) when
    centred); this segment's share of dW (sum dy xhat) and db (sum dy); with MOD, the modulation's gradient
    [s, :C] = sum dy' y (y the norm's affine output) and [s, C:] = sum dy'. stats: the forward's [4, S, C] (mean,
    rstd, fwd_scale, fwd_offset); work [5, S, C]: dy_scale, x_scale, offset, dW's and db's shares (planes `plane`
    apart)."""
    mean_ptr, rstd_ptr, fwd_scale_ptr, fwd_offset_ptr = stats_ptr, stats_ptr + plane, stats_ptr + 2 * plane, \
        stats_ptr + 3 * plane
    seg, group = tl.program_id(0), tl.program_id(1)
    cols, ok = _group_lanes(group, group_size, BLOCK_G)
    first, last = tl.load(row_ptr + seg), tl.load(row_ptr + seg + 1)
    at = seg.to(tl.int64) * channels + cols
    mean = tl.load(mean_ptr + at, mask=ok, other=0.0)
    fwd_scale = tl.load(fwd_scale_ptr + at, mask=ok, other=0.0)
    fwd_offset = tl.load(fwd_offset_ptr + at, mask=ok, other=0.0)
    acc_dy = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    acc_dyxc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for n0 in range(first, last, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        inside = (rows < last)[:, None] & ok[None, :]
        where = rows.to(tl.int64)[:, None] * channels + cols[None, :]
        g = tl.load(grad_ptr + where, mask=inside, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + where, mask=inside, other=0.0).to(tl.float32)
        g = _output_grad(g, x * fwd_scale[None, :] + fwd_offset[None, :], seed_ptr, rows, cols, channels, p, DROP,
                         SILU)
        acc_dy += g
        acc_dyxc += g * tl.where(inside, x - mean[None, :], 0.0)
    raw_dy, raw_dyxc = tl.sum(acc_dy, axis=0), tl.sum(acc_dyxc, axis=0)
    rstd = tl.load(rstd_ptr + at, mask=ok, other=0.0)
    w = tl.load(weight_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    m = tl.zeros(cols.shape, dtype=tl.float32) + 1.0
    if MOD:  # mod's rows stride_mod apart; grad_mod [S, 2C] contiguous
        m = 1.0 + tl.load(mod_ptr + seg.to(tl.int64) * stride_mod + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.zeros(cols.shape, dtype=tl.float32)
        if HAS_BIAS:
            b = tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        grad_mod_at = seg.to(tl.int64) * 2 * channels + cols
        tl.store(grad_mod_ptr + grad_mod_at, w * rstd * raw_dyxc + b * raw_dy, mask=ok)
        tl.store(grad_mod_ptr + grad_mod_at + channels, raw_dy, mask=ok)
    sum_dy = m * raw_dy
    dy_xhat = m * rstd * raw_dyxc
    count = (tl.maximum(last - first, 1) * group_size).to(tl.float32)
    x_scale = -rstd * rstd * tl.sum(tl.where(ok, w * dy_xhat, 0.0), axis=0) / count
    offset = -mean * x_scale
    if CENTER:
        offset -= rstd * tl.sum(tl.where(ok, w * sum_dy, 0.0), axis=0) / count
    tl.store(work_ptr + at, rstd * w * m, mask=ok)
    tl.store(work_ptr + plane + at, x_scale, mask=ok)
    tl.store(work_ptr + 2 * plane + at, offset, mask=ok)
    tl.store(work_ptr + 3 * plane + at, dy_xhat, mask=ok)
    tl.store(work_ptr + 4 * plane + at, sum_dy, mask=ok)


@triton.autotune(configs=ROW_CONFIGS, key=["channels"])
@triton.jit
def norm_input_grad_kernel(grad_ptr, x_ptr, seg_ptr, stats_ptr, work_ptr, plane, grad_w_ptr, grad_b_ptr, out_ptr,
                           seed_ptr, p, n_rows, n_seg, channels, SILU: tl.constexpr, DROP: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx[n] = dy'[n] * dy_scale[s] + x[n] * x_scale[s] + offset[s] (dy' through the dropout's mask with DROP and
    SiLU' with SILU; stats and work as norm_grad_statistics_kernel's); the programs of the first row tile also sum
    the per-segment dW and db shares of their columns, in segment order."""
    fwd_scale_ptr, fwd_offset_ptr = stats_ptr + 2 * plane, stats_ptr + 3 * plane
    dy_scale_ptr, x_scale_ptr, offset_ptr = work_ptr, work_ptr + plane, work_ptr + 2 * plane
    part_w_ptr, part_b_ptr = work_ptr + 3 * plane, work_ptr + 4 * plane
    tile = tl.program_id(0)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < channels
    ok = (rows < n_rows)[:, None] & col_ok[None, :]
    per_seg = tl.load(seg_ptr + rows, mask=rows < n_rows, other=0).to(tl.int64)[:, None] * channels + cols[None, :]
    at = rows.to(tl.int64)[:, None] * channels + cols[None, :]
    g = tl.load(grad_ptr + at, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32)
    y = x  # the affine output, needed (and loaded) for SiLU' only
    if SILU:
        y = x * tl.load(fwd_scale_ptr + per_seg, mask=ok, other=0.0) + tl.load(fwd_offset_ptr + per_seg, mask=ok,
                                                                                other=0.0)
    g = _output_grad(g, y, seed_ptr, rows, cols, channels, p, DROP, SILU)
    dx = g * tl.load(dy_scale_ptr + per_seg, mask=ok, other=0.0) + x * tl.load(x_scale_ptr + per_seg, mask=ok,
                                                                                other=0.0)
    dx += tl.load(offset_ptr + per_seg, mask=ok, other=0.0)
    tl.store(out_ptr + at, dx.to(out_ptr.dtype.element_ty), mask=ok)
    if tile == 0:
        grad_w = tl.zeros((BLOCK_C,), dtype=tl.float32)
        grad_b = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for seg in range(n_seg):
            grad_w += tl.load(part_w_ptr + seg * channels + cols, mask=col_ok, other=0.0)
            grad_b += tl.load(part_b_ptr + seg * channels + cols, mask=col_ok, other=0.0)
        tl.store(grad_w_ptr + cols, grad_w, mask=col_ok)
        tl.store(grad_b_ptr + cols, grad_b, mask=col_ok)
