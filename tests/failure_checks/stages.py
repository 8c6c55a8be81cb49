"""Rows about the stages before and after voxel-space diffusion: a checkpoint of the wrong stage, and --stage all
stopped and started again."""
from sparse_radar.sample import run as sample
from sparse_radar.train import run as train
from sparse_radar.training.checkpoint import load_checkpoint
from tests.conftest import SMALL_GRID

from . import row, snapshot


@row("stage-mismatch")
def stage_mismatch(request, tmp_path, capsys):
    vae, ldm, _ = request.getfixturevalue("latent_runs")
    structure, _ = request.getfixturevalue("structure_runs")
    edm, _ = request.getfixturevalue("small_runs")
    cases = [(lambda: sample([vae, "--out", str(tmp_path / "a")]), "sampling needs a diffusion checkpoint"),
             (lambda: sample([structure, "--out", str(tmp_path / "b")]), "--support predicted --structure"),
             (lambda: train(["--stage", "ldm", "--vae", structure, "--out", str(tmp_path / "c")]),
              "pass a --stage vae run"),
             (lambda: train(["--stage", "cd", "--teacher", edm, "--out", str(tmp_path / "d")]),
              "--stage cd distils a --stage ldm run"),
             (lambda: train(["--support", "predicted", "--structure", vae, "--out", str(tmp_path / "e")]),
              "holds no structure network")]
    for call, message in cases:
        assert call() == 2
        assert message in capsys.readouterr().err
    assert not any(p.exists() for p in tmp_path.iterdir() if p.name in "abcde")


@row("stage-all-resume")
def stage_all_resume(request, tmp_path, capsys):
    out = tmp_path / "all"
    common = ["--stage", "all", "--out", str(out), "--train_size", "2", "--grid", SMALL_GRID, "--progress", "False",
              "--preview_steps", "1", "--cm_steps", "4"]
    assert train(common + ["--stage_steps", "1,1,1"]) == 0
    vae_files = snapshot(out / "vae")
    capsys.readouterr()
    assert train(common + ["--stage_steps", "1,2,2"]) == 0  # as after a stop in the middle of ldm
    text = capsys.readouterr().out
    assert "vae: finished" in text and text.count("resuming at step 1") == 2
    assert snapshot(out / "vae") == vae_files
    assert [load_checkpoint(str(out / s))["step"] for s in ("vae", "ldm", "cd")] == [1, 2, 2]
