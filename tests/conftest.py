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
