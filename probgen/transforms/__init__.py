"""Transforms Pyro lacks, as Pyro TransformModules (couplings, ActNorm, squeeze, LU, ...)."""

from __future__ import annotations

from probgen.transforms.autoregressive import (
    ConditionalMaskedAffineAutoregressive,
    MaskedAffineAutoregressive,
)
from probgen.transforms.base import ConditionedFlowTransform, FlowTransformModule, Invert
from probgen.transforms.coupling import (
    AdditiveCoupling,
    MaskedAffineCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from probgen.transforms.linear import LULinear, Permutation
from probgen.transforms.normalization import ActNorm
from probgen.transforms.planar import InvertiblePlanar, InvertibleRadial
from probgen.transforms.reshape import Partial, Squeeze, Unsqueeze, squeeze, unsqueeze
from probgen.transforms.rqs import (
    ConditionalMaskedSplineAutoregressive,
    MaskedSplineAutoregressive,
    rational_quadratic_spline,
)
from probgen.transforms.spline import MaskedSplineCoupling

__all__ = [
    "FlowTransformModule",
    "ConditionedFlowTransform",
    "Invert",
    "InvertiblePlanar",
    "InvertibleRadial",
    "LULinear",
    "Permutation",
    "AdditiveCoupling",
    "MaskedAffineCoupling",
    "alternating_mask",
    "checkerboard_mask",
    "channel_mask",
    "ActNorm",
    "Squeeze",
    "Unsqueeze",
    "squeeze",
    "unsqueeze",
    "Partial",
    "MaskedSplineCoupling",
    "MaskedSplineAutoregressive",
    "ConditionalMaskedSplineAutoregressive",
    "rational_quadratic_spline",
    "MaskedAffineAutoregressive",
    "ConditionalMaskedAffineAutoregressive",
]
