"""Shared test setup: the dataset-validation cache lives in a temporary folder, never in the user's ~/.cache."""
import pytest


@pytest.fixture(autouse=True)
def _validation_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPARSE_RADAR_CACHE", str(tmp_path_factory.getbasetemp() / "validation-cache"))
