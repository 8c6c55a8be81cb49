"""Rows about generating and judging: sample/evaluate output folders, radar outside the grid, empty radar."""
import json
import threading

import numpy as np
import pytest
import torch

from sparse_radar.evaluate import run as evaluate
from sparse_radar.inference import Densifier, SamplerSettings
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


@row("sampler-settings")
def sampler_settings(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    out = tmp_path / "s"
    bad = [["--sigma_max", "0"], ["--sigma_min", "0"], ["--sigma_max", "inf"], ["--sigma_min", "nan"],
           ["--s_churn", "nan"], ["--sigma_min", "100"], ["--sigma_min", "2", "--sigma_max", "1"], ["--steps", "0"],
           ["--steps", "1000000000"], ["--threshold", "1"], ["--seed", "-1"], ["--seed", str(2**40)],
           ["--batch_size", "0"], ["--count", "0"]]
    for flags in bad:
        assert sample([edm, "--out", str(out), "--no-progress"] + flags) == 2, flags
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, flags
    for flags in (["--steps", "-1"], ["--threshold", "1"], ["--multistep", "0"], ["--batch_size", "0"],
                  ["--seed", str(2**63)], ["--s_churn", "-1"], ["--sigma_max", "0"]):
        assert evaluate([edm, "--out", str(out), "--no-progress"] + flags) == 2, flags
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and flags[0].lstrip("-") in err, flags
    assert not out.exists()
    with pytest.raises(TypeError, match="steps must be an int"):
        SamplerSettings(steps=True)
    with pytest.raises(ValueError, match="sigma_max must be a finite number"):
        SamplerSettings(sigma_max=float("inf"))
    assert SamplerSettings(steps=np.int64(2)).steps == 2
    d = Densifier.from_checkpoint(edm, device="cpu")
    with pytest.raises(TypeError, match="seed must be an int, got None"):
        d(np.array([[5.0, 0.0, 0.0, 10.0, 1.0]]), steps=1, seed=None)
    assert len(d(np.array([[5.0, 0.0, 0.0, 10.0, 1.0]]), steps=np.int64(1), seed=np.int32(3))) >= 0


@row("device-unavailable")
def device_unavailable(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [f"cuda:{count}", "meta", "mps"] + ([] if count else ["cuda"])
    if torch.backends.mps.is_available():
        missing.remove("mps")
    for device in missing:
        assert sample([edm, "--device", device, "--out", str(tmp_path / "s"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"device {device!r}" in err and len(err.strip().splitlines()) == 1, device
        assert evaluate([edm, "--device", device, "--out", str(tmp_path / "e"), "--no-progress"]) == 2
        assert f"device {device!r}" in capsys.readouterr().err
        with pytest.raises(ValueError, match=f"device {device!r}"):
            Densifier.from_checkpoint(edm, device=device)
    assert not (tmp_path / "s").exists() and not (tmp_path / "e").exists()


@row("bag-input")
def bag_input(request, tmp_path, capsys):
    pytest.importorskip("rosbags")
    from tests.test_bag_io import write_bag
    edm, _ = request.getfixturevalue("small_runs")
    bag, out = str(tmp_path / "in.bag"), str(tmp_path / "out.bag")
    write_bag(bag, False)
    base = [edm, "--bag", bag, "--out", out, "--steps", "1", "--no-progress"]
    assert sample(base + ["--radar_topic", "/lidar"]) == 2
    assert "no topic /lidar; the bag has /note, /radar" in capsys.readouterr().err
    nox = str(tmp_path / "nox.bag")
    write_bag(nox, False, fields=("u", "v", "z", "power", "velocity"))
    assert sample([edm, "--bag", nox, "--radar_topic", "/radar", "--out", out, "--steps", "1", "--no-progress"]) == 2
    assert "message 0 (stamp 1700000000000000000 ns): no x, y field; the message has u, v, z" in \
        capsys.readouterr().err
    assert not (tmp_path / "out.bag").exists()  # the half-written bag is removed
    (tmp_path / "out.bag").write_text("an earlier result")
    assert sample(base + ["--radar_topic", "/radar"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out.bag").read_text() == "an earlier result"
