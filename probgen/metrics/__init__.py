"""Metrics: likelihoods in nats and bits/dim, and grid integration of 2-D densities."""

from __future__ import annotations

from probgen.metrics.integrate import density_grid, integrate_density_2d, parse_bounds
from probgen.metrics.likelihood import bits_per_dim, nats_to_bits, nll

__all__ = [
    "bits_per_dim",
    "nats_to_bits",
    "nll",
    "density_grid",
    "integrate_density_2d",
    "parse_bounds",
]
