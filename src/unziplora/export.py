"""LoRA files every tool loads: export to kohya/webui format, import from diffusers, kohya and B-LoRA.

Key conversion is diffusers' own (`convert_state_dict_to_kohya` out, `lora_state_dict` in):
no hand-written key maps. Exported kohya files use diffusers-style module names under the
`lora_unet_` prefix with an `.alpha` per module (alpha = rank: scale 1, as trained); ComfyUI
and AUTOMATIC1111 map those names to their own. FLUX.1 has no converter to kohya keys in
diffusers: its files are written in sd-scripts' layout by run/flux_kohya.py, checked against
diffusers' converter from that layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .models.loading import quietly
from .names import Branch
from .errors import UnZipLoRAError
from .run.folder import LORA_WEIGHT_NAME, RunFolder, atomic_output_dir, check_output, load_safetensors, save_safetensors

from .run.formats import EXPORT_FORMATS as FORMATS
from .run.flux_kohya import flux_to_kohya
from .run.loras import lora_file
from .run.sources import token_files

# AUTOMATIC1111 / ComfyUI embedding keys per text encoder (SDXL's two: clip_l, clip_g; SD 1.x's one: emb_params)
WEBUI_EMBEDDING_KEYS = {("text_encoder",): ("emb_params",), ("text_encoder", "text_encoder_2"): ("clip_l", "clip_g")}


def _export_tokens(folder: RunFolder, fmt: str, out: Path, force: bool) -> list[Path]:
    """A token run's (Inspiration Tree) tokens: diffusers' textual-inversion files ({token: embedding},
    one per branch and text encoder) or one webui embedding file per branch."""
    written = {}
    for branch in (Branch.CONTENT, Branch.STYLE):
        files = token_files(folder.path, branch)
        states = {encoder: load_safetensors(path) for encoder, path in files.items()}
        if any(len(state) != 1 or next(iter(state.values())).ndim != 1 for state in states.values()):
            raise UnZipLoRAError(f"{folder.path / branch.value}_tokens holds no single token embedding; the run "
                                 "folder is damaged: decompose it again")
        if fmt == "diffusers":
            for encoder, state in states.items():
                written[f"{folder.path.name}_{branch.value}_{encoder}.safetensors"] = (state, {"text_encoder": encoder})
        else:
            keys = WEBUI_EMBEDDING_KEYS.get(tuple(states))
            if keys is None:
                raise UnZipLoRAError(f"no webui embedding format for text encoders {', '.join(states)}")
            rows = [next(iter(states[encoder].values()))[None] for encoder in states]
            written[f"{folder.path.name}_{branch.value}.safetensors"] = (dict(zip(keys, rows)), {})
    with atomic_output_dir(out, force, "export") as tmp:
        for name, (state, metadata) in written.items():
            save_safetensors(state, tmp / name, metadata)
    return [out / name for name in written]


@quietly
def export_run(run: str | Path, fmt: str, out_dir: str | Path | None = None, force: bool = False) -> list[Path]:
    """Write the run's content and style LoRAs in `fmt` into `out_dir` (default RUN/export/FMT).

    All or nothing: both files are written into a temporary folder that replaces `out_dir` in one
    rename (an existing one only with `force`). What is exported is read and checked first: a
    file that is no LoRA, or a link leading out of the run folder, is refused.
    """
    if fmt not in FORMATS:
        raise UnZipLoRAError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    from .models.base import BaseModel

    folder = RunFolder.open(run)
    out = Path(out_dir) if out_dir else folder.path / "export" / fmt
    check_output(out, [folder.path, folder.manifest.base_model], force, "export")  # before reading anything
    if token_files(folder.path, Branch.CONTENT):
        return _export_tokens(folder, fmt, out, force)
    model = BaseModel.resolve(folder.manifest.base_model, folder.manifest.revision)
    denoiser, base = model.family.denoiser, model.shapes()
    states = {branch: _read_branch(folder, branch, base, denoiser) for branch in (Branch.CONTENT, Branch.STYLE)}
    convert, network_module = KOHYA[denoiser]
    names = {branch: f"{folder.path.name}_{branch.value}.safetensors" for branch in states}
    with atomic_output_dir(out, force, "export") as tmp:
        for branch, (state, metadata) in states.items():
            if fmt == "diffusers":
                save_safetensors(state, tmp / names[branch], metadata)
            else:
                save_safetensors(convert(state), tmp / names[branch],
                                 {**kohya_metadata(folder, branch, state), "ss_network_module": network_module})
    return [out / names[branch] for branch in states]


def _read_branch(folder: RunFolder, branch: Branch, base=None,
                 denoiser: str = "unet") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A branch's LoRA file, read (never copied unseen) and checked: inside the run, a LoRA whose
    header fits the run's base model (headers.py) before any tensor is loaded."""
    from .models.headers import check_lora_header, read_header

    source = folder.lora_dir(branch) / LORA_WEIGHT_NAME
    if not source.resolve().is_relative_to(folder.path.resolve()):
        raise UnZipLoRAError(f"{source} leads out of the run folder (to {source.resolve()}); refusing to export it")
    shapes, metadata = read_header(source)
    if not shapes or not all(k.startswith(f"{denoiser}.") and ".lora_" in k for k in shapes):
        raise UnZipLoRAError(f"{source} is not a {denoiser} LoRA file; the run folder is damaged: decompose it again")
    return load_safetensors(source, check=lambda p: check_lora_header(p, base)), metadata


def to_kohya(diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT/diffusers LoRA keys ('unet.<module>.lora_A.weight') to kohya keys with alphas."""
    from diffusers.utils import convert_state_dict_to_kohya

    return {k: v.contiguous() for k, v in convert_state_dict_to_kohya(diffusers_state).items()}


# the kohya writer and kohya's network module per denoiser (UNet: diffusers' converter; FLUX: sd-scripts' layout)
KOHYA = {"unet": (to_kohya, "networks.lora"), "transformer": (flux_to_kohya, "networks.lora_flux")}
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"


def kohya_metadata(folder: RunFolder, branch: Branch, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """kohya's ss_* fields, true to the file: its own rank, and the base model it was trained on
    (`sdxl_base_v1-0` only for SDXL base 1.0; another model is named, not claimed to be SDXL)."""
    m = folder.manifest
    ranks = {v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight")}
    rank = str(max(ranks))
    base = m.base_model
    trigger = m.prompts.identifier if branch is Branch.CONTENT else m.prompts.style_words
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": rank, "ss_network_alpha": rank,
        "ss_base_model_version": "sdxl_base_v1-0" if base.rstrip("/").endswith(SDXL_BASE) else Path(base).name,
        "ss_sd_model_name": base, "unziplora_branch": branch.value,
        "unziplora_trigger": trigger, "unziplora_base_model": base,
    }
