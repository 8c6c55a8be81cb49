"""Generative decoder and StructureNet: sparse vs masked dense parity, teacher forcing, cap, labels, loss."""
import pytest
import torch

from sparse_radar import SparseVoxels
from sparse_radar.kernels.coords import linear_keys
from sparse_radar.models.generative import cap_per_sample, occupancy_keys
from sparse_radar.models.structure_net import (StructureConfig, StructureNet, occupancy_loss,
                                               predicted_support)
from tests.factory import random_fields

SHAPE = (4, 8, 8)
CONFIG = dict(in_channels=3, channels=(4, 6, 8), strides=((2, 2, 2), (1, 2, 2)), num_groups=2, cap=0)


def _net(seed=0, **changes):
    torch.manual_seed(seed)
    return StructureNet(StructureConfig(**{**CONFIG, **changes})).double()


def _target(seed=5):
    return random_fields(2, 1, SHAPE, 0.15, seed=seed, dtype=torch.float64)[0]


def test_teacher_forced_decoding_agrees_between_sparse_and_dense_and_keeps_the_target():
    radar_sparse, radar_dense = random_fields(2, 3, SHAPE, 0.1, seed=4, dtype=torch.float64)
    target = _target()
    net = _net()
    a, b = net(radar_sparse, target), net(radar_dense, target)
    assert len(a.levels) == len(b.levels) == 3
    for la, lb in zip(a.levels, b.levels):
        assert la.logits.shape == lb.logits.shape
        assert torch.allclose(la.logits, lb.logits, atol=1e-10)
        assert torch.equal(la.labels, lb.labels)
        assert torch.equal(la.samples, lb.samples)
    dense_final = b.field.to_sparse()
    assert torch.equal(dense_final.coords, a.field.coords)
    kept = set(map(tuple, a.field.coords.tolist()))
    assert set(map(tuple, target.coords.tolist())) <= kept  # teacher forcing keeps every target voxel


