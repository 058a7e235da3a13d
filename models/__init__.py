"""The model zoo (installed as probgen.models): named flows and, later, other families."""

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

__all__ = [
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
