"""Stable Diffusion 1.x through the same interface as SDXL: decompose, the LoRAs in stock diffusers,
generation in every mode, export, resume, the prompt-separated model equal to the stock one with
zero LoRAs, and the probe."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from unziplora.app.cli import main
from unziplora.core.inject import inject_two_branch_lora
from unziplora.decompose import decompose
from unziplora.export import export_run
from unziplora.generate import generate
from unziplora.methods import resolve_spec
from unziplora.models.base import BaseModel
from unziplora.models.profiles import resolve_profile

from ..conftest import adapters_and_merged, interrupt_and_resume
from ..pipelines import save_tiny_sd_pipeline

SETTINGS = {"prompts.subject": "cat", "prompts.style": "sketch", "train.steps": 4, "train.resolution": 64,
            "lora.rank": 4, "masks.refresh_every": 2, "sample.steps": 2, "sample.seeds": [0],
            "train.checkpoint_every": 2}


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory):
    return BaseModel.resolve(save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd"))


@pytest.fixture(scope="module")
def sd_run(sd_base, tiny_image, tmp_path_factory):
    spec = resolve_spec(SETTINGS, base=sd_base)
    return decompose(tiny_image, tmp_path_factory.mktemp("sdrun") / "run", spec, progress=False)


def test_the_family_comes_from_the_folder_with_its_profile_and_defaults(sd_base):
    assert sd_base.family.name == "sd" and sd_base.family.pipeline == "StableDiffusionPipeline"
    assert resolve_profile("auto", sd_base).name == "sd15"
    spec = resolve_spec({"prompts.subject": "cat", "prompts.style": "ink"}, base=sd_base)
    assert spec.config.train.resolution == 512 and spec.sources["train.resolution"] == "model family"


def test_with_zero_loras_the_prompt_separated_unet_is_the_stock_one(sd_base):
    pipe = sd_base.load()
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    states = torch.randn(1, 77, 32)
    with torch.no_grad():
        stock = pipe.unet(x, t, states).sample
        lora = inject_two_branch_lora(pipe.unet, resolve_profile("sd15"), 4, init="zero_b")
        separated = pipe.unet(x, t, states, cross_attention_kwargs={
            "content_encoder_hidden_states": torch.randn(1, 77, 32),
            "style_encoder_hidden_states": torch.randn(1, 77, 32)}).sample
    assert lora.layers and torch.allclose(stock, separated, atol=1e-6)


def test_decompose_writes_loras_that_stock_diffusers_loads_and_that_change_its_output(sd_base, sd_run):
    assert sd_run.manifest.prompts.combined == "A monadikos cat in sketch style"
    assert (sd_run.path / "preview.png").is_file() and sd_run.manifest.mask_fraction["content"] > 0
    pipe = StableDiffusionPipeline.from_pretrained(sd_base.source)
    settings = dict(height=64, width=64, num_inference_steps=2, output_type="np")
    bare = pipe("A monadikos cat", generator=torch.Generator().manual_seed(0), **settings).images[0]
    pipe.load_lora_weights(str(sd_run.path / "content_lora"), adapter_name="content")
    with_lora = pipe("A monadikos cat", generator=torch.Generator().manual_seed(0), **settings).images[0]
    assert np.isfinite(with_lora).all() and np.abs(with_lora - bare).max() > 1e-4
    card = (sd_run.path / "README.md").read_text()
    assert "StableDiffusionPipeline.from_pretrained" in card
    assert "tags: [lora, unziplora, stable-diffusion, text-to-image]" in card  # the family's hub tag, not SDXL's


@pytest.mark.parametrize("mode", ["content", "style", "both", "cross"])
def test_generate_in_every_mode(sd_run, tmp_path, mode):
    sources = {"content_run": sd_run.path, "style_run": sd_run.path} if mode == "cross" else {"run": sd_run.path}
    paths = generate("A <c> cat in <s> style", tmp_path / mode, mode, steps=2, **sources)
    image = np.asarray(Image.open(paths[0]), dtype=np.float32)
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_exports_load_in_stock_diffusers(sd_base, sd_run, tmp_path):
    kohya = export_run(sd_run.path, "kohya", tmp_path / "kohya")
    pipe = StableDiffusionPipeline.from_pretrained(sd_base.source)
    pipe.load_lora_weights(str(kohya[0]), adapter_name="content_kohya")
    assert "content_kohya" in pipe.get_list_adapters()["unet"]


def test_an_interrupted_run_resumes(sd_base, tiny_image, tmp_path):
    run = interrupt_and_resume(sd_base.source, tiny_image, tmp_path)
    assert (run / "content_lora" / "pytorch_lora_weights.safetensors").is_file()


def test_the_probe_runs_on_the_family(sd_base, tmp_path):
    from unziplora.config import SampleConfig
    from unziplora.probe import oracle_scorer, probe_block_roles
    from unziplora.toyworld import heldout_images

    images = [image for _, _, image in heldout_images(1, 64)]
    profile, table = probe_block_roles(sd_base, tmp_path / "probe", images=images, scorer=oracle_scorer, steps=2,
                                       rank=2, resolution=64, sample=SampleConfig(steps=2, seeds=[0]),
                                       progress=False)
    assert (tmp_path / "probe" / "unziplora_profile.yaml").is_file() and "|" in table


def test_both_merges_write_a_lora_stock_diffusers_draws_with(sd_base, sd_run, tmp_path):
    """The direct merge of an SD run (content + a kohya-exported style) draws in stock
    StableDiffusionPipeline what the two LoRAs draw as two adapters; ZipLoRA's loads there too."""
    from unziplora.methods.merge import merge

    kohya_style = export_run(sd_run.path, "kohya", tmp_path / "k")[1]
    direct = merge(sd_run.path, kohya_style, tmp_path / "direct")
    zipped = merge(sd_run.path, sd_run.path, tmp_path / "zip", method="ziplora", steps=2, device="cpu")
    pipe = StableDiffusionPipeline.from_pretrained(sd_base.source, safety_checker=None)
    both, merged = adapters_and_merged(pipe, sd_run, direct)
    assert np.allclose(both, merged, atol=1e-4)
    pipe.load_lora_weights(str(zipped), adapter_name="zip")
    assert "zip" in pipe.get_list_adapters()["unet"]
