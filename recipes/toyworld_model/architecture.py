"""Small SDXL-shaped diffusers pipelines built from code: the embedded model's architecture.

Everything here is randomly initialised and seeded: the recipe trains the embedded model from
these components, and the tests build tiny pipelines with them (tests/pipelines.py) to go
through the real ``StableDiffusionXLPipeline.from_pretrained(path)`` loading path without any
download.  The UNet keeps SDXL's block topology, so LoRA target names such as
``up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_k`` exist; only the
widths and transformer depths shrink.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

__all__ = ["DEFAULT_WORDS", "TinySDXLSpec", "build_clip_tokenizer", "save_tiny_sdxl_pipeline", "tiny_sdxl_components"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77  # CLIP's context length; SDXL pads every prompt to it

# Enough English for prompts like "A monadikos cat in sketch style on the beach";
# "monadikos" and "sks" are the rare identifiers bound to a subject / a style.
DEFAULT_WORDS: tuple[str, ...] = tuple(
    """a an the in on of at with and by style monadikos sks
    photo picture image painting drawing cat dog truck car house tree flower bird horse person woman man
    boy girl chair cup teapot toy robot city street forest mountain river beach sea sky garden
    sketch watercolor oil pencil cartoon anime pixel art flat illustration realistic abstract vintage
    minimalist glowing neon red blue green yellow""".split()
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode char table (what ByteLevel pre-tokenisation emits)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _apply_bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the lowest-ranked adjacent pair (leftmost on ties) until none applies, like HF BPE."""
    pieces = list(pieces)
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        _, i = min(pairs)
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_clip_tokenizer(words: Iterable[str], directory: str | Path | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary holds every byte char, every byte
    char + '</w>', and whole-word tokens for each given word (lower-cased), with
    merges that build each word left to right; special tokens <|startoftext|>,
    <|endoftext|> (pad = <|endoftext|>), model_max_length 77.

    Written as vocab.json + merges.txt (+ tokenizer config via save_pretrained)
    into ``directory`` (a temp dir if None) and loaded back with
    ``CLIPTokenizer.from_pretrained`` so the files are proven loadable. Any word
    not in the list still tokenizes (falls back to characters).

    Words must be purely alphabetic: CLIP's pre-tokenizer splits letters from
    digits and punctuation, so e.g. "3d" could never become a single token.
    """
    byte_to_char = _bytes_to_unicode()
    byte_chars = list(byte_to_char.values())
    vocab: dict[str, int] = {}
    for tok in byte_chars + [c + END_OF_WORD for c in byte_chars]:
        vocab[tok] = len(vocab)

    ranks: dict[tuple[str, str], int] = {}
    seen: set[str] = set()
    for raw in words:
        word = raw.lower()
        if not word.isalpha():
            raise ValueError(f"tokenizer words must be alphabetic, got {raw!r}")
        if word in seen:
            continue
        seen.add(word)
        encoded = [byte_to_char[b] for b in word.encode("utf-8")]
        pieces = encoded[:-1] + [encoded[-1] + END_OF_WORD]
        # Chain merges left to right. A merge added for an earlier word can
        # pre-empt the chain (e.g. "at</w>" inside "cat"), so re-run BPE and
        # chain whatever pieces remain; each round strictly shrinks the word and
        # new merges rank last, so earlier words keep their single token.
        while len(pieces := _apply_bpe(pieces, ranks)) > 1:
            acc = pieces[0]
            for nxt in pieces[1:]:
                if (acc, nxt) not in ranks:
                    ranks[(acc, nxt)] = len(ranks)
                acc += nxt
                vocab.setdefault(acc, len(vocab))
    # Specials last, as in CLIP: EOS is the highest id, so even the legacy
    # argmax pooling of CLIPTextModel would find it.
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)

    merges = sorted(ranks, key=ranks.__getitem__)
    if directory is None:
        # The loaded tokenizer lives in memory (a Rust object), so the files may go.
        with tempfile.TemporaryDirectory(prefix="tiny_clip_tok_") as tmp:
            return _write_and_load(vocab, merges, Path(tmp))
    return _write_and_load(vocab, merges, Path(directory))


def _write_and_load(vocab: dict[str, int], merges: list[tuple[str, str]], directory: Path) -> CLIPTokenizer:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    # First load builds from vocab/merges; save_pretrained adds the tokenizer
    # config (model_max_length, specials); the second load proves the folder.
    tokenizer = CLIPTokenizer.from_pretrained(
        directory, model_max_length=MODEL_MAX_LENGTH, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    tokenizer.save_pretrained(directory)
    return CLIPTokenizer.from_pretrained(directory)


@dataclass(frozen=True)
class TinySDXLSpec:
    """Sizes of a tiny pipeline; defaults keep a UNet forward+backward at 32x32 px under 0.1 s on CPU.

    (Measured: ~75 ms median for batch 1 at 16x16 latents on 2 CPU cores; ~1.6 M UNet parameters.)
    """

    block_out_channels: tuple[int, int, int] = (16, 32, 64)
    transformer_layers_per_block: tuple[int, int, int] = (1, 1, 1)  # SDXL is (1, 2, 10)
    attention_head_dim: tuple[int, int, int] = (2, 4, 8)  # like SDXL: heads grow with depth
    text_hidden_size: int = 32  # each of the two text encoders; cross_attention_dim = 2 * this (SDXL: 768 + 1280)
    projection_dim: int = 32  # text_encoder_2 projection (pooled embedding size)
    vae_block_out_channels: tuple[int, ...] = (8, 16)  # VAE downsamples by 2 ** (len - 1)
    sample_size: int = 32  # image size in pixels the pipeline defaults to
    norm_num_groups: int = 8
    vae_norm_num_groups: int | None = None  # None: norm_num_groups (reduced until it divides every width)
    latent_channels: int = 4  # SDXL: 4; the UNet's in/out channels follow
    words: tuple[str, ...] = DEFAULT_WORDS


ADDITION_TIME_EMBED_DIM = 8  # SDXL: 256; 6 micro-conditioning numbers each get this many sinusoid dims


def _text_config(spec: TinySDXLSpec, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden_size,
        intermediate_size=2 * spec.text_hidden_size,
        num_hidden_layers=2,  # SDXL reads hidden_states[-2]: needs >= 2 layers
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act="gelu",
        projection_dim=spec.projection_dim,  # used by text_encoder_2 only
        # Real ids (not the legacy eos_token_id=2) so pooling picks the first EOS.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_sdxl_components(spec: TinySDXLSpec = TinySDXLSpec(), seed: int = 0) -> dict:
    """Randomly initialised (seeded) components for ``StableDiffusionXLPipeline(**components)``.

    unet: UNet2DConditionModel with SDXL's topology (down DownBlock2D,
    CrossAttnDownBlock2D x2; up CrossAttnUpBlock2D x2, UpBlock2D;
    addition_embed_type 'text_time', addition_time_embed_dim 8,
    projection_class_embeddings_input_dim = 6*8 + projection_dim, linear
    projections). vae: AutoencoderKL. text_encoder / text_encoder_2:
    CLIPTextModel / CLIPTextModelWithProjection (2 layers, gelu, 77 positions).
    tokenizer / tokenizer_2: from :func:`build_clip_tokenizer`. scheduler:
    EulerDiscreteScheduler with SDXL's settings. image_encoder and
    feature_extractor are None.
    """
    # Seed locally: building components must not disturb the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        return _build_components(spec, seed)


def _build_components(spec: TinySDXLSpec, seed: int) -> dict:
    vae_scale = 2 ** (len(spec.vae_block_out_channels) - 1)
    if spec.sample_size % (vae_scale * 2 ** (len(spec.block_out_channels) - 1)):
        raise ValueError("sample_size must be divisible by the VAE and UNet downsampling factors")

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=spec.sample_size // vae_scale,  # in latent pixels
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        layers_per_block=2,
        block_out_channels=spec.block_out_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        transformer_layers_per_block=spec.transformer_layers_per_block,
        # diffusers' attention_head_dim is really the number of heads (as in SDXL's config).
        attention_head_dim=spec.attention_head_dim,
        cross_attention_dim=2 * spec.text_hidden_size,  # both encoders' hidden states concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * ADDITION_TIME_EMBED_DIM + spec.projection_dim,
        norm_num_groups=spec.norm_num_groups,
    )

    torch.manual_seed(seed + 1)
    # GroupNorm needs groups | channels for every VAE width.
    vae_groups = spec.vae_norm_num_groups or spec.norm_num_groups
    while any(c % vae_groups for c in spec.vae_block_out_channels):
        vae_groups -= 1
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(spec.vae_block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(spec.vae_block_out_channels),
        block_out_channels=spec.vae_block_out_channels,
        latent_channels=spec.latent_channels,
        norm_num_groups=vae_groups,
        sample_size=spec.sample_size,
        scaling_factor=0.13025,  # SDXL's VAE scaling factor
        force_upcast=False,  # fp32-only tiny model; SDXL's VAE needs the upcast in fp16
    )

    # Same vocabulary for both, like SDXL (the real pair differ only in pad token).
    tokenizer = build_clip_tokenizer(spec.words)
    tokenizer_2 = build_clip_tokenizer(spec.words)

    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(spec, tokenizer))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(spec, tokenizer_2))

    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )

    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def save_tiny_sdxl_pipeline(directory: str | Path, spec: TinySDXLSpec = TinySDXLSpec(), seed: int = 0) -> Path:
    """Build the components, save them as a diffusers pipeline folder with
    safe_serialization (safetensors only), return the path."""
    directory = Path(directory)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(spec, seed))
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory
