"""The run folder's manifest.json: the run's spec plus its results, as one typed `Manifest`.

It is read once and checked whole against its schema, so a damaged or hand-edited manifest is
one line naming the field, never a traceback later in `info`, `generate`, `export` or `merge`.
The config is checked by config.py itself (every key and value, as for --config). Fields added
after format 1 first shipped (profile, method, config_sources, training) are optional; what a
method records of its own (methods/: its `manifest_fields`) is kept in `Manifest.extra`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..names import Method
from ..errors import UnZipLoRAError

RUN_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
_MISSING = object()
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_text(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


# (dotted field, check, what it must be); every field is required unless listed in OPTIONAL.
_FIELDS = (
    ("created", lambda v: isinstance(v, str), "a date string"),
    ("base_model", _is_text, "the base model's hub id or folder"),
    ("seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("steps", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("prompts", lambda v: isinstance(v, dict), "a mapping"),
    ("prompts.subject", _is_text, "a non-empty string"),
    ("prompts.style_words", _is_text, "a non-empty string"),
    ("prompts.identifier", lambda v: _is_text(v) and len(v.split()) == 1, "one word"),
    ("prompts.combined", lambda v: isinstance(v, str), "a string"),
    ("prompts.content", lambda v: isinstance(v, str), "a string"),
    ("prompts.style", lambda v: isinstance(v, str), "a string"),
    ("input", lambda v: isinstance(v, dict), "a mapping"),
    ("input.sha256", lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)), "a SHA-256 hex digest"),
    ("input.size", lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v),
     "[width, height]"),
    ("versions", lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
     "a mapping of library names to versions"),
    ("versions.unziplora", lambda v: isinstance(v, str), "a version string"),
    ("timings", lambda v: isinstance(v, dict) and all(_is_number(x) and x >= 0 for x in v.values()),
     "a mapping of names to seconds"),
    ("profile", lambda v: isinstance(v, dict), "a mapping"),
    ("method", lambda v: v in _method_names(), "a method name"),
    ("config_sources", lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
     "a mapping of settings to their sources"),
)
OPTIONAL = {"profile", "method", "config_sources"}
# How training ended and what it used: every method records them now; runs of the baselines made
# before that lack them, so they are checked where present.
_TRAINED_FIELDS = (
    ("final_loss", _is_number, "a finite number"),
    ("mask_fraction", lambda v: isinstance(v, dict), "a mapping"),
    ("mask_fraction.content", lambda v: _is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    ("mask_fraction.style", lambda v: _is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    ("device", lambda v: isinstance(v, str), "a string"),
    ("dtype", lambda v: isinstance(v, str), "a string"),
)


def _method_names() -> tuple[str, ...]:
    return tuple(m.value for m in Method)


def _at(data: dict, dotted: str):
    value = data
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _damaged(path: Path, field: str, problem: str) -> UnZipLoRAError:
    return UnZipLoRAError(f"{path}: {field!r} {problem}; the run folder is damaged: decompose the image again")


@dataclass(frozen=True)
class RunPrompts:
    """The run's words: what `<c>` (identifier) and `<s>` (style_words) stand for, and its three prompts."""

    subject: str
    style_words: str
    identifier: str
    combined: str
    content: str
    style: str


