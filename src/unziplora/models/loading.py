"""Loading a resolved base model's pipeline (a hub id or a local folder), with one-line errors."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UnZipLoRAError

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: resolving a base model (check_pipeline_folder) and checking
# arguments happen before it loads, so a mistake is answered at once (app/preflight.py).
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_pipeline_folder(path: Path) -> None:
    """Fail unless `path` is a diffusers pipeline folder of a supported family (families.py) with
    safetensors weights."""
    from .families import FAMILIES, family_named

    if not path.exists():
        raise UnZipLoRAError(f"base model path {path} does not exist; give a local diffusers pipeline folder, a hub id "
                             "or 'embedded'")
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
    family = family_named(parts.get("_class_name") if isinstance(parts, dict) else None)
    if family is None:
        raise UnZipLoRAError(f"{path} holds a {parts.get('_class_name') if isinstance(parts, dict) else '?'}; unziplora "
                             f"supports {', '.join(FAMILIES)} pipelines")
    missing = [p for p in family.parts if not (path / p).is_dir() or p not in parts]
    if missing:
        raise UnZipLoRAError(f"{path} is not a complete {family.pipeline} folder (it lacks {', '.join(missing)}); "
                             "re-save the pipeline with save_pretrained")
    for part in family.weight_parts:
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


def quietly(function):
    """`function` run inside `quiet_libraries`: each command of the Python API (decompose, generate,
    export, merge, probe) prints as little as the CLI, whatever the libraries say while it runs."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with quiet_libraries():
            return function(*args, **kwargs)
    return wrapper


def quantization_for(family, quantize: str = "no"):
    """diffusers' PipelineQuantizationConfig that loads the family's denoiser quantized by bitsandbytes
    (QLoRA, arXiv 2305.14314, Sec. 2: nf4 weights, matmuls in the family's CUDA dtype; or int8), or
    None for "no". Only the frozen denoiser: the VAE and text encoders are small or released."""
    if quantize == "no":
        return None
    import torch
    from diffusers import PipelineQuantizationConfig

    if quantize == "nf4":
        backend, kwargs = "bitsandbytes_4bit", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                "bnb_4bit_compute_dtype": getattr(torch, family.cuda_dtype)}
    elif quantize == "int8":
        backend, kwargs = "bitsandbytes_8bit", {"load_in_8bit": True}
    else:
        raise UnZipLoRAError(f"unknown --quantize-base {quantize!r}: use no, nf4 or int8")
    return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=[family.denoiser])


def check_quantization(quantize: str, device: torch.device) -> None:
    """Refuse a quantized base where bitsandbytes cannot run it, before anything loads."""
    if quantize == "no":
        return
    if device.type != "cuda":
        raise UnZipLoRAError(f"--quantize-base {quantize} runs on CUDA only (bitsandbytes); drop it on this machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UnZipLoRAError("--quantize-base needs bitsandbytes: pip install 'unziplora[bnb]', or drop "
                             "--quantize-base") from None


def to_device(model, device, dtype):
    """model.to(device, dtype); a quantized model (bitsandbytes) moves only: its weights keep their
    storage and its other layers the dtype they were loaded in."""
    return model.to(device) if getattr(model, "is_quantized", False) else model.to(device, dtype)


