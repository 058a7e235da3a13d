"""probgen: one framework for deep generative models, on PyTorch and Pyro."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["__version__", "models", "inference", "load"]

__version__ = "0.1.0"


def load(run_dir: str | os.PathLike, *, device: str = "cpu") -> Any:
    """Loads a trained run from its folder: a named tuple ``(model, config, history)``.

    The model gets the checkpoint's weights (the EMA weights where the run kept an EMA, as
    evaluation uses) without loading the data set; see :func:`probgen.run.load`.

    Example:
        >>> model, config, history = probgen.load("runs/moons")  # doctest: +SKIP
        >>> model.log_prob(torch.zeros(1, 2))  # doctest: +SKIP
    """
    from probgen.run.experiment import load as load_run

    return load_run(run_dir, device=device)


def __getattr__(name: str) -> Any:
    # The core never imports the higher layers at import time (core <- inference <- models
    # <- run); ``probgen.models`` and ``probgen.inference`` are loaded on first access.
    if name == "models":
        import probgen.models

        return probgen.models
    if name == "inference":
        import probgen.inference

        return probgen.inference
    raise AttributeError(f"module 'probgen' has no attribute {name!r}")
