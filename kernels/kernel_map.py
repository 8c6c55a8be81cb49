"""KernelMap: who feeds whom in a sparse conv, as neighbour tables and as offset-grouped pairs.

The two forms hold the same facts. Implicit-GEMM kernels read the tables (one row per site, one column per
kernel offset, -1 for none); gather-GEMM-scatter reads the pairs, grouped by offset. A builder gives one
form, the other is derived on first use and kept: tables need no host sync, pairs need one (the counts).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import backends


def invert_table(table: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Given t[i, k] = j (or -1), the table [n_rows, K] of u[j, k] = i; no host sync (two launches on triton)."""
    if backends.index_kernels_on_triton(table.device):
        from .triton.kmap_builders import invert_table as triton_invert_table
        return triton_invert_table(table, n_rows)
    n, k = table.shape
    rows = torch.arange(n, dtype=torch.int32, device=table.device).unsqueeze(1).expand(n, k)
    target = torch.where(table >= 0, table.long(), n_rows)  # misses land on a spare last row
    out = torch.full((n_rows + 1, k), -1, dtype=torch.int32, device=table.device)
    out.scatter_(0, target, rows)  # each (j, k) is written by at most one i: the result is deterministic
    return out[:n_rows]


def pairs_from_table(table: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, ...]]:
    """(row, partner, offset_ptr) of the valid entries of table [N, K], grouped by offset, rows ascending."""
    k_of, row = torch.nonzero(table.t() >= 0, as_tuple=True)  # sorted by offset, then row
    partner = table[row, k_of].long()
    counts = torch.bincount(k_of, minlength=table.shape[1]).tolist()  # the one host sync
    ptr = [0]
    for c in counts:
        ptr.append(ptr[-1] + c)
    return row, partner, tuple(ptr)


def _check_table(name: str, table: torch.Tensor, rows: int, partners: int, k: int, trusted: bool) -> None:
    """A kernel's neighbour table must be a contiguous int32 [rows, k] with entries in [-1, partners)."""
    if not isinstance(table, torch.Tensor) or table.dtype != torch.int32 or tuple(table.shape) != (rows, k) \
            or not table.is_contiguous():
        raise ValueError(f"KernelMap {name} must be a contiguous int32 tensor [{rows}, {k}], got "
                         f"{getattr(table, 'dtype', type(table).__name__)} {tuple(getattr(table, 'shape', ()))}"
                         f"{'' if getattr(table, 'is_contiguous', lambda: True)() else ' (not contiguous)'}")
    if not trusted and table.numel() and bool(((table < -1) | (table >= partners)).any()):
        raise ValueError(f"KernelMap {name} holds entries outside [-1, {partners}) (rows of the other side, -1 for "
                         f"none)")


def _check_pairs(pairs, n_in: int, n_out: int, k: int) -> None:
    """in_idx < n_in, out_idx < n_out, of one length, grouped by offset_ptr (K + 1 ascending ints)."""
    in_idx, out_idx, ptr = pairs
    if len(ptr) != k + 1 or ptr[0] != 0 or any(b < a for a, b in zip(ptr[:-1], ptr[1:])) or \
            in_idx.shape != out_idx.shape or in_idx.dim() != 1 or ptr[-1] != in_idx.numel():
        raise ValueError(f"KernelMap pairs need in_idx and out_idx of one length P and offset_ptr of {k + 1} "
                         f"ascending ints from 0 to P")
    if in_idx.numel() and bool((in_idx.min() < 0) | (in_idx.max() >= n_in) | (out_idx.min() < 0) |
                               (out_idx.max() >= n_out)):
        raise ValueError(f"KernelMap pairs hold rows outside [0, {n_in}) (inputs) or [0, {n_out}) (outputs)")


