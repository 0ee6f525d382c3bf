"""Every decomposition method a user can pick, each implemented once as a plugin (methods/base.py).

UnZipLoRA (arXiv 2412.04465) and its ablations M1 / M2 (methods/unziplora.py) train two branches
together; the baselines train one ordinary LoRA (methods/single_lora.py): DreamBooth-LoRA
(arXiv 2208.12242 with LoRA, arXiv 2106.09685; methods/dreambooth.py) and B-LoRA (arXiv
2403.14572; methods/blora.py); Inspiration Tree learns two text tokens instead (arXiv 2305.18203;
methods/inspiration_tree.py). Merging two LoRAs (direct, ZipLoRA) is `merge.py` / `ziplora.py`.
A new method is a module with its plugin and one line in PLUGINS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..names import Method, MergeMethod, choice_error
from ..errors import UnZipLoRAError
from .base import Combine, MethodPlugin
from .blora import BLoRA
from .dreambooth import DreamBoothLoRA
from .inspiration_tree import InspirationTree
from .unziplora import UnZipLoRA, UnZipLoRAM1, UnZipLoRAM2

PLUGINS: dict[Method, MethodPlugin] = {p.method: p for p in (
    UnZipLoRA(), UnZipLoRAM1(), UnZipLoRAM2(), DreamBoothLoRA(), BLoRA(), InspirationTree(),
)}

__all__ = ["Combine", "Method", "MergeMethod", "MethodPlugin", "PLUGINS", "as_method", "plugin", "resolve_config",
           "resolve_spec", "spec_of"]


def as_method(method: Method | str) -> Method:
    try:
        return Method(method)
    except ValueError:
        raise UnZipLoRAError(choice_error("method", method, Method)) from None


def plugin(method: Method | str) -> MethodPlugin:
    """The plugin of a method (by enum or name)."""
    return PLUGINS[as_method(method)]


def resolve_config(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None,
                   method: Method | str = Method.UNZIPLORA, base=None):
    """The run's config and where each setting came from (run/settings.py), the method's own
    layers included: `ResolvedConfig(config, sources, base)`."""
    from ..run.settings import layered_config

    chosen = plugin(method)
    return layered_config(overrides, config_file, chosen.reference_settings, chosen.defining,
                          f"--method {chosen.method.value}", base)


def resolve_spec(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None,
                 method: Method | str = Method.UNZIPLORA, base=None):
    """The whole run, resolved once: `RunSpec(base model, final config, method, sources)`."""
    from ..run.spec import RunSpec

    resolved = resolve_config(overrides, config_file, method, base)
    return RunSpec(resolved.base, resolved.config, as_method(method), resolved.sources)


def spec_of(config, method: Method | str = Method.UNZIPLORA, sources: dict[str, str] | None = None, base=None):
    """A RunSpec from a config made elsewhere (the Python API's `decompose(image, out, config)`):
    its base model resolved, the method's defining settings applied (a contradiction refused)."""
    from ..models.base import BaseModel
    from ..run.spec import RunSpec

    chosen = plugin(method)
    for key, value in chosen.defining.items():
        section, name = key.split(".")
        if getattr(getattr(config, section), name) != value and key in (sources or {}):
            raise UnZipLoRAError(f"--method {chosen.method.value} is defined by {key} = {value!r}; it cannot run "
                                 f"with {key} = {getattr(getattr(config, section), name)!r}")
    config = config.with_overrides(chosen.defining)
    base = base or BaseModel.resolve(config.model.base_model, config.model.revision)
    config = config.with_overrides({"model.base_model": base.source})
    sources = {**(sources or {}), **{k: "method (defining)" for k in chosen.defining}}
    return RunSpec(base, config, chosen.method, sources)

