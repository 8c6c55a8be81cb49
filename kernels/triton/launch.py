"""Launch settings shared by the Triton kernels: tile sizes, row splits of reductions, interpreter bf16."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from .. import backends

TARGET_PROGRAMS = 1024  # split the rows of a reduction so that about this many programs run at once
MIN_SPLIT_ROWS = 1024  # but give each split at least this many rows: a smaller problem is bound by its launch, and
# every split adds a partial to write and one more launch to add them up (at 32 rows a split, dW's partials outweighed
# its work; at 256, the counter's finest level of 820 rows took four splits and a sum per dW). A split of 1024 rows
# is 32 row blocks a program, and fields of the reference size still split into about TARGET_PROGRAMS programs


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of ints, in plain Python (triton's host helpers are constexpr functions: slower on every launch)."""
    return -(-int(a) // int(b))


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def pow2_block(size: int, low: int, high: int) -> int:
    """The power of two >= size, clamped to [low, high] (tl.dot needs tiles of at least 16)."""
    return max(low, min(high, next_pow2(size)))


def row_splits(n_rows: int, block_n: int, tiles: int) -> Tuple[int, int]:
    """(rows per split, a multiple of block_n; number of splits) so that tiles * splits ~ TARGET_PROGRAMS, with at
    least MIN_SPLIT_ROWS rows a split (rounded up to block_n)."""
    want = max(1, TARGET_PROGRAMS // max(tiles, 1))
    per = cdiv(max(cdiv(max(n_rows, 1), want), MIN_SPLIT_ROWS), block_n) * block_n
    return per, max(1, cdiv(n_rows, per))


def interpreted_bf16(dtype: torch.dtype) -> bool:
    """bf16 in the CPU interpreter: its bf16 dot is wrong and its bf16 stores truncate, so kernels multiply and
    store in fp32 there and torch rounds (to nearest even, as a GPU's conversion does)."""
    return dtype == torch.bfloat16 and backends.triton_interpreting()


def out_buffer(n: int, c: int, dtype: torch.dtype, device) -> torch.Tensor:
    """An [n, c] output of dtype, fp32 where interpreted_bf16 (finish with .to(dtype))."""
    return torch.empty(n, c, dtype=torch.float32 if interpreted_bf16(dtype) else dtype, device=device)


def tuning(*configs):
    """@triton.autotune configs: all of them on a GPU, only the first under the interpreter (which cannot time a
    kernel; a single config is taken without timing)."""
    return list(configs[:1] if backends.triton_interpreting() else configs)


_PLANS: Dict[tuple, tuple] = {}  # (autotuned kernel, launch key) -> (its chosen BLOCK_N or None, every kwarg)


def launch_tuned(kernel, key: tuple, constants: Callable, rows: Optional[int], grid: tuple, *args) -> None:
    """Launch an @triton.autotune kernel over grid, or with rows (a count of rows) over (cdiv(rows, BLOCK_N),
    *grid), BLOCK_N its config's. key holds everything its tuning and constexprs depend on (dtypes too), and
    constants(*key) gives those constexprs. A key's first launch goes through the autotuner (which times its configs
    on a GPU); later ones launch the config it chose directly, with the constexprs and the config's kwargs merged
    once: no autotuner bookkeeping (its key built from every argument's name and dtype), no launcher proxy of
    kernel[grid], and no kwargs built or merged per launch."""
    plan = _PLANS.get((kernel, key))
    if plan is not None:  # the kernel's run looked up at each launch: a tool that patches it sees every launch
        block_n, kwargs = plan
        kernel.fn.run(*args, grid=grid if rows is None else (-(-rows // block_n), *grid), warmup=False, **kwargs)
        return
    kwargs = constants(*key)
    kernel[grid if rows is None else (lambda meta: (cdiv(rows, meta["BLOCK_N"]), *grid))](*args, **kwargs)
    config = getattr(kernel, "best_config", None)  # what this launch ran with (every triton 3 autotuner records it)
    if config is not None and config.pre_hook is None:  # a config with a hook runs it before each launch: keep that
        chosen = config.all_kwargs()  # kernel on the autotuner
        _PLANS[(kernel, key)] = (chosen.get("BLOCK_N"), {**kwargs, **chosen})
