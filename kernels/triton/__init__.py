"""The triton backend: implicit-GEMM sparse convolution over neighbour tables (imported only when chosen)."""
from .conv import TritonDepthwiseConv, TritonSparseConv, depthwise, implicit_gemm, weight_grad

__all__ = ["TritonSparseConv", "TritonDepthwiseConv", "implicit_gemm", "weight_grad", "depthwise"]
