"""sparse_radar: sparse-convolution 3D diffusion engine for 4D radar."""
from . import kernels, nn
from .voxels import DenseVoxels, SparseVoxels

__version__ = "0.1.0"
__all__ = ["SparseVoxels", "DenseVoxels", "kernels", "nn", "__version__"]
