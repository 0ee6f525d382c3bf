"""Prompt separation on FLUX.1's transformer (docs/method.md, "FLUX.1").

FLUX has no cross-attention: its double-stream blocks run joint attention over [text; image] with
separate projections per stream (text: add_q/k/v_proj, to_add_out; image: to_q/k/v, to_out.0), its
single-stream blocks one set of projections over the concatenated tokens. The text tokens change
from block to block, so "the content branch sees p_c" needs p_c's own text stream at every block:

- The combined prompt p is the real text stream. p_c's and p_s's T5 states are carried beside it
  through every block with the frozen weights (no LoRA, no gradient), each text stream attending to
  itself and to the image tokens of the real stream (`BranchStreams`, advanced by forward hooks on
  the blocks, the public torch extension point; diffusers' block code is not touched).
- Where a projection sees text tokens, a branch's update sees its own stream's tokens: in the
  double blocks add_q/k/v_proj get the branch streams' normalised tokens and to_add_out their
  attention outputs; in the single blocks to_q/k/v get them on the text slice (the image slice is
  shared). Image-token projections feed one input to both branches, as the UNet's queries do.

With no streams given (one prompt, one branch alone) the processor computes what diffusers'
FluxAttnProcessor computes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from torch import nn

from ..models.profiles import Profile
from .inject import TwoBranchLoRA, _get, _set, wrap_projections
from .layer import TwoBranchLoraLinear

STREAMS_KWARG = "unziplora_streams"  # the joint_attention_kwargs entry that carries `BranchStreams`
DOUBLE_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
SINGLE_PROJECTIONS = ("to_q", "to_k", "to_v")  # single blocks' attention has no output projection (pre_only)


@dataclass
class BranchStreams:
    """p_c's and p_s's T5 states for one transformer call, and each stream at every block's input.

    Keyed by block position (double blocks first), so a block run again by gradient checkpointing's
    recomputation reads the same inputs and writes the same outputs."""

    content: torch.Tensor  # (1 or B, T, joint_attention_dim): T5 states, as the pipeline gives them
    style: torch.Tensor
    at: dict = field(default_factory=dict)  # block position -> (content, style) entering that block
    step: dict = field(default_factory=dict)  # block position -> what the block's processor needs

    def begin(self, context_embedder: nn.Module, text: torch.Tensor, batch: int) -> None:
        for extra in (self.content, self.style):
            if extra.shape[-2:] != text.shape[-2:]:
                raise ValueError(f"separated prompt states have shape {tuple(extra.shape)}, the combined prompt "
                                 f"{tuple(text.shape)}: encode all three prompts with the same sequence length")
        with torch.no_grad():
            self.at = {0: tuple(context_embedder(s.to(text)).expand(batch, -1, -1) for s in (self.content, self.style))}
        self.step = {}


@dataclass
class BlockStep:
    """One block's branch work: the normalised branch tokens (the LoRA branches' inputs), the
    block's modulation of each stream, and the streams' attention outputs once the processor ran."""

    inputs: tuple[torch.Tensor, torch.Tensor]
    modulation: tuple
    extra: tuple = ()  # single blocks: each stream's MLP branch
    attention: tuple | None = None


def _base(layer: nn.Module) -> nn.Module:
    return layer.base if isinstance(layer, TwoBranchLoraLinear) else layer


def _project(layer: nn.Module, x: torch.Tensor, content: torch.Tensor | None, style: torch.Tensor | None):
    if content is None or not isinstance(layer, TwoBranchLoraLinear):
        return layer(x)
    return layer(x, content_input=content, style_input=style)


def _project_text_slice(layer: nn.Module, x: torch.Tensor, differences) -> torch.Tensor:
    """A single block's projection over [text; image]: both branches on x, then each branch's update
    on its own text minus the real text, on the text slice only (the update is linear)."""
    out = layer(x)
    if differences is None or not isinstance(layer, TwoBranchLoraLinear):
        return out
    length = differences[0].shape[1]
    return torch.cat([out[:, :length] + layer.branch_update(*differences), out[:, length:]], dim=1)


class FluxSeparatedAttnProcessor:
    """diffusers' FluxAttnProcessor with each LoRA branch seeing its own prompt's text tokens."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, position: int):
        self.position = position  # the block's place in BranchStreams

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
        unziplora_streams: BranchStreams | None = None,
    ) -> torch.Tensor:
        step = None if unziplora_streams is None else unziplora_streams.step[self.position]
        branch = (None, None) if step is None else step.inputs
        if encoder_hidden_states is not None:  # double block: text has its own projections
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
            encoder_query = _project(attn.add_q_proj, encoder_hidden_states, *branch)
            encoder_key = _project(attn.add_k_proj, encoder_hidden_states, *branch)
            encoder_value = _project(attn.add_v_proj, encoder_hidden_states, *branch)
        else:  # single block: one projection over [text; image]
            differences = None
            if step is not None:
                text = hidden_states[:, : branch[0].shape[1]]
                differences = (branch[0] - text, branch[1] - text)
            query, key, value = (_project_text_slice(p, hidden_states, differences) for p in (attn.to_q, attn.to_k,
                                                                                              attn.to_v))

        # Copied from diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))

            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)

            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        # End of copy. Ours: the branch streams attend to themselves and to the real stream's image tokens.
        if step is not None:
            step.attention = self.branch_attention(attn, branch, key, value, image_rotary_emb)

        # Copied from diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
        # End of copy. Ours: to_add_out's branches see their own streams' attention outputs.
            attention = (None, None) if step is None else step.attention
            encoder_hidden_states = _project(attn.to_add_out, encoder_hidden_states.contiguous(), *attention)
            return hidden_states, encoder_hidden_states
        return hidden_states

    @torch.no_grad()
    def branch_attention(self, attn, branch, key, value, rotary) -> tuple[torch.Tensor, torch.Tensor]:
        """Each branch stream's attention output (B, T, inner), frozen weights: its text queries over its
        own text keys and the real stream's image keys (`key`/`value` before rotary, [text; image])."""
        double = attn.added_kv_proj_dim is not None
        q_proj, k_proj, v_proj = ((attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if double
                                  else (attn.to_q, attn.to_k, attn.to_v))
        q_norm, k_norm = (attn.norm_added_q, attn.norm_added_k) if double else (attn.norm_q, attn.norm_k)
        outputs = []
        for tokens in branch:
            length = tokens.shape[1]
            heads = (-1, attn.head_dim)
            q = q_norm(_base(q_proj)(tokens).unflatten(-1, heads))
            k = torch.cat([k_norm(_base(k_proj)(tokens).unflatten(-1, heads)), key[:, length:]], dim=1)
            v = torch.cat([_base(v_proj)(tokens).unflatten(-1, heads), value[:, length:]], dim=1)
            if rotary is not None:
                q = apply_rotary_emb(q, tuple(r[:length] for r in rotary), sequence_dim=1)
                k = apply_rotary_emb(k, rotary, sequence_dim=1)
            out = dispatch_attention_fn(q, k, v, backend=self._attention_backend, parallel_config=self._parallel_config)
            outputs.append(out.flatten(2, 3).to(q.dtype))
        return tuple(outputs)


# FluxAttention.forward reads its processor's signature at every call; a stored one answers at once.
FluxSeparatedAttnProcessor.__call__.__signature__ = inspect.signature(FluxSeparatedAttnProcessor.__call__)


# ----- carrying the branch streams through the blocks ----------------------------------------------
def _call_arguments(block: nn.Module, args: tuple, kwargs: dict) -> dict:
    return inspect.signature(block.forward).bind(*args, **kwargs).arguments


def _streams(arguments: dict) -> BranchStreams | None:
    return (arguments.get("joint_attention_kwargs") or {}).get(STREAMS_KWARG)


@torch.no_grad()
def _before_double(position: int, block, arguments: dict) -> None:
    streams = _streams(arguments)
    if streams is None:
        return
    outs = [block.norm1_context(s, emb=arguments["temb"]) for s in streams.at[position]]
    streams.step[position] = BlockStep((outs[0][0], outs[1][0]), tuple(o[1:] for o in outs))


@torch.no_grad()
def _after_double(position: int, block, arguments: dict) -> None:
    streams = _streams(arguments)
    if streams is None:
        return
    step = streams.step.pop(position)
    advanced = []
    for stream, (c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp), attended in zip(
            streams.at[position], step.modulation, step.attention):
        # as FluxTransformerBlock.forward advances its text stream, with the frozen to_add_out
        encoder_hidden_states = stream + c_gate_msa.unsqueeze(1) * _base(block.attn.to_add_out)(attended)
        norm_encoder_hidden_states = block.norm2_context(encoder_hidden_states)
        norm_encoder_hidden_states = norm_encoder_hidden_states * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        context_ff_output = block.ff_context(norm_encoder_hidden_states)
        advanced.append(encoder_hidden_states + c_gate_mlp.unsqueeze(1) * context_ff_output)
    streams.at[position + 1] = tuple(advanced)


@torch.no_grad()
def _before_single(position: int, block, arguments: dict) -> None:
    streams = _streams(arguments)
    if streams is None:
        return
    normed = [block.norm(s, emb=arguments["temb"]) for s in streams.at[position]]
    mlp = tuple(block.act_mlp(block.proj_mlp(n)) for n, _ in normed)
    streams.step[position] = BlockStep((normed[0][0], normed[1][0]), (normed[0][1], normed[1][1]), mlp)


@torch.no_grad()
def _after_single(position: int, block, arguments: dict) -> None:
    streams = _streams(arguments)
    if streams is None:
        return
    step = streams.step.pop(position)
    # as FluxSingleTransformerBlock.forward advances its tokens
    streams.at[position + 1] = tuple(
        stream + gate.unsqueeze(1) * block.proj_out(torch.cat([attended, mlp], dim=2))
        for stream, gate, attended, mlp in zip(streams.at[position], step.modulation, step.attention, step.extra))


def _hook_block(block: nn.Module, position: int, before, after) -> list:
    def pre(module, args, kwargs):
        before(position, module, _call_arguments(module, args, kwargs))

    def post(module, args, kwargs, output):
        after(position, module, _call_arguments(module, args, kwargs))

    return [block.register_forward_pre_hook(pre, with_kwargs=True),
            block.register_forward_hook(post, with_kwargs=True)]


def _begin_streams(transformer, args, kwargs) -> None:
    arguments = _call_arguments(transformer, args, kwargs)
    streams = _streams(arguments)
    if streams is not None:
        text = arguments["encoder_hidden_states"]
        streams.begin(transformer.context_embedder, text, arguments["hidden_states"].shape[0])


# ----- injection ------------------------------------------------------------------------------------
def flux_attention_modules(transformer: nn.Module):
    """(name, attention, block, position, double) of every block, double-stream blocks first."""
    position = 0
    for kind, double in (("transformer_blocks", True), ("single_transformer_blocks", False)):
        for i, block in enumerate(getattr(transformer, kind)):
            yield f"{kind}.{i}.attn", block.attn, block, position, double
            position += 1


def flux_projections(transformer: nn.Module):
    """(name, linear) of every projection that gets a two-branch layer."""
    for name, attn, _, _, double in flux_attention_modules(transformer):
        for projection in DOUBLE_PROJECTIONS if double else SINGLE_PROJECTIONS:
            yield f"{name}.{projection}", _get(attn, projection)




def inject_flux(transformer: nn.Module, profile: Profile, rank: int, init: str = "gaussian",
                seed: int = 0) -> TwoBranchLoRA:
    """Two-branch LoRA layers on every attention projection of a FluxTransformer2DModel, the
    prompt-separated processor on every attention, and the hooks that carry the branch streams."""
    modules = list(flux_attention_modules(transformer))
    profile.check_against([name for name, *_ in modules])
    generator = torch.Generator().manual_seed(seed)
    layers: dict[str, TwoBranchLoraLinear] = {}
    hooks = [transformer.register_forward_pre_hook(_begin_streams, with_kwargs=True)]
    for name, attn, block, position, double in modules:
        projections = DOUBLE_PROJECTIONS if double else SINGLE_PROJECTIONS
        layers.update(wrap_projections(attn, name, projections, profile.roles_for(name), rank, init, generator,
                                       "transformer"))
        attn.set_processor(FluxSeparatedAttnProcessor(position))
        hooks += _hook_block(block, position, *((_before_double, _after_double) if double
                                                else (_before_single, _after_single)))
    transformer._unziplora_hooks = hooks
    return TwoBranchLoRA(layers, rank)


def remove_flux(transformer: nn.Module) -> None:
    """Put the plain projections, the stock processor and no hooks back (undo inject_flux)."""
    for _, attn, _, _, double in flux_attention_modules(transformer):
        for projection in DOUBLE_PROJECTIONS if double else SINGLE_PROJECTIONS:
            layer = _get(attn, projection)
            if isinstance(layer, TwoBranchLoraLinear):
                _set(attn, projection, layer.base)
        attn.set_processor(FluxAttnProcessor())
    for hook in getattr(transformer, "_unziplora_hooks", []):
        hook.remove()
    transformer._unziplora_hooks = []