@dataclass(frozen=True)
class Manifest:
    """manifest.json as a typed record: the resolved run (base model, method, config and where each
    setting came from) and what training gave (steps, timings, files, how training ended)."""

    format_version: int
    created: str
    base_model: str  # as resolved: an absolute folder or a hub id (its revision: config.model.revision)
    method: Method
    seed: int
    steps: int
    prompts: RunPrompts
    input: dict[str, Any]  # sha256, size
    versions: dict[str, str]
    timings: dict[str, float]
    files: dict[str, str]
    config: RunConfig
    config_sources: dict[str, str] = field(default_factory=dict)
    profile: dict | None = None
    final_loss: float | None = None
    mask_fraction: dict[str, float] | None = None
    device: str | None = None
    dtype: str | None = None
    training: dict[str, Any] | None = None  # what the loop used: optimiser settings, precision, checkpointing
    extra: dict[str, Any] = field(default_factory=dict)  # the method's own fields

    @property
    def revision(self) -> str | None:
        return self.config.model.revision

    @classmethod
    def from_dict(cls, data: dict, path: Path) -> "Manifest":
        """Check `data` whole (`validate_manifest`: one line naming a bad field), then type it."""
        from ..config import config_from_dict

        validate_manifest(data, path)
        known = {f.name for f in fields(cls)} - {"extra", "prompts", "config", "method"}
        values = {k: data[k] for k in known if k in data}
        return cls(**values, method=Method(data.get("method", Method.UNZIPLORA.value)),
                   prompts=RunPrompts(**{f.name: data["prompts"][f.name] for f in fields(RunPrompts)}),
                   config=config_from_dict(data["config"]),
                   extra={k: v for k, v in data.items() if k not in known | {"prompts", "config", "method"}})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as manifest.json holds it (optional fields left out when unset)."""
        from dataclasses import asdict

        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "prompts", "config", "method")}
        out = {k: v for k, v in out.items() if v is not None}
        return {**out, "method": self.method.value, "prompts": asdict(self.prompts), "config": self.config.to_dict(),
                **self.extra}


def check_run_folder(path: str | Path) -> Path:
    """`path` as a run folder that exists and has a manifest (read before torch loads: a wrong path
    is answered at once)."""
    path = Path(path)
    if not path.is_dir():
        raise UnZipLoRAError(f"run folder {path} does not exist; give the --out folder of a decompose run")
    if not (path / MANIFEST_FILE).is_file():
        raise UnZipLoRAError(f"{path} is not an unziplora run folder (no {MANIFEST_FILE})")
    return path


def check_source(path: str | Path) -> None:
    """A branch source (generate, merge) must at least exist: a run folder or a LoRA file."""
    if not Path(path).exists():
        raise UnZipLoRAError(f"{path} does not exist; give a run folder or a LoRA .safetensors file")


def read_manifest(folder: Path) -> Manifest:
    """The manifest of run folder `folder`, checked whole (one UnZipLoRAError naming the field)."""
    path = folder / MANIFEST_FILE
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):  # JSON errors are ValueErrors; bytes that are no text too
        raise UnZipLoRAError(f"{path} is not valid JSON; the run folder is damaged") from None
    except OSError as exc:
        raise UnZipLoRAError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None
    return Manifest.from_dict(data, path)


def validate_manifest(data, path: Path) -> None:
    if not isinstance(data, dict):
        raise UnZipLoRAError(f"{path} holds {type(data).__name__ if data is not None else 'null'}, not a manifest "
                             "mapping; the run folder is damaged")
    version = data.get("format_version")
    if not _is_int(version) or version < 1:
        raise UnZipLoRAError(f"{path}: 'format_version' is {version!r}, not a run format (1 to "
                             f"{RUN_FORMAT_VERSION}); the run folder is damaged")
    if version > RUN_FORMAT_VERSION:
        raise UnZipLoRAError(f"{path.parent} has run format {version!r}, this unziplora reads up to "
                             f"{RUN_FORMAT_VERSION}; upgrade unziplora")
    check_files(path.parent, data.get("files", _MISSING))
    for field, check, expected in _FIELDS + _TRAINED_FIELDS:
        value = _at(data, field)
        if value is _MISSING:
            if field in OPTIONAL or (field, check, expected) in _TRAINED_FIELDS:
                continue
            raise _damaged(path, field, "is missing")
        if not check(value):
            raise _damaged(path, field, f"must be {expected}, got {_short(value)}")
    _check_config(data, path)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_config(data: dict, path: Path) -> None:
    """The config as config.py reads it (every key and value checked), with every section present."""
    import dataclasses

    from ..config import RunConfig, config_from_dict

    config = data.get("config", _MISSING)
    if config is _MISSING:
        raise _damaged(path, "config", "is missing")
    if not isinstance(config, dict):
        raise _damaged(path, "config", f"must be a mapping of config sections, got {_short(config)}")
    missing = [f.name for f in dataclasses.fields(RunConfig) if f.name not in config]
    if missing:
        raise _damaged(path, f"config.{missing[0]}", "is missing")
    try:
        config_from_dict(config)
    except UnZipLoRAError as exc:
        raise UnZipLoRAError(f"{path}: 'config' is not a valid run config ({exc}); the run folder is damaged") from None
    for key in data.get("config_sources", {}):  # `info` shows each with its value
        section, _, name = str(key).partition(".")
        if not isinstance(config.get(section), dict) or name not in config[section]:
            raise _damaged(path, "config_sources", f"names {key!r}, which is no config setting")


def check_files(folder: Path, files) -> None:
    """Names in a manifest must stay inside the run folder: a crafted "../x" is refused, never used."""
    path = folder / MANIFEST_FILE
    if files is _MISSING:
        raise _damaged(path, "files", "is missing")
    if not isinstance(files, dict):
        raise UnZipLoRAError(f"{path}: 'files' must be a mapping; the run folder is damaged")
    for key, name in files.items():
        ok = isinstance(name, str) and name and not Path(name).is_absolute() and ".." not in Path(name).parts
        if not ok or "\\" in name:
            raise UnZipLoRAError(f"{path} names {key!r} as {name!r}, outside the run folder; refusing to use it")
