"""Triton kernels that finish a group norm's statistics from per-split column sums (sorted_segment_sums_kernel's
partials [n_split, S, C]). A program owns one channel group (of one segment, or of every segment in turn), so a
group's total is one in-register sum; only [S, C] values are touched, the row passes stay in segment_kernels."""
import triton
import triton.language as tl


@triton.jit
def _split_total(part_ptr, n_split, n_seg, seg, channels, cols, ok):
    """sum over the row splits of partial[split, seg, cols] (fp32)."""
    acc = tl.zeros(cols.shape, dtype=tl.float32)
    for split in range(n_split):
        acc += tl.load(part_ptr + (split * n_seg + seg).to(tl.int64) * channels + cols, mask=ok, other=0.0)
    return acc


@triton.jit
def _count(row_ptr, seg, group_size):
    """Values per (segment, group): rows of the segment (at least 1) x channels per group, as fp32."""
    rows = tl.load(row_ptr + seg + 1) - tl.load(row_ptr + seg)
    return (tl.maximum(rows, 1) * group_size).to(tl.float32)


@triton.jit
def group_mean_kernel(part_ptr, row_ptr, mean_ptr, n_split, n_seg, channels, group_size, BLOCK_G: tl.constexpr):
    """mean[s, c] = the mean of segment s's rows over channel c's group; program (s, group)."""
    seg, group = tl.program_id(0), tl.program_id(1)
    lane = tl.arange(0, BLOCK_G)
    ok = lane < group_size
    cols = group * group_size + lane
    total = tl.sum(_split_total(part_ptr, n_split, n_seg, seg, channels, cols, ok), axis=0)
    mean = tl.zeros(cols.shape, dtype=tl.float32) + total / _count(row_ptr, seg, group_size)
    tl.store(mean_ptr + seg.to(tl.int64) * channels + cols, mean, mask=ok)


@triton.jit
def norm_coefficients_kernel(part_ptr, row_ptr, mean_ptr, weight_ptr, bias_ptr, mod_scale_ptr, mod_shift_ptr,
                             rstd_ptr, scale_ptr, offset_ptr, n_split, n_seg, channels, group_size, eps,
                             CENTER: tl.constexpr, HAS_BIAS: tl.constexpr, MOD: tl.constexpr, BLOCK_G: tl.constexpr):
    """From the (centred) squares: rstd and the affine scale = rstd * w, offset = b - mean * scale per [s, c]; with
    MOD, then times mod_scale[s, c] plus mod_shift[s, c]."""
    seg, group = tl.program_id(0), tl.program_id(1)
    lane = tl.arange(0, BLOCK_G)
    ok = lane < group_size
    cols = group * group_size + lane
    at = seg.to(tl.int64) * channels + cols
    squares = tl.sum(_split_total(part_ptr, n_split, n_seg, seg, channels, cols, ok), axis=0)
    rstd = tl.zeros(cols.shape, dtype=tl.float32) + 1.0 / tl.sqrt(squares / _count(row_ptr, seg, group_size) + eps)
    scale = rstd * tl.load(weight_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    offset = tl.zeros(cols.shape, dtype=tl.float32)
    if CENTER:
        offset = -tl.load(mean_ptr + at, mask=ok, other=0.0) * scale
    if HAS_BIAS:
        offset += tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if MOD:
        m = tl.load(mod_scale_ptr + at, mask=ok, other=0.0).to(tl.float32)
        scale = scale * m
        offset = offset * m + tl.load(mod_shift_ptr + at, mask=ok, other=0.0).to(tl.float32)
    tl.store(rstd_ptr + at, rstd, mask=ok)
    tl.store(scale_ptr + at, scale, mask=ok)
    tl.store(offset_ptr + at, offset, mask=ok)


@triton.jit
def norm_backward_coefficients_kernel(dy_part_ptr, dyxc_part_ptr, row_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr,
                                      mod_scale_ptr, dy_scale_ptr, x_scale_ptr, offset_ptr, grad_w_ptr, grad_b_ptr,
                                      grad_m_ptr, grad_t_ptr, n_split, n_seg, channels, group_size,
                                      CENTER: tl.constexpr, HAS_BIAS: tl.constexpr, MOD: tl.constexpr,
                                      BLOCK_G: tl.constexpr):
    """Program (group) over every segment, from the sums of dy' (the incoming gradient) and dy' (x - mean): with
    dy = dy' * m (m = mod_scale, else 1), dx = dy' * (rstd w m) + x * x_scale + offset, x_scale =
    -rstd^2 mean_g(w dy xhat), offset = -mean x_scale (- rstd mean_g(w dy) when centred); the weight and bias
    gradients of the group's channels summed over segments; with MOD the modulation's, sum dy' y and sum dy'."""
    group = tl.program_id(0)
    lane = tl.arange(0, BLOCK_G)
    ok = lane < group_size
    cols = group * group_size + lane
    w = tl.load(weight_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    b = tl.zeros(cols.shape, dtype=tl.float32)
    if HAS_BIAS:
        b = tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    grad_w = tl.zeros(cols.shape, dtype=tl.float32)
    grad_b = tl.zeros(cols.shape, dtype=tl.float32)
    for seg in range(n_seg):
        at = seg * channels + cols
        raw_dy = _split_total(dy_part_ptr, n_split, n_seg, seg, channels, cols, ok)
        raw_dyxc = _split_total(dyxc_part_ptr, n_split, n_seg, seg, channels, cols, ok)
        rstd = tl.load(rstd_ptr + at, mask=ok, other=0.0)
        m = tl.zeros(cols.shape, dtype=tl.float32) + 1.0
        if MOD:
            m = tl.load(mod_scale_ptr + at, mask=ok, other=0.0).to(tl.float32)
            tl.store(grad_m_ptr + at, w * rstd * raw_dyxc + b * raw_dy, mask=ok)
            tl.store(grad_t_ptr + at, raw_dy, mask=ok)
        sum_dy = m * raw_dy
        dy_xhat = m * rstd * raw_dyxc
        grad_w += dy_xhat
        grad_b += sum_dy
        count = _count(row_ptr, seg, group_size)
        x_scale = -rstd * rstd * tl.sum(tl.where(ok, w * dy_xhat, 0.0), axis=0) / count
        offset = tl.zeros(cols.shape, dtype=tl.float32)
        if CENTER:
            offset = -tl.load(mean_ptr + at, mask=ok, other=0.0) * x_scale
            offset -= rstd * tl.sum(tl.where(ok, w * sum_dy, 0.0), axis=0) / count
        tl.store(dy_scale_ptr + at, rstd * w * m, mask=ok)
        tl.store(x_scale_ptr + at, x_scale, mask=ok)
        tl.store(offset_ptr + at, offset, mask=ok)
    tl.store(grad_w_ptr + cols, grad_w, mask=ok)
    tl.store(grad_b_ptr + cols, grad_b, mask=ok)
