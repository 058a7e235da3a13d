"""Runs every docstring example of every probgen module, imported by its installed name."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"probgen": "probgen", "models": "probgen.models", "inference": "probgen.inference"}


def _names() -> list[str]:
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts]
            parts = [p for p in parts if p != "__init__"]
            out.append(".".join([package, *parts]))
    return out


@pytest.mark.parametrize("name", _names())
def test_doctests(name):
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = doctest.testmod(
        module,
        extraglobs={"torch": torch},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
