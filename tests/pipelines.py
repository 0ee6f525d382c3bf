"""The tiny pipelines tests build from configs (random weights, tokenizers built in code, offline).

The SDXL-shaped builder is the embedded model's own architecture (recipes/toyworld_model/architecture.py);
the Stable Diffusion 1.x one keeps SD 1.5's block topology (three cross-attention levels and a plain
one, so its module names are SD 1.5's) at a few channels; the FLUX.1 one has FLUX's double- and
single-stream blocks (two of each), a T5 encoder with a word-level tokenizer built in code and a
16-channel VAE.
"""

from pathlib import Path

import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                       FluxTransformer2DModel, StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

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


def build_t5_tokenizer(words=DEFAULT_WORDS, max_length: int = 512) -> T5TokenizerFast:
    """A T5 tokenizer without SentencePiece files: a Unigram model (the kind T5's spiece model is) over
    the given whole words ("▁word") and single letters, lower-casing, T5's special tokens (pad 0, </s> 1,
    <unk> 2) and its "$A </s>" template, wrapped in T5TokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [("▁" + w, -1.0) for w in sorted({w.lower() for w in words})]
    pieces += [(c, -5.0) for c in "▁abcdefghijklmnopqrstuvwxyz"]
    tokenizer = Tokenizer(models.Unigram(specials + pieces, unk_id=2))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)


def tiny_flux_components(seed: int = 0, words=DEFAULT_WORDS) -> dict:
    """Randomly initialised (seeded) components for `FluxPipeline(**components)`: FLUX.1-dev's
    transformer (guidance-distilled, 2x2 patches of 16 latent channels) with two double-stream and two
    single-stream blocks of width 16, a CLIP encoder for the pooled embedding, a T5 encoder for the
    text stream, a VAE with 16 latent channels that downsamples 2x, FLUX's flow-matching scheduler."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(2, 2, 4))
        t5_tokenizer = build_t5_tokenizer(words)
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0))
        tokenizer = build_clip_tokenizer(words)
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=16,
                            norm_num_groups=4, sample_size=32, shift_factor=0.0609, scaling_factor=1.5035,
                            use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return {"transformer": transformer, "vae": vae, "text_encoder": clip.eval(), "tokenizer": tokenizer,
            "text_encoder_2": t5.eval(), "tokenizer_2": t5_tokenizer, "scheduler": scheduler}


TINY_FLUX_PROFILE = """name: tiny-flux
description: the built-in FLUX profile's pattern on two single-stream blocks (first content, second style)
default: {content: masked, style: masked}
modules:
  - {prefix: single_transformer_blocks.0, content: all, style: masked}
  - {prefix: single_transformer_blocks.1, content: masked, style: all}
"""


def save_tiny_flux_pipeline(directory, seed: int = 0) -> Path:
    """A tiny FLUX.1 pipeline folder (safetensors only) with its own block-role profile (the built-in
    one names FLUX.1's 38 single-stream blocks)."""
    directory = Path(directory)
    FluxPipeline(**tiny_flux_components(seed)).save_pretrained(directory, safe_serialization=True)
    (directory / "unziplora_profile.yaml").write_text(TINY_FLUX_PROFILE)
    return directory
