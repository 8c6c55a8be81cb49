"""The benchmark scripts still run (tiny sizes) and their report helpers pair dense and sparse rows right."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_conv_benchmark_writes_its_report(tmp_path):
    run("benchmarks.conv", "--grid", "8,32,32", "--channels", "8", "--repeats", "1", "--dense-repeats", "1",
        "--out", str(tmp_path))
    result = json.loads((tmp_path / "conv.json").read_text())["result"]
    assert result["active"] == round(0.03 * 8 * 32 * 32) and result["ours_forward_ms"] > 0
    assert "ours forward (cached map)" in (tmp_path / "conv.md").read_text()
    assert (tmp_path / "conv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_worker_measures_one_point():
    row = json.loads(run("benchmarks.attention", "--grid", "4,16,16", "--repeats", "1", "--one", "window", "0.1",
                         "sparse"))
    assert row["type"] == "window" and row["tokens"] == row["active"] > 0 and row["ms"] > 0


def test_step_worker_time_budget_keeps_one_timed_step():
    args = ("benchmarks.step_worker", "--preset", "tiny", "--grid", "8,16,16", "--batch", "1", "--steps", "3")
    assert json.loads(run(*args))["timed_steps"] == 3
    # the budget is spent by the warm-up: only the second step (the steady state's peak) runs
    row = json.loads(run(*args, "--time-budget", "0.001"))
    assert row["timed_steps"] == 1 and row["step_ms"] > 0


def test_step_worker_profile_goes_to_stderr_and_keeps_the_json():
    done = subprocess.run([sys.executable, "-m", "benchmarks.step_worker", "--preset", "tiny", "--grid", "8,16,16",
                           "--batch", "1", "--steps", "1", "--profile"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["timed_steps"] == 1
    assert "Self CPU" in done.stderr and "TorchSparseConv" in done.stderr
    row = json.loads(done.stdout)
    assert row["aten_calls_per_step"] > 100 and row["kernel_launches_per_step"] == 0  # no CUDA here


def test_unet_sweep_covers_every_value_the_issue_names():
    from benchmarks.unet import SETS
    sweep = SETS["sweep"]
    assert {p for p, *_ in sweep} == {"tiny", "ultra_lightweight", "lightweight"}
    grids = {g for _, g, *_ in sweep}
    assert {(16, 64, 64), (32, 128, 128)} <= grids and any(d * h * w > 32 * 128 * 128 for d, h, w in grids)
    assert {b for _, _, b, *_ in sweep} == {1, 2, 4}
    assert {o for *_, o, pat in sweep if pat == "random"} == {0.005, 0.01, 0.03, 0.1, 0.3}
    assert {p for p, *_, pat in sweep if pat == "structured"} == {"tiny", "ultra_lightweight", "lightweight"}
    assert len(set(sweep)) == len(sweep) and set(sweep) <= set(SETS["full"])


def test_unet_rows_reuse_dense_measurements(tmp_path):
    from benchmarks.unet import load_rows, pair_rows, row_key
    dense = {"preset": "tiny", "grid": [8, 16, 16], "batch": 1, "occupancy": 0.01, "pattern": "random",
             "path": "dense", "precision": "preset", "status": "ok", "step_ms": 100.0, "peak_bytes": 8e8,
             "estimated_bytes": 7e8}
    sparse = {**dense, "path": "sparse", "step_ms": 10.0, "peak_bytes": 1e8, "active_share": 0.01}
    log = tmp_path / "log"
    log.write_text(json.dumps(dense) + "\n" + json.dumps(sparse) + "\nnot json\n")
    cache = load_rows(str(log))
    # the plain dense model costs the same at any occupancy or pattern; a log without the allocator setting
    # was measured with glibc's dynamic default (0) and is not reused for a fixed threshold
    assert cache[row_key("tiny", (8, 16, 16), 1, 0.3, "structured", "dense", "preset", 0)] == dense
    assert row_key("tiny", (8, 16, 16), 1, 0.3, "structured", "dense", "preset", 1 << 20) not in cache
    assert row_key("tiny", (8, 16, 16), 1, 0.3, "random", "sparse", "preset", 0) not in cache
    row = pair_rows([dense, sparse], with_bound=False)[0]
    assert row[8] == "10.0x" and row[12] == "8.0x"
    # a JSON report serves as well as a log, and several can be given
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"machine": {}, "results": [{**sparse, "batch": 4, "timed_steps": 1}]}, indent=2))
    both = load_rows(str(log), str(report))
    # rows without a field setting reused one field (before --field): they answer for cached, not fresh
    assert both[row_key("tiny", (8, 16, 16), 4, 0.01, "random", "sparse", "preset", 0, "cpu", "cached")][
        "timed_steps"] == 1
    assert row_key("tiny", (8, 16, 16), 1, 0.01, "random", "sparse", "preset", 0, "cpu", "cached") in both
    assert row_key("tiny", (8, 16, 16), 1, 0.01, "random", "sparse", "preset", 0, "cpu", "fresh") not in both


def test_unet_timed_out_dense_rows_are_reused_and_bound_the_speed_up(tmp_path):
    from benchmarks.unet import load_rows, pair_rows, row_key, run_one, timed_out
    row = run_one("tiny", (8, 16, 16), 1, 0.03, "random", "dense", 2, 0.001, "preset", 0)
    assert row["status"] == "timed out after 0.001 s" and row["step_ms_at_least"] == 0.001 * 1e3 / 3
    assert timed_out(row) == 0.001
    dense = {"preset": "tiny", "grid": [8, 16, 16], "batch": 1, "occupancy": 0.01, "pattern": "random",
             "path": "dense", "precision": "preset", "estimated_bytes": 9e8, "status": "timed out after 600 s",
             "timeout_s": 600, "step_ms_at_least": 200e3}
    sparse = {**dense, "path": "sparse", "status": "ok", "step_ms": 1000.0, "peak_bytes": 1e8, "active_share": 0.01}
    log = tmp_path / "log"
    log.write_text(json.dumps(dense) + "\n")
    cache = load_rows(str(log))
    assert timed_out(cache[row_key("tiny", (8, 16, 16), 1, 0.3, "random", "dense", "preset", 0)]) == 600
    assert timed_out({"status": "timed out after 90 s"}) == 90 and timed_out(sparse) == 0
    row = pair_rows([dense, sparse], with_bound=False)[0]
    assert row[6] == "timed out after 600 s" and row[8] == "> 200.0x" and row[12] == "~9.0x (dense estimated)"


def resident_growth(fixed: bool):
    """(resident growth while an 8 MiB tensor lives, growth left once it is freed), in a fresh process."""
    code = ("import torch; from benchmarks.step_worker import fix_mmap_threshold, current_rss\n"
            f"assert {fixed} is False or fix_mmap_threshold(1 << 20)\n"
            "t = torch.ones(16 << 20, dtype=torch.uint8); del t\n"  # glibc's dynamic threshold rises to 16 MiB
            "base = current_rss(); t = torch.ones(8 << 20, dtype=torch.uint8)\n"
            "pin = torch.ones(100)\n"  # allocated after t, so t is not at the top of the heap
            "grown = current_rss() - base; del t\n"
            "print(grown, current_rss() - base)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return tuple(map(int, done.stdout.split()))


def test_fixed_mmap_threshold_keeps_freed_blocks_out_of_resident_memory():
    grown, after = resident_growth(fixed=True)
    assert grown >= 8 << 20 and after < 1 << 20  # resident while alive, gone once freed
    grown, after = resident_growth(fixed=False)
    assert after > 7 << 20  # glibc's default keeps the freed block resident in its heap


def test_unet_report_only_tabulates_a_partial_sweep(tmp_path):
    base = {"preset": "tiny", "grid": [16, 64, 64], "batch": 1, "occupancy": 0.005, "pattern": "random",
            "precision": "preset", "mmap_threshold": 1 << 17, "status": "ok"}
    log = tmp_path / "sweep.log"
    log.write_text(json.dumps({**base, "path": "dense", "step_ms": 900.0, "peak_bytes": 4e8, "estimated_bytes": 3e8})
                   + "\n" + json.dumps({**base, "path": "sparse", "step_ms": 9.0, "peak_bytes": 2e7,
                                        "estimated_bytes": 3e7, "active_share": 0.005}) + "\n")
    # a log from before --field reused one field: it is tabulated as --field cached
    run("benchmarks.unet", "--set", "sweep", "--reuse", str(log), "--report-only", "--field", "cached", "--out",
        str(tmp_path))
    text = (tmp_path / "unet_sweep.md").read_text()
    assert text.startswith("UNet training step, dense vs sparse, CPU")
    rows = [r for r in text.splitlines() if r.startswith("|")][2:]  # past the table's header
    # the dense row serves all five occupancies of that batch; only 0.5% has a sparse measurement
    assert len(rows) == 5
    assert "| 100.0x |" in rows[0] and "| 20.0x |" in rows[0]
    assert all("not run" in r for r in rows[1:])


def test_ablation_reads_the_readme_claims_and_plots_them_beside_ours(tmp_path):
    from benchmarks.ablation import ROWS, claimed, died, effect, plot
    assert claimed("40-60% / 3-5x") == (0.5, 4.0)
    assert claimed("40-50% / 0.9x") == (0.45, 0.9)
    assert claimed("80-90% / 10x+") == (0.85, 10.0)
    assert effect((200.0, 4e8), (100.0, 1e8)) == "75% / 2.00x"
    assert effect(None, (100.0, 1e8), died(-9), "ok") == "baseline: killed by signal 9 (out of memory)"
    raw = [{"row": name, "path": path, "baseline": [200.0, 4e8], "optimised": [100.0, 1e8] if path == "dense" else None}
           for name, *_ in ROWS for path in ("dense", "sparse")]
    plot(raw, str(tmp_path / "ablation.png"))
    assert (tmp_path / "ablation.png").read_bytes()[:4] == b"\x89PNG"


def test_ablation_rejects_unknown_paths_and_rows():
    from benchmarks.ablation import main
    with pytest.raises(SystemExit):
        main(["--paths", "dense,voxel"])
    with pytest.raises(SystemExit):
        main(["--rows", "6"])


def test_step_worker_latent_step_trains_the_unet_on_the_latent_grid():
    from benchmarks.step_worker import LatentStep
    from sparse_radar import SparseVoxels
    step = LatentStep("tiny", (8, 16, 16), {})
    assert step.latent_grid == (2, 4, 4) and tuple(step.config.input_size) == (2, 4, 4)
    target = SparseVoxels(torch.ones(3, 4), torch.tensor([[0, 0, 0, 0], [0, 5, 9, 3], [0, 7, 15, 15]]), (8, 16, 16), 1)
    out = step(target, torch.zeros(1))
    out.data.square().mean().backward()
    assert out.data.shape == (1, 4, 2, 4, 4)
    assert all(p.grad is None for p in step.vae.parameters())  # the VAE is frozen
    assert any(p.grad is not None for p in step.unet.parameters())
    done = subprocess.run([sys.executable, "-m", "benchmarks.step_worker", "--preset", "tiny", "--grid", "8,16,16",
                           "--batch", "1", "--steps", "1", "--latent"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["path"] == "latent"


def test_conv_cases_measure_each_library_in_its_own_process(tmp_path):
    """Tiny versions of the fixed cases: rows per library, and a library over its time limit is reported."""
    run("benchmarks.conv_cases", "--device", "cpu", "--scale", "0.02", "--repeats", "1", "--cases", "scene",
        "--libraries", "torch,dense", "--precisions", "fp32", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "conv_cases.json").read_text())["results"]
    assert [r["library"] for r in rows] == ["torch", "dense"]
    assert all(r["status"] == "ok" and r["fwd_bwd_ms"] > 0 and r["voxels"] == rows[0]["voxels"] > 0 for r in rows)
    run("benchmarks.conv_cases", "--device", "cpu", "--scale", "0.02", "--cases", "published", "--libraries",
        "torch", "--precisions", "fp32", "--timeout", "0.01", "--out", str(tmp_path))
    row = json.loads((tmp_path / "conv_cases.json").read_text())["results"][0]
    assert row["status"] == "no result in 0 s"


def test_wall_sites_are_unique_sorted_and_about_the_target():
    import torch

    from benchmarks.conv_cases import wall_sites
    from sparse_radar.kernels import linear_keys
    coords = wall_sites((16, 64, 64), 3000, torch.Generator().manual_seed(0))
    keys = linear_keys(coords, (16, 64, 64))
    assert coords.shape[0] == 3000 and bool((keys[1:] > keys[:-1]).all())
    assert int((coords[:, 1] == 0).sum()) >= 500  # the ground layer (a third of the target, some dropped)


def test_gpu_check_parts_report_a_failing_command(tmp_path):
    """A part whose command fails (output piped through tail) makes the script's status non-zero."""
    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    code = (f'set -uo pipefail; source <(sed -n "/^part() {{/,/^}}/p" "{script}"); OUT="{tmp_path}"; status=0; '
            'part ok 5 true; echo "after ok $status"; part bad 5 bash -c "echo out; exit 3"; echo "after bad $status"')
    done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=60)
    assert "after ok 0" in done.stdout and "after bad 1" in done.stdout, done.stdout + done.stderr
    assert "exit 3" in (tmp_path / "bad.txt").read_text() and "out" in (tmp_path / "bad.txt").read_text()


