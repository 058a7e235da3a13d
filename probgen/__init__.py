"""probgen: one framework for deep generative models, on PyTorch and Pyro."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["__version__", "models", "inference"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The core never imports the higher layers at import time (core <- inference <- models);
    # ``probgen.models`` and ``probgen.inference`` are loaded on first access.
    if name in ("models", "inference"):
        return importlib.import_module(f"probgen.{name}")
    raise AttributeError(f"module 'probgen' has no attribute {name!r}")
