"""Torch backend: gather-GEMM-scatter sparse convolution with an explicit, chunked backward."""
from __future__ import annotations

from typing import List, Tuple

import torch

from .. import backends
from ..kernel_map import KernelMap

HALF_DTYPES = backends.HALF_DTYPES

Segment = Tuple[int, int, int]  # (kernel offset, first pair, end pair)


def plan_chunks(kmap: KernelMap, max_rows: int) -> List[List[Segment]]:
    """Split the non-identity pairs into chunks of at most max_rows contiguous pairs."""
    chunks: List[List[Segment]] = []
    current: List[Segment] = []
    size = 0
    for k in range(kmap.kernel_volume):
        if k == kmap.identity_offset:
            if current:  # a chunk must stay contiguous in the pair arrays
                chunks.append(current)
                current, size = [], 0
            continue
        lo, hi = kmap.offset_ptr[k], kmap.offset_ptr[k + 1]
        while lo < hi:
            take = min(hi - lo, max_rows - size)
            current.append((k, lo, lo + take))
            size += take
            lo += take
            if size == max_rows:
                chunks.append(current)
                current, size = [], 0
    if current:
        chunks.append(current)
    return chunks


def _dtypes(x: torch.Tensor) -> Tuple[torch.dtype, torch.dtype]:
    """(compute dtype of the GEMMs, accumulation dtype): half inputs are multiplied and summed in fp32.

    A half GEMM per offset would round every offset's product (and every dW[k]) to half before the sum,
    and an fp16 dW can overflow under a GradScaler; the reference stays exact instead.
    """
    if x.dtype in HALF_DTYPES:
        return torch.float32, torch.float32
    return x.dtype, x.dtype


def gather_mm_scatter(src: torch.Tensor, weight: torch.Tensor, src_idx: torch.Tensor, dst_idx: torch.Tensor,
                      kmap: KernelMap, n_dst: int, settings: backends.KernelSettings) -> torch.Tensor:
    """dst[dst_idx] += src[src_idx] @ weight[k] for every pair; returns the accumulator [n_dst, C2]."""
    compute, acc = _dtypes(src)
    w = weight.to(compute).contiguous()  # [K, C1, C2]
    c1, c2 = w.shape[1], w.shape[2]
    src = src.to(compute)  # one cast of the rows, not one per gathered copy
    if kmap.identity_offset is not None:  # the centre of a submanifold map: no gather, no scatter
        out = torch.mm(src, w[kmap.identity_offset]).to(acc)  # [n_dst, C2]
    else:
        out = torch.zeros(n_dst, c2, dtype=acc, device=src.device)  # [n_dst, C2]
    chunks = plan_chunks(kmap, settings.gather_rows(src.device, max(c1, c2)))
    rows = max((c[-1][2] - c[0][1] for c in chunks), default=0)
    # one gather buffer and one product buffer for all chunks: fewer fresh allocations, less heap churn
    gather_buf = torch.empty(rows, c1, dtype=compute, device=src.device)  # [P, C1]
    product_buf = torch.empty(rows, c2, dtype=compute, device=src.device)  # [P, C2]
    for chunk in chunks:
        base, end = chunk[0][1], chunk[-1][2]
        gathered = torch.index_select(src, 0, src_idx[base:end], out=gather_buf[:end - base])
        if settings.deterministic:
            # per offset every destination row occurs at most once: no two adds race for a row
            for k, lo, hi in chunk:
                product = torch.mm(gathered[lo - base:hi - base], w[k], out=product_buf[:hi - lo])
                out.index_add_(0, dst_idx[lo:hi], product.to(acc))
        else:
            product = product_buf[:end - base]
            for k, lo, hi in chunk:
                torch.mm(gathered[lo - base:hi - base], w[k], out=product[lo - base:hi - base])
            out.index_add_(0, dst_idx[base:end], product.to(acc))
    return out