def test_launch_counter_against_hand_counts():
    """The counter against a hand count: views are free, each kernel-running op is one launch, and the reads the
    launch issue lists are syncs (forward and backward told apart)."""
    import torch

    from benchmarks.launch_count import counting
    x = torch.randn(6, 3, requires_grad=True)
    with counting() as tally:
        y = (x * 2).view(3, 6).t()  # mul: 1 launch; view and t: none
        keep = y[y[:, 0] > 0]  # gt: 1; select view: 0; boolean index: 1 launch and 1 sync
        float(y.detach().sum())  # sum: 1 launch; the scalar read: 1 sync
        torch.tensor([1, 2])  # a host list made a tensor: 1 sync
        y.sum().backward()  # sum and the seed gradient (ones_like): 2; backward: mul's only (the rest are views)
    assert tally.total("launches", phase="forward") == 6
    assert tally.total("launches", phase="backward") == 1 and tally.ops["mul"] == 2
    assert tally.total("syncs") == 3 and tally.sync_kinds["index[bool]"] == 1
    assert tally.sync_kinds["_local_scalar_dense"] == 1 and tally.sync_kinds["host tensor"] == 1
    assert keep.shape[1] == 3


def test_launches_report_counts_a_trainer_step(tmp_path):
    from benchmarks import launches
    assert launches.main(["--rows", "tiny", "--paths", "sparse", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "launches.json").read_text())["rows"]["tiny | sparse"]
    assert row["triton"] > 0 and row["launches_update"] <= 16 and row["host_ms"] > 0
    assert sum(n for k, n in row["by_component"].items() if k.split()[0] in launches.STEP_COMPONENTS) == \
        row["launches_fwd_bwd"]
    assert "| tiny | sparse |" in (tmp_path / "launches.md").read_text()


