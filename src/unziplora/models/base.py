"""`BaseModel`: a base model resolved once, at the edge, and passed down.

A user names a base model as a hub id ("stabilityai/stable-diffusion-xl-base-1.0"), a local
diffusers folder, or `embedded` (the toy-world model shipped in the package). `BaseModel.resolve`
turns that name into one object: where it is (an absolute folder, or the hub id and its
revision), its configs (read once from the folder or the hub cache), its family, its own defaults
and block-role profile files, and its fingerprint. Nothing below the edge reads the name again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_BASE_MODEL
from ..errors import UnZipLoRAError
from .embedded import EMBEDDED_MODEL

EMBEDDED_NAME = "embedded"  # what every command accepts for the embedded toy-world model

MODEL_DEFAULTS_FILE = "unziplora_defaults.yaml"  # a model folder's own settings (run/settings.py layers them)
PROFILE_FILE = "unziplora_profile.yaml"  # a model folder's own block roles (models/profiles)
PARTS_WITH_CONFIG = ("unet", "transformer", "vae", "scheduler", "text_encoder", "text_encoder_2")
_CONFIG_NAMES = {"scheduler": "scheduler_config.json"}


def looks_like_path(name: str) -> bool:
    """Hub ids are "owner/name"; anything else that is not an existing folder is a path typo."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


@dataclass(frozen=True)
class BaseModel:
    """Where a base model is and what it is; build it with `BaseModel.resolve(name, revision)`."""

    source: str  # an absolute local folder, or a hub id
    revision: str | None = None
    local: bool = False
    configs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # part -> config.json

    @classmethod
    def resolve(cls, name: str | Path | None = None, revision: str | None = None) -> "BaseModel":
        """A name as users give it -> a BaseModel. None is the paper's SDXL; `embedded` the toy model.
        A local folder must be a diffusers pipeline folder (checked from its JSON files only)."""
        from .loading import check_pipeline_folder

        name = DEFAULT_BASE_MODEL if name is None else str(name)
        if not name.strip():
            raise UnZipLoRAError(f"the base model name is empty; give a hub id, a folder or {EMBEDDED_NAME!r}")
        if name == EMBEDDED_NAME:
            name = str(EMBEDDED_MODEL)
        folder = Path(name).expanduser()
        if folder.exists() or looks_like_path(name):
            check_pipeline_folder(folder)
            folder = folder.resolve()
            return cls(str(folder), revision, True, _read_configs(folder))
        if name.count("/") != 1 or any(not part for part in name.split("/")):
            raise UnZipLoRAError(f"base model {name!r} is neither a folder here nor a hub id (owner/name); "
                                 f"for the embedded toy-world model pass --base-model {EMBEDDED_NAME}")
        return cls(name, revision, False, _cached_configs(name, revision))

    # ----- facts ----------------------------------------------------------------------------------
    @property
    def folder(self) -> Path | None:
        """The local folder (for a hub id: its snapshot in the local cache, if any)."""
        if self.local:
            return Path(self.source)
        try:  # only what is already in the local cache: nothing is downloaded to look
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(self.source, revision=self.revision, local_files_only=True))
        except Exception:  # not cached, or no such repository: the loader explains when it loads
            return None

    @property
    def is_embedded(self) -> bool:
        return self.local and Path(self.source) == EMBEDDED_MODEL.resolve()

    @property
    def display_name(self) -> str:
        return EMBEDDED_NAME if self.is_embedded else self.source

    def config(self, part: str) -> dict | None:
        """PART's config.json (unet, vae, scheduler, ...), None where it is not available here."""
        return self.configs.get(part)

    @property
    def family(self):
        """Its `families.Family` (SDXL, SD 1.x/2.x), from model_index.json; a hub model not in the
        local cache is taken to be SDXL until it loads."""
        from .families import SDXL, family_named

        index = self.config("model_index") or {}
        return family_named(index.get("_class_name")) or SDXL

    @property
    def vae_factor(self) -> int | None:
        vae = self.config("vae") or {}
        channels = vae.get("block_out_channels")
        return 2 ** (len(channels) - 1) if channels else None

    @property
    def native_resolution(self) -> int | None:
        """The size it was trained at: its UNet's sample size in pixels (SDXL 1024, the toy 64)."""
        unet, factor = self.config("unet") or {}, self.vae_factor
        return int(unet["sample_size"]) * factor if unet.get("sample_size") and factor else None

    def own_file(self, name: str) -> Path | None:
        """A file the model folder ships for unziplora (its defaults, its profile), else None."""
        path = Path(self.source) / name if self.local else None
        return path if path is not None and path.is_file() else None

    def fingerprint(self) -> str:
        """SHA-256 of what the model is: a local folder's JSON configs and the names and sizes of its
        files (hashing gigabytes of weights would take minutes); a hub id with its revision."""
        if not self.local:
            return hashlib.sha256(f"{self.source}@{self.revision}".encode()).hexdigest()
        folder, digest = Path(self.source), hashlib.sha256()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            digest.update(f"{rel}:{path.stat().st_size}\n".encode())
            if path.suffix == ".json":
                digest.update(path.read_bytes())
        return digest.hexdigest()

    # ----- using it -------------------------------------------------------------------------------
    def load(self, dtype=None, quantize: str = "no"):
        """The diffusers pipeline (models/loading.py), safetensors only; `quantize` (nf4, int8): its
        denoiser quantized by bitsandbytes."""
        from .loading import load_pipeline

        return load_pipeline(self, dtype, quantize)

    def shapes(self):
        """Its weight shapes from the safetensors headers (models/headers.py), None if not here."""
        from .headers import base_shapes

        return base_shapes(self)

    def record(self) -> dict[str, str | None]:
        """How a run folder names it: the same name resolves to the same model again."""
        return {"base_model": self.source, "revision": self.revision}


def _read_configs(folder: Path) -> dict[str, Any]:
    configs = {}
    for part in PARTS_WITH_CONFIG + ("model_index",):
        path = folder / "model_index.json" if part == "model_index" else folder / part / _CONFIG_NAMES.get(part, "config.json")
        try:
            configs[part] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return configs


def _cached_configs(hub_id: str, revision: str | None) -> dict[str, Any]:
    """The configs of a hub model already in the local cache (none is downloaded to read them)."""
    configs = {}
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return configs
    for part in PARTS_WITH_CONFIG + ("model_index",):
        name = "model_index.json" if part == "model_index" else f"{part}/{_CONFIG_NAMES.get(part, 'config.json')}"
        try:
            cached = try_to_load_from_cache(hub_id, name, revision=revision)
            if isinstance(cached, str):
                configs[part] = json.loads(Path(cached).read_text())
        except Exception:  # a malformed id or cache entry: the loader explains when it loads
            continue
    return configs