def weight_grad(feats: torch.Tensor, grad_out: torch.Tensor, kmap: KernelMap, kernel_volume: int,
                settings: backends.KernelSettings) -> torch.Tensor:
    """dW[k] = feats[in_idx_k]^T @ grad_out[out_idx_k]; returns [K, Cin, Cout] in the accumulation dtype."""
    compute, acc = _dtypes(feats)
    cin, cout = feats.shape[1], grad_out.shape[1]
    grad_w = torch.zeros(kernel_volume, cin, cout, dtype=acc, device=feats.device)
    feats, grad_out = feats.to(compute), grad_out.to(compute)  # one cast each, not one per gathered copy
    if kmap.identity_offset is not None:
        grad_w[kmap.identity_offset] = torch.mm(feats.t(), grad_out).to(acc)
    chunks = plan_chunks(kmap, settings.gather_rows(feats.device, max(cin, cout)))
    rows = max((c[-1][2] - c[0][1] for c in chunks), default=0)
    gx_buf = torch.empty(rows, cin, dtype=compute, device=feats.device)  # reused by every chunk
    gy_buf = torch.empty(rows, cout, dtype=compute, device=feats.device)
    for chunk in chunks:
        base, end = chunk[0][1], chunk[-1][2]
        gx = torch.index_select(feats, 0, kmap.in_idx[base:end], out=gx_buf[:end - base])  # [P, Cin]
        gy = torch.index_select(grad_out, 0, kmap.out_idx[base:end], out=gy_buf[:end - base])  # [P, Cout]
        for k, lo, hi in chunk:
            grad_w[k] += torch.mm(gx[lo - base:hi - base].t(), gy[lo - base:hi - base]).to(acc)
    return grad_w


class TorchSparseConv(torch.autograd.Function):
    """Autograd op: out[o] = sum over pairs (i, o, k) of feats[i] @ weight[k], plus bias."""

    @staticmethod
    def forward(ctx, feats, weight, bias, kmap: KernelMap, settings: backends.KernelSettings):
        ctx.save_for_backward(feats, weight)
        ctx.kmap, ctx.settings, ctx.has_bias = kmap, settings, bias is not None
        return TorchSparseConv.forward_of(feats, weight, bias, kmap, settings)

    @staticmethod
    def forward_of(feats, weight, bias, kmap: KernelMap, settings: backends.KernelSettings):
        """The op's output, without autograd."""
        out = gather_mm_scatter(feats, weight, kmap.in_idx, kmap.out_idx, kmap, kmap.n_out, settings)
        if bias is not None:
            out += bias.to(out.dtype)
        return out.to(feats.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        feats, weight = ctx.saved_tensors
        grads = TorchSparseConv.backward_of(feats, weight, ctx.has_bias, ctx.kmap, ctx.settings, grad_out,
                                    ctx.needs_input_grad[:3])
        return (*grads, None, None)

    @staticmethod
    def backward_of(feats, weight, has_bias: bool, kmap: KernelMap, settings: backends.KernelSettings, grad_out,
                    needs=(True, True, True), layout=None):
        """(dfeats, dweight, dbias) of the op's output gradient (each None where not needed; layout: unused, as
        TritonSparseConv.backward_of takes it)."""
        grad_out = grad_out.contiguous()
        grad_feats = grad_weight = grad_bias = None
        if needs[0]:
            w_t = weight.transpose(1, 2)  # [K, Cout, Cin]
            grad_feats = gather_mm_scatter(grad_out, w_t, kmap.out_idx, kmap.in_idx, kmap, kmap.n_in, settings)
            grad_feats = grad_feats.to(feats.dtype)
        if needs[1]:
            grad_weight = weight_grad(feats, grad_out, kmap, weight.shape[0], settings).to(weight.dtype)
        if has_bias and needs[2]:
            grad_bias = grad_out.sum(0, dtype=torch.float32 if grad_out.dtype in HALF_DTYPES else None)
            grad_bias = grad_bias.to(weight.dtype)
        return grad_feats, grad_weight, grad_bias
