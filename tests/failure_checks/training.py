"""Rows about run folders, flags, the training loop and empty samples."""
import errno
import io
import json
import os
import re
import shutil
import struct
import zipfile

import pytest
import torch

from sparse_radar import SparseVoxels, UNet3D
from sparse_radar.models import create_tiny_unet_config
from sparse_radar.train import run
from sparse_radar.training import checkpoint as checkpoint_module
from sparse_radar.training import load_checkpoint
from sparse_radar.training.checkpoint import save_checkpoint
from sparse_radar.training import diffusion_stage
from sparse_radar.training.config import TrainConfig, parse_args
from sparse_radar.training.distributed import DistContext
from sparse_radar.training.trainer import Trainer
from tests.conftest import SMALL_GRID

from . import SMALL, row, rows, snapshot


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




def _flip_tensor_bytes(path, count=64):
    """Flip `count` bytes at the start of the largest tensor record of a torch zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        data = bytearray(fh.read(count))
        fh.seek(start)
        fh.write(bytes(b ^ 0xFF for b in data))


@row("checkpoint-corrupt")
def checkpoint_corrupt(request, tmp_path, capsys):
    from sparse_radar.sample import run as sample
    run_copy = request.getfixturevalue("run_copy")
    step4 = run_copy / "checkpoints" / "step_000004.pt"
    _flip_tensor_bytes(step4)
    for call in (lambda: sample([str(step4), "--count", "1", "--out", str(tmp_path / "s"), "--no-progress"]),
                 lambda: run(["--resume", str(step4), "--steps", "5", "--progress", "False"])):
        assert call() == 2
        assert f"{step4}: corrupt checkpoint" in capsys.readouterr().err
    state = load_checkpoint(str(run_copy / "checkpoints" / "step_000002.pt"))
    key = next(iter(state["model"]))
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    nan = tmp_path / "nan.pt"
    save_checkpoint(str(nan), {k: v for k, v in state.items() if k not in ("format", "content_sha256")})
    with pytest.raises(ValueError, match=f"{nan}: the weights hold NaN or inf \\(model/{re.escape(key)}\\)"):
        load_checkpoint(str(nan))
    cut = tmp_path / "cut.pt"
    cut.write_bytes((run_copy / "checkpoints" / "latest.pt").read_bytes()[:5000])
    with pytest.raises(ValueError, match=f"{cut}: not a readable sparse_radar checkpoint: truncated or corrupt"):
        load_checkpoint(str(cut))


@row("kill-between-saves")
def kill_between_saves(request, tmp_path, capsys):
    from sparse_radar.sample import run as sample
    run_copy = request.getfixturevalue("run_copy")
    ckpt = run_copy / "checkpoints"
    shutil.copy(ckpt / "step_000002.pt", ckpt / "latest.pt")  # step_000004.pt written, latest.pt not yet
    assert load_checkpoint(str(run_copy))["step"] == 4
    assert sample([str(run_copy), "--count", "1", "--steps", "1", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert run(["--resume", str(run_copy), "--steps", "5", "--progress", "False"]) == 0
    assert "resuming at step 4" in capsys.readouterr().out and load_checkpoint(str(run_copy))["step"] == 5
    first = tmp_path / "first"  # a stop in the first save: a step file and no latest.pt at all
    shutil.copytree(run_copy, first)
    for name in os.listdir(first / "checkpoints"):
        if name != "step_000002.pt":
            os.remove(first / "checkpoints" / name)
    assert run(["--resume", str(first), "--steps", "3", "--progress", "False"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    (first / "checkpoints" / "latest.pt").write_bytes(b"PK\x03\x04cut")  # a latest.pt cut short
    assert run(["--resume", str(first), "--steps", "4", "--progress", "False"]) == 0
    assert "resuming at step 3" in capsys.readouterr().out


@row("checkpoint-disk-full")
def checkpoint_disk_full(request, tmp_path, capsys):
    run_copy = request.getfixturevalue("run_copy")
    monkeypatch = request.getfixturevalue("monkeypatch")
    real = os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, fd):
            self.inner = real(fd, "wb")

        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.inner.close()
            super().close()

    monkeypatch.setattr(checkpoint_module.os, "fdopen", lambda fd, mode="r": Full(fd))
    before = sorted(os.listdir(run_copy / "checkpoints"))
    assert run(["--resume", str(run_copy), "--steps", "6", "--save_every", "1", "--progress", "False"]) == 1
    err = capsys.readouterr().err
    path = run_copy / "checkpoints" / "step_000005.pt"
    assert f"cannot write the checkpoint {path}: No space left on device (ENOSPC)" in err
    assert "Traceback" not in err and sorted(os.listdir(run_copy / "checkpoints")) == before


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
                          (["--num_res_blocks", "0"], "UNetConfig.num_res_blocks"),
                          (["--channel_mult", "1,x"], "UNetConfig.channel_mult")):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err


@row("nonfinite-loss")
def nonfinite_loss(request, tmp_path, capsys):
    monkeypatch = request.getfixturevalue("monkeypatch")
    out = tmp_path / "nan"
    assert run(SMALL + ["--steps", "2", "--save_every", "1", "--out", str(out)]) == 0
    monkeypatch.setattr(diffusion_stage, "edm_loss", lambda *a, **k: torch.tensor(float("inf"), requires_grad=True))
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
    for field in ("sparse", "dense"):
        # SMALL_GRID (8x32x32, the default's quarter): a dense step on the default grid takes seconds on a CPU
        _empty_samples_train(Trainer(TrainConfig(train_size=2, model_channels=8, steps=2, progress=False,
                                                 field=field, grid=SMALL_GRID, out=str(tmp_path / field)),
                                     DistContext()))


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

