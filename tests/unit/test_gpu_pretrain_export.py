"""benchmarks/gpu_pretrain.py: an arm's weights (one file or parts) become a whole model folder at the
arm's UNet widths, and an arm's own weights can start another arm."""

import json
import runpy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unziplora.demo import EMBEDDED_MODEL

pytestmark = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="no embedded model")
gpu_pretrain = runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "gpu_pretrain.py"))
export_arm, save_weights, start_tensors = (gpu_pretrain[k] for k in ("export_arm", "save_weights", "start_tensors"))
WIDTHS = {"unet_block_out_channels": "[48, 96, 192]"}


def wide_arm_weights():
    """What a --unet-width 48 96 192 arm writes: its UNet and the text encoders, fp16, no VAE."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    base = StableDiffusionXLPipeline.from_pretrained(str(EMBEDDED_MODEL))
    wide = UNet2DConditionModel.from_config({**base.unet.config, "block_out_channels": [48, 96, 192]})
    weights = {f"unet.{n}": t.half().contiguous() for n, t in wide.state_dict().items()}
    for key in ("text_encoder", "text_encoder_2"):
        weights |= {f"{key}.{n}": t.half().contiguous() for n, t in getattr(base, key).state_dict().items()}
    return weights, wide


def test_a_wider_arm_exports_a_model_that_loads_at_its_widths(tmp_path):
    from unziplora.models import load_pipeline
    from unziplora.toyworld.model_files import CHECKSUM_FILE, RECIPE_FILE

    weights, wide = wide_arm_weights()
    save_file(weights, str(tmp_path / "wide.safetensors"), metadata=WIDTHS)

    out = export_arm(tmp_path / "wide.safetensors", {"arm": "wide"}, EMBEDDED_MODEL, tmp_path / "model")
    pipe = load_pipeline(str(out))
    assert list(pipe.unet.config.block_out_channels) == [48, 96, 192]
    probe = "down_blocks.1.attentions.0.proj_in.weight"
    assert torch.equal(pipe.unet.state_dict()[probe], wide.state_dict()[probe].half().float())
    assert json.loads((out / RECIPE_FILE).read_text())["fine_tune"] == {"arm": "wide"}
    assert "unet/diffusion_pytorch_model.safetensors" in (out / CHECKSUM_FILE).read_text()
    assert not (tmp_path / "model.partial").exists()


def test_weights_over_the_shard_size_travel_in_parts_that_export_and_start_an_arm_whole(tmp_path):
    from unziplora.models import load_pipeline

    weights, wide = wide_arm_weights()
    total_mb = sum(t.numel() * t.element_size() for t in weights.values()) / 1e6
    parts = save_weights(weights, tmp_path, "wide", WIDTHS, shard_mb=total_mb / 2.5)
    assert [p.name for p in parts] == [f"wide-part{k}.safetensors" for k in (1, 2, 3)]
    assert all(p.stat().st_size < total_mb / 2.5 * 1e6 + 1e5 for p in parts)  # + the header
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "whole").mkdir()
    assert [p.name for p in save_weights(weights, tmp_path / "whole", "wide", WIDTHS, shard_mb=1e4)] == ["wide.safetensors"]

    pipe = load_pipeline(str(export_arm(parts, {"arm": "wide"}, EMBEDDED_MODEL, tmp_path / "model")))
    assert list(pipe.unet.config.block_out_channels) == [48, 96, 192]
    assert all(torch.equal(pipe.unet.state_dict()[n], t.half().float()) for n, t in wide.state_dict().items())

    # An arm's own parts hold no VAE: going on from them takes the embedded model's VAE and scaling.
    tensors, scaling = start_tensors([str(p) for p in parts], "vae")
    assert {k.split(".")[0] for k in tensors} == {"vae", "unet", "text_encoder", "text_encoder_2"}
    assert torch.equal(tensors["unet.conv_in.weight"], weights["unet.conv_in.weight"])
    assert scaling == pipe.vae.config.scaling_factor


@pytest.mark.parametrize("latent", ["2x", "2x8"])  # SDXL's 4 latent channels, and the embedded model's 8
def test_an_arm_on_another_latent_exports_with_its_own_vae_and_a_unet_sized_for_it(tmp_path, latent):
    from diffusers import StableDiffusionXLPipeline

    from unziplora.models import load_pipeline
    from unziplora.tiny import tiny_sdxl_components
    from unziplora.toyworld.pretrain import LATENT_SPECS

    base = StableDiffusionXLPipeline.from_pretrained(str(EMBEDDED_MODEL))
    spec = LATENT_SPECS[latent]
    arm = tiny_sdxl_components(spec, seed=3)
    weights = {f"{k}.{n}": t.half().contiguous() for k in ("unet", "vae") for n, t in arm[k].state_dict().items()}
    for key in ("text_encoder", "text_encoder_2"):
        weights |= {f"{key}.{n}": t.half().contiguous() for n, t in getattr(base, key).state_dict().items()}
    parts = save_weights(weights, tmp_path, latent, {"latent": latent, "scaling_factor": "0.75",
                                                     "unet_block_out_channels": "[32, 64, 128]"}, shard_mb=1e4)

    pipe = load_pipeline(str(export_arm(parts, {"arm": latent}, EMBEDDED_MODEL, tmp_path / "model")))
    assert list(pipe.vae.config.block_out_channels) == [32, 64]
    assert pipe.vae.config.latent_channels == pipe.unet.config.in_channels == spec.latent_channels
    assert pipe.vae.config.scaling_factor == 0.75
    assert pipe.unet.config.sample_size == 32  # 64 px through a 2x VAE: the pipeline's default size stays 64 px
    probe = "decoder.conv_out.weight"
    assert torch.equal(pipe.vae.state_dict()[probe], arm["vae"].state_dict()[probe].half().float())
    image = pipe("A square in stripes style", num_inference_steps=1, output_type="np").images[0]
    assert image.shape == (64, 64, 3)
