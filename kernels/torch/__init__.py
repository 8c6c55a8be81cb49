"""The torch backend: gather-GEMM-scatter over offset-grouped pairs; the reference every backend is tested against."""
from .conv import TorchSparseConv, gather_mm_scatter, plan_chunks, weight_grad
from .depthwise import TorchDepthwiseConv

__all__ = ["TorchSparseConv", "TorchDepthwiseConv", "gather_mm_scatter", "plan_chunks", "weight_grad"]

