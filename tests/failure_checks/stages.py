"""Rows about the stages before and after voxel-space diffusion: a checkpoint of the wrong stage, and --stage all
stopped and started again."""
import shutil

import numpy as np

from sparse_radar.evaluate import run as evaluate
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
    ldm_files = snapshot(out / "ldm")
    shutil.rmtree(out / "cd" / "checkpoints")  # cd stopped before its first checkpoint: config.json, metrics.csv
    assert train(common + ["--stage_steps", "1,2,2"]) == 0
    assert "ldm: finished" in capsys.readouterr().out and snapshot(out / "ldm") == ldm_files
    assert load_checkpoint(str(out / "cd"))["step"] == 2


OTHER_GRID = "0,-6.4,-1,12.8,6.4,2.2@0.4"  # the same shape as SMALL_GRID, (8, 32, 32), at half the voxel size


@row("grid-mismatch")
def grid_mismatch(request, tmp_path, capsys):
    edm, _ = request.getfixturevalue("small_runs")
    vae, _, _ = request.getfixturevalue("latent_runs")
    common = ["--train_size", "2", "--progress", "False", "--preview_steps", "1", "--steps", "1"]
    other = str(tmp_path / "other_structure")
    assert train(common + ["--grid", OTHER_GRID, "--stage", "structure", "--out", other]) == 0
    bigger = str(tmp_path / "bigger_structure")
    assert train(common + ["--grid", "0,-12.8,-2,51.2,12.8,4.4@0.8", "--stage", "structure", "--out", bigger]) == 0
    capsys.readouterr()
    for structure in (other, bigger):  # other voxel sizes on the same shape, or another shape
        assert sample([edm, "--support", "predicted", "--structure", structure, "--count", "1", "--steps", "1",
                       "--out", str(tmp_path / "s"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "(8, 32, 32) over x 0..25.6" in err and "0.8 x 0.8 x 0.8 m" in err and f"of {structure}" in err
        assert train(common + ["--grid", SMALL_GRID, "--support", "predicted", "--structure", structure,
                               "--out", str(tmp_path / "t")]) == 2
        assert "was trained on the grid" in capsys.readouterr().err
    assert train(common + ["--grid", OTHER_GRID, "--stage", "ldm", "--vae", vae, "--out", str(tmp_path / "l")]) == 2
    err = capsys.readouterr().err
    assert f"the VAE {vae} was trained on the grid" in err and "0.4 x 0.4 x 0.4 m" in err
    folder = tmp_path / "voxels"  # reference voxel files of another shape than the model's grid
    for kind in ("radar_voxel", "target_voxel"):
        (folder / "s0" / kind).mkdir(parents=True)
        np.savez(folder / "s0" / kind / "000.npz", coords=np.array([[1, 2, 3]]), features=np.full((1, 4), 0.5),
                 shape=np.array([16, 8, 4, 4]))
    for command in (sample, evaluate):
        assert command([edm, "--input", str(folder), "--data_format", "reference", "--out", str(tmp_path / "r"),
                        "--steps", "1", "--no-progress"]) == 2
        assert "grid (4, 16, 8) (D, H, W) differs from the model's (8, 32, 32)" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("s", "t", "l", "r"))
