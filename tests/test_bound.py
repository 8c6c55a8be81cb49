"""benchmarks.bound counts the multiply-adds torch's FLOP counter sees in real forwards of both paths."""
import json
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bound import count, neighbour_pairs, record_layers
from benchmarks.step_worker import make_input
from sparse_radar import DenseVoxels, UNet3D
from sparse_radar.models import PRESETS

GRID = (8, 16, 16)
ATTENTION_BLOCK = re.compile(r"\.attns\.\d+$")


def counted_flops(model, field):
    """(convolution FLOPs, plain mm FLOPs, FLOPs inside attention blocks) of one forward, SDPA as plain matmuls."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        model(field, torch.zeros(field.batch_size))
    flops = {name: {str(op): n for op, n in ops.items()} for name, ops in counter.get_flop_counts().items()}
    attention = sum(sum(ops.values()) for name, ops in flops.items() if ATTENTION_BLOCK.search(name))
    return flops["Global"].get("aten.convolution", 0), flops["Global"].get("aten.mm", 0), attention


@pytest.mark.parametrize("preset, overrides", [
    ("tiny", {}), ("ultra_lightweight", {}),
    ("tiny", {"attention_type": "window", "window_size": (2, 4, 4)}), ("tiny", {"attention_type": "height"})])
def test_counts_match_torch_flop_counter_on_both_paths(preset, overrides):
    torch.manual_seed(0)
    settings = dict(use_fp16=False, use_checkpoint=False, **overrides)
    model = UNet3D(PRESETS[preset](in_channels=8, out_channels=4, input_size=GRID, **settings))
    mask, data = make_input(GRID, 2, 0.1, "random", 8)
    levels = count(record_layers(preset, GRID, **settings), mask.float())
    total = {k: 2 * sum(r[k] for r in levels.values()) for k in next(iter(levels.values())) if "_" in k}
    conv, _, attention = counted_flops(model, DenseVoxels(data))
    assert conv == total["conv_dense"] and attention == total["attention_dense"]
    _, mm, attention = counted_flops(model, DenseVoxels(data, mask).to_sparse())
    padded = overrides or PRESETS[preset]().attention_type == "linear"
    if padded:  # window, column and per-sample (linear) groups run in padded buckets: at least the ideal count
        assert total["attention_sparse"] < attention < total["attention_dense"]
    else:
        assert attention == total["attention_sparse"]
    if not PRESETS[preset]().use_depthwise:  # the sparse depthwise conv is elementwise, which the counter skips
        assert mm == total["conv_sparse"]


def test_neighbour_pairs_against_brute_force():
    mask = (torch.rand(2, 1, 4, 5, 6, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    active = mask[:, 0].nonzero().tolist()
    expected = sum(1 for b, *p in active for c, *q in active if b == c and max(abs(x - y) for x, y in zip(p, q)) <= 1)
    assert neighbour_pairs(mask, 27) == expected
    assert neighbour_pairs(mask, 1) == len(active)
    with pytest.raises(ValueError, match="cubic"):
        neighbour_pairs(mask, 9)


def test_unmodelled_attention_is_refused():
    with pytest.raises(ValueError, match="TopKAttention"):
        record_layers("tiny", GRID, attention_type="sparse")


def test_cli_writes_a_table_per_pattern(tmp_path):
    from benchmarks.bound import main
    assert main(["--preset", "tiny", "--grid", "8,16,16", "--batch", "1", "--occupancy", "0.05",
                 "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bound.json").read_text())["results"]
    assert set(results) == {"random", "structured"}
    assert all(r["ratio"] > 1 and r["dense_macs"] > r["sparse_macs"] for r in results.values())
    assert (tmp_path / "bound.md").read_text().count("| total |") == 2
    assert (tmp_path / "bound.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["--grid", "8,16"])
