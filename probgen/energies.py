"""Two-dimensional target densities for reverse-KL fitting: Rezende-Mohamed U1-U4 and a ring."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "ENERGIES",
    "get_energy",
    "potential_u1",
    "potential_u2",
    "potential_u3",
    "potential_u4",
    "log_density_u1",
    "log_density_u2",
    "log_density_u3",
    "log_density_u4",
    "log_density_ring",
]

# Rezende & Mohamed (2015), "Variational Inference with Normalizing Flows", Table 1,
# https://arxiv.org/abs/1505.05770. The densities are exp(-U(z)) on z in R^2.
_BOX = 4.0  # the paper plots every density on [-4, 4]^2
_WALL = 0.2  # width of the soft wall that confines U2-U4 in z1 (see _confine)
RING_RADIUS = 2.0
RING_WIDTH = 0.2


def _check(z: Tensor) -> Tensor:
    if not isinstance(z, Tensor):
        raise TypeError(f"z: expected a torch.Tensor of shape (..., 2), got {type(z).__name__}.")
    if z.dim() == 0 or z.shape[-1] != 2:
        raise ValueError(f"z: expected shape (..., 2), got {tuple(z.shape)}.")
    return z


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2.0 * math.pi * z1 / 4.0)


def _w2(z1: Tensor) -> Tensor:
    return 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1: Tensor) -> Tensor:
    return 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)


def _neg_logaddexp_gauss(a: Tensor, b: Tensor) -> Tensor:
    """``-log(exp(-a^2/2) + exp(-b^2/2))``, computed stably."""
    return -torch.logaddexp(-0.5 * a**2, -0.5 * b**2)


def potential_u1(z: Tensor) -> Tensor:
    r"""Energy U1: a ring of radius 2 cut into two modes along z1.

    :math:`U_1(z) = \tfrac12 ((\|z\| - 2)/0.4)^2
    - \log(e^{-\frac12((z_1-2)/0.6)^2} + e^{-\frac12((z_1+2)/0.6)^2})`.

    Args:
        z: points, shape ``(..., 2)``.

    Returns:
        U1 at every point, shape ``(...)``.

    Example:
        >>> round(float(potential_u1(torch.tensor([0.0, 2.0]))), 4)  # 0.5 (2/0.6)^2 - log 2
        4.8624
    """
    z = _check(z)
    z1 = z[..., 0]
    ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - 2.0) / 0.4) ** 2
    return ring + _neg_logaddexp_gauss((z1 - 2.0) / 0.6, (z1 + 2.0) / 0.6)


def potential_u2(z: Tensor) -> Tensor:
    r"""Energy U2: a sine wave, :math:`U_2(z) = \tfrac12 ((z_2 - w_1(z))/0.4)^2`.

    :math:`w_1(z) = \sin(2\pi z_1 / 4)`. Not normalizable on :math:`\mathbb{R}^2` (flat in
    z1); :func:`log_density_u2` confines it to the paper's box.

    Args:
        z: points, shape ``(..., 2)``.

    Returns:
        U2 at every point, shape ``(...)``.
    """
    z = _check(z)
    return 0.5 * ((z[..., 1] - _w1(z[..., 0])) / 0.4) ** 2


def potential_u3(z: Tensor) -> Tensor:
    r"""Energy U3: two sine waves that split where :math:`w_2` bumps.

    :math:`U_3(z) = -\log(e^{-\frac12((z_2-w_1)/0.35)^2} + e^{-\frac12((z_2-w_1+w_2)/0.35)^2})`,
    :math:`w_2(z) = 3 e^{-\frac12((z_1-1)/0.6)^2}`.

    Args:
        z: points, shape ``(..., 2)``.

    Returns:
        U3 at every point, shape ``(...)``.
    """
    z = _check(z)
    z1, z2 = z[..., 0], z[..., 1]
    w1 = _w1(z1)
    return _neg_logaddexp_gauss((z2 - w1) / 0.35, (z2 - w1 + _w2(z1)) / 0.35)


def potential_u4(z: Tensor) -> Tensor:
    r"""Energy U4: two sine waves that separate through a sigmoid step :math:`w_3`.

    :math:`U_4(z) = -\log(e^{-\frac12((z_2-w_1)/0.4)^2} + e^{-\frac12((z_2-w_1+w_3)/0.35)^2})`,
    :math:`w_3(z) = 3\sigma((z_1-1)/0.3)`.

    Args:
        z: points, shape ``(..., 2)``.

    Returns:
        U4 at every point, shape ``(...)``.
    """
    z = _check(z)
    z1, z2 = z[..., 0], z[..., 1]
    w1 = _w1(z1)
    return _neg_logaddexp_gauss((z2 - w1) / 0.4, (z2 - w1 + _w3(z1)) / 0.35)


def _confine(z1: Tensor) -> Tensor:
    """A soft quadratic wall outside ``|z1| <= 4``: zero inside the box, so values there match
    the paper, and it makes U2-U4 normalizable (else reverse KL is unbounded below)."""
    excess = torch.clamp(z1.abs() - _BOX, min=0.0)
    return 0.5 * (excess / _WALL) ** 2


def log_density_u1(z: Tensor) -> Tensor:
    """Unnormalized log-density ``-U1(z)``, shape ``(...)`` for ``z`` of shape ``(..., 2)``."""
    return -potential_u1(z)


def log_density_u2(z: Tensor) -> Tensor:
    """Unnormalized log-density ``-U2(z)``, confined to ``|z1| <= 4`` by a soft wall."""
    return -potential_u2(z) - _confine(z[..., 0])


def log_density_u3(z: Tensor) -> Tensor:
    """Unnormalized log-density ``-U3(z)``, confined to ``|z1| <= 4`` by a soft wall."""
    return -potential_u3(z) - _confine(z[..., 0])


def log_density_u4(z: Tensor) -> Tensor:
    """Unnormalized log-density ``-U4(z)``, confined to ``|z1| <= 4`` by a soft wall."""
    return -potential_u4(z) - _confine(z[..., 0])


def _ring_log_normalizer(radius: float, width: float) -> float:
    # Z = 2 pi int_0^inf r exp(-(r - R)^2 / (2 s^2)) dr, in closed form.
    s, r = width, radius
    integral = s**2 * math.exp(-(r**2) / (2 * s**2)) + r * s * math.sqrt(math.pi / 2) * (
        1 + math.erf(r / (s * math.sqrt(2)))
    )
    return math.log(2 * math.pi * integral)


def log_density_ring(z: Tensor) -> Tensor:
    r"""Normalized log-density of a ring of radius 2 and radial width 0.2.

    :math:`\log p(z) = -\tfrac12((\|z\| - 2)/0.2)^2 - \log Z`, with Z in closed form, so
    reverse KL to it is a true KL (>= 0).

    Args:
        z: points, shape ``(..., 2)``.

    Returns:
        log p at every point, shape ``(...)``.

    Example:
        >>> log_density_ring(torch.tensor([[0.0, 2.0], [2.0, 0.0]])).shape
        torch.Size([2])
    """
    z = _check(z)
    radial = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - RING_RADIUS) / RING_WIDTH) ** 2
    return -radial - _ring_log_normalizer(RING_RADIUS, RING_WIDTH)


ENERGIES: dict[str, Callable[[Tensor], Tensor]] = {
    "u1": log_density_u1,
    "u2": log_density_u2,
    "u3": log_density_u3,
    "u4": log_density_u4,
    "ring": log_density_ring,
}


def get_energy(name: str) -> Callable[[Tensor], Tensor]:
    """Returns the built-in log-density named ``name`` (a key of :data:`ENERGIES`).

    Raises:
        ValueError: the name is unknown; the message lists the known names.

    Example:
        >>> get_energy("u1") is log_density_u1
        True
    """
    if not isinstance(name, str) or name.lower() not in ENERGIES:
        raise ValueError(f"target: unknown energy {name!r}; expected one of {sorted(ENERGIES)}.")
    return ENERGIES[name.lower()]
