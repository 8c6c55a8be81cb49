"""The launch and sync budget of one trainer step, counted on the CPU (benchmarks/launch_count.py: Triton launches
counted and stubbed, so the counts are structural and exact). A regression test, not a timing test."""
import pytest

pytest.importorskip("triton")

from benchmarks.launches import count_step  # noqa: E402

# (fwd+bwd launches, whole step with optimizer and EMA, host syncs of the step): the targets for tiny; for
# lightweight the counts this code reaches (targets 1,400 / 1,500 / 4 not met yet: the gap is in the README)
BUDGET = {"tiny": (1400, 1500, 4), "lightweight": (3343, 3358, 6)}


@pytest.mark.parametrize("preset", sorted(BUDGET))
def test_trainer_step_stays_within_its_budget(preset, tmp_path):
    counts = count_step(["--preset", preset], "sparse", str(tmp_path), timed_steps=0)
    launches, step, syncs = BUDGET[preset]
    assert counts["launches_fwd_bwd"] <= launches, counts["by_component"]
    assert counts["launches_step"] <= step
    assert counts["syncs_step"] <= syncs, counts["sync_sites"]
    # no sync inside a conv or a norm, forward or backward; the optimizer and EMA are a handful of fused launches
    assert not any(counts["syncs_by_component"].get(f"{c} {p}") for c in ("convs", "norms")
                   for p in ("forward", "backward")), counts["syncs_by_component"]
    assert counts["launches_update"] <= 16
