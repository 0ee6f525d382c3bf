"""The learned family judge: the shipped weights name the families of renders they never saw, also
blurred as a decoder leaves them; training, saving and loading round-trip; bad files are one error."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import save_file

from unziplora.errors import UnZipLoRAError
from unziplora.toyworld import FAMILIES, heldout_images
from unziplora.toyworld import family_judge

pytestmark = pytest.mark.skipif(not family_judge.JUDGE_FILE.is_file(), reason="no shipped family judge")


@pytest.fixture(scope="module")
def heldout():
    """Held-out style instances (primary hues the pretraining never drew), every family equally."""
    triples = heldout_images(128)
    return [np.asarray(img) for _, _, img in triples], [t.family for _, t, _ in triples]


def accuracy(images, truth) -> float:
    return float(np.mean([a == b for a, b in zip(family_judge.judge_families(images), truth)]))


def test_the_shipped_judge_names_the_family_of_held_out_renders(heldout):
    images, truth = heldout
    assert accuracy(images, truth) >= 0.95


def test_the_shipped_judge_tolerates_a_decoders_blur(heldout):
    images, truth = heldout
    blurred = [np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(0.8))) for a in images]
    assert accuracy(blurred, truth) >= 0.9


def test_a_blank_canvas_and_any_size_get_a_family(heldout):
    images, _ = heldout
    big = Image.fromarray(images[0]).resize((128, 128), Image.NEAREST)
    assert family_judge.judge_family(big) == family_judge.judge_family(images[0])
    assert family_judge.judge_family(np.full((64, 64, 3), 200, np.uint8)) in FAMILIES


def test_a_missing_or_foreign_file_is_one_clear_error(tmp_path):
    with pytest.raises(UnZipLoRAError, match="no family judge at .*recipes.toyworld_model.family_judge"):
        family_judge.load(tmp_path / "absent.safetensors")
    (tmp_path / "notes.safetensors").write_text("not weights")
    with pytest.raises(UnZipLoRAError, match="is not a family judge file"):
        family_judge.load(tmp_path / "notes.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"),
              metadata={"recipe": '{"families": ["solid", "stripes"], "widths": [4]}'})
    with pytest.raises(UnZipLoRAError, match="judges families .* the world has"):
        family_judge.load(tmp_path / "other.safetensors")
