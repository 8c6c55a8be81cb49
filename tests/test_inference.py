"""Densifier (the library use) and the --grid record it reads from checkpoints."""
import numpy as np
import pytest
import torch

from sparse_radar.data.grid import NAMED_GRIDS, GridSpec, parse_grid
from sparse_radar.data.synthetic import generate_scan, split_seed
from sparse_radar.inference import Densifier
from sparse_radar.voxels import SparseVoxels
from tests.conftest import SMALL_GRID

pytestmark = pytest.mark.filterwarnings("ignore:.*outside the grid")


@pytest.fixture
def runs(small_runs):
    return small_runs


def radar_points(index=0):
    return generate_scan(split_seed("test", index))["radar"]


def test_parse_grid_names_and_bounds():
    assert parse_grid("default") == GridSpec()
    assert [parse_grid(n).shape for n in NAMED_GRIDS] == [(8, 64, 64), (32, 128, 128), (80, 600, 200)]
    g = parse_grid("0,-10,-2,20,10,2@0.5,0.5,1")
    assert g.shape == (4, 40, 40) and g.voxel_size == (0.5, 0.5, 1.0)
    for bad in ("huge", "0,0,0,1,1@0.1", "0,0,0,1,1,1@a", "0,0,0,1,1,1@0.1,0.2", "1,0,0,0,1,1@0.1"):
        with pytest.raises(ValueError, match="--grid|GridSpec"):
            parse_grid(bad)


def test_from_checkpoint_needs_no_flags(runs):
    d = Densifier.from_checkpoint(runs[0], device="cpu")
    assert d.grid == parse_grid(SMALL_GRID) and d.grid.shape == (8, 32, 32)
    assert d.default_sampler == "heun" and [c.name for c in d.output_channels] == ["intensity", "doppler"]
    assert Densifier.from_checkpoint(runs[1], device="cpu").default_sampler == "onestep"
    ema = Densifier.from_checkpoint(runs[0], device="cpu")
    raw = Densifier.from_checkpoint(runs[0], device="cpu", ema=False)
    assert any(not torch.equal(a, b) for a, b in zip(ema.model.parameters(), raw.model.parameters()))


def test_output_is_voxel_centres_on_the_support_with_physical_channels(runs):
    d = Densifier.from_checkpoint(runs[0], device="cpu")
    pts = radar_points()
    out = d(pts, steps=2, threshold=-1.0)  # every support voxel
    assert out.dtype == np.float32 and out.shape[1] == 5 and len(out) > 0
    idx = np.floor((out[:, :3] - np.array(d.grid.point_range[:3])) / 0.8).astype(int)
    np.testing.assert_allclose(out[:, :3], np.array(d.grid.point_range[:3]) + (idx + 0.5) * 0.8, atol=1e-4)
    inside = d.grid.voxel_coords(pts[:, :3])
    radar_vox = {tuple(v) for v in inside[0][inside[1]][:, [1, 2, 0]]}  # (x, y, z) indices
    # the support is the radar voxels dilated by (z 1, x 2, y 2): every output voxel is that close to one
    for v in map(tuple, idx):
        assert any(abs(v[0] - r[0]) <= 2 and abs(v[1] - r[1]) <= 2 and abs(v[2] - r[2]) <= 1 for r in radar_vox)
    assert (out[:, 3] >= 0).all() and (out[:, 3] <= 1).all() and (np.abs(out[:, 4]) <= 20).all()


def test_to_points_undoes_the_feature_scaling(runs):
    d = Densifier.from_checkpoint(runs[0], device="cpu")
    feats = torch.tensor([[0.9, 0.0, 0.5, 1.0], [-0.5, 1.0, -1.0, 1.0], [0.2, -1.0, -0.5, 1.0]])
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3], [1, 7, 31, 31]])
    field = SparseVoxels(feats, coords, d.grid.shape, 2)
    got = d.to_points(field, 0, threshold=0.0)
    # voxel (z 0, x 0, y 0): centre (0.4, -12.4, -1.6); intensity (0 + 1) / 2 = 0.5; doppler -20 + 0.75 * 40 = 10
    np.testing.assert_allclose(got, [[0.4, -12.4, -1.6, 0.5, 10.0]], atol=1e-5)
    np.testing.assert_allclose(d.to_points(field, 1, threshold=0.0), [[25.2, 12.4, 4.0, 0.0, -10.0]], atol=1e-5)


def test_seed_batches_and_samplers(runs):
    d = Densifier.from_checkpoint(runs[0], device="cpu")
    a, b = radar_points(0), radar_points(1)
    one = d(a, steps=2, threshold=-0.5)
    assert np.array_equal(one, d(a, steps=2, threshold=-0.5))
    assert not np.array_equal(d(a, steps=2, threshold=-1.0, seed=1)[:, 3:], d(a, steps=2, threshold=-1.0)[:, 3:])
    both = d([a, b], steps=2, threshold=-0.5)
    assert isinstance(both, list) and np.allclose(both[0], one, atol=1e-5)
    # a cloud's result does not depend on its batch
    assert np.allclose(both[1], d(b, steps=2, threshold=-0.5), atol=1e-5)
    for sampler in ("euler", "onestep", "multistep"):
        assert d(a, sampler=sampler, steps=2, threshold=-1.0).shape[1] == 5
    assert d([]) == []


