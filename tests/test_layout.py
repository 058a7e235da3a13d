"""The package layout promised by DESIGN.md: packages listed, layers respected, __all__ true."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"probgen": "probgen", "models": "probgen.models", "inference": "probgen.inference"}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if folder == "probgen" and parts and parts[0] in ("models", "inference"):
                continue
            out.append((".".join([package, *parts]), path))
    return out


def _imports(path: Path, *, top_level_only: bool) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([package, *rel]))
    assert found == listed, f"pyproject packages {sorted(listed)} != folders {sorted(found)}"


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_import_direction(module, path):
    """core <- inference <- models: no import climbs up a layer; no bare `models`/`inference`."""
    every = _imports(path, top_level_only=False)
    for name in every:
        assert name.split(".")[0] not in ("models", "inference"), f"{module} imports {name}"
    top = _imports(path, top_level_only=True)
    if module.startswith("probgen.inference"):
        assert not [n for n in every if n.startswith("probgen.models")], module
    elif not module.startswith("probgen.models"):
        bad = [n for n in top if n.startswith(("probgen.models", "probgen.inference"))]
        assert not bad, f"core module {module} imports {bad} at import time"


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_module_conventions(module, path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{module} has no module docstring"
    mod = importlib.import_module(module)
    assert hasattr(mod, "__all__"), f"{module} has no __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names {name!r}, which does not exist"
