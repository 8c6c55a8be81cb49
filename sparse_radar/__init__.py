"""sparse_radar: sparse-convolution 3D diffusion engine for 4D radar."""
from . import kernels, models, nn
from .models import UNet3D, UNetConfig
from .voxels import DenseVoxels, SparseVoxels

_LAZY = {"Densifier": ("inference", "Densifier"), "metrics": ("metrics", None)}


def __getattr__(name):
    """Densifier and metrics load on first use (scipy and the training stack are not needed to import)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'sparse_radar' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    loaded = importlib.import_module(f".{module}", __name__)
    return loaded if attr is None else getattr(loaded, attr)

__version__ = "0.1.0"
__all__ = ["SparseVoxels", "DenseVoxels", "UNet3D", "UNetConfig", "Densifier", "kernels", "metrics", "models", "nn",
           "__version__"]
