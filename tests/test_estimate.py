"""The memory estimator against measured peak memory of real training steps (fresh processes, CPU)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from sparse_radar.estimate import estimate, main, parse_bytes
from sparse_radar.models import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {"use_fp16": False, "use_checkpoint": False}


def measured_peak(preset, grid, batch, occupancy, path):
    cmd = [sys.executable, "-m", "benchmarks.step_worker", "--preset", preset, "--grid", ",".join(map(str, grid)),
           "--batch", str(batch), "--occupancy", str(occupancy), "--path", path, "--steps", "1",
           "--overrides", json.dumps(OVERRIDES)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)["peak_bytes"]


@pytest.mark.parametrize("preset,grid,batch,occupancy,path", [
    ("tiny", (16, 32, 64), 2, 0.03, "dense"),  # (a dense step of 16x64x64 takes three times as long, as close)
    ("tiny", (16, 64, 64), 2, 0.05, "sparse"),
    ("tiny", (8, 64, 64), 2, 0.10, "sparse"),
    ("ultra_lightweight", (16, 64, 64), 1, 0.10, "sparse"),
])
def test_estimate_within_25_percent_of_measured(preset, grid, batch, occupancy, path):
    cfg = PRESETS[preset](in_channels=8, out_channels=4, input_size=grid, **OVERRIDES)
    predicted = estimate(cfg, grid, batch, occupancy, path).step_peak
    measured = measured_peak(preset, grid, batch, occupancy, path)
    assert 0.75 <= predicted / measured <= 1.25, (predicted, measured)


def test_estimate_scales_and_validates():
    cfg = PRESETS["tiny"](in_channels=8, out_channels=4, input_size=(16, 64, 64))
    small = estimate(cfg, (16, 64, 64), 1, 0.03, "dense")
    big = estimate(cfg, (16, 128, 128), 2, 0.03, "dense")
    assert abs(big.activations / small.activations - 8) < 0.2  # 4x the cells, 2x the batch
    assert estimate(cfg, (16, 64, 64), 2, 0.03, "sparse").total < big.total
    with pytest.raises(ValueError, match="occupancy"):
        estimate(cfg, (16, 64, 64), 1, 0.0, "sparse")
    with pytest.raises(ValueError, match="not divisible"):
        estimate(cfg, (16, 63, 64), 1, 0.1, "dense")
    assert parse_bytes("24GB") == 24_000_000_000 and parse_bytes("2GiB") == 2**31
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_cli_says_whether_it_fits(capsys):
    assert main(["--preset", "tiny", "--grid", "16,64,64", "--batch", "1", "--budget", "0.2GB"]) == 0
    out = capsys.readouterr().out
    assert "dense" in out and "sparse" in out and "does NOT fit" in out and "-> fits" in out


def test_probe_forward_frees_its_graph():
    # the count keeps saved tensors only while it runs; before, a saved output kept its whole graph (and through
    # it every parameter) alive for good, and each estimate leaked the probe's activations
    import gc
    import weakref

    from sparse_radar import DenseVoxels, UNet3D
    from sparse_radar.estimate import _saved_bytes
    from sparse_radar.models import create_tiny_unet_config
    model = UNet3D(create_tiny_unet_config(in_channels=8, out_channels=4))
    assert _saved_bytes(model, DenseVoxels(torch.randn(1, 8, 8, 16, 16)), 1) > 0
    weight = weakref.ref(model.input_conv.weight)
    del model
    gc.collect()
    assert weight() is None


def test_checkpointed_blocks_on_small_fields_are_counted_as_keeping_their_activations(monkeypatch):
    """With checkpointing, a sparse block whose scaled input is under MIN_RECOMPUTE_BYTES keeps its activations
    (recompute.keep): all blocks small -> the estimate without checkpointing; threshold 0 -> every block recomputes
    (less); in between, in between."""
    import sparse_radar.nn.recompute as rc
    from sparse_radar.estimate import _saved_bytes
    from sparse_radar.models import create_tiny_unet_config
    from sparse_radar import DenseVoxels, UNet3D
    torch.manual_seed(0)
    mask = torch.rand(1, 1, 8, 16, 16) < 0.3
    field = DenseVoxels(torch.randn(1, 8, 8, 16, 16) * mask, mask).to_sparse()
    counts = {}
    for checkpointing, threshold in ((False, 0), (True, 0), (True, 1 << 60), (True, field.feats.numel() * 4 * 4)):
        model = UNet3D(create_tiny_unet_config(in_channels=8, out_channels=4, use_checkpoint=checkpointing))
        monkeypatch.setattr(rc, "MIN_RECOMPUTE_BYTES", threshold)
        counts[(checkpointing, threshold)] = _saved_bytes(model, field, 1, scale=2.0)
    plain, recomputing, keeping, mixed = counts.values()
    assert recomputing < mixed < keeping == plain
