"""sparse_radar: sparse-convolution 3D diffusion engine for 4D radar."""
from . import kernels, models, nn
from .models import UNet3D, UNetConfig
from .voxels import DenseVoxels, SparseVoxels

__version__ = "0.1.0"
__all__ = ["SparseVoxels", "DenseVoxels", "UNet3D", "UNetConfig", "kernels", "models", "nn", "__version__"]
