"""--frame_cache_mb: a frozen network's per-frame outputs (the predicted support's fields, the VAE's latents) are
computed once and read back in later epochs, and training is the same as recomputing them every step."""
import csv

import pytest
import torch

import sparse_radar.training.diffusion_stage as diffusion_stage
from sparse_radar.models.latent import LatentCodec
from sparse_radar.train import run as train
from sparse_radar.training.frame_cache import FrameCache, join_support_fields, split_support_fields
from sparse_radar.voxels import SparseVoxels
from tests.conftest import SMALL_GRID

COMMON = ["--train_size", "2", "--batch_size", "2", "--progress", "False", "--preview_steps", "1", "--grid",
          SMALL_GRID, "--model_channels", "8", "--steps", "3", "--save_every", "3"]


def _metrics(run):
    with open(f"{run}/metrics.csv", newline="") as fh:
        return [(r["loss"], r["grad_norm"]) for r in csv.DictReader(fh)]


def _counting_calls(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapped)
    return calls


def _same_weights(run_a, run_b):
    from sparse_radar.training.checkpoint import load_checkpoint
    a, b = load_checkpoint(run_a)["model"], load_checkpoint(run_b)["model"]
    return all(torch.equal(value, b[name]) for name, value in a.items())


def test_predicted_support_is_computed_once_per_frame(structure_runs, tmp_path, monkeypatch):
    structure, _ = structure_runs
    flags = COMMON + ["--support", "predicted", "--structure", structure]
    calls = _counting_calls(monkeypatch, diffusion_stage, "support_fields")
    cached, fresh = str(tmp_path / "cached"), str(tmp_path / "fresh")
    assert train(flags + ["--out", cached]) == 0
    # two frames, one batch an epoch: the first step predicts each frame alone, the next two read them back (the
    # final preview predicts its frame again, outside the training steps)
    assert len(calls) == 2 + 1
    calls.clear()
    assert train(flags + ["--frame_cache_mb", "0", "--out", fresh]) == 0
    assert len(calls) == 3 + 1  # without a cache: every step predicts its batch
    losses = _metrics(cached)
    torch.testing.assert_close([float(v) for v, _ in losses], [float(v) for v, _ in _metrics(fresh)], rtol=1e-5, atol=0)
    # a resumed run starts with an empty cache and computes its frames again: the same bits as the kept ones
    split = str(tmp_path / "split")
    assert train(flags + ["--steps", "1", "--save_every", "1", "--out", split]) == 0  # the later flags win
    assert train(["--resume", split, "--steps", "3", "--progress", "False", "--preview_steps", "1"]) == 0
    assert _metrics(split) == losses and _same_weights(split, cached)


def test_latents_are_encoded_once_per_frame(latent_runs, tmp_path, monkeypatch):
    vae, _, _ = latent_runs
    flags = COMMON + ["--stage", "ldm", "--vae", vae]
    calls = _counting_calls(monkeypatch, LatentCodec, "encode")
    cached, fresh = str(tmp_path / "cached"), str(tmp_path / "fresh")
    assert train(flags + ["--out", cached]) == 0
    assert len(calls) == 4 + 2  # the latents' scale (16 samples, 4 batches), then each frame alone once
    calls.clear()
    assert train(flags + ["--frame_cache_mb", "0", "--out", fresh]) == 0
    assert len(calls) == 4 + 3  # without a cache every step encodes its batch
    torch.testing.assert_close([float(v) for v, _ in _metrics(cached)], [float(v) for v, _ in _metrics(fresh)],
                               rtol=1e-5, atol=0)


