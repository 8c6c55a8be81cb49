"""Shared test setup: Triton kernels run in its CPU interpreter where no GPU is; the dataset-validation cache
lives in a temporary folder, never in the user's ~/.cache."""
import os

import pytest
import torch

# Set before any Triton kernel is defined (triton reads it when a kernel is decorated): on a machine without
# a GPU every Triton kernel then runs on CPU tensors, checked against the torch backend.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _validation_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPARSE_RADAR_CACHE", str(tmp_path_factory.getbasetemp() / "validation-cache"))


SMALL_GRID = "0,-12.8,-2,25.6,12.8,4.4@0.8"  # (8, 32, 32)


@pytest.fixture(scope="session")
def small_runs(tmp_path_factory):
    """(EDM run, consistency-distilled run) folders, one training step each, on SMALL_GRID."""
    from sparse_radar.train import run as train

    root = tmp_path_factory.mktemp("small_runs")
    edm, cd = str(root / "edm"), str(root / "cd")
    common = ["--train_size", "2", "--progress", "False", "--preview_steps", "1", "--grid", SMALL_GRID]
    assert train(common + ["--model_channels", "8", "--steps", "1", "--out", edm]) == 0
    assert train(common + ["--mode", "cd", "--teacher", edm, "--steps", "1", "--out", cd]) == 0
    return edm, cd


@pytest.fixture(scope="session")
def structure_runs(tmp_path_factory, small_runs):
    """(structure-network run, EDM run on its predicted support) folders, two training steps each, on SMALL_GRID."""
    from sparse_radar.train import run as train

    root = tmp_path_factory.mktemp("structure_runs")
    structure, predicted = str(root / "structure"), str(root / "predicted")
    common = ["--train_size", "2", "--progress", "False", "--preview_steps", "1", "--grid", SMALL_GRID, "--steps", "2"]
    assert train(common + ["--stage", "structure", "--out", structure]) == 0
    assert train(common + ["--model_channels", "8", "--support", "predicted", "--structure", structure,
                           "--out", predicted]) == 0
    return structure, predicted


@pytest.fixture(scope="session")
def latent_runs(tmp_path_factory):
    """(VAE run, LDM run, latent CD run) folders on SMALL_GRID: two steps each, one for CD."""
    from sparse_radar.train import run as train

    root = tmp_path_factory.mktemp("latent_runs")
    vae, ldm, cd = str(root / "vae"), str(root / "ldm"), str(root / "cd")
    common = ["--train_size", "2", "--progress", "False", "--preview_steps", "1", "--grid", SMALL_GRID]
    assert train(common + ["--stage", "vae", "--steps", "2", "--out", vae]) == 0
    assert train(common + ["--stage", "ldm", "--vae", vae, "--model_channels", "8", "--steps", "2", "--out", ldm]) == 0
    assert train(common + ["--stage", "cd", "--teacher", ldm, "--steps", "1", "--cm_steps", "4", "--out", cd]) == 0
    return vae, ldm, cd
