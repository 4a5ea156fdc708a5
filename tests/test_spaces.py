"""The Hugging Face Space bundle: assembles from the repo and stays in step with pyproject."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_space_requirements_match_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [l for l in (ROOT / "spaces/requirements.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert lines == [d for d in deps if not d.startswith("gradio")]


def test_space_front_matter_pins_the_gradio_we_test_with():
    import gradio

    readme = (ROOT / "spaces/README.md").read_text()
    assert readme.startswith("---\n") and f"sdk_version: {gradio.__version__}" in readme
    assert "app_file: app.py" in readme


def test_build_assembles_a_pushable_space(tmp_path):
    out = tmp_path / "space"
    subprocess.run(["bash", str(ROOT / "spaces/build.sh"), str(out)], check=True, capture_output=True)
    for name in ("README.md", "app.py", "requirements.txt", "mmchat/session.py", "knowledge/images/cat.png"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("__pycache__"))
