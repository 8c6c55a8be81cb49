"""Walks the README's "Failure behaviour" table: every row names a check here, and every check has a row."""
import csv
import json
import os
import pathlib
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

from sparse_radar import DenseVoxels, SparseVoxels, UNet3D
from sparse_radar.data import formats, open_dataset
from sparse_radar.data.validate import validate_dataset
from sparse_radar.kernels import coords as kc
from sparse_radar.models import create_tiny_unet_config
from sparse_radar.train import run
from sparse_radar.training import load_checkpoint
from sparse_radar.training import trainer as trainer_module
from sparse_radar.training.config import TrainConfig, parse_args
from sparse_radar.training.distributed import DistContext
from sparse_radar.training.trainer import Trainer

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SMALL = ["--train_size", "4", "--model_channels", "8", "--progress", "False", "--preview_steps", "1",
         "--attention_type", "window"]
CHECKS = {}


def row(*names):
    """Register a check for the README rows `names`."""
    def register(fn):
        for name in names:
            CHECKS[name] = fn
        return fn
    return register


def table_rows():
    """First-column names of the README's Failure behaviour table."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Failure behaviour"):]
    section = section[:section.index("\n## ", 5)]
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)


def rows(folder):
    with open(os.path.join(folder, "metrics.csv"), newline="") as fh:
        return [(r["step"], r["loss"]) for r in csv.DictReader(fh)]


def snapshot(folder):
    """Every file under folder with its bytes."""
    out = {}
    for base, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(base, n)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 4-step run with a checkpoint every 2 steps."""
    folder = tmp_path_factory.mktemp("base") / "run"
    assert run(SMALL + ["--steps", "4", "--save_every", "2", "--out", str(folder)]) == 0
    return folder


@pytest.fixture
def run_copy(base_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base_run, folder)
    return folder


def test_every_row_has_a_check_and_every_check_a_row():
    assert sorted(table_rows()) == sorted(CHECKS)


@pytest.mark.parametrize("name", table_rows())
def test_row(name, request, tmp_path, capsys):
    CHECKS[name](request, tmp_path, capsys)


# ----- run folders ----------------------------------------------------------------------------------------
@row("resume-outside-run")
def resume_outside_run(request, tmp_path, capsys):
    run_copy = request.getfixturevalue("run_copy")
    home = tmp_path / "home2"
    (home / "models").mkdir(parents=True)
    shutil.copy(run_copy / "checkpoints" / "step_000002.pt", home / "models" / "best.pt")
    (home / "metrics.csv").write_text("USER\n")
    before = snapshot(home)
    assert run(["--resume", str(home / "models" / "best.pt"), "--steps", "3", "--progress", "False"]) == 2
    assert "--out" in capsys.readouterr().err
    assert snapshot(home) == before
    branch = tmp_path / "branch"
    assert run(["--resume", str(home / "models" / "best.pt"), "--steps", "3", "--progress", "False",
                "--out", str(branch)]) == 0
    assert snapshot(home) == before and [s for s, _ in rows(branch)] == ["3"]  # no source history to carry


@row("resume-older-step")
def resume_older_step(request, tmp_path, capsys):
    run_copy = request.getfixturevalue("run_copy")
    before = snapshot(run_copy)
    step2 = str(run_copy / "checkpoints" / "step_000002.pt")
    assert run(["--resume", step2, "--steps", "3", "--progress", "False"]) == 2
    err = capsys.readouterr().err
    assert "discard steps 3..4" in err and "--overwrite" in err and "--out" in err
    branch = tmp_path / "branch"
    assert run(["--resume", step2, "--steps", "3", "--progress", "False", "--out", str(branch)]) == 0
    assert snapshot(run_copy) == before  # the source run is untouched
    assert rows(branch)[:2] == rows(run_copy)[:2] and [s for s, _ in rows(branch)] == ["1", "2", "3"]
    assert load_checkpoint(str(branch))["step"] == 3 and load_checkpoint(str(run_copy))["step"] == 4
    # the branch continues exactly as the source did from the same checkpoint
    assert rows(branch)[2] == rows(run_copy)[2]


