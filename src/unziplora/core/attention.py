"""Prompt-separated attention processor (arXiv 2412.04465, Sec. 3, "Prompt separation").

In cross-attention only the keys and values see text, so only they are separated:

    K = W_K e(p) + (m_c * M_c) (.) B_c A_c e(p_c) + (m_s * M_s) (.) B_s A_s e(p_s)   (same for V)

p is the combined prompt, p_c the content prompt, p_s the style prompt. Queries, the output
projection and self-attention feed one hidden state to both branches. The extra embeddings
arrive through diffusers' `cross_attention_kwargs` (Attention.forward passes a processor the
keyword arguments its __call__ declares), so the UNet is used as it ships.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from .layer import TwoBranchLoraLinear

CONTENT_KWARG = "content_encoder_hidden_states"
STYLE_KWARG = "style_encoder_hidden_states"


def _project(layer, x: torch.Tensor, content: torch.Tensor | None, style: torch.Tensor | None) -> torch.Tensor:
    """Call a projection with separated inputs when it is a two-branch layer, else plainly."""
    if content is None and style is None:
        return layer(x)
    if not isinstance(layer, TwoBranchLoraLinear):  # a plain nn.Linear: no branch to separate
        return layer(x)
    return layer(x, content_input=content, style_input=style)


class SeparatedAttnProcessor:
    """Scaled-dot-product attention, as diffusers' AttnProcessor2_0, with separated K/V inputs.

    With no content/style embeddings given (self-attention, or a plain prompt) it computes
    exactly what AttnProcessor2_0 computes.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        content_encoder_hidden_states: torch.Tensor | None = None,
        style_encoder_hidden_states: torch.Tensor | None = None,
        cached_key: torch.Tensor | None = None,
        cached_value: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Copied from diffusers.models.attention_processor.AttnProcessor2_0.__call__
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim

        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        # End of copy. Ours: K and V of cross-attention see p, p_c and p_s (arXiv 2412.04465, Sec. 3).
        content, style = None, None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        else:
            content, style = content_encoder_hidden_states, style_encoder_hidden_states
            for extra in (content, style):
                if extra is not None and extra.shape != encoder_hidden_states.shape:
                    raise ValueError(
                        f"separated prompt embeddings have shape {tuple(extra.shape)}, the combined prompt "
                        f"{tuple(encoder_hidden_states.shape)}: encode all three prompts with the same batch"
                    )
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
                content = attn.norm_encoder_hidden_states(content) if content is not None else None
                style = attn.norm_encoder_hidden_states(style) if style is not None else None

        if cached_key is not None:  # fuse.py: K/V depend only on the prompts, computed once
            key, value = cached_key, cached_value
        else:
            key = _project(attn.to_k, encoder_hidden_states, content, style)
            value = _project(attn.to_v, encoder_hidden_states, content, style)

        # Copied from diffusers.models.attention_processor.AttnProcessor2_0.__call__
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)

        if attn.residual_connection:
            hidden_states = hidden_states + residual

        hidden_states = hidden_states / attn.rescale_output_factor

        return hidden_states
        # End of copy.


# diffusers' Attention.forward reads its processor's signature at every call (to pass only the
# cross_attention_kwargs it declares); a stored signature answers that without re-parsing the function.
SeparatedAttnProcessor.__call__.__signature__ = inspect.signature(SeparatedAttnProcessor.__call__)
