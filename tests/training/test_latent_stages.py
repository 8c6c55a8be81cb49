"""--stage vae / ldm / cd: what the checkpoints hold, the radar on the latent grid, sampling and decoding through
the Densifier against the same steps written out, and the flags' checks."""
import json

import numpy as np
import pytest
import torch

from sparse_radar.data.datasets import SyntheticDataset, collate
from sparse_radar.data.grid import parse_grid
from sparse_radar.data.synthetic import generate_scan, split_seed
from sparse_radar.diffusion.edm import Denoiser
from sparse_radar.diffusion.guidance import null_condition
from sparse_radar.evaluate import run as evaluate
from sparse_radar.inference import Densifier, SamplerSettings
from sparse_radar.models.latent import LatentCodec, fit_scale, radar_to_latent
from sparse_radar.models.radar_encoder import latent_condition
from sparse_radar.sample import run as sample
from sparse_radar.train import run as train
from sparse_radar.training import distributed
from sparse_radar.training.checkpoint import load_checkpoint
from sparse_radar.training.config import TrainConfig
from sparse_radar.training.trainer import Trainer
from sparse_radar.training.stages import load_codec
from sparse_radar.voxels import DenseVoxels, SparseVoxels
from tests.conftest import SMALL_GRID

GRID = parse_grid(SMALL_GRID)


def _batch(n=2, split="test"):
    return collate([SyntheticDataset(split, n, GRID)[i] for i in range(n)], GRID.shape)


