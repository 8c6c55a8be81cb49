"""Triton kernels over rows sorted by segment (CSR row_ptr): per-segment column sums and per-segment affine maps.

Sums are written as fp32 partials per row split and reduced by one sum, so they are deterministic; a
program of split s covers the rows of its segment that fall in [s * rows_per_split, (s + 1) * rows_per_split).
"""
import triton
import triton.language as tl


@triton.jit
def sorted_segment_sums_kernel(u_ptr, v_ptr, shift_ptr, row_ptr, sum_a_ptr, sum_ab_ptr, n_seg, channels,
                               rows_per_split, HAS_V: tl.constexpr, HAS_SHIFT: tl.constexpr,
                               SHIFT_U: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """partial[split, s, c] of sum a and sum a * b, a = u (- shift), b = v - shift, over segment s's rows."""
    seg = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    col_ok = cols < channels
    first = tl.maximum(tl.load(row_ptr + seg), split * rows_per_split)
    last = tl.minimum(tl.load(row_ptr + seg + 1), (split + 1) * rows_per_split)
    shift = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_SHIFT:
        shift = tl.load(shift_ptr + seg * channels + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_a = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    acc_ab = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for n0 in range(first, last, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        ok = (rows < last)[:, None] & col_ok[None, :]
        at = rows.to(tl.int64)[:, None] * channels + cols[None, :]
        a = tl.load(u_ptr + at, mask=ok, other=0.0).to(tl.float32)
        if SHIFT_U:
            a = tl.where(ok, a - shift[None, :], 0.0)
        acc_a += a
        if HAS_V:
            b = tl.load(v_ptr + at, mask=ok, other=0.0).to(tl.float32) - shift[None, :]
            acc_ab += a * b
    out = (split * n_seg + seg).to(tl.int64) * channels + cols
    tl.store(sum_a_ptr + out, tl.sum(acc_a, axis=0), mask=col_ok)
    if HAS_V:
        tl.store(sum_ab_ptr + out, tl.sum(acc_ab, axis=0), mask=col_ok)


@triton.jit
def segment_affine_kernel(u_ptr, scale_ptr, offset_ptr, seg_ptr, v_ptr, v_scale_ptr, out_ptr, n_rows, channels,
                          HAS_V: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[n] = u[n] * scale[s] + v[n] * v_scale[s] + offset[s], s = seg[n]; fp32 arithmetic."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (rows < n_rows)[:, None] & (cols < channels)[None, :]
    seg = tl.load(seg_ptr + rows, mask=rows < n_rows, other=0).to(tl.int64)
    per_seg = seg[:, None] * channels + cols[None, :]
    at = rows.to(tl.int64)[:, None] * channels + cols[None, :]
    out = tl.load(u_ptr + at, mask=ok, other=0.0).to(tl.float32) * tl.load(scale_ptr + per_seg, mask=ok, other=0.0)
    out += tl.load(offset_ptr + per_seg, mask=ok, other=0.0)
    if HAS_V:
        out += tl.load(v_ptr + at, mask=ok, other=0.0).to(tl.float32) * tl.load(v_scale_ptr + per_seg, mask=ok,
                                                                                 other=0.0)
    tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=ok)
