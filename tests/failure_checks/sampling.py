"""Rows about generating and judging: sample/evaluate output folders, radar outside the grid, empty radar."""
import json
import threading

import numpy as np
import pytest

from sparse_radar.evaluate import run as evaluate
from sparse_radar.inference import Densifier
from sparse_radar.sample import run as sample

from . import row, snapshot


@row("radar-outside-grid")
def radar_outside_grid(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    d = Densifier.from_checkpoint(edm, device="cpu")
    pts = np.array([[5.0, 0.0, 0.0, 10.0, 1.0], [900.0, 0.0, 0.0, 10.0, 1.0]])
    with pytest.warns(UserWarning, match=r"1 radar point\(s\) outside the grid"):
        d(pts, steps=1)
    assert d.last_dropped == [1]
    seen = {}  # the count is per thread: another thread's call does not change this one's
    worker = threading.Thread(target=lambda: (d([pts, pts[:1]], steps=1), seen.update(counts=d.last_dropped)))
    with pytest.warns(UserWarning):
        worker.start()
        worker.join()
    assert seen["counts"] == [1, 0] and d.last_dropped == [1]
    folder = tmp_path / "radar"
    folder.mkdir()
    np.save(folder / "a.npy", pts.astype(np.float32))
    np.save(folder / "b.npy", pts[:1].astype(np.float32))
    out = tmp_path / "s"
    assert sample([edm, "--input", str(folder), "--out", str(out), "--no-progress", "--steps", "1"]) == 0
    assert "1 radar point(s) outside the grid" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["radar_points_outside_grid"] == {"total": 1, "per_frame": {"a": 1}}


@row("empty-radar")
def empty_radar(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    d = Densifier.from_checkpoint(edm, device="cpu")
    assert d(np.zeros((0, 5)), steps=1).shape == (0, 5)
    folder = tmp_path / "radar"
    folder.mkdir()
    np.save(folder / "empty.npy", np.zeros((0, 5), dtype=np.float32))
    assert sample([edm, "--input", str(folder), "--out", str(tmp_path / "s"), "--no-progress", "--steps", "1"]) == 0
    assert np.load(tmp_path / "s" / "empty.npy").shape == (0, 5)


@row("empty-prediction")
def empty_prediction(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    out = tmp_path / "s"
    assert sample([edm, "--count", "2", "--steps", "1", "--threshold", "0.999", "--out", str(out),
                   "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_with_ground_truth"] == 2
    assert summary["metrics"]["generated_points"]["mean"] == 0
    assert summary["metrics"]["fscore@0.8"]["mean"] == 0.0
    diagonal = float(np.linalg.norm([25.6, 25.6, 6.4]))
    assert summary["metrics"]["chamfer_sum_of_means"]["mean"] == pytest.approx(2 * diagonal)
