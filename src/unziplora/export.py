"""LoRA files every tool loads: export to kohya/webui format, import from diffusers, kohya and B-LoRA.

Key conversion is diffusers' own (`convert_state_dict_to_kohya` out, `lora_state_dict` in):
no hand-written key maps. Exported kohya files use diffusers-style module names under the
`lora_unet_` prefix with an `.alpha` per module (alpha = rank: scale 1, as trained); ComfyUI
and AUTOMATIC1111 map those names to their own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .branch import Branch
from .errors import UnZipLoRAError
from .runfolder import LORA_WEIGHT_NAME, RunFolder, load_safetensors, save_safetensors

FORMATS = ("diffusers", "kohya")
B_LORA_PREFIX = "unet.unet."  # B-LoRA's published checkpoints double the prefix


def export_run(run: str | Path, fmt: str, out_dir: str | Path | None = None) -> list[Path]:
    """Write the run's content and style LoRAs in `fmt` into `out_dir` (default RUN/export/FMT)."""
    if fmt not in FORMATS:
        raise UnZipLoRAError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    folder = RunFolder.open(run)
    out = Path(out_dir) if out_dir else folder.path / "export" / fmt
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for branch in (Branch.CONTENT, Branch.STYLE):
        source = folder.lora_dir(branch) / LORA_WEIGHT_NAME
        target = out / f"{folder.path.name}_{branch.value}.safetensors"
        if fmt == "diffusers":
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
        else:
            save_safetensors(to_kohya(load_safetensors(source)), target, kohya_metadata(folder, branch))
        written.append(target)
    return written


def to_kohya(diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT/diffusers LoRA keys ('unet.<module>.lora_A.weight') to kohya keys with alphas."""
    from diffusers.utils import convert_state_dict_to_kohya

    return {k: v.contiguous() for k, v in convert_state_dict_to_kohya(diffusers_state).items()}


def kohya_metadata(folder: RunFolder, branch: Branch) -> dict[str, str]:
    m = folder.manifest
    rank = str(m["config"]["lora"]["rank"])
    trigger = m["prompts"]["identifier"] if branch is Branch.CONTENT else m["prompts"]["style_words"]
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": rank, "ss_network_alpha": rank,
        "ss_base_model_version": "sdxl_base_v1-0", "unziplora_branch": branch.value,
        "unziplora_trigger": trigger, "unziplora_base_model": str(m["base_model"]),
    }


def load_lora_any(path: str | Path) -> dict[str, torch.Tensor]:
    """A UNet LoRA from a diffusers folder/file, a kohya file or a B-LoRA checkpoint.

    Returns PEFT-style keys without the 'unet.' prefix ('<module>.lora_A.weight', '.lora_B.weight'),
    with any kohya alpha folded into B so the update is exactly what the file means.
    """
    from diffusers import StableDiffusionXLPipeline

    path = Path(path)
    file = path / LORA_WEIGHT_NAME if path.is_dir() else path
    if not file.is_file():
        raise UnZipLoRAError(f"no LoRA file at {path}; give a .safetensors file or a folder holding {LORA_WEIGHT_NAME}")
    state = load_safetensors(file)
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
