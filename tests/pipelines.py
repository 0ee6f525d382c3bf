"""The tiny pipelines tests build from configs (random weights, tokenizers built in code, offline).

The SDXL-shaped builder is the embedded model's own architecture (recipes/toyworld_model/architecture.py);
the Stable Diffusion 1.x one keeps SD 1.5's block topology (three cross-attention levels and a plain
one, so its module names are SD 1.5's) at a few channels.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from recipes.toyworld_model.architecture import (  # noqa: F401 (re-exported for the tests)
    DEFAULT_WORDS,
    TinySDXLSpec,
    build_clip_tokenizer,
    save_tiny_sdxl_pipeline,
    tiny_sdxl_components,
)


def tiny_sd_components(seed: int = 0, words=DEFAULT_WORDS) -> dict:
    """Randomly initialised (seeded) components for `StableDiffusionPipeline(**components)`: SD 1.5's
    UNet topology (down: CrossAttnDownBlock2D x3, DownBlock2D; up: UpBlock2D, CrossAttnUpBlock2D x3),
    one CLIP text encoder, a VAE that downsamples 2x."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(8, 16, 16, 16),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4,
        )
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                            norm_num_groups=4, sample_size=32)
        tokenizer = build_clip_tokenizer(words)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1, prediction_type="epsilon")
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler,
            "safety_checker": None, "feature_extractor": None, "image_encoder": None,
            "requires_safety_checker": False}


def save_tiny_sd_pipeline(directory, seed: int = 0) -> Path:
    """A tiny Stable Diffusion 1.x pipeline folder (safetensors only)."""
    directory = Path(directory)
    StableDiffusionPipeline(**tiny_sd_components(seed)).save_pretrained(directory, safe_serialization=True)
    return directory
