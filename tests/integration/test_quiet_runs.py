"""A run says only what a user can act on: cone-score ties go to --verbose and the manifest, the crop
note says "resized" only when the image is, and the Python API hides the libraries' notices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import tiny_config
from unziplora.app.cli import main
from unziplora.core.data import crop_note
from unziplora.core.inject import TwoBranchLoRA
from unziplora.names import Role

SRC = Path(__file__).resolve().parents[2] / "src"


def test_the_crop_note_says_resized_only_when_the_size_changes():
    same = crop_note(Image.new("RGB", (96, 64)), 64)
    assert "resized" not in same and "random 64x64 crop" in same and "96x64" in same
    assert "resized from 100x80 to 80x64" in crop_note(Image.new("RGB", (100, 80)), 64)
    assert crop_note(Image.new("RGB", (64, 64)), 64) is None


@pytest.fixture()
def every_layer_ties(monkeypatch):
    """Every refresh reports all of its layer branches tied (the worst case a real run can reach)."""
    refresh = TwoBranchLoRA.refresh_masks

    def tied(self, *args, **kwargs):
        refresh(self, *args, **kwargs)
        return [f"{name} ({branch.value})" for name, layer in self.layers.items()
                for branch, role in layer.roles.items() if role is Role.MASKED]

    monkeypatch.setattr(TwoBranchLoRA, "refresh_masks", tied)


def _decompose(tmp_path, tiny_base, tiny_image, *flags):
    tiny_image.save(tmp_path / "in.png")
    (tmp_path / "run.yaml").write_text(tiny_config(tiny_base).to_yaml())
    return main([*flags, "decompose", str(tmp_path / "in.png"), "--config", str(tmp_path / "run.yaml"),
                 "--out", str(tmp_path / "run"), "--quiet"])


def test_ties_are_one_sentence_and_recorded_in_the_manifest(tmp_path, tiny_base, tiny_image, every_layer_ties,
                                                            capsys):
    assert _decompose(tmp_path, tiny_base, tiny_image) == 0
    out, err = capsys.readouterr()
    assert "step 0" not in out + err and "every column has the same cone score" not in out + err
    assert (out + err).count("column scores tied") == 1  # one plain sentence for the whole run
    ties = json.loads((tmp_path / "run" / "manifest.json").read_text())["cone_score_ties"]
    assert [step for step, _ in ties["per_refresh"]] == [0, 2, 4]
    assert all(n == ties["branches"] for _, n in ties["per_refresh"])


def test_verbose_shows_each_refresh(tmp_path, tiny_base, tiny_image, every_layer_ties, capsys):
    assert _decompose(tmp_path, tiny_base, tiny_image, "--verbose") == 0
    err = capsys.readouterr().err
    assert [line.split(":")[1].strip() for line in err.splitlines() if "cone score" in line] == \
        ["step 0", "step 2", "step 4"]


def test_few_ties_say_nothing(tmp_path, tiny_base, tiny_image, capsys):
    """A run whose refreshes tie in fewer than half of the layer branches prints no tie sentence."""
    assert _decompose(tmp_path, tiny_base, tiny_image) == 0
    ties = json.loads((tmp_path / "run" / "manifest.json").read_text())["cone_score_ties"]
    out, err = capsys.readouterr()
    if max(n for _, n in ties["per_refresh"]) * 2 < ties["branches"]:
        assert "tied" not in out + err


API_SCRIPT = """
from unziplora.api import EMBEDDED_MODEL, decompose, demo_image, generate, resolve_config
subject, style, image = demo_image()
config = resolve_config({"model.base_model": str(EMBEDDED_MODEL), "prompts.subject": subject.cls,
                         "prompts.style": style.family, "train.steps": 2, "sample.steps": 1,
                         "sample.seeds": [0]}).config
run = decompose(image, "run", config, progress=False)
generate("A <c> triangle", mode="content", run=run.path, progress=False)
generate("A <c> triangle in <s> style", mode="both", run=run.path, progress=False)
"""


def test_the_python_api_hides_the_libraries_notices(tmp_path):
    """A fresh interpreter on the embedded model, where diffusers has notices to give (fp32 modules,
    text-encoder LoRA keys): the libraries' loggers print to the real stderr there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", API_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    for notice in ("should be kept in float32", "No LoRA keys associated", "Loading pipeline components"):
        assert notice not in done.stdout + done.stderr, done.stdout + done.stderr
