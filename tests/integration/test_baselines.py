"""Baselines and ablations produce run folders that generate like UnZipLoRA runs."""

import json

import pytest
from safetensors import safe_open

from unziplora.app.cli import main
from unziplora.config import SampleConfig
from unziplora.decompose import decompose
from unziplora.generate import generate
from unziplora.run.folder import RunFolder

from ..conftest import tiny_config


def lora_keys(run, branch):
    with safe_open(str(run.path / f"{branch}_lora" / "pytorch_lora_weights.safetensors"), "pt") as fh:
        return set(fh.keys())


def test_b_lora_trains_the_two_modules_of_the_profile(tiny_base, tiny_image, tmp_path):
    """B-LoRA's reference: content = up_blocks.0.attentions.0, style = up_blocks.0.attentions.1 on
    SDXL, nothing else. (Was: the six modules the UnZipLoRA profile gives a branch all columns of.)"""
    config = tiny_config(tiny_base)
    run = decompose(tiny_image, tmp_path / "b", config, "b-lora", progress=False)
    content, style = lora_keys(run, "content"), lora_keys(run, "style")
    assert content and style and not content & style
    assert all(k.startswith("unet.up_blocks.0.attentions.0.") for k in content)
    assert all(k.startswith("unet.up_blocks.0.attentions.1.") for k in style)
    assert len(content) == len(style) == 2 * 4 * 2  # the tiny UNet's 2 transformer blocks x attn1/attn2
    assert run.manifest.method.value == "b-lora" and run.manifest.extra["training_prompt"] == "A monadikos"
    assert run.manifest.extra["trained_modules"] == ["up_blocks.0.attentions.0", "up_blocks.0.attentions.1"]
    assert run.manifest.extra["reference_settings"]["used"] is False and run.manifest.steps == 5
    # its reference prompts: <c> and <s> both stand for the training token
    assert run.manifest.prompts.identifier == run.manifest.prompts.style_words == "monadikos"
    sample = SampleConfig(steps=2, seeds=[0])
    paths = generate("A <c> cat in <s> style", tmp_path / "g", "both", run=run.path, sample=sample)
    assert paths[0].is_file()
    record = json.loads((tmp_path / "g" / "generation.json").read_text())
    assert record["prompts"] == {"prompt": "A monadikos cat in monadikos style"}  # one ordinary prompt


