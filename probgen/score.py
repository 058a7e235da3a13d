r"""Noise ladders for score models and Gaussian mixtures with closed-form (perturbed) scores.

A *score* is :math:`s(x) = \nabla_x \log p(x)`. A noise-conditional score network is
``net(x, sigma, **cond)`` with ``x`` of shape ``(batch, *event)`` and ``sigma`` of shape
``(batch,)``, estimating the score of the data convolved with :math:`N(0, \sigma^2 I)`
(DESIGN.md's "network of x and t", with the noise level in the place of t).

This module holds what every score family shares and the inference layer must not own:

- :func:`geometric_sigmas`, the NCSN ladder :math:`\sigma_1 > \dots > \sigma_L`;
- :func:`choose_sigmas`, the techniques of Song & Ermon (2020) for :math:`\sigma_1`, the
  ladder ratio and the annealed-Langevin step size (scipy finds the roots);
- :class:`GaussianMixture`, whose score at every noise level is exact (a mixture of
  isotropic Gaussians convolved with :math:`N(0, \sigma^2 I)` is again one), the ground
  truth of the samplers' tests, and :func:`two_modes`, the course's 0.95/0.05 mixture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from probgen.sde import VESDE
from probgen.utils import check_int

__all__ = [
    "geometric_sigmas",
    "SigmaChoice",
    "choose_sigmas",
    "annealed_variance_ratio",
    "GaussianMixture",
    "two_modes",
]


def geometric_sigmas(sigma_max: float, sigma_min: float, num: int) -> Tensor:
    r"""The geometric noise ladder :math:`\sigma_i = \sigma_1 \gamma^{-(i-1)}`, largest first.

    The levels of the variance-exploding SDE that interpolates them:
    ``VESDE(sigma_min, sigma_max).discrete_sigmas(num)``
    (:meth:`probgen.sde.VESDE.discrete_sigmas`, the one definition), in float32;
    ``sigma_min = sigma_max`` gives a constant ladder.

    Args:
        sigma_max: :math:`\sigma_1`, the largest noise level.
        sigma_min: :math:`\sigma_L`, the smallest (``< sigma_max``; equal when ``num = 1``).
        num: :math:`L`, the number of levels.

    Returns:
        Shape ``(num,)``, float32, decreasing from ``sigma_max`` to ``sigma_min``.

    Example:
        >>> geometric_sigmas(1.0, 0.01, 3)
        tensor([1.0000, 0.1000, 0.0100])
    """
    check_int("num", num)
    if not (0 < sigma_min <= sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"sigmas: expected 0 < sigma_min <= sigma_max < inf, got "
                         f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}.")
    if num == 1 or sigma_min == sigma_max:
        return torch.full((num,), float(sigma_max))
    return VESDE(sigma_min, sigma_max).discrete_sigmas(num).float()


def annealed_variance_ratio(eps: float, sigma_min: float, ratio: float, steps: int) -> float:
    r"""Song & Ermon's (2020) Proposition 3 in probgen's step convention.

    One level :math:`\sigma_i` of annealed Langevin, ``steps`` updates
    :math:`x \leftarrow x + \tfrac{\eta}{2} s + \sqrt{\eta}\,z` with
    :math:`\eta = \epsilon \sigma_i^2/\sigma_L^2`, on data that is a single point (score
    :math:`-x/\sigma_i^2`), started at variance :math:`\gamma^2\sigma_i^2` (the level
    above): with :math:`a = 1 - \epsilon/(2\sigma_L^2)` and
    :math:`c = (\epsilon/\sigma_L^2)/(1 - a^2)`, the variance afterwards is
    :math:`\sigma_i^2\,[a^{2T}(\gamma^2 - c) + c]`. Returns the bracket (1 is ideal).
    (The paper's step :math:`x + \alpha s + \sqrt{2\alpha} z` is ours with
    :math:`\eta = 2\alpha`, i.e. its :math:`\epsilon` is half of ours.)
    """
    a = 1.0 - eps / (2.0 * sigma_min**2)
    c = (eps / sigma_min**2) / (1.0 - a * a)
    return a ** (2 * steps) * (ratio**2 - c) + c


class SigmaChoice(NamedTuple):
    """The ladder and step size chosen by :func:`choose_sigmas`."""

    sigmas: Tensor
    ratio: float
    eps: float
    steps_per_level: int


def choose_sigmas(
    data: Tensor,
    *,
    sigma_min: float = 0.01,
    steps_per_level: int = 5,
    ratio: float | None = None,
    max_points: int = 10000,
) -> SigmaChoice:
    r"""Chooses the noise ladder and Langevin step size by Song & Ermon's (2020) techniques.

    - Technique 1: :math:`\sigma_1` = the largest pairwise Euclidean distance in the data
      (on at most ``max_points`` points; ``torch.cdist``).
    - Technique 2: the ratio :math:`\gamma = \sigma_{i-1}/\sigma_i` solves
      :math:`\Phi(\sqrt{2D}(\gamma-1) + 3\gamma) - \Phi(\sqrt{2D}(\gamma-1) - 3\gamma) = 1/2`
      (``scipy.optimize.brentq``), with :math:`D` the data dimension; then
      :math:`L = \lceil \log(\sigma_1/\sigma_L)/\log\gamma \rceil + 1` levels (and
      :math:`\gamma` is recomputed so the ladder ends at :math:`\sigma_L` exactly). The
      equation has no root when :math:`\sqrt{2D} \le 3` (:math:`D \le 4`): pass ``ratio``.
    - Technique 4: the step factor :math:`\epsilon` (probgen convention,
      :math:`\eta_i = \epsilon\sigma_i^2/\sigma_L^2`) makes
      :func:`annealed_variance_ratio` closest to 1 for ``steps_per_level`` updates
      (``scipy.optimize.minimize_scalar`` over :math:`\log\epsilon`).

    Args:
        data: training examples, shape ``(N, *event)``, ``N >= 2``.
        sigma_min: :math:`\sigma_L` (the paper: as small as the data's quantization allows).
        steps_per_level: :math:`T`, as many as the sampling budget allows.
        ratio: :math:`\gamma` given instead of technique 2 (required when ``D <= 4``).
        max_points: at most this many (first) examples enter the pairwise distances.

    Returns:
        A :class:`SigmaChoice` (``sigmas`` of shape ``(L,)``, ``ratio``, ``eps``,
        ``steps_per_level``).

    Raises:
        ValueError: fewer than 2 examples, ``sigma_min`` above the largest distance, or
            ``D <= 4`` without ``ratio``.

    References:
        Improved Techniques for Training Score-Based Generative Models (Song & Ermon, 2020),
        https://arxiv.org/abs/2006.09011
    """
    from scipy.optimize import brentq, minimize_scalar
    from scipy.stats import norm

    if not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] < 2:
        got = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"data: expected a tensor of shape (N >= 2, *event), got {got}.")
    flat = data[:max_points].flatten(1).double()
    sigma_max = float(torch.cdist(flat, flat).max())
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_min: expected it below the largest pairwise distance "
                         f"{sigma_max:.4g}, got {sigma_min!r}.")
    dim = flat.shape[1]
    root = math.sqrt(2 * dim)

    def overlap(g: float) -> float:
        return norm.cdf(root * (g - 1) + 3 * g) - norm.cdf(root * (g - 1) - 3 * g) - 0.5

    if ratio is None:
        if root <= 3.0:
            raise ValueError(f"ratio: technique 2 has no solution in D = {dim} <= 4 "
                             "dimensions (3 standard deviations cover every ratio); pass "
                             "ratio= yourself (e.g. 1.5 to 3 for 2-D data).")
        ratio = float(brentq(overlap, 1.0 + 1e-12, 1e3))
    elif not ratio > 1:
        raise ValueError(f"ratio: expected a float > 1, got {ratio!r}.")
    num = math.ceil(math.log(sigma_max / sigma_min) / math.log(ratio)) + 1
    sigmas = geometric_sigmas(sigma_max, sigma_min, num)
    ratio = (sigma_max / sigma_min) ** (1 / (num - 1))

    def gap(log_eps: float) -> float:
        return abs(annealed_variance_ratio(math.exp(log_eps), sigma_min, ratio,
                                           steps_per_level) - 1.0)

    # eps < 2 sigma_L^2 keeps |a| < 1 (a stable contraction at the smallest level).
    hi = math.log(2 * sigma_min**2) - 1e-6
    best = minimize_scalar(gap, bounds=(hi - 30.0, hi), method="bounded")
    return SigmaChoice(sigmas, ratio, math.exp(float(best.x)), steps_per_level)


class GaussianMixture:
    r"""Creates a mixture of isotropic Gaussians with exact log-densities and scores.

    :math:`p(x) = \sum_k w_k N(x; \mu_k, s^2 I)`. Perturbed by :math:`N(0, \sigma^2 I)` it is
    the same mixture with variance :math:`s^2 + \sigma^2`, so :meth:`score` is exact at
    every noise level: the reference for Langevin samplers and score-matching losses.
    Calling it draws samples (a :class:`probgen.protocols.BatchSampler` for ``fit``).

    Args:
        weights: ``(K,)`` mixture weights (normalized here).
        means: ``(K, D)`` component means.
        std: the components' common standard deviation :math:`s`.

    Example:
        >>> mix = two_modes()
        >>> mix.score(torch.tensor([[5.0, 5.0]])).abs().max() < 1e-6
        tensor(True)
    """

    def __init__(self, weights: Sequence[float] | Tensor, means: Sequence[Sequence[float]]
                 | Tensor, std: float = 1.0) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.dim() != 2 or w.shape != mu.shape[:1] or (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"weights, means: expected (K,) non-negative weights and (K, D) "
                             f"means, got {tuple(w.shape)} and {tuple(mu.shape)}.")
        if not std > 0:
            raise ValueError(f"std: expected a positive float, got {std!r}.")
        self.weights, self.means, self.std = w / w.sum(), mu, float(std)

    @property
    def dim(self) -> int:
        """The dimension D."""
        return self.means.shape[1]

    def _parts(self, x: Tensor, sigma: Tensor | float | None) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (batch, {self.dim}), got {got}.")
        var = torch.full((x.shape[0],), self.std**2, dtype=torch.float64, device=x.device)
        if sigma is not None:
            var = var + torch.as_tensor(sigma, dtype=torch.float64, device=x.device) ** 2
        diff = x.double()[:, None, :] - self.means.to(x.device)  # (batch, K, D)
        log_comp = (torch.log(self.weights.to(x.device)) - 0.5 * diff.pow(2).sum(-1)
                    / var[:, None] - 0.5 * self.dim * torch.log(2 * math.pi * var)[:, None])
        return diff, log_comp, var

    def log_prob(self, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        """Log-density of the (perturbed by ``sigma``) mixture, ``(batch, D) -> (batch,)``."""
        _, log_comp, _ = self._parts(x, sigma)
        return torch.logsumexp(log_comp, dim=1).to(x.dtype)

    def score(self, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        r"""The exact score :math:`\nabla_x \log p_\sigma(x)`, ``(batch, D) -> (batch, D)``.

        ``sigma``: a float or a ``(batch,)`` tensor of noise levels; ``None`` for 0.
        """
        diff, log_comp, var = self._parts(x, sigma)
        resp = torch.softmax(log_comp, dim=1)  # (batch, K)
        return (-(resp[:, :, None] * diff).sum(1) / var[:, None]).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws ``n`` samples, shape ``(n, D)``, float32."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return (self.means[k] + self.std * noise).float()

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Same as :meth:`sample` (the trainer's sampler protocol)."""
        return self.sample(n, generator)

    def assign(self, x: Tensor) -> Tensor:
        """The index of each point's nearest mean, ``(batch, D) -> (batch,)``."""
        return torch.cdist(x.double(), self.means.to(x.device)).argmin(1)

    def __repr__(self) -> str:
        return (f"GaussianMixture(weights={self.weights.tolist()}, "
                f"means={self.means.tolist()}, std={self.std:g})")


def two_modes() -> GaussianMixture:
    r"""The course's two-mode mixture: :math:`0.95\,N((5, 5), I) + 0.05\,N((-5, -5), I)`.

    Plain Langevin dynamics with its exact score cannot find the weights (the modes do not
    communicate); annealed Langevin can (Song & Ermon, 2019, Fig. 3 uses 0.8/0.2).
    """
    return GaussianMixture([0.95, 0.05], [[5.0, 5.0], [-5.0, -5.0]], std=1.0)
