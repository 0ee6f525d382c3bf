"""Which settings a run uses, and where each came from.

Settings are layered, later layers winning:
  1. the paper's defaults (`config.py`: SDXL, 1024 px, rank 64, ...);
  2. the method's reference settings (B-LoRA's reference code trains rank 64, lr 5e-5, 1000 steps);
  3. the base model's own defaults: a model folder may ship `unziplora_defaults.yaml` (the embedded
     toy-world model: 64 px, rank 16, lr 1e-3, its sampling settings), since a small model needs
     other settings than SDXL;
  4. a config file (`--config`);
  5. what the user gave explicitly (command-line flags, or `overrides` in the API).
The manifest records every setting that is not the paper's default with its source, and
`unziplora info` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import DEFAULT_BASE_MODEL, RunConfig, load_config
from ..errors import UnZipLoRAError

MODEL_DEFAULTS_FILE = "unziplora_defaults.yaml"
# What a base model may set: how to train and sample it, not what to learn or from which model.
MODEL_SECTIONS = ("train", "lora", "masks", "sample")
PAPER, METHOD, MODEL, FILE, GIVEN = "paper", "method", "model", "config file", "given"


@dataclass(frozen=True)
class ResolvedConfig:
    config: RunConfig
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> layer, for keys a layer set


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """{"train": {"steps": 5}} -> {"train.steps": 5}."""
    return {f"{section}.{key}": value for section, values in data.items() for key, value in (values or {}).items()}


def resolve_base_model(name: str) -> str:
    """A local folder as an absolute path (a run must work from any directory); a hub id as given."""
    local = Path(name).expanduser()
    return str(local.resolve()) if local.exists() else name


def model_defaults(base_model: str) -> dict[str, Any]:
    """The dotted settings a local model folder declares in unziplora_defaults.yaml ({} if none)."""
    path = Path(base_model).expanduser() / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UnZipLoRAError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not set(data) <= set(MODEL_SECTIONS):
        raise UnZipLoRAError(f"{path} may only hold the sections {', '.join(MODEL_SECTIONS)}")
    values = flatten(data)
    RunConfig().with_overrides(values)  # validated by name and type here, not in the middle of a run
    return values


def method_defaults(method) -> dict[str, Any]:
    """The reference settings of a method (`Method.reference_settings`), as dotted keys."""
    from ..methods import Method

    return dict(Method(method).reference_settings)


def resolve_config(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None,
                   method="unziplora") -> ResolvedConfig:
    """The run's config from the five layers above; `overrides` are dotted keys ({"train.steps": 100}),
    None values ignored. The base model is the one the file or the overrides name."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_file = flatten(load_config(config_file).to_dict()) if config_file else {}
    file_set = _explicit_in_file(config_file) if config_file else {}
    base = given.get("model.base_model") or file_set.get("model.base_model") or DEFAULT_BASE_MODEL
    base = resolve_base_model(str(base))
    layers = [(METHOD, method_defaults(method)), (MODEL, model_defaults(base)),
              (FILE, {k: from_file[k] for k in file_set}), (GIVEN, {**given, "model.base_model": base})]
    config, sources = RunConfig(), {}
    for name, values in layers:
        config = config.with_overrides(values)
        sources.update({k: name for k in values})
    paper = flatten(RunConfig().to_dict())
    final = flatten(config.to_dict())
    return ResolvedConfig(config, {k: v for k, v in sources.items() if final[k] != paper[k]})


def _explicit_in_file(path: str | Path) -> dict[str, Any]:
    """The keys a config file spells out (load_config has validated it)."""
    return flatten(yaml.safe_load(Path(path).read_text()) or {})
