"""The model zoo (installed as probgen.models): one file per family, one registry for the CLI."""

from __future__ import annotations

from probgen.models.flows import (
    FLOWS,
    IAF,
    MAF,
    NICE,
    NSF,
    Glow,
    LinearFlow,
    MultiscaleRealNVP,
    PlanarFlow,
    RadialFlow,
    RealNVP,
)

# Every family adds its name -> class table here; the CLI's [model] name looks up MODELS.
MODELS: dict[str, type] = {**FLOWS}

__all__ = [
    "MODELS",
    "FLOWS",
    "PlanarFlow",
    "RadialFlow",
    "LinearFlow",
    "MAF",
    "IAF",
    "NICE",
    "RealNVP",
    "NSF",
    "MultiscaleRealNVP",
    "Glow",
]
