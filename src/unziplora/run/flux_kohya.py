"""FLUX.1 LoRAs in kohya sd-scripts' layout: what kohya's FLUX trainer writes and ComfyUI, Forge and
diffusers read.

diffusers has no converter to this layout, only the one back (`FluxPipeline.lora_state_dict`, via
`_convert_kohya_flux_lora_to_diffusers`); the layout written here is the one that converter reads,
and a test sends every file through it and gets the diffusers LoRA back exactly. sd-scripts names
modules as Black Forest Labs' checkpoint does, where a block's q, k and v are one fused weight:

    transformer_blocks.{i}.attn.to_q/k/v           -> lora_unet_double_blocks_{i}_img_attn_qkv
    transformer_blocks.{i}.attn.to_out.0           -> lora_unet_double_blocks_{i}_img_attn_proj
    transformer_blocks.{i}.attn.add_q/k/v_proj     -> lora_unet_double_blocks_{i}_txt_attn_qkv
    transformer_blocks.{i}.attn.to_add_out         -> lora_unet_double_blocks_{i}_txt_attn_proj
    single_transformer_blocks.{i}.attn.to_q/k/v    -> lora_unet_single_blocks_{i}_linear1 (with proj_mlp)

A fused module's LoRA is the parts' LoRAs side by side: down = [A_q; A_k; A_v], up = the block
diagonal of B_q, B_k, B_v, so up @ down updates each part by its own B A and nothing else (the
"sparse" form the converter splits back exactly). linear1 also holds the single block's MLP input
(4 x the width: FluxSingleTransformerBlock's mlp_ratio), which no branch trains: its part is zero.
alpha = the module's rank, so every update applies at scale 1, as trained.
"""

from __future__ import annotations

import re

import torch

from ..models.headers import FLUX_KOHYA_BLOCK as KOHYA_BLOCK, FLUX_KOHYA_FUSED as FUSED

PREFIX = "transformer."
MLP_RATIO = 4  # FluxSingleTransformerBlock's proj_mlp width over the model width


def flux_to_kohya(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A FLUX transformer LoRA in diffusers' keys ('transformer.<module>.lora_A.weight') in sd-scripts'."""
    blocks = sorted({(m.group(1), int(m.group(2))) for m in map(
        re.compile(rf"{re.escape(PREFIX)}(transformer_blocks|single_transformer_blocks)\.(\d+)\.").match, state) if m})
    out: dict[str, torch.Tensor] = {}
    for kind, i in blocks:
        for name, parts in FUSED[kind]:
            pairs = [_pair(state, f"{PREFIX}{kind}.{i}.{part}") for part in parts]
            if all(pair is None for pair in pairs):
                continue
            key = f"lora_unet_{KOHYA_BLOCK[kind]}_{i}_{name}"
            out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = _side_by_side(pairs)
            out[f"{key}.alpha"] = torch.tensor(float(out[f"{key}.lora_down.weight"].shape[0]))
    return out


def _pair(state, module: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    down, up = state.get(f"{module}.lora_A.weight"), state.get(f"{module}.lora_B.weight")
    return None if down is None or up is None else (down, up)


def _side_by_side(pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """[A_1; ...; A_n] and the block diagonal of B_1 ... B_n; a missing part (the single block's MLP
    input, or a module the file lacks) is a zero LoRA of the same rank."""
    down_0, up_0 = next(pair for pair in pairs if pair is not None)
    rank, width, dtype = down_0.shape[0], down_0.shape[1], down_0.dtype
    if any(pair is not None and pair[0].shape[0] != rank for pair in pairs):
        raise ValueError("the parts of a fused kohya module must share one rank")
    ups = [pair[1] if pair is not None else None for pair in pairs]
    if len(pairs) == 4 and pairs[3] is None:  # linear1's proj_mlp part
        ups[3] = torch.zeros(MLP_RATIO * width, rank, dtype=dtype)
    ups = [up if up is not None else torch.zeros(up_0.shape[0], rank, dtype=dtype) for up in ups]
    downs = [pair[0] if pair is not None else torch.zeros(rank, width, dtype=dtype) for pair in pairs]
    return torch.cat(downs).contiguous(), torch.block_diag(*ups).contiguous()
