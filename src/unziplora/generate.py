"""Generation with a decomposition: content alone, style alone, both, or across runs (docs/method.md §7).

- content / style: the branch as an ordinary LoRA in a stock StableDiffusionXLPipeline
  (`load_lora_weights`), prompted with one ordinary prompt.
- both: the two-branch layers with their mergers and prompt separation: the user's prompt gives
  p, p_c and p_s (arXiv 2412.04465, Sec. 3, "Prompt separation", used at inference as in the
  authors' code).
- cross: run A's content branch with run B's style branch, prompted the same way.
Baselines generate as their references do: a DreamBooth-LoRA run's "both" is its one LoRA once;
B-LoRA's "both" and "cross" load the content part and the style part together under one
ordinary prompt (arXiv 2403.14572; yardenfren1996/B-LoRA's inference.py).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .attention import CONTENT_KWARG, STYLE_KWARG
from .branch import Branch
from .config import SampleConfig
from .errors import UnZipLoRAError
from .fuse import fuse_for_generation
from .lora.inject import inject_two_branch_lora
from .methods import Method
from .models import load_pipeline, pick_device
from .profiles import INFERENCE_PROFILE
from .prompts import CONTENT_TAG, STYLE_TAG, check_length, encode_prompts, expand_tags, split_prompt
from .runfolder import atomic_output_dir, save_grid
from .sources import BranchSource

class Mode(str, enum.Enum):
    CONTENT = "content"
    STYLE = "style"
    BOTH = "both"
    CROSS = "cross"


@dataclass
class Conditioning:
    """Prompt embeddings for one generation: combined (1, 77, D), pooled (1, P), optional branches."""

    combined: torch.Tensor
    pooled: torch.Tensor
    content: torch.Tensor | None = None
    style: torch.Tensor | None = None


@torch.no_grad()
def sample_images(pipe, cond: Conditioning, sample: SampleConfig, resolution: int | None, num_images: int = 1) -> list[Image.Image]:
    """Run the SDXL pipeline once per seed from precomputed embeddings.

    The unconditional half of classifier-free guidance uses zero embeddings, as SDXL does for
    an empty negative prompt (force_zeros_for_empty_prompt); the branch inputs get the same
    zeros there, so unconditional K/V carry no prompt in any branch.
    """
    device = pipe.unet.device
    dtype = pipe.unet.dtype
    extra = {}
    for key, branch_embeds in ((CONTENT_KWARG, cond.content), (STYLE_KWARG, cond.style)):
        if branch_embeds is not None:
            extra[key] = step_batch(branch_embeds, num_images, sample.guidance_scale).to(device, dtype)
    images = []
    for seed in sample.seeds:
        generator = torch.Generator().manual_seed(int(seed))
        out = pipe(
            prompt_embeds=cond.combined.to(device, dtype),
            pooled_prompt_embeds=cond.pooled.to(device, dtype),
            negative_prompt_embeds=torch.zeros_like(cond.combined).to(device, dtype),
            negative_pooled_prompt_embeds=torch.zeros_like(cond.pooled).to(device, dtype),
            num_images_per_prompt=num_images,
            num_inference_steps=sample.steps,
            guidance_scale=sample.guidance_scale,
            height=resolution,
            width=resolution,
            generator=generator,
            cross_attention_kwargs=extra or None,
            output_type="pil",
        )
        images.extend(out.images)
    return images


def step_batch(embeds: torch.Tensor | None, num_images: int, guidance_scale: float) -> torch.Tensor | None:
    """The text-embedding batch the UNet sees at every step: [zeros; embeds] x num_images under CFG."""
    if embeds is None:
        return None
    batch = embeds.repeat(num_images, 1, 1)
    return torch.cat([torch.zeros_like(batch), batch]) if guidance_scale > 1.0 else batch


def _encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    for prompt in prompts:
        warning = check_length(pipe.tokenizer, prompt)
        if warning:
            print(f"note: {warning}")
    return encode_prompts(pipe, prompts, pipe.unet.device)


def generate(
    prompt: str,
    out_dir: str | Path,
    mode: Mode | str,
    run: str | Path | None = None,
    content_run: str | Path | None = None,
    style_run: str | Path | None = None,
    sample: SampleConfig | None = None,
    num_images: int = 1,
    base_model: str | None = None,
    device: str = "auto",
    force: bool = False,
    identifier: str | None = None,
    style_words: str | None = None,
    fused: bool = True,
) -> list[Path]:
    """Generate images and write them, a grid and generation.json into `out_dir`.

    `run`, `content_run` and `style_run` are run folders or plain LoRA files (diffusers,
    kohya, B-LoRA); for plain files pass `identifier` / `style_words` if the prompt uses <c> / <s>,
    and `base_model`. `fused` folds the LoRAs into the weights and computes the separated
    cross-attention K/V once (fuse.py); False runs the two-branch layers at every step.
    """
    mode = Mode(mode)
    if content_run and style_run:
        mode = Mode.CROSS
    elif mode is Mode.CROSS:
        raise UnZipLoRAError("cross-run generation needs both --content RUN and --style RUN")
    elif run is None:
        raise UnZipLoRAError("give the run folder to generate from: unziplora generate RUN ...")
    if num_images <= 0:
        raise UnZipLoRAError(f"--num-images must be positive, got {num_images}")
    content = BranchSource.open(content_run or run, Branch.CONTENT)
    style = BranchSource.open(style_run or run, Branch.STYLE)
    runs = [s for s in (content, style) if s.run is not None]
    config = runs[0].manifest_value("config") if runs else None
    if sample is None:
        sample = SampleConfig(**config["sample"]) if config else SampleConfig()
    # A plain LoRA file says nothing of its resolution: then the base model's default size.
    resolution = sample.resolution or (config["train"]["resolution"] if config else None)
    bases = {s.manifest_value("base_model") for s in runs}
    if base_model is None and len(bases) != 1:
        raise UnZipLoRAError("pass --base-model: the sources name " + ("no base model" if not bases else "different base models"))
    base = base_model or bases.pop()
    identifier = identifier or content.manifest_value("prompts", "identifier")
    style_words = style_words or style.manifest_value("prompts", "style_words")
    for tag, value, flag in ((CONTENT_TAG, identifier, "--identifier"), (STYLE_TAG, style_words, "--style-words")):
        if tag in prompt and value is None:
            raise UnZipLoRAError(f"the prompt uses {tag} but the LoRA file does not say what it stands for; pass {flag}")
    torch_device = pick_device(device)
    pipe = load_pipeline(base, dtype=torch.float16 if torch_device.type == "cuda" else torch.float32)
    pipe.to(torch_device)
    pipe.vae.to(torch.float32)

    # A DreamBooth-LoRA run cannot split: its content and style LoRAs are one LoRA, so "both"
    # is that LoRA once, with the whole prompt (summing the two branches would apply it twice).
    one_lora = mode is Mode.BOTH and content.method is Method.DREAMBOOTH_LORA
    # B-LoRA combines by loading both parts (disjoint modules) under one prompt.
    both_parts = mode in (Mode.BOTH, Mode.CROSS) and content.method is style.method is Method.B_LORA
    if mode in (Mode.CONTENT, Mode.STYLE) or one_lora or both_parts:
        source = style if mode is Mode.STYLE else content
        weights = {**content.stock_lora(), **style.stock_lora()} if both_parts else source.stock_lora()
        pipe.load_lora_weights(weights, adapter_name=mode.value)
        if fused:  # diffusers' own fusion: W + B A, then drop the adapter layers
            pipe.fuse_lora(adapter_names=[mode.value])
            pipe.unload_lora_weights()
        text = expand_tags(prompt, identifier or "", style_words or "")
        embeds, pooled = _encode(pipe, [text])
        cond = Conditioning(embeds, pooled)
        prompts = {"prompt": text}
    else:
        triple = split_prompt(prompt, identifier or "", style_words or "")
        embeds, pooled = _encode(pipe, [triple.combined, triple.content, triple.style])
        lora = inject_two_branch_lora(pipe.unet, INFERENCE_PROFILE, max(content.rank, style.rank))
        lora.load_branch(content.branch_state(lora), Branch.CONTENT, str(content.path))
        lora.load_branch(style.branch_state(lora), Branch.STYLE, str(style.path))
        lora.set_masking(True)
        cond = Conditioning(embeds[0:1], pooled[0:1], embeds[1:2], embeds[2:3])
        if fused:
            batch = [step_batch(e, num_images, sample.guidance_scale).to(pipe.unet.device, pipe.unet.dtype)
                     for e in (cond.combined, cond.content, cond.style)]
            fuse_for_generation(pipe.unet, *batch)
            cond = Conditioning(cond.combined, cond.pooled)  # K/V are cached in the processors now
        prompts = {"combined": triple.combined, "content": triple.content, "style": triple.style}
    images = sample_images(pipe, cond, sample, resolution, num_images)

    with atomic_output_dir(out_dir, force) as tmp:
        paths = []
        for i, image in enumerate(images):
            seed = sample.seeds[i // num_images]
            name = f"seed{seed}_{i % num_images}.png"
            image.save(tmp / name)
            paths.append(Path(out_dir) / name)
        save_grid(images, tmp / "grid.png", columns=min(len(images), 4))
        record = {
            "mode": mode.value, "prompts": prompts, "seeds": list(sample.seeds), "steps": sample.steps,
            "guidance_scale": sample.guidance_scale, "resolution": resolution, "num_images": num_images,
            "content_source": str(content.path), "style_source": str(style.path), "base_model": base,
        }
        (tmp / "generation.json").write_text(json.dumps(record, indent=2))
    return paths
