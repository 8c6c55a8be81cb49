"""`python -m sparse_radar.train`: run folder, both backends, resume exactness, accumulation, safety."""
import csv
import json
import os
import pickle

import pytest
import torch

from sparse_radar.train import run
from sparse_radar.training import load_checkpoint, save_checkpoint
from sparse_radar.training import diffusion_stage
from sparse_radar.training import trainer as trainer_module
from sparse_radar.training.config import TrainConfig, parse_args
from sparse_radar.training.distributed import DistContext
from sparse_radar.training.trainer import Trainer

SMALL = ["--train_size", "4", "--model_channels", "8", "--progress", "False", "--preview_steps", "2",
         "--attention_type", "window"]


def losses(folder):
    with open(os.path.join(folder, "metrics.csv"), newline="") as fh:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("backend,support,fp16", [("sparse", "radar_dilated", "False"),
                                                  ("dense", "radar_dilated", "False"), ("dense", "full", "False"),
                                                  ("sparse", "radar_dilated", "True")])
def test_run_folder_on_both_fields(tmp_path, backend, support, fp16):
    out = tmp_path / "run"
    assert run(SMALL + ["--steps", "2", "--save_every", "1", "--field", backend, "--support", support,
                        "--use_fp16", fp16, "--out", str(out)]) == 0
    names = set(os.listdir(out))
    assert {"config.json", "metrics.csv", "preview.png", "checkpoints"} <= names
    assert sorted(os.listdir(out / "checkpoints")) == ["latest.pt", "step_000001.pt", "step_000002.pt"]
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["field"] == backend and config["model"]["model_channels"] == 8
    assert config["model"]["use_fp16"] == (fp16 == "True")
    assert config["model"]["input_size"] == [8, 64, 64] and config["diffusion"]["sigma_data"] == 0.5
    rows = losses(out)
    assert [s for s, _ in rows] == [1, 2] and all(float(v) > 0 for _, v in rows)
    png = (out / "preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") > 100
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)  # tensors and plain values only
    assert state["step"] == 2 and isinstance(state["model"]["input_conv.weight"], torch.Tensor)


def test_resume_gives_the_same_losses_and_weights(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    common = SMALL + ["--save_every", "2", "--dropout", "0.1", "--grad_accum", "2"]
    assert run(common + ["--steps", "4", "--out", str(whole)]) == 0
    assert run(common + ["--steps", "2", "--out", str(part)]) == 0
    with open(part / "metrics.csv", "a") as fh:  # a row written after the last checkpoint, lost in a crash
        fh.write("3,999,0,0,0,0,0\n")
    assert run(["--resume", str(part), "--steps", "4", "--progress", "False"]) == 0
    assert losses(part) == losses(whole)
    a = load_checkpoint(str(whole))
    b = load_checkpoint(str(part / "checkpoints" / "latest.pt"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["ema"]["0.999"].items():
        assert torch.equal(value, b["ema"]["0.999"][key]), key


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    base = dict(train_size=4, model_channels=8, steps=1, progress=False)
    a = Trainer(TrainConfig(**base, batch_size=2, grad_accum=1, out=str(tmp_path / "a")), DistContext())
    b = Trainer(TrainConfig(**base, batch_size=1, grad_accum=2, out=str(tmp_path / "b")), DistContext())
    ra, rb = a.train_step(), b.train_step()
    assert abs(ra["loss"] - rb["loss"]) < 1e-5
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    # every sample once: positions of consecutive steps and micro-batches never repeat
    seen = [p for step in range(3) for micro in range(2) for p in b.stream.positions(step, micro)]
    assert seen == list(range(6))
    assert sorted(b.stream.index(p) for p in range(4)) == [0, 1, 2, 3]  # each epoch is a permutation


def test_non_finite_loss_stops_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(diffusion_stage, "edm_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    assert run(SMALL + ["--steps", "3", "--out", str(tmp_path / "nan")]) == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 1" in err and "--lr" in err and "No checkpoint was written yet" in err
    assert not os.path.exists(tmp_path / "nan" / "checkpoints")


def test_consistency_distillation_and_training_modes(tmp_path):
    teacher = tmp_path / "teacher"
    assert run(SMALL + ["--steps", "1", "--out", str(teacher)]) == 0
    cd = tmp_path / "cd"
    assert run(["--train_size", "4", "--progress", "False", "--mode", "cd", "--teacher", str(teacher),
                "--steps", "2", "--cm_steps", "10", "--out", str(cd)]) == 0
    state = load_checkpoint(str(cd))
    assert state["cm_target"] is not None and state["model_config"]["model_channels"] == 8
    ct = tmp_path / "ct"
    assert run(SMALL + ["--mode", "ct", "--steps", "2", "--out", str(ct)]) == 0
    assert len(losses(ct)) == 2


def test_bad_flags_exit_with_a_message(capsys):
    for argv, message in ((["--mode", "cd"], "--teacher"), (["--attention_type", "global"], "--attention_type"),
                          (["--batch_size", "0"], "--batch_size"), (["--use_fp16", "maybe"], "True or False"),
                          (["--support_radius", "1,2"], "--support_radius")):  # more: failure_checks bad-flags
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_checkpoints_never_unpickle_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "sparse_radar/checkpoint-1", "x": Evil()}, fh, protocol=2)
    with pytest.raises(ValueError, match="not a sparse_radar checkpoint"):
        load_checkpoint(str(path))
    save_checkpoint(str(tmp_path / "ok.pt"), {"w": torch.ones(2), "config": {"a": [1, 2]}})
    assert load_checkpoint(str(tmp_path / "ok.pt"))["config"] == {"a": [1, 2]}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_metrics_history_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n")
    calls = []
    real = os.replace
    monkeypatch.setattr(trainer_module.os, "replace", lambda a, b: (calls.append(b), real(a, b)))
    fh, _ = trainer_module.open_metrics(str(path), 2)
    fh.close()
    assert calls == [str(path)] and path.read_text().splitlines()[1:] == ["1,0.5,,,,,,", "2,0.4,,,,,,"]


def test_backend_is_the_deprecated_name_of_field(capsys):
    """--backend sparse|dense still chooses the field, with a line saying it is deprecated; a run's config saved
    under the old key is read; a contradiction with --field is refused."""
    from sparse_radar.training.config import TrainConfig, parse_args
    cfg = parse_args(["--backend", "dense"])
    assert cfg.field == "dense" and "field" in cfg.given_flags
    assert "--backend is deprecated, use --field dense" in capsys.readouterr().err
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "field"}
    assert TrainConfig.from_dict({**old, "backend": "dense"}).field == "dense"
    with pytest.raises(SystemExit):
        parse_args(["--backend", "dense", "--field", "sparse"])
    assert "contradicts --field sparse" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--field", "cuda"])
