"""Classic 2-D toy densities (moons, circles, 8 Gaussians, checkerboard, ...), seeded samplers."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from probgen.utils import check_choice

__all__ = ["TOY_NAMES", "toy_sample", "ToySampler", "flower_parameters"]

#: The names :func:`toy_sample` accepts, in a fixed order.
TOY_NAMES: tuple[str, ...] = (
    "moons",
    "circles",
    "8gaussians",
    "checkerboard",
    "pinwheel",
    "2spirals",
    "swissroll",
    "mixture1d",
    "flower",
)


def _rand(n: int, g: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=g)


def _randn(*shape: int, g: torch.Generator | None) -> Tensor:
    return torch.randn(*shape, generator=g)


def _shuffle(x: Tensor, g: torch.Generator | None) -> Tensor:
    return x[torch.randperm(x.shape[0], generator=g)]


def _moons(n: int, g: torch.Generator | None) -> Tensor:
    # Two interleaved half circles (upper: unit arc; lower: shifted, flipped arc), Gaussian
    # noise of std 0.1, then mapped by x -> 2x + (-1, -0.2) to centre the pair at the origin.
    n_upper = n // 2
    theta = math.pi * _rand(n, g)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower = torch.stack([1.0 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    is_upper = (torch.arange(n) < n_upper).unsqueeze(1)
    x = torch.where(is_upper, upper, lower) + 0.1 * _randn(n, 2, g=g)
    x = 2.0 * x + torch.tensor([-1.0, -0.2])
    return _shuffle(x, g)


def _circles(n: int, g: torch.Generator | None) -> Tensor:
    # Two concentric circles of radii 3 and 1.5 (half the points each), noise std 0.08 before
    # the scaling by 3 (so 0.24 after). Angles are uniform at random.
    radius = torch.where(torch.arange(n) < n // 2, 1.0, 0.5)
    theta = 2 * math.pi * _rand(n, g)
    x = radius.unsqueeze(1) * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    x = 3.0 * (x + 0.08 * _randn(n, 2, g=g))
    return _shuffle(x, g)


def _eight_gaussians(n: int, g: torch.Generator | None) -> Tensor:
    # Eight Gaussians of std 0.5 at the compass points of radius 4, all divided by 1.414:
    # centres at radius ~2.83, std ~0.354.
    angles = torch.arange(8) * (math.pi / 4)
    centres = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    k = torch.randint(0, 8, (n,), generator=g)
    x = centres[k] + 0.5 * _randn(n, 2, g=g)
    return x / 1.414


def _checkerboard(n: int, g: torch.Generator | None) -> Tensor:
    # Uniform on the 8 "black" 2x2 squares of a 4x4 board covering [-4, 4]^2, those whose
    # integer coordinates floor(x / 2) + floor(y / 2) are even.
    x1 = 4.0 * _rand(n, g) - 2.0
    x2 = _rand(n, g) - 2.0 * torch.randint(0, 2, (n,), generator=g)
    x2 = x2 + torch.remainder(torch.floor(x1), 2)
    return 2.0 * torch.stack([x1, x2], dim=1)


def _pinwheel(n: int, g: torch.Generator | None) -> Tensor:
    # Five arms: a point (1 + 0.3 eps_1, 0.1 eps_2) is rotated clockwise by the arm's angle plus
    # 0.25 exp(radius), which bends each arm into a spiral, then scaled by 2.
    arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    k = torch.randint(0, arms, (n,), generator=g)
    f = _randn(n, 2, g=g) * torch.tensor([radial_std, tangential_std])
    f[:, 0] += 1.0
    angle = k * (2 * math.pi / arms) + rate * torch.exp(f[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    x = torch.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], dim=1)
    return 2.0 * x


def _two_spirals(n: int, g: torch.Generator | None) -> Tensor:
    # Two point-symmetric spirals over 540 degrees (angle sqrt(u) * 3pi), jittered by U(0, 0.5)
    # per coordinate, divided by 3, plus Gaussian noise of std 0.1.
    n1 = n - n // 2
    t = torch.sqrt(_rand(n1, g)) * (540.0 * 2 * math.pi / 360.0)
    arm = torch.stack([-torch.cos(t) * t, torch.sin(t) * t], dim=1) + 0.5 * torch.rand(
        n1, 2, generator=g
    )
    x = torch.cat([arm, -arm[: n // 2]], dim=0) / 3.0
    x = x + 0.1 * _randn(n, 2, g=g)
    return _shuffle(x, g)


def _swissroll(n: int, g: torch.Generator | None) -> Tensor:
    # The (x, z) plane of the 3-D swiss roll: t ~ U(1.5pi, 4.5pi), (t cos t, t sin t) plus
    # unit Gaussian noise, divided by 5.
    t = 1.5 * math.pi * (1.0 + 2.0 * _rand(n, g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + _randn(n, 2, g=g)
    return x / 5.0


def _mixture1d(n: int, g: torch.Generator | None) -> Tensor:
    # A 1-D two-component mixture, 0.5 N(-1, 0.5^2) + 0.5 N(1.5, 0.7^2): points (n, 1).
    k = torch.randint(0, 2, (n,), generator=g)
    eps = _randn(n, g=g)
    return torch.where(k == 0, -1.0 + 0.5 * eps, 1.5 + 0.7 * eps).unsqueeze(1)


def flower_parameters(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    r"""Weights ``(8,)``, means ``(8, 2)`` and covariances ``(8, 2, 2)`` of the course's
    "flower": equal weights, :math:`N(0, I)` at the centre and 7 petals at radius 6, angles
    :math:`2\pi k / 7`, each with variance 3 along its radius and 1 across it."""
    angles = torch.arange(7, dtype=torch.float64) * (2 * math.pi / 7)
    radial = torch.stack([angles.cos(), angles.sin()], -1)
    across = torch.stack([-angles.sin(), angles.cos()], -1)
    rot = torch.stack([radial, across], 1)  # rows: the radial and the perpendicular axis
    scale = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    petals = rot.transpose(1, 2) @ scale @ rot
    cov = torch.cat([torch.eye(2, dtype=torch.float64)[None], petals])
    loc = torch.cat([torch.zeros(1, 2, dtype=torch.float64), 6.0 * radial])
    weights = torch.full((8,), 1 / 8, dtype=torch.float64)
    return weights.to(dtype), loc.to(dtype), cov.to(dtype)


def _flower(n: int, g: torch.Generator | None) -> Tensor:
    _, loc, cov = flower_parameters()
    k = torch.randint(0, 8, (n,), generator=g)
    z = _randn(n, 2, g=g).double()
    return (loc[k] + (torch.linalg.cholesky(cov)[k] @ z[:, :, None])[..., 0]).float()


_SAMPLERS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "moons": _moons,
    "circles": _circles,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "swissroll": _swissroll,
    "mixture1d": _mixture1d,
    "flower": _flower,
}
# The dimension of each density's points (2 unless listed).
_DIMS: dict[str, int] = {"mixture1d": 1}


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator: expected a torch.Generator or None, got {type(generator).__name__}."
        )
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"generator: expected a CPU torch.Generator (samples are drawn on the CPU), "
            f"got one on {generator.device}."
        )
    return generator


def toy_sample(name: str, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Draws ``n`` points from the 2-D toy density ``name``.

    The densities and their scales follow the ones popularised by FFJORD
    (Grathwohl et al., 2019) and used throughout the flow literature:

    - ``moons``: two interleaved half circles, noise std 0.2, roughly in [-3, 3] x [-2, 2];
    - ``circles``: concentric circles of radii 3 and 1.5, noise std 0.24;
    - ``8gaussians``: eight Gaussians of std ~0.354 at radius ~2.83;
    - ``checkerboard``: uniform on the 8 black squares of a 4x4 board on [-4, 4]^2;
    - ``pinwheel``: five spiralling arms;
    - ``2spirals``: two interleaved spirals;
    - ``swissroll``: a 2-D swiss roll, roughly in [-3, 3]^2;
    - ``flower``: the course's 8-component Gaussian mixture (:func:`flower_parameters`),
      roughly in [-10, 10]^2;
    - ``mixture1d``: the one 1-D density, ``0.5 N(-1, 0.5^2) + 0.5 N(1.5, 0.7^2)``, points
      of shape ``(n, 1)`` (a GAN warm-up).

    ``moons`` and ``circles`` draw their angles uniformly at random (scikit-learn spaces them
    evenly), so that every batch is i.i.d. All randomness comes from ``generator`` (the global
    torch RNG when ``None``); nothing is seeded globally and NumPy is not used.

    Args:
        name: one of :data:`TOY_NAMES`.
        n: the number of points, ``n >= 0``.
        generator: a CPU :class:`torch.Generator` for reproducible draws.

    Returns:
        Tensor: float32 points, shape ``(n, 2)`` (``(n, 1)`` for ``mixture1d``), on the CPU.

    Raises:
        ValueError: unknown ``name`` (the message lists the allowed ones), or negative ``n``.
        TypeError: ``n`` is not an int, or ``generator`` is not a Generator.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
        (Grathwohl et al., 2019), https://arxiv.org/abs/1810.01367

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = toy_sample("8gaussians", 512, generator=g)
        >>> x.shape, x.dtype
        (torch.Size([512, 2]), torch.float32)
        >>> torch.equal(x, toy_sample("8gaussians", 512, generator=g.manual_seed(0)))
        True
    """
    check_choice("name", name, TOY_NAMES)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int number of points, got {type(n).__name__}.")
    if n < 0:
        raise ValueError(f"n: expected a non-negative number of points, got {n}.")
    _check_generator(generator)
    if n == 0:
        return torch.zeros(0, _DIMS.get(name, 2))
    return _SAMPLERS[name](n, generator).to(torch.float32).contiguous()


class ToySampler:
    """Creates an infinite data source for the toy density ``name``.

    Every call draws fresh points, so a trainer sees a new batch each step
    (the :class:`probgen.protocols.BatchSampler` protocol).

    Args:
        name: one of :data:`TOY_NAMES` (checked here, not at the first draw).

    Example:
        >>> sampler = ToySampler("moons")
        >>> sampler(16, generator=torch.Generator().manual_seed(1)).shape
        torch.Size([16, 2])
        >>> sampler
        ToySampler('moons')
    """

    def __init__(self, name: str) -> None:
        check_choice("name", name, TOY_NAMES)
        self.name: str = name

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws ``n`` points, shape ``(n, 2)``; see :func:`toy_sample`."""
        return toy_sample(self.name, n, generator=generator)

    def __repr__(self) -> str:
        return f"ToySampler({self.name!r})"