def test_radar_on_the_latent_grid_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    coords = torch.unique(torch.cat([torch.randint(0, 2, (40, 1), generator=g),
                                     torch.randint(0, 8, (40, 3), generator=g)], 1), dim=0)
    radar = SparseVoxels(torch.rand(len(coords), 4, generator=g) * 2 - 1, coords, (8, 8, 8), 2)
    out = radar_to_latent(radar, (4, 4, 2), (2, 2, 4)).numpy()
    cells = {}
    for c, f in zip(radar.coords.tolist(), radar.feats.numpy()):
        cells.setdefault((c[0], c[1] // 4, c[2] // 4, c[3] // 2), []).append(f)
    for b in range(2):
        for z in range(2):
            for y in range(2):
                for x in range(4):
                    got = out[b, :, z, y, x]
                    feats = cells.get((b, z, y, x))
                    if feats is None:
                        assert np.allclose(got, -1.0)
                        continue
                    mean = np.mean(feats, axis=0)
                    dens = min(1.0, len(feats) / 8) * 2 - 1
                    assert np.allclose(got, [1.0, mean[1], mean[2], mean[3], dens], atol=1e-6)


def test_ldm_checkpoint_carries_the_vae_and_the_fitted_scale(latent_runs):
    vae, ldm, cd = latent_runs
    state = load_checkpoint(ldm)
    assert state["model_kind"] == "ldm" and list(state["model_config"]["input_size"]) == [2, 8, 8]
    codec = load_codec(vae)
    for name, value in codec.autoencoder.state_dict().items():
        assert torch.equal(state["latent"]["weights"][name], value)
    trainer = Trainer(TrainConfig(stage="ldm", vae=vae, train_size=2, grid=SMALL_GRID, out=str(ldm) + "-probe"),
                      distributed.setup())
    targets = [trainer.stream.pair(list(range(i, i + 4)))[1] for i in range(0, 16, 4)]
    assert state["latent"]["scale"] == pytest.approx(fit_scale(codec, targets, 0.5))
    cd_state = load_checkpoint(cd)
    assert cd_state["model_kind"] == "cd" and cd_state["latent"]["scale"] == state["latent"]["scale"]


def test_densifier_samples_latents_and_decodes_them(latent_runs):
    _, ldm, cd = latent_runs
    radar, _ = _batch()
    d = Densifier.from_checkpoint(ldm)
    assert d.codec is not None and d.support == "latent" and d.default_sampler == "heun"
    out = d.generate(radar, settings=SamplerSettings("onestep", 1), seed=3)
    codec = LatentCodec.from_record(load_checkpoint(ldm)["latent"])
    noise = torch.stack([torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(3 * 1_000_003 + i))
                         for i in range(2)])
    den = Denoiser(d.model, d.diffusion, DenseVoxels(latent_condition(d.model, codec, radar)))
    expected = codec.decode(den(DenseVoxels(noise * 80.0), 80.0).data)
    assert torch.equal(out.coords, expected.coords) and torch.allclose(out.feats, expected.feats, atol=1e-6)
    alone = d.generate(_batch(1)[0], settings=SamplerSettings("onestep", 1), seed=3)
    assert torch.equal(alone.coords, out.coords[out.coords[:, 0] == 0])
    # batched with another cloud, features agree to float32 round-off (the README's stated 1e-5)
    assert torch.allclose(alone.feats, out.feats[out.coords[:, 0] == 0], atol=1e-5, rtol=0)
    assert Densifier.from_checkpoint(cd).default_sampler == "onestep"


def test_sample_and_evaluate_latent_models(latent_runs, tmp_path, capsys):
    vae, ldm, cd = latent_runs
    out = tmp_path / "s"
    assert sample([cd, "--model_type", "cd", "--count", "2", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_type"] == "cd" and summary["frames_with_ground_truth"] == 2
    assert sample([ldm, "--model_type", "cd", "--out", str(tmp_path / "x")]) == 2
    assert "is a ldm model" in capsys.readouterr().err
    assert sample([ldm, "--support", "radar_dilated", "--out", str(tmp_path / "y")]) == 2
    assert "decodes its own voxels" in capsys.readouterr().err
    assert sample([vae, "--out", str(tmp_path / "z")]) == 2
    assert "vae-stage checkpoint" in capsys.readouterr().err
    ev = tmp_path / "ev"
    assert evaluate([ldm, vae, "--count", "2", "--steps", "1", "--out", str(ev), "--no-progress"]) == 0
    methods = json.loads((ev / "evaluation.json").read_text())["methods"]
    assert "vae reconstruction" in methods and "ldm heun-1" in methods
    assert not any("oracle" in m for m in methods)  # a latent model has no support to replace by the oracle's
    assert evaluate([vae, "--out", str(tmp_path / "ev2")]) == 2


def test_ldm_resumes_with_its_scale(latent_runs, tmp_path):
    _, ldm, _ = latent_runs
    out = str(tmp_path / "more")
    assert train(["--resume", f"{ldm}/checkpoints/latest.pt", "--out", out, "--steps", "3", "--progress", "False"]) == 0
    assert load_checkpoint(out)["latent"]["scale"] == load_checkpoint(ldm)["latent"]["scale"]


@pytest.mark.parametrize("flags,message", [
    (["--stage", "ldm"], "pass its run with --vae"),
    (["--vae", "x"], "would be unused"),
    (["--stage", "cd"], "pass its run with --teacher"),
    (["--stage", "vae", "--vae_kind", "gan"], "--vae_kind"),
])
def test_latent_flags_are_checked(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train(flags + ["--out", str(tmp_path / "r"), "--steps", "1"])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_stage_checkpoints_must_match(latent_runs, small_runs, tmp_path, capsys):
    vae, ldm, _ = latent_runs
    assert train(["--stage", "cd", "--teacher", small_runs[0], "--out", str(tmp_path / "a"), "--steps", "1"]) == 2
    assert "--stage cd distils a --stage ldm run" in capsys.readouterr().err
    assert train(["--mode", "cd", "--teacher", ldm, "--out", str(tmp_path / "b"), "--steps", "1"]) == 2
    assert "for a latent one use --stage cd" in capsys.readouterr().err
    assert train(["--stage", "ldm", "--vae", ldm, "--out", str(tmp_path / "c"), "--steps", "1"]) == 2
    assert "pass a --stage vae run" in capsys.readouterr().err


def test_stage_all_runs_the_three_stages_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "all")
    common = ["--stage", "all", "--out", out, "--train_size", "2", "--grid", SMALL_GRID, "--progress", "False",
              "--preview_steps", "1", "--cm_steps", "4"]
    assert train(common + ["--stage_steps", "1,1,1"]) == 0
    assert [load_checkpoint(f"{out}/{s}")["model_kind"] for s in ("vae", "ldm", "cd")] == ["vae", "ldm", "cd"]
    assert load_checkpoint(f"{out}/ldm")["train_config"]["vae"] == f"{out}/vae"
    assert load_checkpoint(f"{out}/cd")["train_config"]["teacher"] == f"{out}/ldm"
    capsys.readouterr()
    assert train(common + ["--stage_steps", "1,2,1"]) == 0
    text = capsys.readouterr().out
    assert "vae: finished" in text and "resuming at step 1" in text and "cd: finished" in text
    assert load_checkpoint(f"{out}/ldm")["step"] == 2


@pytest.mark.parametrize("flags,message", [
    (["--stage", "all", "--resume", "x"], "resumes by itself"),
    (["--stage_steps", "1,1,1"], "--stage_steps sets the steps"),
])
def test_stage_all_flags_are_checked(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train(flags + ["--out", str(tmp_path / "r")])
    assert message in capsys.readouterr().err
    assert train(["--stage", "all", "--stage_steps", "1,0,1", "--out", str(tmp_path / "q")]) == 2
    assert "--stage_steps must be three ints" in capsys.readouterr().err


def test_every_new_stage_resumes_bit_for_bit(latent_runs, tmp_path):
    vae, ldm, _ = latent_runs
    for stage, source in (("structure", []), ("vae", []), ("ldm", ["--vae", vae, "--model_channels", "8"]),
                          ("cd", ["--teacher", ldm, "--cm_steps", "4"])):
        common = ["--stage", stage, *source, "--train_size", "2", "--grid", SMALL_GRID, "--progress", "False",
                  "--preview_steps", "1"]
        whole, split = str(tmp_path / f"{stage}_whole"), str(tmp_path / f"{stage}_split")
        assert train(common + ["--steps", "2", "--out", whole]) == 0
        assert train(common + ["--steps", "1", "--out", split]) == 0
        assert train(["--resume", split, "--steps", "2", "--progress", "False", "--preview_steps", "1"]) == 0
        a, b = load_checkpoint(whole), load_checkpoint(split)
        for name, value in a["model"].items():
            assert torch.equal(value, b["model"][name]), (stage, name)
        with open(f"{whole}/metrics.csv") as fa, open(f"{split}/metrics.csv") as fb:
            losses = lambda fh: [line.split(",")[1] for line in fh.read().splitlines()[1:]]
            assert losses(fa) == losses(fb)


def test_latent_models_sample_with_guidance(latent_runs):
    _, ldm, cd = latent_runs
    radar = generate_scan(split_seed("test", 0))["radar"]
    for run_folder, sampler in ((ldm, "heun"), (cd, "onestep")):
        d = Densifier.from_checkpoint(run_folder)
        assert d.cond_drop == pytest.approx(0.1)  # the default --cond_drop
        latent = d.codec.condition(d.radar_field([radar]))
        assert torch.equal(null_condition(DenseVoxels(latent)).data, torch.full_like(latent, -1.0))
        plain = d.generate(d.radar_field([radar]), settings=SamplerSettings(sampler, 2))
        guided = d.generate(d.radar_field([radar]), settings=SamplerSettings(sampler, 2, guidance=3.0))
        assert plain.num_channels == guided.num_channels
        assert plain.num_voxels != guided.num_voxels or not torch.allclose(plain.feats, guided.feats)


def test_the_ldm_learns_its_radar_encoder_and_keeps_the_pooled_option(latent_runs, tmp_path):
    vae, ldm, cd = latent_runs
    state, cd_state = load_checkpoint(ldm), load_checkpoint(cd)
    assert state["radar_encoder"] == {"radar_channels": 4, "factor": [4, 4, 4], "width": 32}
    weights = next(iter(state["ema"].values()))
    assert "radar_encoder.head.weight" in weights and "radar_encoder.head.weight" in state["model"]
    # trained with the LDM: its weights moved in the optimizer's steps, so the lagging EMA copy differs from them
    assert not torch.equal(state["model"]["radar_encoder.head.weight"], weights["radar_encoder.head.weight"])
    # the latent CD student conditions through the teacher's encoder, unchanged
    assert torch.equal(cd_state["model"]["radar_encoder.stem.weight"],
                       next(iter(state["ema"].values()))["radar_encoder.stem.weight"])
    radar, _ = _batch()
    d = Densifier.from_checkpoint(ldm)
    cond = latent_condition(d.model, d.codec, radar)
    occupied = radar_to_latent(radar, d.codec.factor, cond.shape[2:])[:, 0] > 0
    for b in range(2):  # cells without radar hold the null condition; cells with radar lie inside (-1, 1)
        assert bool((cond[b][:, ~occupied[b]] == -1).all())
        assert bool((cond[b][:, occupied[b]].abs() < 1).all())
    out = tmp_path / "pooled"
    assert train(["--stage", "ldm", "--vae", str(vae), "--ldm_condition", "pooled", "--steps", "1", "--grid",
                  SMALL_GRID, "--train_size", "4", "--model_channels", "8", "--progress", "False",
                  "--preview_steps", "1", "--out", str(out)]) == 0
    pooled = load_checkpoint(out)
    assert pooled["radar_encoder"] is None and not any(k.startswith("radar_encoder") for k in pooled["model"])
    p = Densifier.from_checkpoint(str(out))
    torch.testing.assert_close(latent_condition(p.model, p.codec, radar), radar_to_latent(
        radar, p.codec.factor, p.codec.latent_shape(radar.spatial_shape)))


def test_the_ldm_encoder_can_read_the_structure_network(structure_runs, latent_runs, tmp_path, capsys):
    from sparse_radar.models.structure_net import occupancy_probability, predicted_support
    from sparse_radar.training.stages import load_structure
    structure, _ = structure_runs
    vae, _, _ = latent_runs
    ldm, cd = str(tmp_path / "ldm"), str(tmp_path / "cd")
    common = ["--train_size", "2", "--progress", "False", "--preview_steps", "1", "--grid", SMALL_GRID]
    assert train(common + ["--stage", "ldm", "--vae", vae, "--ldm_condition", "structure", "--structure", structure,
                           "--support_radius", "0,1,1", "--model_channels", "8", "--steps", "2", "--out", ldm]) == 0
    assert train(common + ["--stage", "cd", "--teacher", ldm, "--steps", "1", "--cm_steps", "4", "--out", cd]) == 0
    state = load_checkpoint(ldm)
    # the radar's 4 channels and the probability; the dilation of the support it reads
    assert state["radar_encoder"] == {"radar_channels": 5, "factor": [4, 4, 4], "width": 32,
                                      "structure_radius": [0, 1, 1]}
    net = load_structure(structure)
    for run_folder in (ldm, cd):  # each carries the network it read
        carried = load_checkpoint(run_folder)["structure"]["weights"]
        assert all(torch.equal(carried[k], v) for k, v in net.state_dict().items())
    radar, _ = _batch()
    d = Densifier.from_checkpoint(ldm)
    assert d.structure is not None and d.model.radar_encoder.structure_radius == (0, 1, 1)
    # what the encoder reads, built here from the network's support and probability by hand
    support = predicted_support(net, radar, (0, 1, 1))
    assert torch.equal(support.keys, predicted_support(d.structure, radar, (0, 1, 1)).keys)
    prob = occupancy_probability(net, radar, support)
    rows = {tuple(c): i for i, c in enumerate(radar.coords.tolist())}
    expected = torch.full((support.num_voxels, 5), -1.0)  # EMPTY on the radar's channels off the radar
    for i, c in enumerate(support.coords.tolist()):
        if tuple(c) in rows:
            expected[i, :4] = radar.feats[rows[tuple(c)]]
    expected[:, 4] = prob.feats[:, 0]
    assert set(rows) <= set(map(tuple, support.coords.tolist()))  # the radar's own voxels stay in the support
    field = SparseVoxels(expected, support.coords, radar.spatial_shape, radar.batch_size)
    out = d.generate(radar, settings=SamplerSettings("onestep", 1), seed=3)
    codec = d.codec
    noise = torch.stack([torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(3 * 1_000_003 + i))
                         for i in range(2)])
    den = Denoiser(d.model, d.diffusion, DenseVoxels(latent_condition(d.model, codec, field)))
    wanted = codec.decode(den(DenseVoxels(noise * 80.0), 80.0).data)
    assert torch.equal(out.coords, wanted.coords) and torch.allclose(out.feats, wanted.feats, atol=1e-6)
    assert Densifier.from_checkpoint(cd).structure is not None
    # another structure network may replace the carried one; a radar-only LDM refuses one
    other = Densifier.from_checkpoint(ldm, structure=structure)
    assert all(torch.equal(v, other.structure.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="reads no structure network"):
        Densifier.from_checkpoint(latent_runs[1], structure=structure)
    assert sample([ldm, "--count", "1", "--steps", "1", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    assert sample([ldm, "--support", "radar_dilated", "--out", str(tmp_path / "y")]) == 2
    assert "decodes its own voxels" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--stage", "ldm", "--vae", "x", "--ldm_condition", "structure"], "--ldm_condition structure needs --structure"),
    (["--stage", "ldm", "--vae", "x", "--structure", "x"], "it would be unused"),
    (["--stage", "ldm", "--vae", "x", "--ldm_condition", "other"], "--ldm_condition: unknown value"),
])
def test_the_structure_condition_flags_are_checked(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train(flags + ["--out", str(tmp_path / "r"), "--steps", "1"])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_stage_all_hands_the_structure_network_to_the_ldm_alone(tmp_path):
    from sparse_radar.training import pipeline
    from sparse_radar.training.config import parse_args
    cfg = parse_args(["--stage", "all", "--ldm_condition", "structure", "--structure", "runs/structure", "--out",
                      str(tmp_path / "all")])
    stages = {stage: pipeline.next_stage(cfg, stage, cfg.given_flags) for stage in pipeline.PIPELINE}
    assert stages["ldm"][0].structure == "runs/structure" and "structure" in stages["ldm"][1]
    for stage in ("vae", "cd"):
        assert stages[stage][0].structure is None and "structure" not in stages[stage][1]


def test_an_ldm_run_is_fp32_unless_autocast_is_asked_for():
    latent = ((2, 8, 8), 9, 4)
    assert not TrainConfig(stage="ldm", vae="v", preset="lightweight").model_config(*latent).use_fp16
    assert TrainConfig(stage="ldm", vae="v", preset="lightweight", use_fp16=True).model_config(*latent).use_fp16
    assert TrainConfig(preset="lightweight").model_config((8, 32, 32)).use_fp16  # voxel space keeps the preset's
