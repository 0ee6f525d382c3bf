"""Sampling from precomputed prompt embeddings: what generation, previews and benchmarks share.

How the base model's pipeline is called is its denoiser's (`sampling_for`): a UNet pipeline
(SDXL, SD) takes the branch inputs as cross-attention K/V inputs under classifier-free guidance
(`UNetSampling`); FluxPipeline takes p_c's and p_s's branch streams through its joint-attention
kwargs, without a CFG batch (core/flux_sampling.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..config import SampleConfig
from ..errors import UnZipLoRAError
from ..models.families import Family, family_of
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
                  progress: bool = False, on_step=None, into: list | None = None, desc: str = "generate") -> list[Image.Image]:
    """Run the base model's pipeline once per seed from precomputed embeddings, called as its
    denoiser's sampling says (`sampling_for`). With `progress`, one bar counts the denoising steps
    of every seed; `on_step(done, total)` is told the same count (the web page's progress). Each
    seed's images are appended to `into` as they are done, so an interrupted caller keeps them. An
    image that is not finite is NonFiniteImage.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(sample.seeds) * sample.steps, desc=desc, unit="step", disable=not progress,
               dynamic_ncols=True)

    total, done = len(sample.seeds) * sample.steps, [0]

    def tick(pipeline, step, timestep, tensors):
        bar.update(1)
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total)
        return tensors

    arguments = sampling_for(pipe).call_arguments(pipe, cond, sample, num_images)
    images = []
    for seed in sample.seeds:
        generator = torch.Generator().manual_seed(int(seed))
        out = pipe(
            **arguments,
            num_images_per_prompt=num_images,
            num_inference_steps=sample.steps,
            height=resolution,
            width=resolution,
            generator=generator,
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


def check_sampling(family: Family, sample: SampleConfig) -> None:
    """Refuse, before anything loads, what the family's pipeline cannot take: CFG rescale without a
    CFG batch (FLUX.1's guidance is an input of the model)."""
    if not family.cfg and sample.guidance_rescale:
        raise UnZipLoRAError(f"guidance_rescale {sample.guidance_rescale:g} is CFG rescale; {family.title} samples "
                             "without a CFG batch (guidance is an input of the model): set it to 0")


def sampling_for(pipe):
    """How the pipeline's denoiser is sampled: `UNetSampling` for a UNet, FLUX's for its transformer."""
    family = family_of(pipe)
    if family.denoiser == "transformer":
        from .flux_sampling import FluxSampling

        return FluxSampling(family)
    return UNetSampling(family)


class UNetSampling:
    """A UNet pipeline's call (SDXL, SD): classifier-free guidance, whose unconditional half sees what
    the family's pipeline gives it (models/families.py: SDXL zeros, force_zeros_for_empty_prompt; SD
    the empty prompt), and the branch inputs get the same there, so unconditional K/V carry no prompt
    in any branch. `sample.guidance_rescale` is CFG rescale (arXiv 2305.08891, Sec. 3.4), which
    zero-terminal-SNR models need."""

    def __init__(self, family: Family):
        self.family = family

    def call_arguments(self, pipe, cond: Conditioning, sample: SampleConfig, num_images: int) -> dict:
        """The pipeline call's arguments beside the seed, step count and size."""
        denoiser = self.family.denoiser_of(pipe)
        device, dtype = denoiser.device, denoiser.dtype
        extra = {}
        for key, branch_embeds in ((CONTENT_KWARG, cond.content), (STYLE_KWARG, cond.style)):
            if branch_embeds is not None:
                extra[key] = step_batch(branch_embeds, num_images, sample.guidance_scale,
                                        self.family.unconditional(pipe, branch_embeds)).to(device, dtype)
        pooled = None if cond.pooled is None else cond.pooled.to(device, dtype)
        embeds = self.family.pipeline_embeds(pipe, cond.combined.to(device), pooled)
        return {**{k: v.to(device, dtype) for k, v in embeds.items()}, "guidance_scale": sample.guidance_scale,
                "guidance_rescale": sample.guidance_rescale, "cross_attention_kwargs": extra or None}

    def fuse(self, pipe, cond: Conditioning, sample: SampleConfig, num_images: int) -> Conditioning:
        """Fold the two-branch layers for one generation (fuse.py); every cross-attention K/V is cached,
        the unconditional half's too, so the returned conditioning carries no branch inputs."""
        from .fuse import fuse_for_generation

        denoiser = self.family.denoiser_of(pipe)
        batch = [step_batch(e, num_images, sample.guidance_scale, self.family.unconditional(pipe, e))
                 .to(denoiser.device, denoiser.dtype) for e in (cond.combined, cond.content, cond.style)]
        fuse_for_generation(denoiser, *batch)
        return Conditioning(cond.combined, cond.pooled)


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
