"""Sampling FLUX.1 (FluxPipeline) with the two-branch transformer (docs/method.md §10.1).

FluxPipeline takes precomputed T5 states and the pooled CLIP embedding, the guidance value (an
input of the guidance-distilled dev model, not a CFG batch: there is no negative prompt), and
`joint_attention_kwargs`, which it hands to every attention processor unchanged. p_c's and p_s's
states travel there as `BranchStreams`, exactly as in training (flow.py): the transformer's pre-hook
starts the streams at every call, so one object serves every denoising step.
"""

from __future__ import annotations

import torch

from ..config import SampleConfig
from ..models.families import Family
from .flux import STREAMS_KWARG, BranchStreams, _get, _set, flux_attention_modules
from .layer import TwoBranchLoraLinear
from .sampling import check_sampling

IMAGE_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")  # double blocks: image tokens only, one input per branch


class FluxSampling:
    """A FluxPipeline call with the branch streams (the interface sampling.py's `UNetSampling` has)."""

    def __init__(self, family: Family):
        self.family = family

    def call_arguments(self, pipe, cond, sample: SampleConfig, num_images: int) -> dict:
        check_sampling(self.family, sample)
        transformer = self.family.denoiser_of(pipe)
        device, dtype = transformer.device, transformer.dtype
        arguments = {**{k: v.to(device, dtype) for k, v in self.family.pipeline_embeds(
            pipe, cond.combined, cond.pooled).items()}, "guidance_scale": sample.guidance_scale}
        if cond.content is not None or cond.style is not None:
            # a missing branch prompt is the combined one: that branch reads the real text stream
            content, style = (cond.combined if e is None else e for e in (cond.content, cond.style))
            arguments["joint_attention_kwargs"] = {
                STREAMS_KWARG: BranchStreams(content.to(device, dtype), style.to(device, dtype))}
        return arguments

    def fuse(self, pipe, cond, sample: SampleConfig, num_images: int):
        """Fold what both branches see alike into the frozen weights: the double blocks' image-token
        projections. Every projection that sees text keeps its two branches, since each branch's text
        stream attends to the image tokens and so changes with the latent at every step: nothing of it
        can be computed once, as the UNet's cross-attention K/V are. The conditioning is unchanged."""
        fold_image_projections(self.family.denoiser_of(pipe))
        return cond


@torch.no_grad()
def fold_image_projections(transformer) -> int:
    """W' = W + the active branches' masked, merged updates on every double block's to_q/k/v and
    to_out.0 (their input is the image tokens, one for both branches); returns how many were folded."""
    folded = 0
    for _, attn, _, _, double in flux_attention_modules(transformer):
        for projection in IMAGE_PROJECTIONS if double else ():
            layer = _get(attn, projection)
            if isinstance(layer, TwoBranchLoraLinear):
                _set(attn, projection, layer.merge_into_base())
                folded += 1
    return folded
