"""The launch and sync budget of one trainer step, counted on the CPU (benchmarks/launch_count.py: Triton launches
counted and stubbed, so the counts are structural and exact). A regression test, not a timing test."""
import pytest

pytest.importorskip("triton")

from benchmarks.launches import count_step  # noqa: E402

# (fwd+bwd launches, whole step with optimizer and EMA, host syncs of the step): the targets for tiny and for
# the lightweight preset (the trainer's step also counts the loss and the batch's maps), in fp32 and with the
# preset's autocast, also on the predicted support and in an ldm step (their frozen networks' per-frame outputs read
# back from the frame cache, as every step after the first epoch does; an ldm run is fp32 unless --use_fp16 True is
# given). An ldm step under autocast is a ratchet: autocast casts the dense latent UNet's weights and activations
# (about 980 casts a step, which is why that stage leaves it off by default).
BUDGET = {"tiny": (1400, 1500, 4), "lightweight-fp32": (1400, 1500, 4), "lightweight-predicted-fp32": (1400, 1500, 4),
          "lightweight-ldm": (1400, 1500, 4), "lightweight-ldm-structure": (1400, 1500, 4),
          "lightweight": (1400, 1500, 4), "lightweight-predicted": (1400, 1500, 4),
          "lightweight-ldm-fp16": (2240, 2255, 4),
          # a first-epoch step on the predicted support (no frame cache) also runs the frozen structure network: its
          # reads are the sizes of data-dependent voxel sets, one each: its 3 strided levels, its decoder's 4 kept
          # sets and the support, besides the UNet's 3 strided levels and the logged loss
          "lightweight-predicted-fp32-uncached": (1400, 1500, 12)}


@pytest.mark.parametrize("row", sorted(BUDGET))
def test_trainer_step_stays_within_its_budget(row, tmp_path):
    from benchmarks.launches import ROWS
    counts = count_step(ROWS[row], "sparse", str(tmp_path), timed_steps=0)
    launches, step, syncs = BUDGET[row]
    assert counts["launches_fwd_bwd"] <= launches, counts["by_component"]
    assert counts["launches_step"] <= step
    assert counts["syncs_step"] <= syncs, counts["sync_sites"]
    # no sync inside a conv or a norm, forward or backward; the optimizer and EMA are a handful of fused launches
    assert not any(counts["syncs_by_component"].get(f"{c} {p}") for c in ("convs", "norms")
                   for p in ("forward", "backward")), counts["syncs_by_component"]
    assert counts["launches_update"] <= 16
