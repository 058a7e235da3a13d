r"""Mode coverage of 2-D mixtures, the figures of the GAN mode-collapse literature.

For a target that is a mixture of isotropic Gaussians with centres :math:`c_1..c_K` and
standard deviation :math:`s` (the ring of 8 and the 5x5 grid of Srivastava et al. 2017,
VEEGAN, https://arxiv.org/abs/1705.07761, and Metz et al. 2017, unrolled GANs), each
sample is assigned to its nearest centre and called *high quality* when it lies within
``threshold`` (3) standard deviations of it. A mode is *captured* when at least
``min_count`` high-quality samples are assigned to it (VEEGAN counts one; PacGAN-style
evaluations ask for more). Neither torch nor scipy computes these, hence this module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from probgen.utils import all_finite, check_int

__all__ = ["ModeCoverage", "mode_coverage", "ring_centres", "grid_centres"]


class ModeCoverage(NamedTuple):
    """Modes captured, share of high-quality samples, and high-quality counts per mode."""

    modes_captured: int
    high_quality: float
    counts: Tensor


def ring_centres(num_modes: int = 8, radius: float = 4.0 / 1.414) -> Tensor:
    """Centres equally spaced on a circle, the first on the positive x axis, ``(K, 2)``.

    The defaults are those of probgen's ``8gaussians`` toy data (std ``0.5 / 1.414``).
    """
    check_int("num_modes", num_modes)
    angles = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def grid_centres(side: int = 5, spacing: float = 2.0) -> Tensor:
    """Centres of a ``side x side`` grid centred at the origin, ``(side**2, 2)``."""
    check_int("side", side)
    ticks = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    gx, gy = torch.meshgrid(ticks, ticks, indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def mode_coverage(
    samples: Tensor,
    centres: Tensor,
    std: float,
    *,
    threshold: float = 3.0,
    min_count: int = 1,
) -> ModeCoverage:
    """Modes captured and the share of high-quality samples of a 2-D (or any-D) mixture.

    Args:
        samples: generated points ``(N, D)``.
        centres: the mixture's centres ``(K, D)``.
        std: the components' standard deviation.
        threshold: a sample within ``threshold * std`` of its nearest centre is high
            quality.
        min_count: high-quality samples a mode needs to count as captured.

    Returns:
        ModeCoverage: ``modes_captured`` (int in 0..K), ``high_quality`` (share of all
        samples, in [0, 1]) and ``counts`` (int64 ``(K,)``, high-quality samples per mode).

    Raises:
        ValueError: bad shapes, NaN/Inf samples, non-positive ``std``/``threshold``.

    Example:
        >>> c = ring_centres(8)
        >>> mode_coverage(c[:3].repeat(10, 1), c, 0.35).modes_captured
        3
    """
    if not isinstance(samples, Tensor) or samples.dim() != 2:
        got = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(f"samples: expected points (N, D), got {got}.")
    if (not isinstance(centres, Tensor) or centres.dim() != 2
            or centres.shape[1] != samples.shape[1]):
        got = tuple(centres.shape) if isinstance(centres, Tensor) else type(centres).__name__
        raise ValueError(f"centres: expected (K, {samples.shape[1]}), got {got}.")
    if not all_finite(samples):
        raise ValueError("samples: contains NaN or Inf values.")
    if not (std > 0 and threshold > 0):
        raise ValueError(f"std and threshold: expected positive numbers, got {std}, {threshold}.")
    check_int("min_count", min_count)
    x = samples.detach().to(device="cpu", dtype=torch.float64)
    c = centres.detach().to(device="cpu", dtype=torch.float64)
    dist = torch.cdist(x, c, compute_mode="donot_use_mm_for_euclid_dist")
    nearest, index = dist.min(dim=1)
    good = nearest <= threshold * std
    counts = torch.bincount(index[good], minlength=c.shape[0])
    return ModeCoverage(int((counts >= min_count).sum()), float(good.double().mean()), counts)
