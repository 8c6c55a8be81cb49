"""Distribution `sparse-radar`: the package sparse_radar, with the top-level folder kernels/ as sparse_radar.kernels."""
from setuptools import setup

PACKAGES = [
    "sparse_radar",
    "sparse_radar.kernels",
    "sparse_radar.nn",
    "sparse_radar.models",
    "sparse_radar.diffusion",
    "sparse_radar.data",
    "sparse_radar.training",
]

setup(
    name="sparse-radar",
    version="0.1.0",
    description="Sparse-convolution 3D diffusion engine for 4D radar: submanifold sparse UNets with a dense fallback",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={"sparse_radar": "sparse_radar", "sparse_radar.kernels": "kernels"},
    install_requires=["torch>=2.1", "numpy", "einops", "tqdm"],
    extras_require={
        "dev": ["pytest", "spconv", "matplotlib"],  # the tests run the benchmarks, which draw PNGs
        "cuda": ["spconv-cu120", "flash-attn"],
        "bench": ["matplotlib"],
    },
)
