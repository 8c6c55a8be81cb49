"""--resume, --out and --overwrite never destroy a user's files; changed flags on resume are refused or logged."""
import csv
import json
import os
import shutil

import pytest

from sparse_radar.train import run
from sparse_radar.training import load_checkpoint

SMALL = ["--train_size", "4", "--model_channels", "8", "--progress", "False", "--preview_steps", "1",
         "--attention_type", "window"]


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


def test_resume_outside_a_run_folder_needs_out_and_touches_nothing(run_copy, tmp_path, capsys):
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


def test_resume_from_an_older_step_branches_with_out_and_never_cuts_the_run(run_copy, tmp_path, capsys):
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


def test_overwrite_cuts_a_run_back_to_the_resumed_step(run_copy, capsys):
    assert run(["--resume", str(run_copy / "checkpoints" / "step_000002.pt"), "--steps", "3",
                "--progress", "False", "--overwrite"]) == 0
    assert "cut back to step 2" in capsys.readouterr().out
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["latest.pt", "step_000002.pt", "step_000003.pt"]
    assert [s for s, _ in rows(run_copy)] == ["1", "2", "3"] and load_checkpoint(str(run_copy))["step"] == 3


def test_out_on_an_existing_run_is_refused_unless_overwrite(run_copy, capsys):
    before = snapshot(run_copy)
    assert run(SMALL + ["--steps", "1", "--out", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(run_copy) == before
    assert run(SMALL + ["--steps", "1", "--out", str(run_copy), "--overwrite"]) == 0
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["latest.pt", "step_000001.pt"]  # no old steps mixed in
    assert [s for s, _ in rows(run_copy)] == ["1"]


def test_resume_refuses_model_and_diffusion_flags_and_logs_the_changeable_ones(run_copy, tmp_path, capsys):
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


def test_consistency_distillation_takes_the_teachers_architecture(base_run, tmp_path, capsys):
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


def test_stale_temporary_checkpoints_are_removed_on_resume(run_copy, capsys):
    (run_copy / "checkpoints" / ".tmp-abc123.pt").write_bytes(b"")
    assert run(["--resume", str(run_copy), "--steps", "5", "--progress", "False"]) == 0
    assert "removed 1 unfinished temporary checkpoint file" in capsys.readouterr().out
    assert not [n for n in os.listdir(run_copy / "checkpoints") if n.startswith(".tmp-")]


def test_metrics_history_is_replaced_atomically(tmp_path, monkeypatch):
    from sparse_radar.training import trainer as trainer_module
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n")
    calls = []
    real = os.replace
    monkeypatch.setattr(trainer_module.os, "replace", lambda a, b: (calls.append(b), real(a, b)))
    fh, _ = trainer_module.open_metrics(str(path), 2)
    fh.close()
    assert calls == [str(path)] and path.read_text().splitlines()[1:] == ["1,0.5,,,,,,", "2,0.4,,,,,,"]