def test_points_outside_the_grid_are_dropped_and_counted(runs):
    d = Densifier.from_checkpoint(runs[0], device="cpu")
    pts = np.array([[5.0, 0.0, 0.0, 10.0, 1.0], [500.0, 0.0, 0.0, 10.0, 1.0], [5.0, 0.0, -50.0, 0.0, 0.0]])
    with pytest.warns(UserWarning, match="2 radar point"):
        out = d(pts, steps=1, threshold=-1.0)
    assert d.last_dropped == [2] and len(out) > 0
    empty = d(np.zeros((0, 5)), steps=1)
    assert empty.shape == (0, 5)
    with pytest.warns(UserWarning, match="missing ones are taken as 0"):
        assert d(pts[:1, :3], steps=1, threshold=-1.0).shape[1] == 5
    outs = d([np.zeros((0, 5)), pts[:1]], steps=1, threshold=-1.0)
    assert len(outs[0]) == 0 and len(outs[1]) > 0


def test_torch_inputs_of_any_float_dtype(runs):
    d = Densifier.from_checkpoint(runs[0], device="cpu")
    a = radar_points(0)
    expected = d(a, steps=1, threshold=-0.5)
    for dtype in (torch.float32, torch.float64):
        assert np.array_equal(d(torch.from_numpy(a).to(dtype), steps=1, threshold=-0.5), expected)
    rounded = torch.from_numpy(a).to(torch.bfloat16)  # bf16 rounds the points: compare with the rounded array
    assert np.array_equal(d(rounded, steps=1, threshold=-0.5), d(rounded.double().numpy(), steps=1, threshold=-0.5))


def test_synthetic_frames_are_read_when_used():
    from sparse_radar.frames import load_frames
    from sparse_radar.data.voxelize import RADAR_CHANNELS
    frames = load_frames("synthetic", parse_grid(SMALL_GRID), RADAR_CHANNELS, count=200)
    assert len(frames) == 200 and all(f._sample is None for f in frames)  # nothing generated before work starts
    assert frames[3].has_target and frames[3].sample["radar_coords"].shape[1] == 3


def test_bad_input_says_what_is_expected(runs):
    d = Densifier.from_checkpoint(runs[0], device="cpu")
    with pytest.raises(ValueError, match=r"\[N, >=3\]"):
        d(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        d(np.array([[1.0, np.nan, 0.0]]))
    with pytest.raises(TypeError, match="numpy array or tensor"):
        d("points.ply")
    with pytest.raises(ValueError, match="sampler must be one of"):
        d(radar_points(), sampler="ddim")
    with pytest.raises(ValueError, match="steps"):
        d(radar_points(), steps=0)
    with pytest.raises(ValueError, match="no checkpoint"):
        Densifier.from_checkpoint("/nonexistent/run")


def test_voxel_folders_take_the_grid_of_their_files():
    from sparse_radar.training.config import parse_args
    from sparse_radar.training.data_record import metric_grid

    assert metric_grid(parse_args(["--grid", "reference"]), (32, 128, 128)) == NAMED_GRIDS["reference"]
    with pytest.raises(ValueError, match="has shape"):
        metric_grid(parse_args(["--grid", "reference"]), (8, 64, 64))
    with pytest.warns(UserWarning, match="voxel units"):
        assert metric_grid(parse_args([]), (4, 10, 12)) == GridSpec((0, 0, 0, 10, 12, 4), (1, 1, 1))


def test_dense_backend_and_half_precision_follow_the_sparse_fp32_output(runs):
    pts = radar_points()
    d = Densifier.from_checkpoint(runs[0], device="cpu")
    ref = d(pts, steps=2, threshold=-1.0)
    d.field = "dense"  # the same weights on the dense fallback: the same function on the support
    np.testing.assert_allclose(d(pts, steps=2, threshold=-1.0), ref, atol=1e-4)
    half = Densifier.from_checkpoint(runs[0], device="cpu", dtype="bfloat16")(pts, steps=2, threshold=-1.0)
    assert half.shape == ref.shape and np.abs(half[:, 3:] - ref[:, 3:]).max() < 0.1  # doppler spans 40 m/s
    with pytest.raises(ValueError, match="dtype"):
        Densifier.from_checkpoint(runs[0], dtype="float64")
    old_name = dict(model=d.model, diffusion=d.diffusion, grid=d.grid, radar_channels=d.radar_channels,
                    target_channels=d.target_channels, device="cpu")
    with pytest.warns(DeprecationWarning, match="field="):
        assert Densifier(**old_name, backend="dense").field == "dense"  # the keyword's former name still works
    with pytest.raises(ValueError, match="field must be one of sparse, dense"):
        Densifier(**old_name, field="triton")


def test_densifier_takes_structured_arrays_by_field_name(small_runs):
    from sparse_radar import Densifier
    from sparse_radar.data.synthetic import generate_scan, split_seed
    densifier = Densifier.from_checkpoint(small_runs[0])
    plain = generate_scan(split_seed("test", 1))["radar"][:, :5].astype(np.float32)  # x, y, z, rcs, doppler
    # as a ROS driver publishes it: other field order, other names, an extra field
    cloud = np.zeros(len(plain), dtype=[("velocity", "<f4"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                        ("ring", "<u2"), ("power", "<f4")])
    cloud["x"], cloud["y"], cloud["z"] = plain[:, 0], plain[:, 1], plain[:, 2]
    cloud["power"], cloud["velocity"], cloud["ring"] = plain[:, 3], plain[:, 4], 3
    np.testing.assert_array_equal(densifier(cloud, steps=2), densifier(plain, steps=2))
    with pytest.raises(ValueError, match="radar points need fields x, y, z; the file has velocity, ring"):
        densifier(np.zeros(3, dtype=[("velocity", "<f4"), ("ring", "<u2")]), steps=2)
    with pytest.raises(ValueError, match=r"need rcs \(rcs, power, snr, intensity\)"):
        densifier(np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("doppler", "<f4")]), steps=2)
