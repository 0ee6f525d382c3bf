"""Baselines and ablations produce run folders that generate like UnZipLoRA runs."""

import pytest
from safetensors import safe_open

from unziplora.cli import main
from unziplora.config import SampleConfig
from unziplora.generate import generate
from unziplora.methods.baselines import decompose_baseline
from unziplora.runfolder import RunFolder

from ..conftest import tiny_config


def lora_keys(run, branch):
    with safe_open(str(run.path / f"{branch}_lora" / "pytorch_lora_weights.safetensors"), "pt") as fh:
        return set(fh.keys())


def test_b_lora_splits_by_the_profile(tiny_base, tiny_image, tmp_path):
    run = decompose_baseline(tiny_image, tmp_path / "b", tiny_config(tiny_base), "b-lora", progress=False)
    content, style = lora_keys(run, "content"), lora_keys(run, "style")
    assert content and style and not content & style
    assert all(k.startswith(("unet.up_blocks.0.attentions.0.", "unet.up_blocks.0.attentions.2.")) for k in content)
    assert all(k.startswith(("unet.up_blocks.0.attentions.1.", "unet.up_blocks.1.")) for k in style)
    assert run.manifest["method"] == "b-lora" and run.manifest["training_prompt"] == "A monadikos"
    paths = generate("A <c> cat in <s> style", tmp_path / "g", "both", run=run.path, sample=SampleConfig(steps=2, seeds=[0]))
    assert paths[0].is_file()


def test_dreambooth_lora_cannot_split(tiny_base, tiny_image, tmp_path):
    run = decompose_baseline(tiny_image, tmp_path / "d", tiny_config(tiny_base), "dreambooth-lora", progress=False)
    assert lora_keys(run, "content") == lora_keys(run, "style")
    assert len(lora_keys(run, "content")) == 2 * 4 * 22  # every projection of the tiny UNet's 22 attention modules
    assert "method:       dreambooth-lora" in RunFolder.open(run.path).summary()


@pytest.mark.parametrize("method, check", [
    ("unziplora-m1", lambda m: m["mask_fraction"] == {"content": 1.0, "style": 1.0}),
    ("unziplora-m2", lambda m: m["config"]["model"]["block_separation"] is False),
])
def test_ablations_through_the_cli(tiny_base, tiny_image, tmp_path, method, check):
    image = tmp_path / "in.png"
    tiny_image.save(image)
    assert main(["decompose", str(image), "--subject", "cat", "--style", "ink", "--out", str(tmp_path / method),
                 "--base-model", str(tiny_base), "--steps", "3", "--rank", "2", "--resolution", "32",
                 "--sample-steps", "1", "--quiet", "--method", method]) == 0
    assert check(RunFolder.open(tmp_path / method).manifest)


def test_dreambooth_prior_preservation_draws_class_images_and_changes_training(tiny_base, tiny_image, tmp_path):
    config = tiny_config(tiny_base)
    plain = decompose_baseline(tiny_image, tmp_path / "plain", config, "dreambooth-lora", progress=False)
    prior = decompose_baseline(tiny_image, tmp_path / "prior", config.with_overrides({"train.prior_images": 2}),
                               "dreambooth-lora", progress=False)
    assert sorted(p.name for p in (prior.path / "class_images").iterdir()) == ["000.png", "001.png"]
    assert prior.manifest["prior_preservation"] == {"images": 2, "prompt": "A cat in sketch style", "weight": 1.0}
    assert plain.manifest["prior_preservation"] is None
    with safe_open(str(plain.path / "content_lora" / "pytorch_lora_weights.safetensors"), "pt") as a, \
            safe_open(str(prior.path / "content_lora" / "pytorch_lora_weights.safetensors"), "pt") as b:
        assert any(not a.get_tensor(k).equal(b.get_tensor(k)) for k in a.keys())


def test_dreambooth_lora_both_applies_its_one_lora_once(tiny_base, tiny_image, tmp_path):
    """Its content and style LoRAs are the same file: "both" must not add it twice."""
    import numpy as np
    from PIL import Image

    import torch
    from safetensors.torch import load_file, save_file

    run = decompose_baseline(tiny_image, tmp_path / "d", tiny_config(tiny_base), "dreambooth-lora", progress=False)
    weights = load_file(run.path / "content_lora" / "pytorch_lora_weights.safetensors")
    torch.manual_seed(0)  # a few steps barely move B from 0: make the LoRA visible in the image
    weights = {k: torch.randn_like(v) * 0.3 if "lora_B" in k else v for k, v in weights.items()}
    for branch in ("content", "style"):
        save_file(weights, run.path / f"{branch}_lora" / "pytorch_lora_weights.safetensors")
    sample = SampleConfig(steps=2, seeds=[0])
    prompt = "A <c> cat in <s> style"
    both = generate(prompt, tmp_path / "both", "both", run=run.path, sample=sample)
    once = generate(prompt, tmp_path / "once", "content", run=run.path, sample=sample)  # the one LoRA, whole prompt
    twice = generate(prompt, tmp_path / "twice", "cross", content_run=run.path, style_run=run.path, sample=sample)
    pixels = [np.asarray(Image.open(p[0]), dtype=np.int16) for p in (both, once, twice)]
    assert np.abs(pixels[0] - pixels[1]).max() <= 1
    assert np.abs(pixels[0] - pixels[2]).max() > 1  # summing both branches is a different image
