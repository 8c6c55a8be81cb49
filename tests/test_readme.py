"""The README's Python examples run as written."""
import pathlib
import re
import shutil

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, request, tmp_path, monkeypatch):
    if "runs/latest" in BLOCKS[index]:  # an example that loads a trained run: a small one stands in for it
        shutil.copytree(request.getfixturevalue("small_runs")[0], tmp_path / "runs" / "latest")
        monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})
