"""Reading a LoRA file of any common format: diffusers / PEFT, kohya / webui, B-LoRA checkpoints.

Key conversion is diffusers' own (`lora_state_dict`, `convert_unet_state_dict_to_peft`): no
hand-written key maps. Every file's header is checked before a tensor loads (models/headers.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UnZipLoRAError
from .folder import LORA_WEIGHT_NAME, load_safetensors
from .numbers import check_weights

B_LORA_PREFIX = "unet.unet."  # B-LoRA's published checkpoints double the prefix


def lora_file(path: str | Path) -> Path:
    """The weight file of a LoRA folder (diffusers' name) or the file itself."""
    path = Path(path)
    file = path / LORA_WEIGHT_NAME if path.is_dir() else path
    if not file.is_file():
        raise UnZipLoRAError(f"no LoRA file at {path}; give a .safetensors file or a folder holding {LORA_WEIGHT_NAME}")
    return file


def load_lora_any(path: str | Path, base=None) -> dict[str, torch.Tensor]:
    """A UNet LoRA from a diffusers folder/file, a kohya file or a B-LoRA checkpoint, its header
    checked against `base` (headers.BaseShapes, or None: ranks and sizes only) before loading.

    Returns PEFT-style keys without the 'unet.' prefix ('<module>.lora_A.weight', '.lora_B.weight'),
    with any kohya alpha folded into B so the update is exactly what the file means.
    """
    from diffusers import StableDiffusionXLPipeline

    from ..models.headers import check_lora_header

    file = lora_file(path)
    state = load_safetensors(file, check=lambda p: check_lora_header(p, base))
    check_weights(state, file)  # NaN / Inf / absurd values, alphas that are not one number: one line
    if any(k.startswith(B_LORA_PREFIX) for k in state):
        state = {k.replace(B_LORA_PREFIX, "unet.", 1): v for k, v in state.items()}
    try:
        converted, alphas = StableDiffusionXLPipeline.lora_state_dict(state)
    except (ValueError, KeyError) as exc:
        raise UnZipLoRAError(f"{file} is not a LoRA diffusers can read ({str(exc).splitlines()[0][:120]})") from None
    unet = {k[len("unet."):]: v for k, v in converted.items() if k.startswith("unet.")}
    if not unet:
        raise UnZipLoRAError(f"{file} holds no UNet LoRA weights (text-encoder-only LoRAs are not supported)")
    return _to_peft_keys(unet, alphas or {})


def _to_peft_keys(state: dict[str, torch.Tensor], alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    """Normalise every diffusers LoRA naming to PEFT's (diffusers' own converter); fold alpha / rank into B.

    diffusers keys alphas by the down-weight's name + '.alpha'; running those names through the
    same converter maps each alpha onto its module.
    """
    from diffusers.utils import convert_unet_state_dict_to_peft

    out = {k: v.float() for k, v in convert_unet_state_dict_to_peft(state).items()}
    named = {k.removeprefix("unet.").removesuffix(".alpha"): torch.tensor(float(v)) for k, v in alphas.items()}
    for key, alpha in convert_unet_state_dict_to_peft(named).items():
        up = key.replace(".lora_A.weight", ".lora_B.weight")
        if up in out:
            out[up] = out[up] * (float(alpha) / out[up].shape[1])
    return out