def load_pipeline(base, dtype: torch.dtype | None = None, quantize: str = "no"):
    """The family's pipeline (`from_pretrained`) of a resolved `BaseModel` (base.py), safetensors only,
    its denoiser quantized where `quantize` says (`quantization_for`).

    The VAE is kept in fp32 (SDXL's VAE overflows in fp16; docs/method.md §6). Library logs are
    hidden while loading (`quiet_libraries`).
    """
    import torch

    dtype = dtype or torch.float32
    quantized = quantization_for(base.family, quantize)
    try:
        with quiet_libraries():
            pipe = base.family.pipeline_class().from_pretrained(
                base.source, revision=base.revision, dtype=dtype, use_safetensors=True,
                **({"quantization_config": quantized} if quantized is not None else {}),
            )
    except (OSError, ValueError, EnvironmentError) as exc:
        if not base.local:
            raise UnZipLoRAError(
                f"could not load {base.source!r} from the Hugging Face hub (offline, no network, or no such "
                "repository); download it once where there is network (hf download "
                f"{base.source} --local-dir ./sdxl) and pass the folder: --base-model ./sdxl "
                "(or --base-model embedded: the toy-world model shipped with unziplora)"
            ) from None
        raise UnZipLoRAError(f"could not load the pipeline in {base.source}: {str(exc).splitlines()[0][:200]}") from None
    if dtype != torch.float32:
        pipe.vae.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pick_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UnZipLoRAError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UnZipLoRAError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnZipLoRAError("train.device is cuda but no CUDA GPU is visible; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UnZipLoRAError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def pick_dtype(mixed_precision: str, device: torch.device, family=None) -> torch.dtype:
    """Weight dtype of the frozen denoiser: on CUDA (auto) the family's (SDXL, SD: fp16; FLUX: bf16,
    its activations overflow fp16), fp32 on CPU (docs/method.md §6)."""
    import torch

    if mixed_precision == "auto":
        return getattr(torch, family.cuda_dtype if family else "float16") if device.type == "cuda" else torch.float32
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


# ----- what sizes a base model can generate ------------------------------------------------------
# Latents a multiple of 8: every level of an SDXL-shaped UNet then halves and doubles exactly, with
# no interpolation at its skip connections (SDXL's own sizes are multiples of 64).
LATENT_MULTIPLE = 8


def available_memory(device: torch.device) -> int | None:
    """Bytes free for one process: the GPU's memory on CUDA, MemAvailable on the CPU (None if unknown)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def decode_bytes(resolution: int, first_channels: int, images: int = 1) -> int:
    """A lower bound of the memory decoding `images` images takes: the VAE decoder's last block
    runs at full size with its first width of channels, and one of its fp32 convolutions holds an
    input and an output of that size."""
    return 2 * images * resolution * resolution * first_channels * 4


def check_resolution_multiple(resolution: int | None, base, what: str = "--resolution") -> None:
    """Refuse a size that is not a multiple of the base model's VAE factor x 8 (64 for SDXL, 32 for
    the embedded 4x model); needs no torch, so the CLI checks it before anything loads."""
    vae = base.config("vae")
    if resolution is None or vae is None or not vae.get("block_out_channels"):
        return  # not available before loading (an uncached hub id): the loader fails first
    factor = base.vae_factor
    multiple = factor * LATENT_MULTIPLE
    if resolution % multiple:
        lower = max(multiple, resolution // multiple * multiple)
        raise UnZipLoRAError(f"{what} {resolution} does not suit this base model: use a multiple of {multiple} px "
                             f"(its VAE downsamples {factor}x, latents must be multiples of {LATENT_MULTIPLE}), "
                             f"e.g. {lower} or {lower + multiple}")


# Training far above the size a base model was trained at costs the square of the ratio per step (and
# more in attention) and teaches the model a size it never drew: refused unless asked for.
LARGE_RESOLUTION_RATIO = 2


def check_native_size(resolution: int | None, base, allow_large: bool = False,
                      what: str = "--resolution") -> str | None:
    """Refuse a size more than LARGE_RESOLUTION_RATIO x the base model's own unless `allow_large`
    (then a warning to print is returned), with what a step costs; None when the size is near it."""
    own = base.native_resolution
    if resolution is None or not own or resolution <= LARGE_RESOLUTION_RATIO * own:
        return None
    ratio = (resolution / own) ** 2
    cost = (f"{what} {resolution} is {resolution / own:g}x this base model's own {own} px: every step costs at least "
            f"{ratio:,.0f}x a step at {own} px, and the model never saw images that size")
    from .step_cost import duration, step_seconds_floor

    floor = step_seconds_floor(base, resolution)
    if floor is not None:
        cost += f"; expect at least {duration(floor[0])} per training step here ({floor[1]})"
    if not allow_large:
        raise UnZipLoRAError(f"{cost}; use --resolution {own}, or pass --allow-large-resolution to train at it anyway")
    return cost


def check_resolution(resolution: int | None, base, device: torch.device, images: int = 1,
                     what: str = "--resolution") -> None:
    """Refuse, before anything is allocated, a size the base model cannot use: not a multiple of its
    VAE factor x 8 (64 for SDXL, 32 for the embedded 4x model), or beyond this machine's memory."""
    check_resolution_multiple(resolution, base, what)
    vae = base.config("vae")
    if resolution is None or vae is None or not vae.get("block_out_channels"):
        return  # not available before loading (an uncached hub id): the loader fails first
    channels, own = vae["block_out_channels"], base.native_resolution
    need, free = decode_bytes(resolution, int(channels[0]), images), available_memory(device)
    if free is not None and need > free:
        where = "GPU memory" if device.type == "cuda" else "free memory"
        raise UnZipLoRAError(f"{what} {resolution} needs at least {need / 2**30:,.1f} GiB to decode "
                             f"{'an image' if images == 1 else f'{images} images'} at that size, more than this "
                             f"machine's {free / 2**30:,.1f} GiB of {where}: use a smaller size"
                             + (f" (this model's own is {own} px)" if own else ""))
