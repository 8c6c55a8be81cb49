"""Classifier-free guidance: condition dropout per sample, the guided estimate against its formula (Ho & Salimans
2022, eq. 6), sparse/dense parity of the null condition, and the flags that need a model trained for it."""
import warnings

import pytest
import torch

from sparse_radar import SparseVoxels
from sparse_radar.diffusion.edm import DiffusionConfig, Denoiser
from sparse_radar.diffusion.guidance import GuidedDenoiser, drop_condition, null_condition


def field(values, batch):
    coords = torch.tensor([[b, 0, 0, i] for i, b in enumerate(batch)])
    return SparseVoxels(torch.as_tensor(values, dtype=torch.float32), coords, (1, 1, len(batch)), max(batch) + 1)


def test_drop_condition_replaces_only_the_dropped_samples():
    cond = field([[0.5, 0.25], [0.125, -0.375], [0.75, 0.875]], [0, 1, 1])
    out = drop_condition(cond, [False, True], counts=[1, 2])
    assert out.feats.tolist() == [[0.5, 0.25], [-1.0, -1.0], [-1.0, -1.0]]
    dense = cond.to_dense()
    dropped = drop_condition(dense, [True, False])
    assert torch.equal(dropped.to_sparse().feats, torch.tensor([[-1.0, -1.0], [0.125, -0.375], [0.75, 0.875]]))
    assert torch.equal(null_condition(dense).to_sparse().feats, null_condition(cond).feats)  # parity
    assert drop_condition(cond, [False, False]) is cond  # nothing dropped: nothing launched
    with pytest.raises(ValueError, match="per-sample row counts"):
        drop_condition(cond, [True, False])


class LinearNet(torch.nn.Module):
    """F(input, c_noise) = the sum of the input's channels (x and condition), counting its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, c_noise):
        self.calls += 1
        return x.replace(x.feats.sum(1, keepdim=True))


def test_guided_estimate_is_the_formula_and_one_call_at_scale_one():
    net, cfg = LinearNet(), DiffusionConfig()
    x, cond = field([[0.3], [-0.2]], [0, 0]), field([[0.8], [0.1]], [0, 0])
    plain = Denoiser(net, cfg, cond)
    sigma = torch.tensor(1.5)
    conditional = plain(x, sigma).feats
    unconditional = plain.with_condition(null_condition(cond))(x, sigma).feats
    for w in (0.0, 2.5):
        guided = GuidedDenoiser(plain, w)(x, sigma).feats
        torch.testing.assert_close(guided, unconditional + w * (conditional - unconditional))
    net.calls = 0
    torch.testing.assert_close(GuidedDenoiser(plain, 1.0)(x, sigma).feats, conditional)
    assert net.calls == 1
    with pytest.raises(ValueError, match=r"guidance must be a scale in \[0, 20\]"):
        GuidedDenoiser(plain, -1.0)


def test_guidance_needs_a_model_trained_with_condition_dropout(tmp_path):
    from sparse_radar import Densifier
    from sparse_radar.data.synthetic import generate_scan, split_seed
    from sparse_radar.train import run
    base = ["--steps", "2", "--train_size", "2", "--model_channels", "8", "--progress", "False", "--preview_steps",
            "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run(base + ["--cond_drop", "0.5", "--out", str(tmp_path / "cfg")]) == 0
        assert run(base + ["--cond_drop", "0", "--out", str(tmp_path / "plain")]) == 0
        radar = generate_scan(split_seed("test", 0))["radar"]
        guided_model = Densifier.from_checkpoint(str(tmp_path / "cfg"))
        assert guided_model.cond_drop == 0.5
        a, b = guided_model(radar, steps=2, guidance=1.0), guided_model(radar, steps=2, guidance=3.0)
        assert a.shape[1] == b.shape[1] and not (a.shape == b.shape and torch.allclose(torch.from_numpy(a),
                                                                                        torch.from_numpy(b)))
        with pytest.raises(ValueError, match="trained with --cond_drop 0"):
            Densifier.from_checkpoint(str(tmp_path / "plain"))(radar, steps=2, guidance=2.0)
        with pytest.raises(SystemExit):  # a parser error: not a distillation
            run(base + ["--cd_guidance", "2", "--out", str(tmp_path / "x")])
        assert run(base + ["--mode", "cd", "--teacher", str(tmp_path / "plain"), "--cd_guidance", "2",
                           "--out", str(tmp_path / "cd")]) == 2  # its teacher has no unconditional branch
        assert run(base + ["--mode", "cd", "--teacher", str(tmp_path / "cfg"), "--cd_guidance", "2",
                           "--out", str(tmp_path / "cd")]) == 0
