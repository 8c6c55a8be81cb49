"""Pure tensor kernels of sparse_radar: coordinates, kernel maps, sparse convolution, settings."""
if __name__ != "sparse_radar.kernels":  # a second module object would split the thread-local settings
    raise ImportError(f"import this package as sparse_radar.kernels, not as {__name__!r} "
                      "(the folder kernels/ installs as sparse_radar.kernels)")
from .backends import KernelSettings, current, kernel_settings, resolve_backend
from .conv import depthwise_conv, from_spconv_weight, sparse_conv, to_spconv_weight, torch_to_kernel_weight
from .coords import (check_key_range, conv_output_shape, dilate_coords, kernel_offsets, keys_to_coords,
                     linear_keys, lookup)
from .kernel_map import KernelMap
from .kmap_builders import children_kmap, inverse_kmap, prune, strided_kmap, submanifold_kmap

__all__ = [
    "KernelSettings", "current", "kernel_settings", "resolve_backend",
    "depthwise_conv", "sparse_conv", "torch_to_kernel_weight", "to_spconv_weight", "from_spconv_weight",
    "check_key_range", "conv_output_shape", "dilate_coords", "kernel_offsets", "keys_to_coords",
    "linear_keys", "lookup",
    "KernelMap", "children_kmap", "inverse_kmap", "prune", "strided_kmap", "submanifold_kmap",
]
