"""Per-base-model block roles (arXiv 2412.04465, Sec. 3 "Block separation").

Which attention modules carry content and which carry style is a property of the base
model, not of the algorithm, so it lives here as data: one YAML file per base model.
A base-model folder may ship its own `unziplora_profile.yaml`; `resolve_profile("auto", base)`
prefers it over the built-in profile of the model's family. A profile also names the two modules B-LoRA trains
on this base model (`b_lora`), which `unziplora probe` measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ...names import Branch, Role
from ...errors import UnZipLoRAError

BUILTIN_DIR = Path(__file__).parent
PROFILE_FILENAME = "unziplora_profile.yaml"


@dataclass(frozen=True)
class ModuleRoles:
    prefix: str
    content: Role
    style: Role

    def as_dict(self) -> dict[Branch, Role]:
        return {Branch.CONTENT: self.content, Branch.STYLE: self.style}


@dataclass(frozen=True)
class BLoraModules:
    """The two attention modules B-LoRA trains (arXiv 2403.14572, Sec. 4): the one whose LoRA
    part carries the content and the one whose part carries the style (SDXL:
    up_blocks.0.attentions.0 and up_blocks.0.attentions.1). None: the probe found no such module."""

    content: str | None = None
    style: str | None = None


@dataclass(frozen=True)
class Profile:
    """Roles of each attention module's branches; the longest matching prefix wins."""

    name: str
    default: ModuleRoles
    modules: tuple[ModuleRoles, ...] = field(default_factory=tuple)
    description: str = ""
    b_lora: BLoraModules = field(default_factory=BLoraModules)

    def roles_for(self, module_name: str) -> dict[Branch, Role]:
        matches = [m for m in self.modules if module_name == m.prefix or module_name.startswith(m.prefix + ".")]
        if not matches:
            return self.default.as_dict()
        return max(matches, key=lambda m: len(m.prefix)).as_dict()

    def check_against(self, attention_names: list[str]) -> None:
        """Fail if a listed prefix names no attention module of this UNet (a profile for another model)."""
        prefixes = [m.prefix for m in self.modules] + [p for p in (self.b_lora.content, self.b_lora.style) if p]
        for prefix in prefixes:
            if not any(n == prefix or n.startswith(prefix + ".") for n in attention_names):
                raise UnZipLoRAError(
                    f"profile {self.name!r} names {prefix!r}, which this UNet does not have; "
                    "pick the profile made for this base model (--profile NAME_OR_YAML)"
                )

    def b_lora_modules(self) -> tuple[str, str]:
        """(content module, style module) of B-LoRA on this base model, or one clear error."""
        missing = [kind for kind in ("content", "style") if getattr(self.b_lora, kind) is None]
        if missing:
            raise UnZipLoRAError(
                f"profile {self.name!r} names no content or no style modules for B-LoRA (b_lora.{missing[0]} is "
                "empty: the block-role probe found none on this base model); run B-LoRA with a profile that names "
                "both (--profile sdxl uses SDXL's up_blocks.0.attentions.0 / .1) or probe the model again "
                "(unziplora probe)"
            )
        return self.b_lora.content, self.b_lora.style

    def without_block_roles(self) -> "Profile":
        """Every module masked for both branches: the M2 ablation (no block separation)."""
        return uniform_profile(Role.MASKED, Role.MASKED, self.name + "-no-blocks")

    def to_dict(self) -> dict:
        def entry(m: ModuleRoles) -> dict:
            return {"prefix": m.prefix, "content": m.content.value, "style": m.style.value}

        default = entry(self.default)
        default.pop("prefix")
        return {
            "name": self.name,
            "description": self.description,
            "default": default,
            "modules": [entry(m) for m in self.modules],
            "b_lora": {"content": self.b_lora.content, "style": self.b_lora.style},
        }


def uniform_profile(content: Role, style: Role, name: str) -> Profile:
    """The same roles in every module (ablations; inference, where saved masks are already effective)."""
    return Profile(name, ModuleRoles("", content, style))


# At inference every layer applies the masks saved with the run (they are already effective).
INFERENCE_PROFILE = uniform_profile(Role.MASKED, Role.MASKED, "inference")


def _role(value, where: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise UnZipLoRAError(f"{where}: role {value!r} is not one of 'all', 'masked'") from None


def profile_from_dict(data: dict, source: str = "profile") -> Profile:
    if not isinstance(data, dict) or "default" not in data:
        raise UnZipLoRAError(f"{source}: a profile needs 'name', 'default' and 'modules' keys")
    unknown = set(data) - {"name", "description", "default", "modules", "b_lora"}
    if unknown:
        raise UnZipLoRAError(f"{source}: unknown profile keys {sorted(unknown)}")
    default = ModuleRoles("", _role(data["default"].get("content"), source), _role(data["default"].get("style"), source))
    modules = tuple(
        ModuleRoles(str(m["prefix"]), _role(m.get("content"), source), _role(m.get("style"), source))
        for m in data.get("modules") or []
    )
    return Profile(str(data.get("name", "custom")), default, modules, str(data.get("description", "")),
                   _b_lora(data.get("b_lora"), source))


def _b_lora(data, source: str) -> BLoraModules:
    """The optional `b_lora: {content: PREFIX or null, style: PREFIX or null}` entry."""
    if data is None:
        return BLoraModules()
    if not isinstance(data, dict) or set(data) - {"content", "style"}:
        raise UnZipLoRAError(f"{source}: b_lora must be a mapping with the keys content and style (module prefixes or null)")
    values = {}
    for kind in ("content", "style"):
        value = data.get(kind)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UnZipLoRAError(f"{source}: b_lora.{kind} must be an attention module prefix or null, got {value!r}")
        values[kind] = value
    if values["content"] is not None and values["content"] == values["style"]:
        raise UnZipLoRAError(f"{source}: b_lora names {values['content']!r} for both content and style; give two modules")
    return BLoraModules(**values)


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A built-in profile by name ("sdxl") or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UnZipLoRAError(
                f"no built-in profile {str(name_or_path)!r}; built-in: {', '.join(builtin_profiles())}, "
                "or give the path of a profile YAML file"
            )
    if not path.is_file():
        raise UnZipLoRAError(f"profile file {path} does not exist")
    return profile_from_dict(yaml.safe_load(path.read_text()), str(path))


def resolve_profile(name: str, base=None) -> Profile:
    """'auto' takes the resolved base model's own profile file if it ships one, else its family's
    built-in profile (SDXL's when no base model is given)."""
    if name == "auto":
        own = base.own_file(PROFILE_FILENAME) if base is not None else None
        return load_profile(own) if own is not None else load_profile(base.family.profile if base else "sdxl")
    return load_profile(name)
