"""setup.py is a shim over pyproject.toml, and the pyproject build works offline (no build isolation)."""
import ast
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_py_is_a_bare_shim():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert [c.func.id for c in calls] == ["setup"] and not calls[0].args and not calls[0].keywords


def test_setup_py_reads_its_metadata_from_pyproject():
    pytest.importorskip("setuptools")
    out = subprocess.run([sys.executable, "setup.py", "--name", "--version"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[-2:] == ["sparse-radar", "0.1.0"]


def test_offline_wheel_build_packs_the_kernels_under_sparse_radar(tmp_path):
    pytest.importorskip("setuptools")
    env = dict(os.environ, PIP_NO_INDEX="1")  # no package index: what the GPU machine has
    source = tmp_path / "source"  # a copy: setuptools writes build/ and egg-info into the tree it builds
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "runs", "*.egg-info", "__pycache__",
                                                                "results", "fixtures"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, env=env, capture_output=True)
    wheel = next(p for p in os.listdir(tmp_path / "wheel") if p.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / "wheel" / wheel).namelist()
    assert "sparse_radar/kernels/triton/conv.py" in names and "sparse_radar/training/trainer.py" in names
