"""benchmarks.counter_against: the snapshot imports its own package, the counter runs on the side asked for, and
the summary's medians and scaling."""
import subprocess
import sys
import textwrap

import pytest

import benchmarks.counter_against as ca

in_git = subprocess.run(["git", "-C", str(ca.ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0
needs_git = pytest.mark.skipif(not in_git, reason="the snapshot is made with git archive: not a git checkout")


@needs_git
def test_snapshot_is_imported_ahead_of_the_editable_install(tmp_path):
    package = ca.snapshot("HEAD", tmp_path)
    kernels = package / "sparse_radar" / "kernels" / "__init__.py"
    assert kernels.read_bytes() == subprocess.run(["git", "-C", str(ca.ROOT), "show", "HEAD:kernels/__init__.py"],
                                                  capture_output=True, check=True).stdout
    code = "import sparse_radar.kernels as k, sparse_radar as s; print(s.__file__); print(k.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=package, capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": str(package), "PATH": ""}).stdout.split()
    assert where == [str(package / "sparse_radar" / "__init__.py"), str(kernels)]


@needs_git
def test_a_rev_that_names_no_commit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="names no commit"):
        ca.snapshot("no-such-rev-0123", tmp_path)


@needs_git
def test_counter_runs_on_the_snapshot_or_on_this_checkout(tmp_path):
    counter = tmp_path / "counter.py"
    counter.write_text(textwrap.dedent("""
        import json, os, sys
        import sparse_radar
        snapshot = os.path.exists(os.path.join(os.path.dirname(sparse_radar.__file__), "SNAPSHOT"))
        print(json.dumps({"fwd_bwd_launches": 6577 if snapshot else 910, "syncs": int(os.environ["OMP_NUM_THREADS"])}))
        print(json.dumps({"host_ms_per_step_median": float(len(sys.argv))}))
    """))
    package = ca.snapshot("HEAD", tmp_path / "snapshot")
    (package / "sparse_radar" / "SNAPSHOT").touch()  # marks the snapshot's package, whatever PYTHONPATH holds
    assert ca.counter_run(counter, "tiny", package) == {"launches": 6577, "syncs": 1, "host_ms": 4.0}
    assert ca.counter_run(counter, "tiny")["launches"] == 910


def test_a_failing_counter_says_so(tmp_path):
    counter = tmp_path / "counter.py"
    counter.write_text("raise SystemExit('no model here')")
    with pytest.raises(RuntimeError, match="no model here"):
        ca.counter_run(counter, "tiny")


def test_summary_takes_medians_and_scales_to_the_issues_speed():
    pairs = [{"before": {"host_ms": b}, "now": {"host_ms": n}} for b, n in ((200, 40), (220, 35), (210, 30))]
    total = ca.summary(pairs)
    assert total["before_ms"] == 210 and total["now_ms"] == 35
    assert total["ratio"] == pytest.approx(220 / 35)  # ratios 5, 6.29, 7: the middle one
    assert total["now_at_issue_speed_ms"] == pytest.approx(35 * 207 / 210)