def test_host_time_splits_each_step_into_its_parts_and_restores_the_interpreter():
    pytest.importorskip("triton")
    import triton.runtime.interpreter as interpreter
    from benchmarks.host_time import PARTS, time_steps
    from sparse_radar.nn import attention_cores, recompute
    original = interpreter.InterpretedFunction.run
    before = attention_cores.ALL_SAMPLES_AT_ONCE_ON_CPU, recompute.MIN_RECOMPUTE_BYTES
    times = time_steps("tiny", 2, always_recompute=True)
    assert interpreter.InterpretedFunction.run is original
    assert (attention_cores.ALL_SAMPLES_AT_ONCE_ON_CPU, recompute.MIN_RECOMPUTE_BYTES) == before
    assert set(times) == set(PARTS) and all(len(v) == 2 for v in times.values())
    for i in range(2):  # one clock: the parts are the step's consecutive intervals
        parts = sum(times[p][i] for p in PARTS[:-1])
        assert parts == pytest.approx(times["step"][i], rel=1e-9) and min(times[p][i] for p in PARTS) > 0


def test_host_instructions_divides_the_difference_of_two_runs_by_the_steps(monkeypatch, capsys):
    """The warm-up's instructions are in both runs and cancel; AdamW's are the opt run's less forward and
    backward's; without valgrind it says what to install."""
    import benchmarks.host_instructions as hi
    runs = []

    def fake_total(preset, steps, part, real_levels):
        runs.append((preset, steps, part))
        assert not real_levels
        return 5_000_000_000 + steps * (80_000_000 if part == "fwd_bwd" else 230_000_000)
    monkeypatch.setattr(hi, "_total", fake_total)
    monkeypatch.setattr(hi.shutil, "which", lambda name: "/usr/bin/valgrind")
    hi.main(["--part", "both", "--steps", "4", "--warm", "2"])
    out = capsys.readouterr().out
    assert "| forward + backward | 80.0 |" in out and "| AdamW | 150.0 |" in out
    assert runs == [("lightweight", 2, "fwd_bwd"), ("lightweight", 6, "fwd_bwd"), ("lightweight", 2, "opt"),
                    ("lightweight", 6, "opt")]
    monkeypatch.setattr(hi.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="needs valgrind"):
        hi.main([])