@row("overwrite-cuts-back")
def overwrite_cuts_back(request, tmp_path, capsys):
    run_copy = request.getfixturevalue("run_copy")
    assert run(["--resume", str(run_copy / "checkpoints" / "step_000002.pt"), "--steps", "3",
                "--progress", "False", "--overwrite"]) == 0
    assert "cut back to step 2" in capsys.readouterr().out
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["latest.pt", "step_000002.pt", "step_000003.pt"]
    assert [s for s, _ in rows(run_copy)] == ["1", "2", "3"] and load_checkpoint(str(run_copy))["step"] == 3


@row("out-existing-run")
def out_existing_run(request, tmp_path, capsys):
    run_copy = request.getfixturevalue("run_copy")
    before = snapshot(run_copy)
    assert run(SMALL + ["--steps", "1", "--out", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(run_copy) == before
    assert run(SMALL + ["--steps", "1", "--out", str(run_copy), "--overwrite"]) == 0
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["latest.pt", "step_000001.pt"]  # no old steps mixed in
    assert [s for s, _ in rows(run_copy)] == ["1"]


@row("resume-changed-flags", "resume-changeable-flags")
def resume_flags(request, tmp_path, capsys):
    run_copy = request.getfixturevalue("run_copy")
    before = snapshot(run_copy)
    bad = ["--resume", str(run_copy), "--steps", "6", "--model_channels", "32", "--attention_type", "linear",
           "--support", "oracle", "--out", str(tmp_path / "x")]
    assert run(bad) == 2
    err = capsys.readouterr().err
    assert "--model_channels 32 (checkpoint: 8)" in err and "--attention_type linear (checkpoint: window)" in err
    assert "--support oracle" in err and not (tmp_path / "x").exists() and snapshot(run_copy) == before
    # the preset's own value is no conflict
    assert run(["--resume", str(run_copy), "--steps", "5", "--model_channels", "8", "--lr", "0.5",
                "--progress", "False"]) == 0
    out = capsys.readouterr().out
    assert "--lr changed on resume at step 4: 0.002 -> 0.5" in out and "--steps changed" in out
    state = load_checkpoint(str(run_copy))
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.5 and state["train_config"]["lr"] == 0.5
    assert json.loads((run_copy / "config.json").read_text())["train"]["lr"] == 0.5
    assert run(["--resume", str(run_copy), "--steps", "5", "--progress", "False"]) == 2
    assert "already at step 5" in capsys.readouterr().err


@row("cd-model-flags")
def cd_model_flags(request, tmp_path, capsys):
    run_copy = request.getfixturevalue("run_copy")
    base_run = run_copy
    cd = tmp_path / "cd"
    common = ["--mode", "cd", "--teacher", str(base_run), "--cm_steps", "4", "--steps", "1", "--train_size", "4",
              "--progress", "False", "--preview_steps", "1"]
    assert run(common + ["--model_channels", "32", "--attention_type", "linear", "--out", str(cd)]) == 2
    err = capsys.readouterr().err
    assert "--model_channels 32 (teacher: 8)" in err and "--attention_type linear (teacher: window)" in err
    assert run(common + ["--out", str(cd)]) == 0
    config = json.loads((cd / "config.json").read_text())
    assert config["train"]["model_channels"] == config["model"]["model_channels"] == 8
    assert config["train"]["attention_type"] == config["model"]["attention_type"] == "window"


@row("stale-tmp")
def stale_tmp(request, tmp_path, capsys):
    run_copy = request.getfixturevalue("run_copy")
    (run_copy / "checkpoints" / ".tmp-abc123.pt").write_bytes(b"")
    assert run(["--resume", str(run_copy), "--steps", "5", "--progress", "False"]) == 0
    assert "removed 1 unfinished temporary checkpoint file" in capsys.readouterr().out
    assert not [n for n in os.listdir(run_copy / "checkpoints") if n.startswith(".tmp-")]




@row("grad-clip")
def grad_clip(request, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--grad_clip", "-1"])
    assert exc.value.code == 2 and "--grad_clip" in capsys.readouterr().err

    def weights(clip):
        t = Trainer(TrainConfig(train_size=2, model_channels=8, steps=1, progress=False, grad_clip=clip,
                                out=str(tmp_path / str(clip))), DistContext())
        return t.train_step()["grad_norm"], [p.detach().clone() for p in t.model.parameters()]
    norm0, off = weights(0.0)
    norm_big, big = weights(1e9)
    _, clipped = weights(1e-4)
    assert norm0 == norm_big > 1e-4  # 0 = off: the same update as an unreachable clip norm ...
    assert all(torch.equal(a, b) for a, b in zip(off, big))
    assert not all(torch.equal(a, b) for a, b in zip(off, clipped))  # ... unlike a clipping one


@row("bad-flags")
def bad_flags(request, tmp_path, capsys):
    for argv, message in ((["--cd_target_ema", "1.5"], "--cd_target_ema"), (["--preview_every", "-1"], "--preview_every"),
                          (["--out", ""], "--out"), (["--mode", "cd", "--teacher", "t", "--cm_steps", "1"], "--cm_steps"),
                          (["--num_res_blocks", "0"], "UNetConfig.num_res_blocks")):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err


@row("nonfinite-loss")
def nonfinite_loss(request, tmp_path, capsys):
    monkeypatch = request.getfixturevalue("monkeypatch")
    out = tmp_path / "nan"
    assert run(SMALL + ["--steps", "2", "--save_every", "1", "--out", str(out)]) == 0
    monkeypatch.setattr(trainer_module, "edm_loss", lambda *a, **k: torch.tensor(float("inf"), requires_grad=True))
    before = snapshot(out / "checkpoints")
    assert run(["--resume", str(out), "--steps", "4", "--progress", "False"]) == 1
    err = capsys.readouterr().err
    assert "loss became inf at step 3" in err and f"{out / 'checkpoints' / 'latest.pt'} (step 2)" in err
    assert snapshot(out / "checkpoints") == before


# ----- empty samples --------------------------------------------------------------------------------------
@row("empty-batch")
def empty_batch(request, tmp_path, capsys):
    for attention in ("flash", "window", "linear", "sparse", "height", "serialized"):
        model = UNet3D(create_tiny_unet_config(attention_type=attention))
        empty = SparseVoxels(torch.zeros(0, 8), torch.zeros(0, 4, dtype=torch.int32), (8, 16, 16), 2)
        out = model(empty, torch.zeros(2))
        assert out.num_voxels == 0 and out.num_channels == 4, attention
    for backend in ("sparse", "dense"):
        _empty_samples_train(Trainer(TrainConfig(train_size=2, model_channels=8, steps=2, progress=False,
                                                 backend=backend, out=str(tmp_path / backend)), DistContext()))


def _empty_samples_train(trainer):
    """A step of empty samples applies no update; an empty sample beside a full one is skipped by the loss."""
    real = trainer.dataset[0]
    drop = lambda s: {**s, "radar_coords": s["radar_coords"][:0], "radar_feats": s["radar_feats"][:0]}
    trainer.dataset._cache = {0: drop(real), 1: drop(trainer.dataset[1])}
    before = [p.detach().clone() for p in trainer.model.parameters()]
    step = trainer.train_step()  # every sample empty: nothing to learn from, no update
    assert step["skipped_samples"] == 2 and step["loss"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    trainer.dataset._cache = {0: real, 1: drop(trainer.dataset[1])}
    step = trainer.train_step()  # one empty sample: skipped, the other trains alone
    assert step["skipped_samples"] == 1 and step["loss"] > 0
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def _reference_folder(root, frames=("000", "001"), seed=0):
    rng = np.random.default_rng(seed)
    for kind in ("radar_voxel", "target_voxel"):
        (root / "s0" / kind).mkdir(parents=True, exist_ok=True)
        for frame in frames:
            xyz = np.unique(rng.integers(0, [16, 8, 4], size=(10, 3)), axis=0)
            np.savez(root / "s0" / kind / f"{frame}.npz", coords=xyz,
                     features=rng.uniform(0, 1, (len(xyz), 4)).astype(np.float32), shape=np.array([16, 8, 4, 4]))
    return root


@row("empty-frames")
def empty_frames(request, tmp_path, capsys):
    root = _reference_folder(tmp_path / "d", ("000", "001", "002"))
    np.savez(root / "s0" / "radar_voxel" / "001.npz", coords=np.zeros((0, 3), np.int64),
             features=np.zeros((0, 4), np.float32), shape=np.array([16, 8, 4, 4]))
    with pytest.warns(UserWarning, match=r"1 of 3 frame\(s\) have no radar or no target voxel.*001.npz"):
        ds = validate_dataset(open_dataset(str(root), "reference"))
    assert [os.path.basename(r) for r, _ in ds.pairs] == ["000.npz", "002.npz"]
    for frame in ("000", "002"):
        shutil.copy(root / "s0" / "radar_voxel" / "001.npz", root / "s0" / "radar_voxel" / f"{frame}.npz")
    assert run(SMALL + ["--data", str(root), "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    assert "every one of the 3 frame(s) has an empty" in capsys.readouterr().err


@row("validated-at-start")
def validated_at_start(request, tmp_path, capsys):
    root = _reference_folder(tmp_path / "d", [f"{i:03d}" for i in range(6)])
    bad = root / "s0" / "target_voxel" / "004.npz"
    np.savez(bad, coords=np.array([[1.0, 2.0, np.nan]]), features=np.zeros((1, 4), np.float32),
             shape=np.array([16, 8, 4, 4]))
    assert run(SMALL + ["--data", str(root), "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "NaN" in err and not (tmp_path / "r").exists()  # refused before the run started
    monkeypatch = request.getfixturevalue("monkeypatch")
    np.savez(bad, coords=np.array([[1, 2, 3]]), features=np.zeros((1, 4), np.float32), shape=np.array([16, 8, 4, 4]))
    ds = validate_dataset(open_dataset(str(root), "reference"))  # fixed file: new mtime/size, validated again
    assert len(ds) == 6
    calls = []
    monkeypatch.setattr(type(ds), "inspect", lambda self, i: calls.append(i))
    assert len(validate_dataset(open_dataset(str(root), "reference"))) == 6 and calls == []  # cached


# ----- file formats ---------------------------------------------------------------------------------------
def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@row("nan-values")
def nan_values(request, tmp_path, capsys):
    base = dict(coords=np.array([[0, 0, 0], [1, 1, 1]]), features=np.full((2, 4), 0.5, np.float32),
                shape=np.array([4, 4, 4, 4]))
    bad_feats = _npz(tmp_path / "f.npz", **{**base, "features": np.array([[0.5] * 4, [np.nan] * 4], np.float32)})
    bad_coords = _npz(tmp_path / "c.npz", **{**base, "coords": np.array([[0.0, 0, 0], [np.nan, 1, 1]])})
    for path in (bad_feats, bad_coords):
        with pytest.raises(formats.DataFormatError, match=re.escape(str(path)) + ".*NaN"):
            formats.read_voxel_npz(path)
    formats.write_pcd(tmp_path / "r.pcd", np.array([[1, 2, 0, np.nan, 1.0]]), ["x", "y", "z", "rcs", "doppler"])
    from sparse_radar.data.point_fields import radar_columns
    with pytest.raises(formats.DataFormatError, match=r"r\.pcd: 1 radar point\(s\) hold NaN"):
        radar_columns(tmp_path / "r.pcd", *formats.read_point_fields(tmp_path / "r.pcd"))


@row("duplicate-coords")
def duplicate_coords(request, tmp_path, capsys):
    path = _npz(tmp_path / "d.npz", coords=np.array([[1, 2, 3], [0, 0, 0], [1, 2, 3]]),
                features=np.zeros((3, 4), np.float32), shape=np.array([4, 4, 4, 4]))
    with pytest.raises(formats.DataFormatError, match=r"d\.npz: 1 duplicate coordinate.*\[1, 2, 3\]"):
        formats.read_voxel_npz(path)


@row("voxel-shape")
def voxel_shape(request, tmp_path, capsys):
    ok = dict(coords=np.array([[0, 0, 0]]), features=np.zeros((1, 4), np.float32), shape=np.array([4, 4, 4, 4]))
    cases = {"scalar": dict(shape=np.array(4)), "fractional": dict(shape=np.array([4.7, 4, 4, 4])),
             "strings": dict(features=np.array([["a"] * 4])), "string-coords": dict(coords=np.array([["0", "0", "0"]])),
             "float-coords": dict(coords=np.array([[0.5, 0, 0]])), "outside": dict(coords=np.array([[4, 0, 0]])),
             "beyond-int32": dict(coords=np.array([[2**31 + 1, 0, 0]]), shape=np.array([2**31 + 8, 4, 4, 4]))}
    for name, change in cases.items():
        path = _npz(tmp_path / f"{name}.npz", **{**ok, **change})
        with pytest.raises(formats.DataFormatError, match=re.escape(str(path))):
            formats.read_voxel_npz(path)
    coords, _, grid = formats.read_voxel_npz(_npz(tmp_path / "ok.npz", **{**ok, "coords": np.array([[1.0, 2.0, 3.0]])}))
    assert coords.tolist() == [[3, 1, 2]] and grid == (4, 4, 4)  # whole-number float coords are fine


@row("ply-header")
def ply_header(request, tmp_path, capsys):
    def ply(name, count_line, body=b"1 2 3\n"):
        path = tmp_path / f"{name}.ply"
        header = ["ply", "format ascii 1.0"] + ([count_line] if count_line else []) + \
            ["property float x", "property float y", "property float z", "end_header"]
        path.write_bytes(("\n".join(header) + "\n").encode() + body)
        return path
    cases = [("neg", "element vertex -1", "negative"), ("abc", "element vertex abc", "not a whole number"),
             ("missing", None, "element vertex"), ("huge", "element vertex 1000000000000", "exceeds"),
             ("text", "element vertex 1", "non-numeric")]
    for name, line, message in cases:
        path = ply(name, line, b"1 two 3\n" if name == "text" else b"1 2 3\n")
        with pytest.raises(formats.DataFormatError, match=re.escape(str(path)) + ".*" + message):
            formats.read_ply(path)
    binary = tmp_path / "huge_bin.ply"
    binary.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000000\nproperty double x\n"
                       b"property double y\nproperty double z\nend_header\n" + b"\0" * 24)
    with pytest.raises(formats.DataFormatError, match="exceeds"):
        formats.read_ply(binary)


@row("lidar-columns")
def lidar_columns(request, tmp_path, capsys):
    root = tmp_path / "d"
    (root / "radar").mkdir(parents=True)
    (root / "lidar").mkdir()
    np.save(root / "radar" / "0.npy", np.array([[5.0, 0, 0, 1, 2]], np.float32))
    np.save(root / "lidar" / "0.npy", np.array([[5.0, 0, 0]], np.float32))
    with pytest.raises(formats.DataFormatError, match=r"lidar/0\.npy: LiDAR points need 4 columns"):
        open_dataset(str(root), "points")[0]
    (root / "lidar" / "0.npy").unlink()
    formats.write_pcd(root / "lidar" / "0.pcd", np.array([[5.0, 0, 0, 3]]), ["x", "y", "z", "ring"])
    with pytest.raises(formats.DataFormatError, match=r"0\.pcd: LiDAR points need an intensity field"):
        open_dataset(str(root), "points")[0]


@row("pcd-fields")
def pcd_fields(request, tmp_path, capsys):
    from sparse_radar.data.point_fields import radar_columns
    names = ["x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp"]
    points = np.array([[3.0, 4.0, 0.5, 7, 42, 12.5, 9, 9, 1.0, 2.0]])
    formats.write_pcd(tmp_path / "n.pcd", points, names)
    got = radar_columns(tmp_path / "n.pcd", *formats.read_point_fields(tmp_path / "n.pcd"))
    np.testing.assert_allclose(got, [[3, 4, 0.5, 12.5, (3 * 1 + 4 * 2) / 5]], rtol=1e-6)  # radial of vx_comp/vy_comp
    formats.write_ply(tmp_path / "v.ply", np.array([[1.0, 2, 3, -4, 0.25, 9, 0]]),
                      ["x", "y", "z", "RCS", "v_r", "v_r_compensated", "time"])
    got = radar_columns(tmp_path / "v.ply", *formats.read_point_fields(tmp_path / "v.ply"))
    np.testing.assert_allclose(got, [[1, 2, 3, -4, 0.25]])
    formats.write_pcd(tmp_path / "m.pcd", points[:, :6], names[:6])
    with pytest.raises(formats.DataFormatError, match=r"m\.pcd: radar points need doppler"):
        radar_columns(tmp_path / "m.pcd", *formats.read_point_fields(tmp_path / "m.pcd"))


@row("clipped-features")
def clipped_features(request, tmp_path, capsys):
    root = _reference_folder(tmp_path / "d")
    path = root / "s0" / "radar_voxel" / "000.npz"
    data = dict(np.load(path))
    data["features"][:2, 0] = [1.5, -0.5]
    np.savez(path, **data)
    with pytest.warns(UserWarning, match=r"2 feature value\(s\) outside \[0, 1\] in 1 frame"):
        ds = validate_dataset(open_dataset(str(root), "reference"))
    assert ds[0]["radar_feats"][:2, 0].tolist() == [1.0, -1.0]


@row("unpaired-frames")
def unpaired_frames(request, tmp_path, capsys):
    root = _reference_folder(tmp_path / "d", ("000", "001", "002"))
    (root / "s0" / "target_voxel" / "001.npz").unlink()
    with pytest.warns(UserWarning, match=r"1 radar frame\(s\) without a target_voxel file are skipped \(001.npz\)"):
        ds = open_dataset(str(root), "reference")
    assert len(ds) == 2


@row("ambiguous-frames")
def ambiguous_frames(request, tmp_path, capsys):
    root = tmp_path / "d"
    (root / "radar").mkdir(parents=True)
    (root / "lidar").mkdir()
    np.save(root / "radar" / "0000.npy", np.zeros((1, 5), np.float32))
    formats.write_ply(root / "radar" / "0000.ply", np.zeros((1, 5)), ["x", "y", "z", "rcs", "doppler"])
    np.save(root / "lidar" / "0000.npy", np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"frame '0000' has two files, 0000.npy and 0000.ply"):
        open_dataset(str(root), "points")


# ----- the API --------------------------------------------------------------------------------------------
@row("int32-coords")
def int32_coords(request, tmp_path, capsys):
    feats = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="int32"):
        SparseVoxels(feats, torch.tensor([[0, 2**31 + 5, 0, 0]]), (2**31 + 10, 1, 1), 1)
    with pytest.raises(ValueError, match="whole numbers"):
        SparseVoxels(feats, torch.tensor([[0, 3, 0, 0]]), (4.7, 1, 1), 1)
    with pytest.raises(ValueError, match="integer tensor"):
        SparseVoxels(feats, torch.tensor([[0.0, 1.5, 0, 0]]), (4, 1, 1), 1)
    ok = SparseVoxels(feats, torch.tensor([[0, 2**31 - 1, 0, 0]]), (2**31, 1, 1), 1)
    assert ok.coords[0, 1] == 2**31 - 1


@row("key-range")
def key_range(request, tmp_path, capsys):
    kc.check_key_range((2**31, 2**31, 2), 1)  # 2^63 cells: the largest key is 2^63 - 1, int64's maximum
    with pytest.raises(ValueError, match="int64"):
        kc.check_key_range((2**31, 2**31, 2), 2)
    with pytest.raises(ValueError, match="int64"):
        kc.check_key_range((2**31, 2**31, 3), 1)


@row("dense-batch-0")
def dense_batch_0(request, tmp_path, capsys):
    with pytest.raises(ValueError, match="at least one sample"):
        DenseVoxels(torch.zeros(0, 2, 4, 4, 4))


@row("unet-dtype")
def unet_dtype(request, tmp_path, capsys):
    model = UNet3D(create_tiny_unet_config())
    for dtype in (torch.float64, torch.float16):
        x = SparseVoxels(torch.zeros(1, 8, dtype=dtype), torch.tensor([[0, 1, 2, 3]]), (8, 16, 16), 1)
        with pytest.raises(TypeError, match=f"{dtype}.*torch.float32.*use_fp16"):
            model(x, torch.zeros(1))
