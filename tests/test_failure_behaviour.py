"""Walks the README's "Failure behaviour" table: every row names a check in tests/failure_checks, and every
check has a row."""
import pathlib
import re
import shutil

import pytest

from sparse_radar.train import run
from tests.failure_checks import (CHECKS, SMALL, api, data, outputs, sampling,  # noqa: F401 - importing registers
                                  stages, training)  # noqa: F401

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def table_rows():
    """First-column names of the README's Failure behaviour table."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Failure behaviour"):]
    section = section[:section.index("\n## ", 5)]
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 4-step run with a checkpoint every 2 steps."""
    folder = tmp_path_factory.mktemp("base") / "run"
    assert run(SMALL + ["--steps", "4", "--save_every", "2", "--out", str(folder)]) == 0
    return folder


@pytest.fixture
def run_copy(base_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base_run, folder)
    return folder


def test_every_row_has_a_check_and_every_check_a_row():
    assert sorted(table_rows()) == sorted(CHECKS)


@pytest.mark.parametrize("name", table_rows())
def test_row(name, request, tmp_path, capsys):
    CHECKS[name](request, tmp_path, capsys)

