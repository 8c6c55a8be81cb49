"""Rows about the public API: field constructors, key range, the UNet's input dtype."""
import pytest
import torch

from sparse_radar import DenseVoxels, SparseVoxels, UNet3D
from sparse_radar.kernels import coords as kc
from sparse_radar.models import create_tiny_unet_config

from . import row


@row("int32-coords")
def int32_coords(request, tmp_path, capsys):
    feats = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="int32"):
        SparseVoxels(feats, torch.tensor([[0, 2**31 + 5, 0, 0]]), (2**31 + 10, 1, 1), 1)
    with pytest.raises(ValueError, match="whole numbers"):
        SparseVoxels(feats, torch.tensor([[0, 3, 0, 0]]), (4.7, 1, 1), 1)
    with pytest.raises(ValueError, match="integer tensor"):
        SparseVoxels(feats, torch.tensor([[0.0, 1.5, 0, 0]]), (4, 1, 1), 1)
    ok = SparseVoxels(feats, torch.tensor([[0, 2**31 - 1, 0, 0]]), (2**31, 1, 1), 1)
    assert ok.coords[0, 1] == 2**31 - 1


@row("key-range")
def key_range(request, tmp_path, capsys):
    kc.check_key_range((2**31, 2**31, 2), 1)  # 2^63 cells: the largest key is 2^63 - 1, int64's maximum
    with pytest.raises(ValueError, match="int64"):
        kc.check_key_range((2**31, 2**31, 2), 2)
    with pytest.raises(ValueError, match="int64"):
        kc.check_key_range((2**31, 2**31, 3), 1)


@row("dense-batch-0")
def dense_batch_0(request, tmp_path, capsys):
    with pytest.raises(ValueError, match="at least one sample"):
        DenseVoxels(torch.zeros(0, 2, 4, 4, 4))


@row("unet-dtype")
def unet_dtype(request, tmp_path, capsys):
    model = UNet3D(create_tiny_unet_config())
    for dtype in (torch.float64, torch.float16):
        x = SparseVoxels(torch.zeros(1, 8, dtype=dtype), torch.tensor([[0, 1, 2, 3]]), (8, 16, 16), 1)
        with pytest.raises(TypeError, match=f"{dtype}.*torch.float32.*use_fp16"):
            model(x, torch.zeros(1))
