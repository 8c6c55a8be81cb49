"""Rows about what sample/evaluate write: a run or input folder is never an --out, one writer per folder, frames
written whole (temporary name, then rename) and an interrupted sample finished by a rerun."""
import csv
import errno
import json
import os
import subprocess
import sys

import numpy as np

from sparse_radar import sample as sample_module
from sparse_radar.evaluate import run as evaluate
from sparse_radar.outputs import LOCK, atomic
from sparse_radar.sample import run as sample

from . import row, snapshot

FAST = ["--steps", "1", "--no-progress"]


def visible(folder):
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


@row("sample-out-existing")
def sample_out_existing(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("USER")
    before = snapshot(out)
    assert sample([edm, "--count", "1", "--out", str(out)] + FAST) == 2
    assert "--overwrite" in capsys.readouterr().err and snapshot(out) == before
    assert evaluate([edm, "--count", "1", "--out", str(out)] + FAST) == 2
    assert snapshot(out) == before
    assert sample([edm, "--count", "2", "--out", str(out), "--overwrite"] + FAST) == 0
    assert (out / "notes.txt").read_text() == "USER" and (out / "summary.json").exists()
    # --overwrite with other settings removes what sample wrote, and only that
    assert sample([edm, "--count", "1", "--seed", "3", "--out", str(out), "--overwrite"] + FAST) == 0
    assert visible(out) == ["metrics.csv", "notes.txt", "summary.json"] + [
        f"synthetic_test_000000{s}" for s in (".bin", ".npy", ".ply", ".png")]
    assert json.loads((out / "summary.json").read_text())["seed"] == 3


@row("sample-out-protected")
def sample_out_protected(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    run_before = snapshot(edm)
    for out in (edm, os.path.dirname(edm)):  # the run folder itself, or a folder that holds it
        assert sample([edm, "--count", "1", "--out", out, "--overwrite"] + FAST) == 2
        assert "the run folder" in capsys.readouterr().err
        assert evaluate([edm, "--count", "1", "--out", out, "--overwrite"] + FAST) == 2
    assert snapshot(edm) == run_before
    radar = tmp_path / "radar"
    radar.mkdir()
    np.save(radar / "a.npy", np.array([[5.0, 0.0, 0.0, 10.0, 1.0]], dtype=np.float32))
    (radar / "NOTES.txt").write_text("USER")
    before = snapshot(radar)
    assert sample([edm, "--input", str(radar), "--out", str(radar), "--overwrite"] + FAST) == 2
    assert "the input" in capsys.readouterr().err and snapshot(radar) == before
    assert sample([edm, "--input", str(radar / "a.npy"), "--out", str(radar), "--overwrite"] + FAST) == 2
    assert snapshot(radar) == before


@row("sample-out-locked")
def sample_out_locked(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    out = tmp_path / "s"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{other.pid}\n")
        assert sample([edm, "--count", "1", "--out", str(out)] + FAST) == 2
        assert f"another process (pid {other.pid}" in capsys.readouterr().err
        assert evaluate([edm, "--count", "1", "--out", str(out)] + FAST) == 2
        assert visible(out) == []
    finally:
        other.kill()
        other.wait()
    # the writer is gone: its lock is stale, removed with a message, and the folder is taken
    assert sample([edm, "--count", "1", "--out", str(out)] + FAST) == 0
    assert "stale lock" in capsys.readouterr().out and not (out / LOCK).exists()


@row("sample-interrupted")
def sample_interrupted(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    monkeypatch = request.getfixturevalue("monkeypatch")
    whole = tmp_path / "whole"
    assert sample([edm, "--count", "3", "--batch_size", "1", "--out", str(whole)] + FAST) == 0
    out, real, calls = tmp_path / "cut", sample_module.write_cloud, []

    def cut_on_second(stem, cloud, names):  # Ctrl-C while the second frame's .ply is half written
        calls.append(stem)
        if len(calls) == 2:
            with atomic(stem + ".ply") as tmp, open(tmp, "wb") as fh:
                fh.write(b"ply\nformat binary_little_endian 1.0\nelement vertex 1823\n")
                raise KeyboardInterrupt
        real(stem, cloud, names)

    monkeypatch.setattr(sample_module, "write_cloud", cut_on_second)
    assert sample([edm, "--count", "3", "--batch_size", "1", "--out", str(out)] + FAST) == 130
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "1 of 3 frame(s)" in err
    assert not any(n.startswith(".tmp-") for n in os.listdir(out))  # no partial file, under any name
    assert not (out / "synthetic_test_000001.ply").exists()
    (out / ".tmp-synthetic_test_000001.bin").write_bytes(b"\0" * 7)  # what a kill -9 would leave
    real_batches, seen = sample_module.generate_batches, []

    def counting(densifier, frames, *args, **kwargs):
        seen.extend(f.name for f in frames)
        return real_batches(densifier, frames, *args, **kwargs)

    monkeypatch.setattr(sample_module, "generate_batches", counting)
    assert sample([edm, "--count", "3", "--batch_size", "1", "--out", str(out)] + FAST) == 0  # a plain rerun
    monkeypatch.undo()
    assert seen == ["synthetic_test_000001", "synthetic_test_000002"]  # the finished frame is not redone
    text = capsys.readouterr().out
    assert "partial file" in text and "resuming: 1 finished frame(s)" in text
    assert visible(out) == visible(whole)
    for name in visible(whole):
        if name.endswith((".npy", ".bin", ".ply")):
            assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    rows = lambda d: [{k: v for k, v in r.items() if k != "seconds"}
                      for r in csv.DictReader((d / "metrics.csv").open(newline=""))]
    assert len(rows(out)) == 3 and rows(out) == rows(whole)  # the same frames and metrics (seconds aside)
    assert sample([edm, "--count", "3", "--batch_size", "1", "--out", str(out), "--resume", "--seed", "1"]
                  + FAST) == 2  # --resume with other settings
    assert "seed" in capsys.readouterr().err

    def no_space(stem, cloud, names):  # a full disk: one line, exit 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sample_module, "write_cloud", no_space)
    assert sample([edm, "--count", "1", "--out", str(tmp_path / "full")] + FAST) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err


@row("out-not-writable")
def out_not_writable(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (str(blocker / "sub"), "/proc/sparse_radar_cannot_write_here"):
        assert sample([edm, "--count", "1", "--out", out] + FAST) == 2
        assert "--out" in capsys.readouterr().err
        assert evaluate([edm, "--count", "1", "--out", out] + FAST) == 2
        assert "Traceback" not in capsys.readouterr().err
