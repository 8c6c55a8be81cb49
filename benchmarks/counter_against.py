"""`python -m benchmarks.counter_against`: the launch-budget issue's counter (../shared/tools/count_step.py) run on
a snapshot of an earlier commit and on this checkout in turn, on this machine, so their host times are compared
side by side and the issue's 207 ms can be read against what the same code takes here.

A machine's clock drifts by tens of per cent between sittings, so a host time alone says little; the issue's code
(--rev, default ISSUE_REV, where the counter read 6,577 launches, 156 syncs and 207 ms) run beside this one does.
Each pair runs the snapshot's counter, then this checkout's, each in a fresh process with one thread. "now at the
issue's speed" scales this checkout's median by 207 ms over the snapshot's median: what the counter would have
read on the machine the issue measured on. The snapshot is `git archive` of the package, its `kernels` folder put
where pyproject maps `sparse_radar.kernels`, and imported from PYTHONPATH ahead of the editable install.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.common import markdown_table

ROOT = Path(__file__).resolve().parents[1]
COUNTER = ROOT.parent / "shared" / "tools" / "count_step.py"
ISSUE_REV = "7b9e996"  # main when the issue was filed: its counter read 6,577 launches, 156 syncs, 207 ms
ISSUE_MS = 207.0


def commit_of(rev: str) -> str:
    """The full hash of `rev` in this checkout's history (ValueError when it names no commit)."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode:
        raise ValueError(f"{rev!r} names no commit of {ROOT}: give a commit of this checkout's history")
    return found.stdout.strip()


def snapshot(rev: str, folder: Path) -> Path:
    """An importable copy of the package at commit `rev` in `folder` (sparse_radar, with kernels inside it)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit_of(rev), "sparse_radar",
                              "kernels"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    shutil.move(str(folder / "kernels"), str(folder / "sparse_radar" / "kernels"))
    return folder


def counter_run(counter: Path, preset: str, package: Optional[Path] = None) -> Dict[str, float]:
    """One run of the counter in a fresh process (one thread): its launches, syncs and host ms; package: a snapshot
    folder to import sparse_radar from (None: this checkout)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(package)] + [p for p in [env.get("PYTHONPATH")] if p])
    done = subprocess.run([sys.executable, str(counter), preset, "triton", "sparse"], env=env,
                          cwd=str(package or ROOT), capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or len(rows) != 2:
        raise RuntimeError(f"the counter failed on {package or ROOT}:\n{done.stderr[-2000:]}")
    counts, times = rows
    return {"launches": counts["fwd_bwd_launches"], "syncs": counts["syncs"],
            "host_ms": times["host_ms_per_step_median"]}


def summary(pairs: List[Dict[str, Dict[str, float]]]) -> Dict[str, float]:
    """Medians over the pairs: each side's host ms, the per-pair ratio, and this checkout at the issue's speed."""
    before = statistics.median(p["before"]["host_ms"] for p in pairs)
    now = statistics.median(p["now"]["host_ms"] for p in pairs)
    return {"before_ms": before, "now_ms": now,
            "ratio": statistics.median(p["before"]["host_ms"] / p["now"]["host_ms"] for p in pairs),
            "now_at_issue_speed_ms": now * ISSUE_MS / before}


def main(argv=None) -> None:
    """Print each pair's counts and host times, then their medians and this checkout at the issue's speed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default=ISSUE_REV, help="the earlier commit (default: the issue's)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--preset", default="lightweight")
    parser.add_argument("--counter", type=Path, default=COUNTER)
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if not args.counter.is_file():
        parser.error(f"no counter at {args.counter}: give its path with --counter")
    try:
        commit = commit_of(args.rev)
    except ValueError as error:
        parser.error(str(error))
    with tempfile.TemporaryDirectory() as folder:
        package = snapshot(commit, Path(folder))
        pairs = []
        for index in range(args.pairs):
            pairs.append({"before": counter_run(args.counter, args.preset, package),
                          "now": counter_run(args.counter, args.preset)})
            before, now = pairs[-1]["before"], pairs[-1]["now"]
            print(f"pair {index + 1}/{args.pairs}: {args.rev} {before['host_ms']} ms, now {now['host_ms']} ms",
                  file=sys.stderr, flush=True)
    rows = [[i + 1, p["before"]["launches"], p["before"]["syncs"], p["before"]["host_ms"], p["now"]["launches"],
             p["now"]["syncs"], p["now"]["host_ms"]] for i, p in enumerate(pairs)]
    print(markdown_table(["pair", f"{args.rev} launches", "syncs", "host ms", "now launches", "syncs", "host ms"],
                         rows))
    total = summary(pairs)
    print(f"\nmedians: {args.rev} {total['before_ms']:.1f} ms, now {total['now_ms']:.1f} ms, "
          f"ratio {total['ratio']:.2f} (median of the pairs' ratios)")
    if commit == commit_of(ISSUE_REV):
        print(f"now at the issue's speed ({ISSUE_MS:.0f} ms for {ISSUE_REV}): {total['now_at_issue_speed_ms']:.1f} ms"
              f" (budget 40)")


if __name__ == "__main__":
    main()
