"""Simple mistakes are answered before torch and diffusers load (well under a second, not 5-30 s)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Each command runs in a fresh interpreter: it reports its exit status, its stderr lines and the
# heavy libraries it imported.
PROBE = """
import contextlib, io, json, sys
from unziplora.app.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "stderr": err.getvalue().splitlines(),
                  "heavy": [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]}))
"""


def run_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def place(tmp_path_factory, tiny_image):
    root = tmp_path_factory.mktemp("quick")
    (root / "taken").mkdir()
    (root / "taken" / "file").write_text("x")
    (root / "empty.png").write_bytes(b"")
    tiny_image.save(root / "photo.png")
    return root, root / "photo.png"


CASES = {
    "missing image": (["decompose", "missing.png", "--subject", "cat", "--style", "ink", "--out", "new"],
                      "image missing.png does not exist"),
    "empty image": (["decompose", "empty.png", "--subject", "cat", "--style", "ink", "--out", "new"], "empty file"),
    "existing output": (["decompose", "{image}", "--subject", "cat", "--style", "ink", "--out", "taken"],
                        "taken already exists"),
    "resolution 63": (["decompose", "{image}", "--subject", "cat", "--style", "ink", "--out", "new",
                       "--resolution", "63"], "multiple of 8"),
    "resolution off the model's grid": (["decompose", "{image}", "--subject", "cat", "--style", "ink", "--out", "new",
                                         "--base-model", "embedded", "--resolution", "72"], "use a multiple of 32"),
    "no subject": (["decompose", "{image}", "--out", "new"], "subject and style words are required"),
    "missing base model": (["decompose", "{image}", "--subject", "cat", "--style", "ink", "--out", "new",
                            "--base-model", "./nope"], "base model path nope does not exist"),
    "info of no run": (["info", "runs/nope"], "run folder runs/nope does not exist"),
    "export of no run": (["export", "runs/nope"], "run folder runs/nope does not exist"),
    "generate from no run": (["generate", "runs/nope", "--prompt", "a cat"], "runs/nope does not exist"),
    "generate at a bad size": (["generate", "taken", "--prompt", "a cat", "--resolution", "63"],
                               "positive multiple of 8"),
    "merge of no run": (["merge", "runs/a", "runs/b", "--out", "m"], "runs/a does not exist"),
}


@pytest.mark.parametrize("name", CASES)
def test_a_simple_mistake_is_one_line_before_torch_loads(name, place):
    root, image = place
    args, message = CASES[name]
    result = run_cli([a.replace("{image}", str(image)) for a in args], root)
    assert result["rc"] == 2
    assert len(result["stderr"]) == 1 and result["stderr"][0].startswith("error: "), result["stderr"]
    assert message in result["stderr"][0]
    assert result["heavy"] == [], f"{name}: imported {result['heavy']} before answering"


def test_a_size_far_above_the_models_own_is_one_line_with_the_cost_of_a_step(place):
    """Not a simple mistake: the answer counts the denoiser's operations at that size (torch, on the
    meta device: no weights load), so it may import torch; it is still one line, before any work."""
    root, image = place
    result = run_cli(["decompose", str(image), "--subject", "cat", "--style", "ink", "--out", "new",
                      "--base-model", "embedded", "--resolution", "4096"], root)
    assert result["rc"] == 2 and len(result["stderr"]) == 1 and result["stderr"][0].startswith("error: ")
    assert "4,096x a step at 64 px" in result["stderr"][0] and "per training step here" in result["stderr"][0]
    assert not (root / "new").exists() and not (root / "new.partial").exists()