class KernelMap:
    """Pairs (input row, output row, offset k) of a sparse conv, as tables and as offset-grouped pairs.

    table [n_out, K] int32: the input row feeding output o through offset k, or -1.
    table_t [n_in, K] int32: the output row that input i feeds through offset k, or -1.
    in_idx / out_idx [P] int64 with offset_ptr (K + 1 host ints): offset k owns pairs offset_ptr[k]:[k+1].
    """

    def __init__(self, n_in: int, n_out: int, kernel_volume: int, identity_offset: Optional[int] = None, *,
                 table: Optional[torch.Tensor] = None, table_t: Optional[torch.Tensor] = None,
                 pairs: Optional[Tuple[torch.Tensor, torch.Tensor, Tuple[int, ...]]] = None, trusted: bool = False,
                 mirrored: bool = False):
        """trusted: made by this package's builders, so the value checks (which read the device) are skipped.
        mirrored: a submanifold map (same sites in and out, offsets symmetric about the centre), whose transposed
        table is the table with its offsets reversed: table_t[i, k] = table[i, K - 1 - k]."""
        if table is None and table_t is None and pairs is None:
            raise ValueError("a KernelMap needs a table, a transposed table or pairs")
        self.n_in, self.n_out, self.identity_offset = int(n_in), int(n_out), identity_offset
        self._k = int(kernel_volume)
        if min(self.n_in, self.n_out) < 0 or self._k < 1:
            raise ValueError(f"KernelMap needs n_in, n_out >= 0 and kernel_volume >= 1, got {n_in}, {n_out}, "
                             f"{kernel_volume}")
        for name, t, rows, partners in (("table", table, self.n_out, self.n_in),
                                        ("table_t", table_t, self.n_in, self.n_out)):
            if t is not None:
                _check_table(name, t, rows, partners, self._k, trusted)
        if pairs is not None and not trusted:
            _check_pairs(pairs, self.n_in, self.n_out, self._k)
        if mirrored and self.n_in != self.n_out:
            raise ValueError(f"a mirrored KernelMap has the same sites in and out, got {n_in} and {n_out}")
        self._table, self._table_t, self._pairs, self.mirrored = table, table_t, pairs, mirrored

    @property
    def kernel_volume(self) -> int:
        """Number of kernel offsets K."""
        return self._k

    @property
    def table(self) -> torch.Tensor:
        """int32 [n_out, K]: input row per (output row, offset), -1 where none."""
        if self._table is None:
            if self._table_t is not None and self.mirrored:
                self._table = self._table_t.flip(1)
            elif self._table_t is not None:
                self._table = invert_table(self._table_t, self.n_out)
            else:
                self._table = self._table_from_pairs(self.out_idx, self.in_idx, self.n_out)
        return self._table

    @property
    def table_t(self) -> torch.Tensor:
        """int32 [n_in, K]: output row per (input row, offset), -1 where none (what dX reads)."""
        if self._table_t is None:
            if self._table is not None and self.mirrored:
                self._table_t = self._table.flip(1)
            elif self._table is not None:
                self._table_t = invert_table(self._table, self.n_in)
            else:
                self._table_t = self._table_from_pairs(self.in_idx, self.out_idx, self.n_in)
        return self._table_t

    def _table_from_pairs(self, rows: torch.Tensor, partners: torch.Tensor, n_rows: int) -> torch.Tensor:
        counts = torch.tensor([b - a for a, b in zip(self.offset_ptr[:-1], self.offset_ptr[1:])],
                              device=rows.device)
        k_of = torch.repeat_interleave(torch.arange(self._k, device=rows.device), counts)
        out = torch.full((n_rows, self._k), -1, dtype=torch.int32, device=rows.device)
        out[rows, k_of] = partners.to(torch.int32)
        return out

    def _grouped_pairs(self) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, ...]]:
        if self._pairs is None:
            if self._table is not None:
                out_rows, in_rows, ptr = pairs_from_table(self._table)
            else:
                in_rows, out_rows, ptr = pairs_from_table(self._table_t)  # type: ignore[arg-type]
            self._pairs = (in_rows, out_rows, ptr)
        return self._pairs

    @property
    def in_idx(self) -> torch.Tensor:
        """[P] int64 input rows of the pairs."""
        return self._grouped_pairs()[0]

    @property
    def out_idx(self) -> torch.Tensor:
        """[P] int64 output rows of the pairs."""
        return self._grouped_pairs()[1]

    @property
    def offset_ptr(self) -> Tuple[int, ...]:
        """K + 1 host ints: offset k owns pairs offset_ptr[k]:offset_ptr[k + 1]."""
        return self._grouped_pairs()[2]

    @property
    def num_pairs(self) -> int:
        """Total number of (input, output, offset) pairs."""
        return self.offset_ptr[-1]

    def pairs_of(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(in_idx, out_idx) of offset k."""
        lo, hi = self.offset_ptr[k], self.offset_ptr[k + 1]
        return self.in_idx[lo:hi], self.out_idx[lo:hi]

    def transposed(self) -> "KernelMap":
        """The same pairs with inputs and outputs swapped (what an inverse conv and dX use); shares the forms."""
        pairs = None if self._pairs is None else (self._pairs[1], self._pairs[0], self._pairs[2])
        return KernelMap(self.n_out, self.n_in, self._k, self.identity_offset, trusted=True, table=self._table_t,
                         table_t=self._table, pairs=pairs, mirrored=self.mirrored)

    def __repr__(self) -> str:
        return f"KernelMap(n_in={self.n_in}, n_out={self.n_out}, K={self._k}, identity={self.identity_offset})"