def test_split_and_join_give_back_the_batch():
    g = torch.Generator().manual_seed(0)
    shape = (4, 6, 5)
    coords = torch.tensor([[0, 0, 1, 2], [0, 3, 5, 4], [1, 2, 2, 2], [2, 0, 0, 0], [2, 1, 0, 0], [2, 3, 5, 4]])
    tgt = SparseVoxels(torch.randn(6, 4, generator=g), coords, shape, 3)
    cond = tgt.replace(torch.randn(6, 9, generator=g))
    cov = torch.tensor([0.5, 1.0, 0.25])
    entries = split_support_fields(tgt, cond, cov, [2, 1, 3])
    # frames come back in another order: each lands at its new batch position
    t2, c2, cov2, counts = join_support_fields([entries[2], entries[0]], shape, torch.device("cpu"))
    assert counts == [3, 2] and t2.structure.host_counts() == (3, 2) and t2.structure is c2.structure
    expected = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 3, 5, 4], [1, 0, 1, 2], [1, 3, 5, 4]], dtype=torch.int32)
    assert torch.equal(t2.coords, expected)
    assert torch.equal(t2.feats, torch.cat([tgt.feats[3:], tgt.feats[:2]]))
    assert torch.equal(c2.feats, torch.cat([cond.feats[3:], cond.feats[:2]]))
    assert torch.equal(cov2, torch.tensor([0.25, 0.5]))
    rebuilt = SparseVoxels(t2.feats, t2.coords, shape, 2)  # the joined keys are the ones a fresh field sorts to
    assert torch.equal(rebuilt.structure.keys, t2.structure.keys)


def test_the_budget_bounds_what_is_kept():
    cache = FrameCache(budget_mb=1 / 2 ** 10)  # 1 KiB
    cache.put(0, (torch.zeros(64), 3))  # 256 bytes
    cache.put(1, (torch.zeros(256),))  # 1 KiB more: over the budget, not kept; the cache stops taking frames
    cache.put(2, (torch.zeros(1),))
    assert cache.get([0]) is not None and cache.get([0, 1]) is None and cache.get([2]) is None
    assert cache.used == 256
    view = torch.arange(8.0)
    kept = FrameCache(1)
    kept.put(0, (view[:2],))
    view.zero_()  # a kept entry owns its memory: later writes to the batch it came from do not reach it
    assert torch.equal(kept.get([0])[0][0], torch.tensor([0.0, 1.0]))
    assert FrameCache(0).get([0]) is None


def test_entries_compute_only_the_missing_frames():
    cache, loads, computed = FrameCache(1), [], []

    def frames():
        loads.append(1)
        return ["a", "b", "c"]

    def compute(frame):
        computed.append(frame)
        return (torch.tensor([ord(frame)]),)
    cache.put(1, (torch.tensor([0]),))
    first = cache.entries([0, 1, 2], frames, compute)
    assert computed == ["a", "c"] and [int(e[0]) for e in first] == [97, 0, 99]  # frame 1 read back, not computed
    again = cache.entries([2, 0], frames, compute)
    assert loads == [1] and [int(e[0]) for e in again] == [99, 97]  # all kept: no loading, no computing


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_frame_cache_flag_is_checked(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's usage error
        train(["--frame_cache_mb", value, "--out", str(tmp_path / "run"), "--progress", "False"])
    assert exc.value.code == 2
    assert "--frame_cache_mb must be a number of megabytes >= 0" in capsys.readouterr().err


def test_a_structure_reading_ldm_predicts_each_frame_once(structure_runs, latent_runs, tmp_path, monkeypatch):
    import sparse_radar.training.latent_stage as latent_stage
    structure, _ = structure_runs
    vae, _, _ = latent_runs
    flags = COMMON + ["--stage", "ldm", "--vae", vae, "--ldm_condition", "structure", "--structure", structure]
    calls = _counting_calls(monkeypatch, latent_stage, "structure_condition")
    cached, fresh = str(tmp_path / "cached"), str(tmp_path / "fresh")
    assert train(flags + ["--out", cached]) == 0
    assert len(calls) == 2 + 1  # each frame alone once, then the final preview's frame
    calls.clear()
    assert train(flags + ["--frame_cache_mb", "0", "--out", fresh]) == 0
    assert len(calls) == 3 + 1
    losses = _metrics(cached)
    torch.testing.assert_close([float(v) for v, _ in losses], [float(v) for v, _ in _metrics(fresh)], rtol=1e-5, atol=0)
    split = str(tmp_path / "split")  # resumed: its frames computed again, the same bits
    assert train(flags + ["--steps", "1", "--save_every", "1", "--out", split]) == 0
    assert train(["--resume", split, "--steps", "3", "--progress", "False", "--preview_steps", "1"]) == 0
    assert _metrics(split) == losses and _same_weights(split, cached)
