"""Sphinx configuration of probgen's documentation (``make docs``: warnings are errors).

The API pages are written from the packages' ``__all__`` at every build (:func:`_api_pages`),
so every public name appears in the reference and none is listed by hand.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

HERE = Path(__file__).resolve().parent

project = "probgen"
author = "the probgen developers"
copyright = "2026, the probgen developers"  # noqa: A001 - Sphinx's name
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # Attributes sections as fields (NamedTuple fields are members)
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
html_theme = "alabaster"
html_static_path: list[str] = []
exclude_patterns = ["_build"]
suppress_warnings = ["ref.python"]  # one object exported by several packages

#: The reference pages: package -> title.
API = {
    "probgen.models": "Models",
    "probgen.inference": "Inference",
    "probgen.nn": "Networks",
    "probgen.metrics": "Metrics",
    "probgen.data": "Data",
}


def _entry(package: str, name: str) -> str:
    obj = getattr(importlib.import_module(package), name)
    target = f"{package}.{name}"
    if inspect.isclass(obj):
        return f".. autoclass:: {target}\n   :members:\n"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return f".. autofunction:: {target}\n"
    if inspect.ismodule(obj):
        summary = (inspect.getdoc(obj) or "").split("\n")[0]
        return f".. py:data:: {target}\n\n   The module ``{obj.__name__}``: {summary}\n"
    return f".. py:data:: {target}\n\n   {_describe(obj)}\n"


def _describe(obj: object) -> str:
    """One line on a public table or constant: its type and its keys or values."""
    if isinstance(obj, dict):
        keys = ", ".join(f"``{k}``" for k in list(obj)[:40])
        more = f" and {len(obj) - 40} more" if len(obj) > 40 else ""
        return f"A table of {len(obj)} entries: {keys}{more}."
    if isinstance(obj, (tuple, list, frozenset, set)):
        return f"The values {', '.join(f'``{v!r}``' for v in obj)}."
    return f"``{obj!r}``."


def _api_pages() -> None:
    """Writes ``api/<package>.rst`` listing every name of the package's ``__all__``."""
    folder = HERE / "api"
    folder.mkdir(exist_ok=True)
    for package, title in API.items():
        names = importlib.import_module(package).__all__
        heading = f"{title}: ``{package}``"
        lines = [heading, "=" * len(heading), "",
                 f"Every public name of ``{package}`` ({len(names)}), in the order of its "
                 "``__all__``.", ""]
        lines += [_entry(package, name) for name in names]
        text = "\n".join(lines)
        path = folder / f"{package.split('.')[-1]}.rst"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


_api_pages()
