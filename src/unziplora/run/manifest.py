"""The run folder's manifest.json, read once and checked whole against its schema.

Every field a command reads is checked on load (RunFolder.open), so a damaged or hand-edited
manifest is one line naming the field, never a traceback later in `info`, `generate`, `export`
or `merge`. The config is checked by config.py itself (every key and value, as for --config).
Fields added after format 1 first shipped (profile, method, config_sources) are optional.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

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


def read_manifest(folder: Path) -> dict:
    """The manifest of run folder `folder`, checked whole (one UnZipLoRAError naming the field)."""
    path = folder / MANIFEST_FILE
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):  # JSON errors are ValueErrors; bytes that are no text too
        raise UnZipLoRAError(f"{path} is not valid JSON; the run folder is damaged") from None
    except OSError as exc:
        raise UnZipLoRAError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None
    validate_manifest(data, path)
    return data


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
