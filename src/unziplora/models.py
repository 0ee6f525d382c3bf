"""Loading the base SDXL pipeline from a hub id or a local folder, with one-line errors."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

from .errors import UnZipLoRAError

SDXL_PIPELINE_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def looks_like_path(name: str) -> bool:
    """Hub ids are "owner/name"; anything else that is not an existing folder is a path typo."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def check_pipeline_folder(path: Path) -> None:
    """Fail unless `path` is a diffusers SDXL pipeline folder with safetensors weights."""
    if not path.exists():
        raise UnZipLoRAError(f"base model path {path} does not exist; give a local diffusers SDXL folder or a hub id")
    index = path / "model_index.json"
    if not path.is_dir() or not index.is_file():
        raise UnZipLoRAError(
            f"{path} is not a diffusers pipeline folder (no model_index.json); "
            "save one with StableDiffusionXLPipeline.save_pretrained(PATH)"
        )
    try:
        parts = json.loads(index.read_text())
    except json.JSONDecodeError:
        raise UnZipLoRAError(f"{index} is not valid JSON; re-save the pipeline") from None
    missing = [p for p in SDXL_PIPELINE_PARTS if not (path / p).is_dir() or p not in parts]
    if missing or "XL" not in str(parts.get("_class_name", "")):
        what = f"lacks {', '.join(missing)}" if missing else f"is a {parts.get('_class_name')}"
        raise UnZipLoRAError(f"{path} is not an SDXL-shaped diffusers pipeline ({what}); use an SDXL base model folder")
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        files = [f.name for f in (path / part).iterdir()]
        if not any(f.endswith(".safetensors") for f in files):
            pickled = [f for f in files if f.endswith(_WEIGHT_SUFFIXES)]
            reason = f"only pickle files ({', '.join(pickled)})" if pickled else "no weights"
            raise UnZipLoRAError(
                f"{path / part} has {reason}; unziplora loads safetensors only: convert with "
                "save_pretrained(..., safe_serialization=True) in a trusted environment"
            )


LIBRARIES_WARNING_MODULES = r"(diffusers|transformers|peft|accelerate|huggingface_hub)(\.|$)"


@contextlib.contextmanager
def quiet_libraries():
    """Inside: diffusers' and transformers' info/warning logs, their progress bars and the warnings
    those libraries issue are hidden (a missing-torchvision fallback, deprecations, "loaded in fp16 on
    CPU"), so the API prints as little as the CLI. Our own warnings and errors still show; the
    libraries' settings are restored on exit. `UNZIPLORA_VERBOSE=1` keeps everything."""
    import os

    if os.environ.get("UNZIPLORA_VERBOSE"):
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    # "Loading pipeline components" / "Loading weights" bars would precede an error line
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=LIBRARIES_WARNING_MODULES)
            yield
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])
        for enabled, library in zip(bars, (diffusers_logging, transformers_logging)):
            if enabled:
                library.enable_progress_bar()


def load_pipeline(base_model: str, revision: str | None = None, dtype: torch.dtype = torch.float32):
    """StableDiffusionXLPipeline.from_pretrained on a hub id or local folder, safetensors only.

    The VAE is kept in fp32 (SDXL's VAE overflows in fp16; docs/method.md §6). Library logs are
    hidden while loading (`quiet_libraries`).
    """
    from diffusers import StableDiffusionXLPipeline

    local = Path(base_model).expanduser()
    if local.exists() or looks_like_path(base_model):
        check_pipeline_folder(local)
        source = str(local)
    else:
        source = base_model
    try:
        with quiet_libraries():
            pipe = StableDiffusionXLPipeline.from_pretrained(
                source, revision=revision, dtype=dtype, use_safetensors=True
            )
    except (OSError, ValueError, EnvironmentError) as exc:
        if source is base_model:
            raise UnZipLoRAError(
                f"could not load {base_model!r} from the Hugging Face hub (offline, no network, or no such "
                "repository); download it once where there is network (hf download "
                f"{base_model} --local-dir ./sdxl) and pass the folder: --base-model ./sdxl"
            ) from None
        raise UnZipLoRAError(f"could not load the pipeline in {source}: {str(exc).splitlines()[0][:200]}") from None
    if dtype != torch.float32:
        pipe.vae.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnZipLoRAError("train.device is cuda but no CUDA GPU is visible; use --device cpu or auto")
    return device


def pick_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """Weight dtype of the frozen UNet: fp16 on CUDA (auto), fp32 on CPU (docs/method.md §6)."""
    if mixed_precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if mixed_precision in ("fp16", "bf16") and device.type == "cpu":
        raise UnZipLoRAError(f"mixed precision {mixed_precision} needs a GPU; use --mixed-precision no on CPU")
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


CHECKSUM_FILE = "SHA256SUMS"


def write_checksums(directory: Path) -> None:
    """SHA256SUMS over every file of a model folder (write it again after adding files to it)."""
    import hashlib

    lines = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(directory).as_posix()}")
    (directory / CHECKSUM_FILE).write_text("\n".join(lines) + "\n")
