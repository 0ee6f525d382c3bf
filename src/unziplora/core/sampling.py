"""Sampling from precomputed prompt embeddings: what generation, previews and benchmarks share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..config import SampleConfig
from ..models.families import family_of
from ..errors import UnZipLoRAError
from .attention import CONTENT_KWARG, STYLE_KWARG


class NonFiniteImage(UnZipLoRAError):
    """A sampled image holds NaN or Inf values."""


@dataclass
class Conditioning:
    """Prompt embeddings for one generation: combined (1, 77, D), pooled (1, P; None where the
    family has none), optional branch inputs."""

    combined: torch.Tensor
    pooled: torch.Tensor | None = None
    content: torch.Tensor | None = None
    style: torch.Tensor | None = None


@torch.no_grad()
def sample_images(pipe, cond: Conditioning, sample: SampleConfig, resolution: int | None, num_images: int = 1,
                  progress: bool = False, on_step=None, into: list | None = None) -> list[Image.Image]:
    """Run the base model's pipeline once per seed from precomputed embeddings.

    The unconditional half of classifier-free guidance sees what the family's pipeline gives it
    (models/families.py: SDXL zeros, force_zeros_for_empty_prompt; SD the empty prompt), and the
    branch inputs get the same there, so unconditional K/V carry no prompt in any branch. `sample.guidance_rescale`
    is CFG rescale (arXiv 2305.08891, Sec. 3.4), which zero-terminal-SNR models need. With
    `progress`, one bar counts the denoising steps of every seed; `on_step(done, total)` is told
    the same count (the web page's progress). Each seed's images are appended to `into` as they are
    done, so an interrupted caller keeps them. An image that is not finite is NonFiniteImage.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(sample.seeds) * sample.steps, desc="generate", unit="step", disable=not progress,
               dynamic_ncols=True)

    total, done = len(sample.seeds) * sample.steps, [0]

    def tick(pipeline, step, timestep, tensors):
        bar.update(1)
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total)
        return tensors

    device = pipe.unet.device
    dtype = pipe.unet.dtype
    family = family_of(pipe)
    extra = {}
    for key, branch_embeds in ((CONTENT_KWARG, cond.content), (STYLE_KWARG, cond.style)):
        if branch_embeds is not None:
            extra[key] = step_batch(branch_embeds, num_images, sample.guidance_scale,
                                    family.unconditional(pipe, branch_embeds)).to(device, dtype)
    pooled = None if cond.pooled is None else cond.pooled.to(device, dtype)
    embeds = {k: v.to(device, dtype) for k, v in family.pipeline_embeds(pipe, cond.combined.to(device), pooled).items()}
    images = []
    for seed in sample.seeds:
        generator = torch.Generator().manual_seed(int(seed))
        out = pipe(
            **embeds,
            num_images_per_prompt=num_images,
            num_inference_steps=sample.steps,
            guidance_scale=sample.guidance_scale,
            height=resolution,
            width=resolution,
            generator=generator,
            guidance_rescale=sample.guidance_rescale,
            cross_attention_kwargs=extra or None,
            output_type="np",
            callback_on_step_end=tick,
        )
        if not np.isfinite(out.images).all():  # NaN would be written as a black image
            bar.close()
            raise NonFiniteImage(f"the image of seed {seed} holds NaN or Inf values (the weights or settings give "
                                 "broken numbers); nothing of it was written")
        pils = pipe.numpy_to_pil(out.images)
        images.extend(pils)
        if into is not None:
            into.extend(pils)
    bar.close()
    return images


def step_batch(embeds: torch.Tensor | None, num_images: int, guidance_scale: float,
               unconditional: torch.Tensor | None = None) -> torch.Tensor | None:
    """The text-embedding batch the UNet sees at every step: [unconditional; embeds] x num_images
    under CFG (the unconditional states default to zeros, SDXL's)."""
    if embeds is None:
        return None
    batch = embeds.repeat(num_images, 1, 1)
    if guidance_scale <= 1.0:
        return batch
    empty = torch.zeros_like(batch) if unconditional is None else unconditional.to(batch).repeat(num_images, 1, 1)
    return torch.cat([empty, batch])
