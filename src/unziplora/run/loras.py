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
    """A denoiser LoRA from a diffusers folder/file, a kohya file or a B-LoRA checkpoint, its header
    checked against `base` (headers.BaseShapes, or None: ranks and sizes only) before loading.

    UNet LoRAs (SDXL, SD 1.x/2.x) and FLUX.1 transformer LoRAs are told apart by their keys
    (headers.lora_denoiser); each goes through its own pipeline's diffusers reader. Returns PEFT-style
    keys without the 'unet.' / 'transformer.' prefix ('<module>.lora_A.weight', '.lora_B.weight'),
    with any alpha folded into B so the update is exactly what the file means.
    """
    from ..models.headers import check_lora_header, lora_denoiser

    file = lora_file(path)
    state = load_safetensors(file, check=lambda p: check_lora_header(p, base))
    check_weights(state, file)  # NaN / Inf / absurd values, alphas that are not one number: one line
    if any(k.startswith(B_LORA_PREFIX) for k in state):
        state = {k.replace(B_LORA_PREFIX, "unet.", 1): v for k, v in state.items()}
    denoiser = lora_denoiser(state) or (base.denoiser if base is not None else "unet")
    reader = "FluxPipeline" if denoiser == "transformer" else "StableDiffusionXLPipeline"
    try:
        import diffusers

        converted, alphas = getattr(diffusers, reader).lora_state_dict(state, **(
            {"return_alphas": True} if denoiser == "transformer" else {}))
    except (ValueError, KeyError, IndexError, AssertionError) as exc:  # diffusers' converters assert shapes
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UnZipLoRAError(f"{file} is not a LoRA diffusers can read for this model ({reason})") from None
    prefix = f"{denoiser}."
    weights = {k[len(prefix):]: v for k, v in converted.items() if k.startswith(prefix)}
    if not weights:
        raise UnZipLoRAError(f"{file} holds no {denoiser} LoRA weights (text-encoder-only LoRAs are not supported)")
    if denoiser == "transformer":  # diffusers' reader gives PEFT keys; alphas (if any) per module
        return _fold_module_alphas({k: v.float() for k, v in weights.items()}, alphas or {}, prefix)
    return _to_peft_keys(weights, alphas or {})


def _fold_module_alphas(state: dict[str, torch.Tensor], alphas: dict, prefix: str) -> dict[str, torch.Tensor]:
    """Fold alpha / rank into B for alphas keyed '<module>.alpha' (FLUX LoRAs in diffusers' reader)."""
    for key, alpha in alphas.items():
        module = key.removeprefix(prefix).removesuffix(".alpha")
        for suffix in (".lora_A.weight", ".lora.down.weight", ".lora_down.weight"):
            module = module.removesuffix(suffix)
        up = f"{module}.lora_B.weight"
        if up in state:
            state[up] = state[up] * (float(alpha) / state[up].shape[1])
    return state


def lora_kind(path: str | Path) -> str | None:
    """The denoiser a LoRA file updates ("unet", "transformer"), from its header; None if it names neither."""
    from ..models.headers import lora_denoiser, read_header

    return lora_denoiser(read_header(lora_file(path))[0])


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