def test_b_lora_both_loads_the_two_parts_under_one_prompt(tiny_base, tiny_image, tmp_path):
    """B-LoRA's `--mode both` (and its style transfer across runs) = both parts loaded together."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image
    from safetensors.torch import load_file, save_file

    config = tiny_config(tiny_base, **{"train.steps": 1})
    run = decompose(tiny_image, tmp_path / "b", config, "b-lora", progress=False)
    torch.manual_seed(0)  # one step barely moves B from 0: make the parts visible in the image
    for branch in ("content", "style"):
        file = run.path / f"{branch}_lora" / "pytorch_lora_weights.safetensors"
        save_file({k: torch.randn_like(v) * 0.3 if "lora_B" in k else v for k, v in load_file(file).items()}, file)
    sample = SampleConfig(steps=2, seeds=[0])
    both = generate("A <c> cat in <s> style", tmp_path / "both", "both", run=run.path, sample=sample)
    cross = generate("A <c> cat in <s> style", tmp_path / "cross", "cross", content_run=run.path, style_run=run.path,
                     sample=sample)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_base))
    pipe.set_progress_bar_config(disable=True)
    for branch in ("content", "style"):
        pipe.load_lora_weights(str(run.path / f"{branch}_lora"), adapter_name=branch)
    pipe.set_adapters(["content", "style"], [1.0, 1.0])
    expected = pipe(prompt_embeds=None, prompt="A monadikos cat in monadikos style", negative_prompt_embeds=None,
                    num_inference_steps=2, guidance_scale=5.0, height=32, width=32,
                    generator=torch.Generator().manual_seed(0)).images[0]
    expected = np.asarray(expected, dtype=np.int16)
    for paths in (both, cross):
        assert np.abs(np.asarray(Image.open(paths[0]), dtype=np.int16) - expected).max() <= 2


def test_b_lora_uses_its_reference_settings_unless_the_user_sets_others(tiny_base, tiny_image, tmp_path,
                                                                        monkeypatch):
    import dataclasses

    import unziplora.methods.dreambooth as single
    from unziplora.methods import resolve_config

    specs, real = [], single.SingleLoraLoop

    def fake_loop(pipe, image, spec, device, dtype, prior_images=()):
        specs.append(spec)  # what would be trained; train one step of rank 2 instead
        return real(pipe, image, dataclasses.replace(spec, steps=1, rank=2), device, dtype, prior_images)

    monkeypatch.setattr(single, "SingleLoraLoop", fake_loop)
    given = {"model.base_model": str(tiny_base), "prompts.subject": "cat", "prompts.style": "sketch",
             "train.resolution": 32, "sample.steps": 2}
    resolved = resolve_config(given, method="b-lora")
    run = decompose(tiny_image, tmp_path / "b", resolved.config, method="b-lora", progress=False,
                    sources=resolved.sources)
    assert (specs[0].rank, specs[0].lr, specs[0].steps) == (64, 5e-5, 1000)
    assert specs[0].prompt == "A monadikos"
    assert run.manifest.extra["reference_settings"] == {"source": "yardenfren1996/B-LoRA (arXiv 2403.14572)",
                                                  "rank": 64, "lr": 5e-5, "steps": 1000, "used": True}
    assert run.manifest.config_sources["train.steps"] == "method"
    explicit = resolve_config({**given, "train.steps": 7}, method="b-lora")  # an explicit setting wins
    assert explicit.config.train.steps == 7 and explicit.sources["train.steps"] == "given"
    assert explicit.config.lora.rank == 64 and "lora.rank" not in explicit.sources  # = the paper default


def test_dreambooth_lora_cannot_split(tiny_base, tiny_image, tmp_path):
    run = decompose(tiny_image, tmp_path / "d", tiny_config(tiny_base), "dreambooth-lora", progress=False)
    assert lora_keys(run, "content") == lora_keys(run, "style")
    assert len(lora_keys(run, "content")) == 2 * 4 * 22  # every projection of the tiny UNet's 22 attention modules
    assert "method:       dreambooth-lora" in RunFolder.open(run.path).summary()


@pytest.mark.parametrize("method, check", [
    ("unziplora-m1", lambda m: m.mask_fraction == {"content": 1.0, "style": 1.0} and m.config.masks.enabled is False),
    ("unziplora-m2", lambda m: m.config.model.block_separation is False),
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
    plain = decompose(tiny_image, tmp_path / "plain", config, "dreambooth-lora", progress=False)
    prior = decompose(tiny_image, tmp_path / "prior", config.with_overrides({"train.prior_images": 2}),
                               "dreambooth-lora", progress=False)
    assert sorted(p.name for p in (prior.path / "class_images").iterdir()) == ["000.png", "001.png"]
    # DreamBooth's class prompt (arXiv 2208.12242, Sec. 4.2). (Was: "A cat in sketch style".)
    assert prior.manifest.extra["prior_preservation"] == {"images": 2, "prompt": "A cat", "weight": 1.0}
    assert plain.manifest.extra["prior_preservation"] is None
    with safe_open(str(plain.path / "content_lora" / "pytorch_lora_weights.safetensors"), "pt") as a, \
            safe_open(str(prior.path / "content_lora" / "pytorch_lora_weights.safetensors"), "pt") as b:
        assert any(not a.get_tensor(k).equal(b.get_tensor(k)) for k in a.keys())


def test_dreambooth_lora_both_applies_its_one_lora_once(tiny_base, tiny_image, tmp_path):
    """Its content and style LoRAs are the same file: "both" must not add it twice."""
    import numpy as np
    from PIL import Image

    import torch
    from safetensors.torch import load_file, save_file

    run = decompose(tiny_image, tmp_path / "d", tiny_config(tiny_base), "dreambooth-lora", progress=False)
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