def test_labels_are_the_target_downsampled_per_level():
    target = _target()
    coords = target.coords.long()
    keys = occupancy_keys(target.coords, (2, 4, 4), (2, 2, 2))
    expected = {(int(c[0]), int(c[1]) // 2, int(c[2]) // 4, int(c[3]) // 4) for c in coords}
    got = {tuple(r) for r in torch.stack([keys // 8, keys // 4 % 2, keys // 2 % 2, keys % 2], 1).tolist()}
    assert got == expected
    radar = random_fields(2, 3, SHAPE, 0.1, seed=4, dtype=torch.float64)[0]
    levels = _net()(radar, target).levels
    assert levels[0].logits.numel() == 2 * 2 * 2 * 2  # the whole coarse grid: (4,8,8) / (2,4,4)
    assert int(levels[-1].labels.sum()) == target.num_voxels  # every target voxel is a finest candidate


def test_inference_keeps_exactly_the_positive_logits_and_children_of_kept_parents():
    radar = random_fields(2, 3, SHAPE, 0.2, seed=6, dtype=torch.float64)[0]
    net = _net(seed=3)
    with torch.no_grad():
        net.decoder.heads[0].bias.fill_(1.0)  # keep the whole coarse grid, so the next level has candidates
        out = net(radar)
    for lv in out.levels:
        assert lv.labels is None
        assert torch.equal(lv.keep, lv.logits > 0)
    assert out.field.num_voxels == int(out.levels[-1].keep.sum())


def test_cap_per_sample_keeps_the_best_and_all_forced():
    scores = torch.tensor([0.5, 2.0, 1.0, 3.0, -1.0, 4.0, 0.1])
    samples = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    keep = torch.tensor([True, True, True, True, False, True, True])
    forced = torch.tensor([True, False, False, False, True, False, False])
    out = cap_per_sample(keep, scores, samples, 2, forced)
    assert out.tolist() == [True, True, False, True, True, True, True]
    assert cap_per_sample(keep, scores, samples, 0).tolist() == keep.tolist()


def test_cap_limits_kept_voxels_per_sample_in_the_network():
    radar = random_fields(2, 3, SHAPE, 0.2, seed=6, dtype=torch.float64)[0]
    net = _net(seed=3)
    with torch.no_grad():
        for head in net.decoder.heads:
            head.bias.fill_(5.0)  # everything positive
        with pytest.warns(UserWarning, match=r"cap of 5 voxels per sample and level dropped \d+ voxel"):
            out = net(radar, cap=5)
    counts = torch.bincount(out.field.coords[:, 0].long(), minlength=2)
    assert counts.tolist() == [5, 5]


def test_the_cap_warning_says_what_the_cap_dropped_and_reads_only_where_a_sample_could_reach_it(monkeypatch):
    import warnings

    import sparse_radar.models.generative as generative
    radar = random_fields(2, 3, SHAPE, 0.3, seed=6, dtype=torch.float64)[0]
    net = _net(seed=3)
    with torch.no_grad():
        for head in net.decoder.heads:
            head.bias.fill_(0.3)  # most candidates positive, some not
    reads = []
    warn = generative._warn_capped
    monkeypatch.setattr(generative, "_warn_capped", lambda dropped, cap: (reads.append(len(dropped)),
                                                                          warn(dropped, cap)))
    for cap in (1, 3, 8, 16, 24, 40, 64, 10 ** 6):
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = net(radar, cap=cap)
        # what the cap dropped, level by level, recounted from the levels' own logits and keep
        dropped = [int(((lv.logits > 0) & ~lv.keep).sum()) for lv in out.levels]
        said = [int(str(w.message).split("dropped ")[1].split(" ")[0]) for w in caught]
        assert said == [n for n in dropped if n], cap
        kept = [int(lv.keep.sum()) for lv in out.levels]
        assert reads[-1] == sum(k >= cap for k in kept), cap  # a level read only where its batch kept >= cap
    assert reads[-1] == 0 and reads[0] == len(out.levels)  # the large cap read nothing; cap 1 every level


def test_occupancy_loss_matches_a_hand_computed_value_and_trains():
    from sparse_radar.models.generative import LevelOutput
    logits = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 0.0])
    samples = torch.tensor([0, 0, 1])
    loss, logs = occupancy_loss([LevelOutput(logits, labels, samples, logits > 0, 2)], dice_weight=1.0)
    p = torch.sigmoid(logits)
    bce = -(torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(1 - p[2])) / 3
    dice0 = 1 - (2 * p[0] + 1) / (p[0] + p[1] + 1 + 1)
    dice1 = 1 - 1 / (p[2] + 1)
    assert torch.allclose(loss, bce + (dice0 + dice1) / 2)
    assert float(logs["recall_0"]) == 1.0
    radar = random_fields(2, 3, SHAPE, 0.2, seed=6)[0]
    target = random_fields(2, 1, SHAPE, 0.15, seed=5)[0]
    torch.manual_seed(0)
    net = StructureNet(StructureConfig(**CONFIG))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss, _ = occupancy_loss(net(radar, target).levels)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first


def test_predicted_support_holds_the_radar_and_is_dilated():
    radar = random_fields(2, 3, SHAPE, 0.1, seed=7)[0]
    net = StructureNet(StructureConfig(**CONFIG))
    support = predicted_support(net, radar)
    radar_keys = linear_keys(radar.coords, SHAPE)
    assert bool(torch.isin(radar_keys, support.keys).all())
    assert torch.equal(support.keys, torch.sort(support.keys).values)
    wider = predicted_support(net, radar, radius=(1, 1, 1))
    assert bool(torch.isin(support.keys, wider.keys).all()) and wider.num_voxels > support.num_voxels


@pytest.mark.parametrize("radius", [(0, 0, 0), (1, 1, 1), (0, 2, 1)])
def test_predicted_support_is_every_cell_near_a_kept_or_radar_voxel_with_its_counts_per_sample(radius):
    import itertools
    radar = random_fields(2, 3, SHAPE, 0.1, seed=7)[0]
    net = StructureNet(StructureConfig(**CONFIG))
    kept = net(radar).field.coords.tolist()
    cells = set()  # the reference: a box of radius around each kept or radar voxel, inside the grid
    for b, z, y, x in kept + radar.coords.tolist():
        for dz, dy, dx in itertools.product(*(range(-r, r + 1) for r in radius)):
            if 0 <= z + dz < SHAPE[0] and 0 <= y + dy < SHAPE[1] and 0 <= x + dx < SHAPE[2]:
                cells.add((b, z + dz, y + dy, x + dx))
    support = predicted_support(net, radar, radius=radius)
    assert support.coords.tolist() == [list(c) for c in sorted(cells)]
    assert support.host_counts() == tuple(sum(c[0] == b for c in cells) for b in range(2))  # read with the size


@pytest.mark.parametrize("changes,match", [
    (dict(channels=(4, 6)), "one per level"), (dict(strides=((2, 2), (2, 2, 2))), "triples"),
    (dict(norm_type="batch"), "norm_type"), (dict(cap=-1), "cap"),
])
def test_structure_config_rejects_bad_values(changes, match):
    with pytest.raises(ValueError, match=match):
        StructureConfig(**{**CONFIG, **changes})


def test_grid_that_strides_do_not_divide_is_refused():
    net = StructureNet(StructureConfig(**CONFIG))
    radar = SparseVoxels(torch.zeros(1, 3), torch.tensor([[0, 0, 0, 0]]), (4, 8, 6), 1)
    with pytest.raises(ValueError, match="not divisible"):
        net(radar)
