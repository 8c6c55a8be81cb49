"""Layers that accept either field type (SparseVoxels or DenseVoxels)."""
from .attention import ATTENTION_TYPES, AttentionBlock, build_attention_core
from .blocks import Downsample, ResBlock, Upsample, timestep_embedding
from .conv import SparseConv3d, SparseInverseConv3d, SubMConv3d
from .depthwise import DepthwiseSubMConv3d
from .norm import NORM_TYPES, AdaptiveNorm, VoxelGroupNorm, build_norm

__all__ = ["SubMConv3d", "SparseConv3d", "SparseInverseConv3d", "DepthwiseSubMConv3d", "VoxelGroupNorm",
           "AdaptiveNorm", "build_norm", "NORM_TYPES", "AttentionBlock", "build_attention_core",
           "ATTENTION_TYPES", "ResBlock", "Downsample", "Upsample", "timestep_embedding"]
