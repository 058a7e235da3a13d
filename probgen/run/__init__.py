"""The application layer: the ``probgen`` command, TOML run files, presets and run folders.

It sits on top of the three layers (core <- inference <- models <- run) and imports the
model zoo and the inference layer normally.
"""

from __future__ import annotations

from probgen.run.config import ConfigError, list_presets, load_config
from probgen.run.experiment import (
    LoadedRun,
    eval_run,
    fit_run,
    load,
    load_run,
    sample_run,
)

__all__ = [
    "ConfigError",
    "list_presets",
    "load_config",
    "fit_run",
    "eval_run",
    "sample_run",
    "load",
    "load_run",
    "LoadedRun",
]
