"""Fast inference: fold what the branches share into W, and compute separated K/V once.

At generation time (docs/method.md §7) the only inputs that differ between branches are the text
embeddings seen by cross-attention K and V (arXiv 2412.04465, Sec. 3, "Prompt separation").
So:
- every projection whose branches see one input (self-attention, queries, outputs) becomes
  W' = W + (m_c M_c) (.) B_c A_c + (m_s M_s) (.) B_s A_s: one plain matmul, no LoRA cost;
- cross-attention K and V depend only on the prompts, not on the latent or the timestep, so
  they are computed once per generation and reused at every denoising step.
Fusing changes the UNet in place; load a fresh pipeline to undo it.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .attention import SeparatedAttnProcessor
from .inject import PROJECTIONS, _get, _set, attention_modules
from .layer import TwoBranchLoraLinear


class CachedKVProcessor(SeparatedAttnProcessor):
    """Cross-attention with keys and values computed once for this generation's prompts."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        self.key, self.value = key, value

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        if encoder_hidden_states is None or encoder_hidden_states.shape[0] != self.key.shape[0]:
            raise ValueError("cached K/V were computed for another batch; fuse again for this generation")
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                cached_key=self.key, cached_value=self.value)


@torch.no_grad()
def fuse_for_generation(unet, combined: torch.Tensor, content: torch.Tensor | None, style: torch.Tensor | None) -> None:
    """Fuse every two-branch layer of `unet` for one generation.

    `combined`, `content`, `style` are the full per-step batches of text embeddings (already
    doubled for classifier-free guidance); with `content` and `style` None, K/V are folded too
    (one branch alone, or no separation).
    """
    separated = content is not None or style is not None
    for _, attn in attention_modules(unet):
        cross = attn.is_cross_attention
        if cross and separated:
            key, value = (_get(attn, p)(combined, content_input=content, style_input=style) for p in ("to_k", "to_v"))
            attn.set_processor(CachedKVProcessor(key, value))
        else:  # nothing separated here any more: diffusers' own processor
            attn.set_processor(AttnProcessor2_0())
        for projection in PROJECTIONS:
            layer = _get(attn, projection)
            if isinstance(layer, TwoBranchLoraLinear):
                _set(attn, projection, layer.merge_into_base())
