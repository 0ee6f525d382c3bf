"""What travels with an exported base model (its recipe and the checksums of its files), and a VAE
that travels alone (trained here, its UNet trained elsewhere: benchmarks/gpu_pretrain.py --init)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

RECIPE_FILE = "recipe.json"
CHECKSUM_FILE = "SHA256SUMS"


def write_recipe(directory: Path, trainer) -> None:
    """recipe.json (how it was trained, how far) and SHA256SUMS of every weight and config file."""
    from importlib.metadata import version

    losses = [entry["loss"] for entry in trainer.log if entry["phase"] == "unet"][-200:]
    recipe = {
        "recipe": "src/unziplora/toyworld/pretrain.py + scripts/train_base_model.py",
        "config": trainer.saved_config or dataclasses.asdict(trainer.config),
        "trained": {"phase": trainer.phase, "unet_steps_done": trainer.step if trainer.phase == "unet" else 0,
                    "recent_unet_loss": round(float(np.mean(losses)), 5) if losses else None,
                    "schedule_changes_on_resume": trainer.schedule},
        "vae_scaling_factor": trainer.c["vae"].config.scaling_factor,
        "versions": {name: version(name) for name in ("torch", "diffusers", "transformers")},
    }
    (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, default=str))
    write_checksums(directory)


def write_checksums(directory: Path) -> None:
    """SHA256SUMS over every file of the model folder (run again after adding files to it)."""
    lines = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(directory).as_posix()}")
    (directory / CHECKSUM_FILE).write_text("\n".join(lines) + "\n")


def write_vae_file(trainer, path: Path) -> Path:
    """The trainer's finished VAE alone, fp16, as "vae.<name>" tensors with its scaling factor and
    shape in the metadata (train_base_model.py --export-vae)."""
    import torch
    from safetensors.torch import save_file

    from ..errors import UnZipLoRAError

    if trainer.phase != "unet":
        raise UnZipLoRAError(f"the VAE phase in {trainer.workdir} is not finished (step {trainer.step} of "
                             f"{trainer.config.vae_steps}): train on (--vae-only), then export the VAE")
    spec, vae = trainer.config.spec, trainer.c["vae"]
    tensors = {f"vae.{n}": t.detach().to("cpu", torch.float16).contiguous() for n, t in vae.state_dict().items()}
    metadata = {"scaling_factor": repr(float(vae.config.scaling_factor)), "latent_channels": str(spec.latent_channels),
                "vae_block_out_channels": json.dumps(list(spec.vae_block_out_channels)),
                "vae_steps": str(trainer.config.vae_steps), "seed": str(trainer.config.seed)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    return tmp.replace(path)


def vae_at(latent: str, tensors: dict, scaling_factor: float):
    """An AutoencoderKL of the shape pretrain.LATENT_SPECS[latent] with these "vae.<name>" tensors."""
    from ..tiny import tiny_sdxl_components
    from .pretrain import LATENT_SPECS

    vae = tiny_sdxl_components(LATENT_SPECS[latent])["vae"]
    vae.load_state_dict({n[len("vae."):]: t.float() for n, t in tensors.items() if n.startswith("vae.")})
    vae.register_to_config(scaling_factor=float(scaling_factor))
    return vae.eval()


def read_vae_file(path: str):
    """A VAE written by write_vae_file, built at the shape its metadata names."""
    from safetensors import SafetensorError, safe_open

    from ..errors import UnZipLoRAError
    from .pretrain import LATENT_SPECS

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith("vae.")}
    except (OSError, SafetensorError) as error:
        raise UnZipLoRAError(f"cannot read {path} as a safetensors VAE file ({error}); give the file "
                             "scripts/train_base_model.py --export-vae wrote") from error
    shape = (int(meta.get("latent_channels", -1)), json.loads(meta.get("vae_block_out_channels", "[]")))
    names = [k for k, s in LATENT_SPECS.items() if (s.latent_channels, list(s.vae_block_out_channels)) == shape]
    if not names or not tensors:
        raise UnZipLoRAError(f"{path} holds no VAE of a known shape {shape}; write one with "
                             "scripts/train_base_model.py --export-vae")
    return vae_at(names[0], tensors, float(meta["scaling_factor"]))
