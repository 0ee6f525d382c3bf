"""The README's Python API example runs as pasted (on the embedded model, from an empty folder)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, re.S)


def test_the_python_api_example_runs_as_pasted(tmp_path, monkeypatch):
    from unziplora.models.embedded import EMBEDDED_MODEL

    if not (EMBEDDED_MODEL / "model_index.json").is_file():
        pytest.skip("no embedded model")
    blocks = python_blocks("Python API")
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(blocks[0], scope)
    run = scope["run"]
    assert (run.path / "content_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert scope["paths"][0].parent == run.path / "samples" / "both-001"
    assert (run.path / "samples" / "style-001").is_dir()
