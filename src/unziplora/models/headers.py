"""What a weight file holds, checked from its safetensors header before any tensor is loaded.

A safetensors header lists every tensor's name, dtype and shape; reading it costs a few
kilobytes however large the tensors are. So every LoRA and state file a command loads is
checked here first: A and B of each LoRA pair must share one rank, each pair must fit a layer
of the base model (its own shapes, read from the headers of its weight files), and nothing may
be larger than such a layer. A crafted file with a 3 GiB tensor (or a LoRA for another model)
is one error line, with the memory of a header.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnZipLoRAError

# The widest layer an SDXL-shaped model has is 10240 (the feed-forward input of SDXL's UNet) and
# its largest table 49408 rows (CLIP's vocabulary): the bound for files with no base model at hand.
MAX_FEATURES = 65536
# (down, up) name parts of a LoRA pair in every naming diffusers reads: PEFT, kohya, old diffusers.
# SDXL's largest LoRAs (rank 256 on every layer) hold a few hundred million numbers; SDXL's largest
# single weight (text_encoder_2's token table) 63 million.
MAX_LORA_ELEMENTS = 2**30
MAX_TENSOR_ELEMENTS = 2**26
_PAIRS = (("lora_A", "lora_B"), ("lora_down", "lora_up"), ("lora.down", "lora.up"))
_PARTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
DENOISERS = ("unet", "transformer")  # the part a base model denoises with (families.Family.denoiser)
# FLUX.1 LoRAs in kohya sd-scripts' layout name Black Forest Labs' fused modules: each is diffusers'
# modules side by side (run/flux_kohya.py writes them; diffusers' converter reads them back).
FLUX_KOHYA_FUSED = {
    "transformer_blocks": [("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
                           ("img_attn_proj", ("attn.to_out.0",)),
                           ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
                           ("txt_attn_proj", ("attn.to_add_out",))],
    "single_transformer_blocks": [("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))],
}
FLUX_KOHYA_BLOCK = {"transformer_blocks": "double_blocks", "single_transformer_blocks": "single_blocks"}
_FLUX_KOHYA_NAME = re.compile(r"lora_unet_(double_blocks|single_blocks)_(\d+)_(\w+)$")
_DENOISER_TITLE = {"unet": "a UNet model (SDXL, SD 1.x/2.x)", "transformer": "a FLUX.1 transformer"}


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """{tensor name: shape} and the metadata of a safetensors file, without loading a tensor."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UnZipLoRAError(f"{path} is not a .safetensors file; unziplora never loads pickled weights")
    try:
        with safe_open(str(path), "pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnZipLoRAError(f"{path} is corrupt or not a safetensors file ({exc}); re-create or re-download it") from None


@dataclass(frozen=True)
class BaseShapes:
    """The weight shapes of a base model: "unet.<key>" / "text_encoder.<key>" / ... -> shape."""

    name: str
    weights: dict[str, tuple[int, ...]]
    denoiser: str = "unet"  # "unet" (SDXL, SD) or "transformer" (FLUX.1): the prefix of its denoiser's weights

    @functools.cached_property
    def matrices(self) -> frozenset[tuple[int, int]]:
        """(out, in) of every weight of two or more dimensions: what a LoRA pair may update."""
        return frozenset((s[0], s[1]) for s in self.weights.values() if len(s) >= 2)

    @functools.cached_property
    def total(self) -> int:
        return sum(math.prod(s) for s in self.weights.values())

    @functools.cached_property
    def largest(self) -> int:
        """The number of elements of its largest weight."""
        return max((math.prod(s) for s in self.weights.values()), default=1)

    def layer(self, module: str) -> tuple[int, int] | None:
        """(out, in) of a named module ("unet.down_blocks.1....to_q"), None when it has no such weight."""
        shape = self.weights.get(f"{module}.weight")
        if shape is None and self.denoiser == "transformer":
            return self._flux_kohya_layer(module)
        return (shape[0], shape[1]) if shape and len(shape) >= 2 else None

    def _flux_kohya_layer(self, module: str) -> tuple[int, int] | None:
        """(out, in) of a fused module in kohya's FLUX layout ("lora_unet_double_blocks_0_img_attn_qkv"):
        its diffusers parts' outputs stacked, over their common input."""
        match = _FLUX_KOHYA_NAME.match(module)
        kinds = {v: k for k, v in FLUX_KOHYA_BLOCK.items()}
        if match is None:
            return None
        parts = dict(FLUX_KOHYA_FUSED[kinds[match.group(1)]]).get(match.group(3))
        shapes = [self.weights.get(f"transformer.{kinds[match.group(1)]}.{match.group(2)}.{p}.weight")
                  for p in parts or ()]
        if not shapes or any(s is None or len(s) < 2 for s in shapes):
            return None
        return sum(s[0] for s in shapes), shapes[0][1]


@functools.lru_cache(maxsize=8)
def _base_shapes(folder: str, name: str) -> BaseShapes | None:
    weights = {}
    for part in _PARTS:
        for file in sorted((Path(folder) / part).glob("*.safetensors")):
            shapes, _ = read_header(file)
            weights.update({f"{part}.{k}": v for k, v in shapes.items()})
    denoiser = next((d for d in DENOISERS if any(k.startswith(f"{d}.") for k in weights)), None)
    return BaseShapes(name, weights, denoiser) if denoiser else None


def base_shapes(base) -> BaseShapes | None:
    """A resolved base model's weight shapes from its files' headers; None when its files are not here."""
    if base is None:
        return None
    folder = base.folder
    return _base_shapes(str(folder), base.source) if folder else None


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _module_of(key: str, down: str) -> str:
    """The module a PEFT / diffusers key names ("unet.<module>.lora_A.weight"), B-LoRA's doubled prefix undone."""
    module = key[: key.rindex(down)].rstrip("._")
    return "unet." + module[len("unet.unet."):] if module.startswith("unet.unet.") else module


def lora_denoiser(keys) -> str | None:
    """Which denoiser a LoRA's keys update: "transformer" (FLUX.1: diffusers' `transformer.` prefix or
    kohya's double / single blocks), "unet" (diffusers' `unet.` or kohya's other `lora_unet_` names),
    None when they name neither (a text-encoder-only file)."""
    keys = list(keys)
    if any(k.startswith(("transformer.", "lora_transformer_", "lora_unet_double_blocks_", "lora_unet_single_blocks_"))
           for k in keys):
        return "transformer"
    return "unet" if any(k.startswith(("unet.", "lora_unet_")) for k in keys) else None


def check_lora_header(path: Path, base: BaseShapes | None = None) -> None:
    """Refuse a LoRA file whose pairs disagree in rank, whose denoiser is not `base`'s, that fits no
    layer of `base`, or that holds anything larger than a layer; read from the header only."""
    shapes, _ = read_header(path)
    kind = lora_denoiser(shapes)
    if base is not None and kind is not None and kind != base.denoiser:
        raise UnZipLoRAError(f"{path} is a LoRA for {_DENOISER_TITLE[kind]}, and {base.name} is "
                             f"{_DENOISER_TITLE[base.denoiser]}; pass the base model the LoRA was trained on")
    paired = set()
    for key, down_shape in shapes.items():
        names = next(((d, u) for d, u in _PAIRS if d in key), None)
        if names is None:
            continue
        down, up = names
        up_key = key[::-1].replace(down[::-1], up[::-1], 1)[::-1]  # the last occurrence
        up_shape = shapes.get(up_key)
        paired.update((key, up_key))
        if up_shape is None or len(down_shape) < 2 or len(up_shape) < 2:
            raise UnZipLoRAError(f"{path}: {key} has no matching {up_key} of two dimensions or more; the file is "
                                 "damaged or no LoRA")
        rank, features_in, features_out = down_shape[0], down_shape[1], up_shape[0]
        if up_shape[1] != rank:
            raise UnZipLoRAError(f"{path}: {key} has rank {rank} but {up_key} has rank {up_shape[1]}; the file is "
                                 "damaged")
        if rank > features_in + features_out:
            raise UnZipLoRAError(f"{path}: {key} has rank {rank} for a {features_out}x{features_in} layer, more than "
                                 "any low-rank update; the file is damaged")
        _check_layer(path, key, _module_of(key, down), (features_out, features_in), base)
    limit = base.largest if base else MAX_TENSOR_ELEMENTS
    for key, shape in shapes.items():
        if key not in paired and _numel(shape) > limit:
            raise UnZipLoRAError(f"{path}: {key} has shape {list(shape)}, larger than any weight of "
                                 f"{base.name if base else 'an SDXL-shaped model'}; the file is damaged")
    total = sum(map(_numel, shapes.values()))
    if total > max(MAX_LORA_ELEMENTS, base.total if base else 0):
        raise UnZipLoRAError(f"{path} holds {total:,} numbers, more than a LoRA of any SDXL-shaped model; the file "
                             "is damaged")


def _check_layer(path: Path, key: str, module: str, shape: tuple[int, int], base: BaseShapes | None) -> None:
    out, features_in = shape
    if base is None:
        if max(shape) > MAX_FEATURES:
            raise UnZipLoRAError(f"{path}: {key} is for a {out}x{features_in} layer, wider than any SDXL-shaped "
                                 "model's; the file is damaged")
        return
    named = base.layer(module)
    if named is not None and named != shape:
        raise UnZipLoRAError(f"{path}: {module} has shape {out}x{features_in} here but {named[0]}x{named[1]} in "
                             f"{base.name}; the LoRA was made for another base model: pass the one it was trained on")
    if named is None and shape not in base.matrices:
        raise UnZipLoRAError(f"{path}: {key} is for a layer of shape {out}x{features_in}, which {base.name} does not "
                             "have; the LoRA was made for another base model")


def check_state_header(path: Path, rank: int, base: BaseShapes | None = None, format_version: int = 1) -> None:
    """Refuse an unziplora.safetensors (both branches: '<module>.<branch>.lora_A', 'lora_B', 'merger',
    'mask') whose format is unknown, whose rank is not the manifest's `rank` or whose layers are
    not `base`'s."""
    shapes, metadata = read_header(path)
    version = metadata.get("format_version", "1")
    if metadata.get("format", "unziplora") != "unziplora" or not version.isdigit() or int(version) < 1:
        raise UnZipLoRAError(f"{path} says format {metadata.get('format')!r} version {version!r}, not an unziplora "
                             "state file; the run folder is damaged")
    if int(version) > format_version:
        raise UnZipLoRAError(f"{path} has state format {version}, this unziplora reads up to {format_version}; "
                             "upgrade unziplora")
    if metadata.get("rank", str(rank)) != str(rank):
        raise UnZipLoRAError(f"{path} holds rank-{metadata['rank']} weights but the manifest says rank {rank}; the "
                             "run folder is damaged")
    for key, shape in shapes.items():
        head, _, kind = key.rpartition(".")
        module, _, branch = head.rpartition(".")
        if kind not in ("lora_A", "lora_B", "merger", "mask") or branch not in ("content", "style"):
            raise UnZipLoRAError(f"{path} holds {key!r}, which no unziplora state has; the run folder is damaged")
        if base is None:
            fits = {"lora_A": len(shape) == 2 and shape[0] == rank, "lora_B": len(shape) == 2 and shape[1] == rank,
                    "merger": len(shape) == 1, "mask": len(shape) == 1}[kind] and max(shape) <= MAX_FEATURES
            if not fits:
                raise UnZipLoRAError(f"{path}: {key} has shape {list(shape)}, which does not fit rank {rank}; the run "
                                     "folder is damaged")
            continue
        layer = base.layer(f"{base.denoiser}.{module}")
        if layer is None:
            raise UnZipLoRAError(f"{path}: {base.name} has no layer {module}; the run was made for another base model: "
                                 "pass the one it was trained on")
        out, features_in = layer
        expected = {"lora_A": (rank, features_in), "lora_B": (out, rank), "merger": (out,), "mask": (out,)}[kind]
        if shape != expected:
            raise UnZipLoRAError(f"{path}: {key} has shape {list(shape)}, {base.name} and rank {rank} need "
                                 f"{list(expected)}; use the base model the run was trained on")
