"""Tiny SDXL pipelines: tokenizer, save -> from_pretrained round trip, module names, real SDXL UNet counts."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers read it; nothing may be downloaded

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from tests.pipelines import (
    DEFAULT_WORDS,
    TinySDXLSpec,
    build_clip_tokenizer,
    save_tiny_sdxl_pipeline,
    tiny_sdxl_components,
)
from unziplora.models.architectures import sdxl_unet_config

PROMPT = "A monadikos cat in sketch style on the beach"


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_files_and_known_words_are_single_tokens(tmp_path):
    tok = build_clip_tokenizer(DEFAULT_WORDS, tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / name).is_file(), name
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == len(tok)
    assert tok.model_max_length == 77
    assert tok.bos_token == "<|startoftext|>"
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    # EOS is the highest id, as in CLIP
    assert tok.eos_token_id == len(tok) - 1
    for word in DEFAULT_WORDS + ("Monadikos", "SKS"):
        ids = tok(word, add_special_tokens=False).input_ids
        assert tok.convert_ids_to_tokens(ids) == [word.lower() + "</w>"], word
    ids = tok("A truck in watercolor style").input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "a</w>", "truck</w>", "in</w>", "watercolor</w>", "style</w>", "<|endoftext|>"
    ]


def test_overlapping_words_still_get_single_tokens():
    # Earlier merges pre-empt later chains ("at</w>" inside "cat", "ab" twice in "abab").
    words = ["at", "cat", "ab", "abab", "aaa", "aa", "banana", "nan", "an", "bandana"]
    tok = build_clip_tokenizer(words)
    for word in words:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    tok_rev = build_clip_tokenizer(reversed(words))
    for word in words:
        assert len(tok_rev(word, add_special_tokens=False).input_ids) == 1, word


def test_unknown_words_fall_back_to_characters_and_pad_to_77():
    tok = build_clip_tokenizer(["cat"])
    enc = tok("zebra cat", padding="max_length", max_length=77, truncation=True)
    ids = enc.input_ids
    assert len(ids) == 77
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[:8] == ["<|startoftext|>", "z", "e", "b", "r", "a</w>", "cat</w>", "<|endoftext|>"]
    assert set(tokens[8:]) == {"<|endoftext|>"}  # padding
    assert sum(enc.attention_mask) == 8
    assert tok.decode(ids, skip_special_tokens=True) == "zebra cat"


def test_non_alphabetic_words_are_rejected():
    with pytest.raises(ValueError):
        build_clip_tokenizer(["3d"])


# ---------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> Path:
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl"))


def test_saved_folder_is_safetensors_only(saved_pipeline):
    files = [p.relative_to(saved_pipeline).as_posix() for p in saved_pipeline.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert any(f.startswith(sub + "/") and f.endswith(".safetensors") for f in files), sub
    assert "model_index.json" in files


def test_saved_pipeline_loads_and_generates_deterministically(saved_pipeline):
    pipe = StableDiffusionXLPipeline.from_pretrained(saved_pipeline, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.default_sample_size * pipe.vae_scale_factor == 32
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.text_encoder_2.config.vocab_size == len(pipe.tokenizer_2)
    for tok in (pipe.tokenizer, pipe.tokenizer_2):  # reloaded from the pipeline folder
        assert tok.model_max_length == 77
        assert tok.tokenize("monadikos sks") == ["monadikos</w>", "sks</w>"]
    assert pipe.scheduler.config.timestep_spacing == "leading"
    assert pipe.scheduler.config.steps_offset == 1

    def generate(seed):
        out = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="np")
        return out.images

    a, b, c = generate(0), generate(0), generate(1)
    assert a.shape == (1, 32, 32, 3)
    assert np.isfinite(a).all() and a.std() > 0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_components_are_seeded_without_touching_global_rng():
    w = lambda seed: tiny_sdxl_components(seed=seed)["unet"].conv_in.weight.detach().clone()  # noqa: E731
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    w0 = w(0)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG stream unchanged
    assert torch.equal(w0, w(0))
    assert not torch.equal(w0, w(1))


def test_tiny_unet_has_sdxl_module_names():
    unet = tiny_sdxl_components(TinySDXLSpec())["unet"]
    names = {n for n, _ in unet.named_modules()}
    expected = (
        [f"up_blocks.0.attentions.{i}" for i in range(3)]
        + [f"up_blocks.1.attentions.{i}" for i in range(3)]
        + [f"down_blocks.{b}.attentions.{i}" for b in (1, 2) for i in range(2)]
        + ["mid_block.attentions.0"]
    )
    for prefix in expected:
        assert f"{prefix}.transformer_blocks.0.attn2.to_k" in names, prefix
    # no attention where SDXL has none
    assert not any(n.startswith(("down_blocks.0.attentions", "up_blocks.2.attentions")) for n in names)
    assert unet.config.cross_attention_dim == 64
    assert unet.add_embedding.linear_1.in_features == 6 * 8 + 32


# ---------------------------------------------------------------- real SDXL UNet shape


def test_sdxl_unet_config_builds_real_architecture_on_meta():
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(sdxl_unet_config())
    assert next(unet.parameters()).device.type == "meta"
    attention = [m for m in unet.modules() if isinstance(m, Attention)]
    projections = [
        n
        for n, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear) and n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))
    ]
    assert len(attention) == 140
    assert len(projections) == 560
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
