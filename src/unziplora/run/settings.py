"""Which settings a run uses, and where each came from.

Settings are layered, later layers winning:
  1. the paper's defaults (`config.py`: SDXL, 1024 px, rank 64, ...);
  2. the method's reference settings (B-LoRA's reference code trains rank 64, lr 5e-5, 1000 steps),
     then the base model family's (SD 1.5 trains at 512 px; models/families.py);
  3. the base model's own defaults: a model folder may ship `unziplora_defaults.yaml` (the embedded
     toy-world model: 64 px, rank 16, lr 1e-3, its sampling settings), since a small model needs
     other settings than SDXL;
  4. a config file (`--config`);
  5. what the user gave explicitly (command-line flags, or `overrides` in the API);
  6. what defines the method (the ablations: M1 has no column masks): a layer no other may
     contradict; an explicit setting against it is refused.
The manifest records every setting that is not the paper's default with its source, and
`unziplora info` shows them. The methods' layers come from their plugins (methods/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, load_config, read_yaml, short_repr
from ..errors import UnZipLoRAError
from ..models.base import MODEL_DEFAULTS_FILE, BaseModel

# What a base model may set: how to train and sample it, not what to learn or from which model.
MODEL_SECTIONS = ("train", "lora", "masks", "sample")
PAPER, METHOD, FAMILY, MODEL, FILE, GIVEN, DEFINING = ("paper", "method", "model family", "model", "config file",
                                                      "given", "method (defining)")


@dataclass(frozen=True)
class ResolvedConfig:
    config: RunConfig
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> layer, for keys a layer set
    base: BaseModel | None = None  # the base model the config names, resolved once


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """{"train": {"steps": 5}} -> {"train.steps": 5}."""
    return {f"{section}.{key}": value for section, values in data.items() for key, value in (values or {}).items()}


def model_defaults(base: BaseModel) -> dict[str, Any]:
    """The dotted settings a model folder declares in unziplora_defaults.yaml ({} if none)."""
    path = base.own_file(MODEL_DEFAULTS_FILE)
    if path is None:
        return {}
    data = read_yaml(path, "model defaults") or {}
    if not isinstance(data, dict) or not set(data) <= set(MODEL_SECTIONS):
        raise UnZipLoRAError(f"{path} may only hold the sections {', '.join(MODEL_SECTIONS)}")
    values = flatten(data)
    RunConfig().with_overrides(values)  # validated by name and type here, not in the middle of a run
    return values


def layered_config(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None,
                   reference: dict[str, Any] | None = None, defining: dict[str, Any] | None = None,
                   method_name: str = "the method", base: BaseModel | None = None) -> ResolvedConfig:
    """The run's config from the six layers above; `overrides` are dotted keys ({"train.steps": 100}),
    None values ignored. The base model is the one the overrides or the file name (resolved once
    here, unless `base` is given already resolved): its record replaces the name in the config."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_file = flatten(load_config(config_file).to_dict()) if config_file else {}
    file_set = _explicit_in_file(config_file) if config_file else {}
    explicit = {**{k: from_file[k] for k in file_set}, **given}
    for key, value in (defining or {}).items():
        if key in explicit and explicit[key] != value:
            raise UnZipLoRAError(f"{method_name} is defined by {key} = {short_repr(value)}; it cannot run with {key} = "
                                 f"{short_repr(explicit[key])} (drop that setting, or pick another --method)")
    if base is None:
        name = explicit.get("model.base_model")
        base = BaseModel.resolve(name, explicit.get("model.revision"))
    located = {"model.base_model": base.source, "model.revision": base.revision}
    layers = [(METHOD, reference or {}), (FAMILY, base.family.defaults), (MODEL, model_defaults(base)),
              (FILE, {k: from_file[k] for k in file_set}), (GIVEN, {**given, **located}), (DEFINING, defining or {})]
    config, sources = RunConfig(), {}
    for layer, values in layers:
        config = config.with_overrides(values)
        sources.update({k: layer for k in values})
    paper = flatten(RunConfig().to_dict())
    final = flatten(config.to_dict())
    return ResolvedConfig(config, {k: v for k, v in sources.items() if final[k] != paper[k]}, base)


def _explicit_in_file(path: str | Path) -> dict[str, Any]:
    """The keys a config file spells out (load_config has validated it)."""
    return flatten(read_yaml(Path(path), "config file") or {})
