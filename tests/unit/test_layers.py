"""The package's layers, as docs/architecture.md draws them: no module imports a layer above its own,
and no two packages import each other (module-level and function-level imports alike)."""

import ast
from pathlib import Path

import unziplora

ROOT = Path(unziplora.__file__).parent
# Lowest first; a module may import its own layer and those below it.
LAYERS = [
    {"errors", "names", "config", "toyworld"},
    {"models"},
    {"core"},
    {"run", "metrics"},
    {"methods"},
    {"decompose", "generate", "export", "probe"},
    {"bench"},
    {"app", "api", "__main__"},
]


def _layer(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _imports(path: Path) -> set[str]:
    """The unziplora top-level names a module imports (relative imports resolved)."""
    package = path.relative_to(ROOT).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                parts = [*base, *(node.module.split(".") if node.module else [])]
                if not parts:  # from . import x (the package root): a module, or an attribute of __init__
                    found.update(a.name for a in node.names if (ROOT / a.name).is_dir()
                                 or (ROOT / f"{a.name}.py").is_file())
                    continue
                found.add(parts[0])
            elif node.module and node.module.startswith("unziplora."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("unziplora."))
    return found


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        top = rel.parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        for name in _imports(path) - {top}:
            if _layer(name) > _layer(top):
                upward.append(f"{rel} imports {name}")
    assert not upward, upward


def test_every_top_level_module_and_package_has_a_layer():
    tops = {p.name.removesuffix(".py") for p in ROOT.iterdir() if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert tops - {"__init__"} <= set().union(*LAYERS), tops - set().union(*LAYERS)
