"""Layers that accept either field type (SparseVoxels or DenseVoxels)."""
from .conv import SparseConv3d, SparseInverseConv3d, SubMConv3d

__all__ = ["SubMConv3d", "SparseConv3d", "SparseInverseConv3d"]
