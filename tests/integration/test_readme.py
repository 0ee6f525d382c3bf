"""The README's Python snippets run as pasted (on the embedded model, from an empty folder)."""

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


def test_the_stock_diffusers_snippet_runs_as_pasted_on_a_cpu(tmp_path, monkeypatch):
    """After the demo (runs/demo), stock diffusers loads the embedded model and a LoRA with no dtype argument."""
    import numpy as np

    from unziplora.api import EMBEDDED_MODEL, decompose, demo_image, resolve_config

    subject, style, image = demo_image()
    monkeypatch.chdir(tmp_path)
    config = resolve_config({"model.base_model": str(EMBEDDED_MODEL), "prompts.subject": subject.cls,
                             "prompts.style": style.family, "train.steps": 2, "sample.steps": 2}).config
    decompose(image, "runs/demo", config, progress=False)
    blocks = python_blocks("Using the LoRAs in other tools")
    assert len(blocks) == 1
    scope: dict = {}
    exec(blocks[0].replace("num_inference_steps=30", "num_inference_steps=2"), scope)
    pixels = np.asarray(scope["image"], dtype=np.float32)
    assert pixels.shape == (64, 64, 3) and np.isfinite(pixels).all() and pixels.std() > 0


def test_the_readme_says_how_unziplora_gets_on_path_before_it_first_uses_the_bare_name():
    text = README.read_text()
    bare = re.search(r"(?<![\w/.-])unziplora (demo|decompose|generate|info|export|merge|eval|batch|probe|bench|ui)\b",
                     text)
    how = text.find("source .venv/bin/activate")
    assert bare is not None and 0 <= how < bare.start(), text[bare.start() - 200: bare.end()]
    assert ".venv/bin/unziplora" in text[:bare.start()]


def test_the_test_command_installs_chromium_where_it_can_and_reports_skips(tmp_path):
    """scripts/test.sh (the README's command) runs browser-deps.sh before pytest, and pytest, configured
    by pyproject.toml, names a skipped test and its reason in the summary."""
    import subprocess
    import sys

    root = README.parent
    assert "`./scripts/test.sh`" in README.read_text()
    script = (root / "scripts" / "test.sh").read_text()
    assert "./scripts/browser-deps.sh" in script
    assert script.index("./scripts/browser-deps.sh") < script.index("pytest")
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_x():\n    pytest.skip('no Chromium here')\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(root / "pyproject.toml"),
                           "--rootdir", str(tmp_path), str(tmp_path / "test_skips.py")],
                          capture_output=True, text=True, timeout=120)
    assert "SKIPPED [1]" in done.stdout and "no Chromium here" in done.stdout, done.stdout