def test_host_instructions_worker_runs_the_counters_steps():
    pytest.importorskip("triton")
    import triton.runtime.interpreter as interpreter
    import benchmarks.host_instructions as hi
    original = interpreter.InterpretedFunction.run
    hi.main(["--worker", "1", "--preset", "tiny", "--part", "opt"])
    import gc
    assert interpreter.InterpretedFunction.run is original and gc.isenabled()


def test_host_instructions_real_levels_replays_the_first_steps_map_builds(monkeypatch):
    pytest.importorskip("triton")
    import triton.runtime.interpreter as interpreter
    import benchmarks.host_instructions as hi
    from benchmarks import launch_count
    original, tapes, rewind = interpreter.InterpretedFunction.run, [], launch_count.BuilderTape.rewind
    monkeypatch.setattr(launch_count.BuilderTape, "rewind", lambda self: tapes.append(self) or rewind(self))
    hi.main(["--worker", "3", "--preset", "tiny", "--real_levels"])  # a replay that missed would raise
    assert len(tapes) == 2 and tapes[0] is tapes[1] and tapes[0].calls and tapes[0].position == len(tapes[0].calls)
    assert interpreter.InterpretedFunction.run is original
    seen = []
    monkeypatch.setattr(hi.shutil, "which", lambda name: "/usr/bin/valgrind")
    monkeypatch.setattr(hi, "_total", lambda preset, steps, part, real_levels: seen.append(real_levels) or steps)
    hi.main(["--real_levels", "--steps", "1", "--warm", "1"])
    assert seen == [True, True]
