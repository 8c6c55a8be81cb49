"""--stage structure and --support predicted through train, sample, evaluate and the Densifier."""
import csv
import json

import pytest
import torch

from sparse_radar.data.datasets import SyntheticDataset, collate
from sparse_radar.data.grid import parse_grid
from sparse_radar.data.support import coverage
from sparse_radar.evaluate import run as evaluate
from sparse_radar.inference import Densifier
from sparse_radar.models.structure_net import predicted_support
from sparse_radar.sample import run as sample
from sparse_radar.train import run as train
from sparse_radar.training.checkpoint import load_checkpoint
from sparse_radar.training.stages import load_structure
from tests.conftest import SMALL_GRID


def test_structure_run_records_its_kind_and_logs_recall(structure_runs):
    structure, predicted = structure_runs
    state = load_checkpoint(structure)
    assert state["model_kind"] == "structure" and state["step"] == 2
    assert [list(s) for s in state["model_config"]["strides"]] == [[2, 2, 2]] * 3
    with open(f"{structure}/metrics.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    # the columns say what a structure run logs: its finest level's kept voxels and their recall of the target
    assert reader.fieldnames == ["step", "loss", "grad_norm", "lr", "predicted_voxels", "recall", "seconds"]
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(0 <= float(r["recall"]) <= 1 and float(r["loss"]) > 0 and int(r["predicted_voxels"]) > 0
               for r in rows)
    emb = load_checkpoint(predicted)["structure"]
    net = load_structure(structure)
    for name, value in net.state_dict().items():  # the diffusion checkpoint carries the structure run's EMA net
        assert torch.equal(emb["weights"][name], value)


def test_structure_run_resumes(structure_runs, tmp_path):
    structure, _ = structure_runs
    out = str(tmp_path / "resumed")
    assert train(["--resume", f"{structure}/checkpoints/latest.pt", "--out", out, "--steps", "3",
                  "--progress", "False"]) == 0
    assert load_checkpoint(out)["step"] == 3 and load_checkpoint(out)["model_kind"] == "structure"


def test_densifier_generates_on_the_predicted_support(structure_runs, small_runs):
    structure, predicted = structure_runs
    grid = parse_grid(SMALL_GRID)
    radar, target = collate([SyntheticDataset("test", 2, grid)[i] for i in range(2)], grid.shape)
    expected = predicted_support(load_structure(structure), radar)
    for densifier in (Densifier.from_checkpoint(predicted),
                      Densifier.from_checkpoint(small_runs[0], support="predicted", structure=structure)):
        assert densifier.support == "predicted" and densifier.radius == (0, 0, 0)
        out = densifier.generate(radar)
        assert torch.equal(out.structure.keys, expected.keys)
    assert bool(torch.isin(radar.structure.keys, expected.keys).all())
    inside = set(expected.keys.tolist())
    shares = [sum(int(k) in inside for k, b in zip(target.structure.keys, target.coords[:, 0]) if int(b) == s) /
              int((target.coords[:, 0] == s).sum()) for s in range(2)]
    assert coverage(expected, target).tolist() == pytest.approx(shares)


def test_sample_and_evaluate_on_the_predicted_support(structure_runs, small_runs, tmp_path):
    structure, predicted = structure_runs
    out = tmp_path / "s"
    assert sample([small_runs[0], "--support", "predicted", "--structure", structure, "--count", "2", "--steps", "1",
                   "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["support"] == "predicted" and summary["frames_with_ground_truth"] == 2
    ev = tmp_path / "ev"
    assert evaluate([predicted, "--count", "2", "--steps", "1", "--out", str(ev), "--no-progress"]) == 0
    report = json.loads((ev / "evaluation.json").read_text())
    names = [r["support"] for r in report["supports"]]
    assert names[1] == "predicted (structure network)" and names[-1].startswith("oracle")
    assert "predicted (structure network)" in report["methods"]
    assert report["supports"][-1]["recall"] == pytest.approx(1.0)
    # Heun's churn and starting noise level reach the sampler: another cloud, and the row says which
    churned = tmp_path / "churned"
    assert evaluate([predicted, "--count", "2", "--steps", "2", "--s_churn", "10", "--sigma_max", "20", "--no-oracle",
                     "--out", str(churned), "--no-progress"]) == 0
    plain = tmp_path / "plain"
    assert evaluate([predicted, "--count", "2", "--steps", "2", "--no-oracle", "--out", str(plain),
                     "--no-progress"]) == 0
    rows = json.loads((churned / "evaluation.json").read_text())["methods"]
    heun = next(name for name in rows if "heun-2" in name)
    assert "(sigma_max 20 churn 10)" in (churned / "evaluation.md").read_text()
    plain_rows = json.loads((plain / "evaluation.json").read_text())["methods"]
    chamfer = lambda r: r[heun]["summary"]["chamfer_sum_of_means"]["mean"]  # noqa: E731
    assert chamfer(rows) != chamfer(plain_rows)


@pytest.mark.parametrize("flags,message", [
    (["--support", "predicted"], "needs --structure"),
    (["--structure", "x"], "would be unused"),
    (["--stage", "structure", "--mode", "ct"], "belongs to the diffusion stage"),
    (["--stage", "structure", "--model_channels", "8"], "do not apply"),
    (["--structure_cap", "-1", "--stage", "structure"], "--structure_cap"),
])
def test_structure_flags_are_checked(flags, message, tmp_path, capsys):
    try:
        code = train(flags + ["--out", str(tmp_path / "r"), "--steps", "1", "--progress", "False"])
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err


def test_structure_checkpoints_are_refused_where_a_diffusion_model_is_needed(structure_runs, small_runs, tmp_path,
                                                                              capsys):
    structure, _ = structure_runs
    assert sample([structure, "--out", str(tmp_path / "a")]) == 2
    assert "structure-network checkpoint" in capsys.readouterr().err
    assert train(["--mode", "cd", "--teacher", structure, "--out", str(tmp_path / "b"), "--steps", "1"]) == 2
    assert "--teacher is a structure-stage checkpoint" in capsys.readouterr().err
    assert evaluate([small_runs[0], "--structure", small_runs[0], "--out", str(tmp_path / "c")]) == 2
    assert "holds no structure network" in capsys.readouterr().err
    with pytest.raises(ValueError, match="only with support 'predicted'"):
        Densifier.from_checkpoint(small_runs[0], structure=structure)


def test_the_denoiser_reads_the_structure_probability(structure_runs):
    from sparse_radar.diffusion.edm import Denoiser
    from sparse_radar.models.structure_net import occupancy_probability
    from sparse_radar.nn.field_ops import cat_channels
    from sparse_radar.data.support import on_support
    from sparse_radar.voxels import DenseVoxels
    structure, predicted = structure_runs
    assert load_checkpoint(predicted)["model_config"]["in_channels"] == 9  # target 4 + radar 4 + the probability
    grid = parse_grid(SMALL_GRID)
    radar, _ = collate([SyntheticDataset("test", 2, grid)[i] for i in range(2)], grid.shape)
    net = load_structure(structure)
    support, prob = predicted_support(net, radar, (0, 1, 1), probability=True)
    # brute force: the finest level's candidates and logits, looked up voxel by voxel
    net.eval()
    with torch.no_grad():
        finest = net(radar).levels[-1]
    logit_of = dict(zip(finest.keys.tolist(), finest.logits.tolist()))
    expected = [2 * torch.sigmoid(torch.tensor(logit_of[k])).item() - 1 if k in logit_of else -1.0
                for k in support.keys.tolist()]
    assert prob.feats[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert (prob.feats > -1).any() and (prob.feats == -1).any()  # dilated voxels the network never saw
    torch.testing.assert_close(occupancy_probability(net, radar, support).feats, prob.feats)
    # sparse and dense parity with the new channel
    densifier = Densifier.from_checkpoint(predicted)
    assert densifier.structure_channel
    cond = cat_channels(on_support(radar, support), prob)
    x = cond.replace(torch.randn(cond.num_voxels, 4, generator=torch.Generator().manual_seed(0)))
    sigma = torch.tensor([0.7, 2.0])
    sparse = Denoiser(densifier.model, densifier.diffusion, cond)(x, sigma)
    dense_x, dense_c = x.to_dense(), cond.to_dense()
    dense = Denoiser(densifier.model, densifier.diffusion, DenseVoxels(dense_c.data, dense_c.mask))(
        DenseVoxels(dense_x.data, dense_x.mask), sigma)
    torch.testing.assert_close(dense.to_sparse().feats, sparse.feats, rtol=1e-4, atol=1e-5)
    out = densifier.generate(radar)  # sampling reads it too
    assert torch.equal(out.structure.keys, predicted_support(net, radar, densifier.radius).keys)


def test_probability_of_a_network_that_considers_nothing(structure_runs):
    from sparse_radar.models.generative import Generation, LevelOutput
    from sparse_radar.models.structure_net import _probability_at
    grid = parse_grid(SMALL_GRID)
    radar, _ = collate([SyntheticDataset("test", 1, grid)[0]], grid.shape)
    empty = torch.zeros(0)
    gen = Generation(radar, [LevelOutput(empty, None, empty.long(), empty.bool(), 1, empty.long())])
    prob = _probability_at(gen, radar.structure)
    assert prob.num_voxels == radar.num_voxels and bool((prob.feats == -1).all())
