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


# The application layer's entry points outside probgen/run/: the console script
# (``probgen.cli:main``, ``python -m probgen.cli``) and ``python -m probgen``. They may import
# probgen.run (and only it) at import time.
ENTRY_POINTS = ("probgen.cli", "probgen.__main__")
HIGHER = ("probgen.inference", "probgen.models", "probgen.run")


def _layer(module: str) -> str:
    for layer in ("probgen.run", "probgen.models", "probgen.inference"):
        if module == layer or module.startswith(layer + "."):
            return layer
    return "probgen"


def _dynamic_name(node: ast.Call) -> str | None:
    """The module named by ``importlib.import_module(...)``/``__import__(...)``: its string,
    ``"<dynamic>"`` for a computed name, ``None`` for any other call."""
    func = node.func
    is_import = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module")
    if not is_import or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value) + "<dynamic>"
    return "<dynamic>"


def _imports(source: str, *, top_level_only: bool, dynamic: bool = False) -> list[str]:
    """Absolute module names imported by ``source``: statements (at module level only, or
    anywhere), and with ``dynamic`` also ``importlib.import_module``/``__import__`` calls."""
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif dynamic and isinstance(node, ast.Call):
            name = _dynamic_name(node)
            if name is not None:
                names.append(name)
    return names


def layer_violations(module: str, source: str) -> list[str]:
    """The imports of ``module`` (its source) that break core <- inference <- models <- run.

    The core imports no higher layer anywhere (statement, ``importlib.import_module``,
    ``__import__``, or a computed module name), except ``probgen/__init__``'s lazy
    attributes inside functions and the entry points (:data:`ENTRY_POINTS`), which import
    ``probgen.run``. Inference never imports models or run; models never import run.
    Nothing imports the folders by their bare names (``models``, ``inference``).
    """
    every = _imports(source, top_level_only=False, dynamic=True)
    bad = [n for n in every if n.split(".")[0] in ("models", "inference")]
    layer = _layer(module)
    if layer == "probgen.run":
        return bad
    if layer == "probgen.models":
        return bad + [n for n in every if _layer(n) == "probgen.run"]
    if layer == "probgen.inference":
        return bad + [n for n in every if _layer(n) in ("probgen.models", "probgen.run")]
    higher = [n for n in every if n.startswith(HIGHER) or "<dynamic>" in n]
    if module in ENTRY_POINTS:
        return bad + [n for n in higher if _layer(n) != "probgen.run"]
    if module == "probgen":  # lazy attributes: only inside functions, never at import time
        top = _imports(source, top_level_only=True, dynamic=True)
        return bad + [n for n in top if n.startswith(HIGHER) or "<dynamic>" in n]
    return bad + higher


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
    """core <- inference <- models <- run: no import climbs up a layer, by statement or by
    importlib; no bare `models`/`inference`."""
    bad = layer_violations(module, path.read_text(encoding="utf-8"))
    assert not bad, f"{module} imports {bad} across the layers"


@pytest.mark.parametrize("module,source,caught", [
    ("probgen.plots", "import importlib\nimportlib.import_module('probgen.models')", True),
    ("probgen.plots", "def f():\n    return __import__('probgen.inference')", True),
    ("probgen.plots", "from importlib import import_module\nimport_module('probgen.run.cli')",
     True),
    ("probgen.plots", "import importlib\nimportlib.import_module(f'probgen.{name}')", True),
    ("probgen.plots", "def f():\n    from probgen.inference import fit", True),
    ("probgen.plots", "import importlib\nimportlib.import_module('probgen.nn')", False),
    ("probgen.inference.fit", "import importlib\nimportlib.import_module('probgen.models')",
     True),
    ("probgen.models.vae", "def f():\n    from probgen.run import fit_run", True),
    ("probgen.cli", "from probgen.run.cli import main", False),
    ("probgen.cli", "from probgen.models import VAE", True),
    ("probgen", "from probgen.run import load", True),
    ("probgen", "def load():\n    from probgen.run import load", False),
    ("probgen.run.cli", "import probgen.models\nimport probgen.inference", False),
    ("probgen.run.cli", "import models", True),
])
def test_layer_check_catches_dynamic_imports(module, source, caught):
    """The layering check itself: it sees importlib and __import__, not only statements."""
    assert bool(layer_violations(module, source)) == caught


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_module_conventions(module, path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{module} has no module docstring"
    mod = importlib.import_module(module)
    assert hasattr(mod, "__all__"), f"{module} has no __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names {name!r}, which does not exist"
