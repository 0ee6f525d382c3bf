"""Per-base-model block roles (arXiv 2412.04465, Sec. 3 "Block separation").

Which attention modules carry content and which carry style is a property of the base
model, not of the algorithm, so it lives here as data: one YAML file per base model.
A base-model folder may ship its own `unziplora_profile.yaml`; `resolve_profile("auto", path)`
prefers it over the built-in SDXL profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..branch import Branch, Role
from ..errors import UnZipLoRAError

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
class Profile:
    """Roles of each attention module's branches; the longest matching prefix wins."""

    name: str
    default: ModuleRoles
    modules: tuple[ModuleRoles, ...] = field(default_factory=tuple)
    description: str = ""

    def roles_for(self, module_name: str) -> dict[Branch, Role]:
        matches = [m for m in self.modules if module_name == m.prefix or module_name.startswith(m.prefix + ".")]
        if not matches:
            return self.default.as_dict()
        return max(matches, key=lambda m: len(m.prefix)).as_dict()

    def check_against(self, attention_names: list[str]) -> None:
        """Fail if a listed prefix names no attention module of this UNet (a profile for another model)."""
        for m in self.modules:
            if not any(n == m.prefix or n.startswith(m.prefix + ".") for n in attention_names):
                raise UnZipLoRAError(
                    f"profile {self.name!r} names {m.prefix!r}, which this UNet does not have; "
                    "pick the profile made for this base model (--profile NAME_OR_YAML)"
                )

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
        }


def uniform_profile(content: Role, style: Role, name: str) -> Profile:
    """The same roles in every module (ablations; inference, where saved masks are already effective)."""
    return Profile(name, ModuleRoles("", content, style))


def _role(value, where: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise UnZipLoRAError(f"{where}: role {value!r} is not one of 'all', 'masked'") from None


def profile_from_dict(data: dict, source: str = "profile") -> Profile:
    if not isinstance(data, dict) or "default" not in data:
        raise UnZipLoRAError(f"{source}: a profile needs 'name', 'default' and 'modules' keys")
    unknown = set(data) - {"name", "description", "default", "modules"}
    if unknown:
        raise UnZipLoRAError(f"{source}: unknown profile keys {sorted(unknown)}")
    default = ModuleRoles("", _role(data["default"].get("content"), source), _role(data["default"].get("style"), source))
    modules = tuple(
        ModuleRoles(str(m["prefix"]), _role(m.get("content"), source), _role(m.get("style"), source))
        for m in data.get("modules") or []
    )
    return Profile(str(data.get("name", "custom")), default, modules, str(data.get("description", "")))


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


def resolve_profile(name: str, base_model_dir: Path | None) -> Profile:
    """'auto' takes the base model's own profile file if it ships one, else SDXL's."""
    if name == "auto":
        if base_model_dir is not None and (base_model_dir / PROFILE_FILENAME).is_file():
            return load_profile(base_model_dir / PROFILE_FILENAME)
        return load_profile("sdxl")
    return load_profile(name)
