"""Triton kernels that build a submanifold conv's neighbour table in two launches: each site writes its row into
a dense table of the padded grid, then each site reads its K neighbours from it (no host sync, no [K, N] keys)."""
import triton
import triton.language as tl


@triton.jit
def _padded_key(coords_ptr, rows, ok, pd, ph, pw, mz, my, mx):
    """int64 key of each row's (b, z, y, x) shifted by the margin, in the padded grid [B, pd, ph, pw]."""
    at = rows.to(tl.int64) * 4
    b = tl.load(coords_ptr + at, mask=ok, other=0).to(tl.int64)
    z = tl.load(coords_ptr + at + 1, mask=ok, other=0).to(tl.int64) + mz
    y = tl.load(coords_ptr + at + 2, mask=ok, other=0).to(tl.int64) + my
    x = tl.load(coords_ptr + at + 3, mask=ok, other=0).to(tl.int64) + mx
    return ((b * pd + z) * ph + y) * pw + x


@triton.jit
def site_scatter_kernel(coords_ptr, site_ptr, n, pd, ph, pw, mz, my, mx, BLOCK: tl.constexpr):
    """site[key(row)] = row for each of the n rows (keys are distinct, so no two programs write one cell)."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < n
    key = _padded_key(coords_ptr, rows, ok, pd, ph, pw, mz, my, mx)
    tl.store(site_ptr + key, rows.to(tl.int32), mask=ok)


@triton.jit
def submanifold_table_kernel(coords_ptr, site_ptr, table_ptr, n, pd, ph, pw, mz, my, mx, kd, kh, kw, dz, dy, dx,
                             kernel_volume, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """table[row, k] = site[key(row) + delta_k]: the row at offset (k - centre) * dilation, or -1 (padding cells
    and empty cells hold -1); k in the row-major order of a [kd, kh, kw] weight."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = rows < n
    key = _padded_key(coords_ptr, rows, ok, pd, ph, pw, mz, my, mx)
    k = tl.arange(0, BLOCK_K)
    k_ok = k < kernel_volume
    oz = (k // (kh * kw) - kd // 2) * dz
    oy = ((k // kw) % kh - kh // 2) * dy
    ox = (k % kw - kw // 2) * dx
    delta = ((oz.to(tl.int64) * ph) + oy) * pw + ox
    both = ok[:, None] & k_ok[None, :]
    found = tl.load(site_ptr + key[:, None] + delta[None, :], mask=both, other=-1)
    tl.store(table_ptr + rows.to(tl.int64)[:, None] * kernel_volume + k[None, :], found, mask=both)


@triton.jit
def strided_candidates_kernel(coords_ptr, keys_ptr, n, kd, kh, kw, sz, sy, sx, pz, py, px, dz, dy, dx, od, oh, ow,
                              kernel_volume, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """keys[row, k]: the output-grid key of the cell that input row reaches through offset k of a strided conv
    (out * stride = in + padding - k * dilation, per axis, inside the output grid), or -1."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = rows < n
    at = rows.to(tl.int64) * 4
    b = tl.load(coords_ptr + at, mask=ok, other=0).to(tl.int64)[:, None]
    z = tl.load(coords_ptr + at + 1, mask=ok, other=0).to(tl.int64)[:, None]
    y = tl.load(coords_ptr + at + 2, mask=ok, other=0).to(tl.int64)[:, None]
    x = tl.load(coords_ptr + at + 3, mask=ok, other=0).to(tl.int64)[:, None]
    k = tl.arange(0, BLOCK_K)
    k_ok = k < kernel_volume
    nz = z + pz - (k // (kh * kw) * dz)[None, :]
    ny = y + py - ((k // kw) % kh * dy)[None, :]
    nx = x + px - (k % kw * dx)[None, :]
    hit = (nz >= 0) & (ny >= 0) & (nx >= 0) & (nz % sz == 0) & (ny % sy == 0) & (nx % sx == 0)
    qz, qy, qx = nz // sz, ny // sy, nx // sx
    hit = hit & (qz < od) & (qy < oh) & (qx < ow)
    key = tl.where(hit, ((b * od + qz) * oh + qy) * ow + qx, -1)
    both = ok[:, None] & k_ok[None, :]
    tl.store(keys_ptr + rows.to(tl.int64)[:, None] * kernel_volume + k[None, :], key, mask=both)


@triton.jit
def rows_of_keys_kernel(sorted_ptr, m, keys_ptr, out_ptr, total, steps, BLOCK: tl.constexpr):
    """out[i] = the row of keys[i] in sorted[0:m] (ascending, distinct), or -1 for a key < 0 or absent: a binary
    search of `steps` >= log2(m + 1) halvings per key."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < total
    key = tl.load(keys_ptr + i, mask=ok, other=-1)
    lo = tl.zeros((BLOCK,), dtype=tl.int64)
    hi = tl.zeros((BLOCK,), dtype=tl.int64) + m
    for _ in range(steps):
        active = lo < hi
        mid = (lo + hi) // 2
        value = tl.load(sorted_ptr + mid, mask=active, other=0)
        right = active & (value < key)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & (value >= key), mid, hi)
    found = (key >= 0) & (lo < m)
    found = found & (tl.load(sorted_ptr + lo, mask=found, other=-1) == key)
    tl.store(out_ptr + i, tl.where(found, lo, -1).to(tl.int32), mask=ok)


@triton.jit
def keys_to_coords_kernel(keys_ptr, coords_ptr, m, d, h, w, BLOCK: tl.constexpr):
    """coords[i] = (b, z, y, x) of key ((b * d + z) * h + y) * w + x, int32."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < m
    key = tl.load(keys_ptr + i, mask=ok, other=0)
    x = key % w
    rest = key // w
    y = rest % h
    rest = rest // h
    at = i.to(tl.int64) * 4
    tl.store(coords_ptr + at, (rest // d).to(tl.int32), mask=ok)
    tl.store(coords_ptr + at + 1, (rest % d).to(tl.int32), mask=ok)
    tl.store(coords_ptr + at + 2, y.to(tl.int32), mask=ok)
    tl.store(coords_ptr + at + 3, x.to(tl.int32), mask=ok)


@triton.jit
def invert_table_kernel(table_ptr, out_ptr, n, kernel_volume, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[table[i, k], k] = i for every entry >= 0 (each (j, k) is named by at most one i: no write races)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    both = (rows < n)[:, None] & (k < kernel_volume)[None, :]
    target = tl.load(table_ptr + rows.to(tl.int64)[:, None] * kernel_volume + k[None, :], mask=both, other=-1)
    hit = both & (target >= 0)
    tl.store(out_ptr + target.to(tl.int64) * kernel_volume + k[None, :], rows[:, None].to(tl.int32) +
             tl.zeros(target.shape, dtype=tl.int32), mask=hit)
