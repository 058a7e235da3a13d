r"""Discretized distributions over integer pixels ``0..levels-1`` on the [-1, 1] grid.

Pixel :math:`k` sits at :math:`c_k = 2k/(L-1) - 1` and owns the bin :math:`[c_k - h, c_k +
h]`, :math:`h = 1/(L-1)`, the two end bins reaching :math:`\pm\infty`, so the probabilities
of all levels sum to 1. A continuous law on the grid's scale gives each pixel the mass of its
bin: the discretized Gaussian of DDPM's decoder (Ho et al., 2020, eq. 13) and the
discretized logistic of PixelCNN++ (Salimans et al., 2017), the decoder of the VAEs. Pyro's
distributions have neither; both are Pyro distributions here, sharing one base
(:class:`DiscretizedPixels`: the support, ``expand``, the mean by summation and the exact
draw, a continuous draw snapped to its bin).

References:
    Denoising Diffusion Probabilistic Models (Ho et al., 2020), https://arxiv.org/abs/2006.11239
    PixelCNN++ (Salimans, Karpathy, Chen & Kingma, 2017), https://arxiv.org/abs/1701.05517
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor
from torch.nn import functional as F

from probgen.utils import check_int

__all__ = [
    "to_signed",
    "discretized_gaussian_log_likelihood",
    "DiscretizedPixels",
    "DiscretizedGaussian",
    "DiscretizedLogistic",
]


def to_signed(x: Tensor, levels: int) -> Tensor:
    """Integer pixels in ``0..levels-1`` mapped onto the grid ``2x/(levels-1) - 1`` in [-1, 1].

    Raises:
        ValueError: ``x`` is not integer-valued in that range.
    """
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.numel() and (x.min() < 0 or x.max() > levels - 1 or not torch.equal(x, x.round())):
        raise ValueError(f"x: expected integer pixels in 0..{levels - 1}, got values in "
                         f"[{float(x.min()):g}, {float(x.max()):g}] (non-integers: "
                         f"{not torch.equal(x, x.round())}).")
    return 2.0 * x / (levels - 1) - 1.0


def _log_diff_ndtr(a: Tensor, b: Tensor) -> Tensor:
    """``log(Phi(b) - Phi(a))`` for ``a < b``, accurate in both tails."""
    right = a > 0  # mirror: Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
    hi = torch.where(right, -a, b)
    lo = torch.where(right, -b, a)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp((log_lo - log_hi).clamp(max=0.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor,
                                        levels: int) -> Tensor:
    r"""Elementwise log-probability of integer data on the [-1, 1] grid under a
    discretized Gaussian (Ho et al., 2020, eq. 13).

    ``x`` takes the ``levels`` values :math:`2k/(L-1) - 1`; each owns the bin of
    half-width :math:`1/(L-1)` around it, the two end bins extending to :math:`\pm\infty`,
    so the probabilities of all levels sum to 1. Computed in float64 with log-CDFs (exact
    tails; no tanh approximation).

    Args:
        x: data on the grid, any shape.
        mean, log_scale: the Gaussian's mean and log standard deviation (broadcasting).
        levels: L, the number of pixel levels (256 for MNIST).
    """
    check_int("levels", levels, low=2)
    dtype = x.dtype
    x, mean, log_scale = (v.to(torch.float64) for v in (x, mean, log_scale))
    half = 1.0 / (levels - 1)
    inv = torch.exp(-log_scale)
    upper = (x + half - mean) * inv
    lower = (x - half - mean) * inv
    inf = torch.full_like(upper, math.inf)
    upper = torch.where(x > 1 - half, inf, upper)
    lower = torch.where(x < -1 + half, -inf, lower)
    lower, upper = torch.broadcast_tensors(lower, upper)
    return _log_diff_ndtr(lower, upper).to(dtype)


class DiscretizedPixels(TorchDistribution, ABC):
    r"""Base class of a continuous law on the [-1, 1] grid discretized over integer pixels.

    Elementwise: the batch shape is the parameters' shape, the event shape ``()`` (use
    ``.to_event`` for images). Subclasses give :meth:`log_prob` and ``_standard`` (a draw
    of the standardized law); a draw :math:`\mu + s z` snapped to its bin is exact.

    Args:
        loc: :math:`\mu` on the [-1, 1] scale.
        scale: :math:`s > 0` (broadcasting with ``loc``).
        levels: :math:`L`, the number of pixel levels.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor | float, levels: int,
                 validate_args: bool | None = None) -> None:
        self.levels = check_int("levels", levels, low=2)
        loc = torch.as_tensor(loc)
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:  # noqa: D102
        return constraints.integer_interval(0, self.levels - 1)

    def expand(self, batch_shape, _instance=None):  # noqa: ANN001, ANN201 - torch's signature
        """The same distribution with its parameters expanded to ``batch_shape``."""
        shape = torch.Size(batch_shape)
        return type(self)(self.loc.expand(shape), self.scale.expand(shape), self.levels,
                          validate_args=False)

    @abstractmethod
    def _standard(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        """Draws of the standardized continuous law (location 0, scale 1) of ``shape``."""

    def sample(self, sample_shape: torch.Size = torch.Size(), *,  # noqa: B008
               generator: torch.Generator | None = None) -> Tensor:
        """Integer pixels (as floats) ``(*sample_shape, *batch_shape)``: a continuous draw
        (from ``generator`` when one is given) snapped to its bin, so exact."""
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            y = self.loc.expand(shape) + self.scale.expand(shape) * self._standard(shape,
                                                                                  generator)
            k = torch.round((y + 1.0) * (self.levels - 1) / 2.0)
            return k.clamp(0, self.levels - 1)

    @property
    def mean(self) -> Tensor:
        """The mean pixel value (by summing over the ``levels`` values)."""
        k = torch.arange(self.levels, dtype=self.loc.dtype, device=self.loc.device)
        probs = self.log_prob(k.reshape(-1, *([1] * self.loc.dim()))).exp()
        return (probs * k.reshape(-1, *([1] * self.loc.dim()))).sum(0)


class DiscretizedGaussian(DiscretizedPixels):
    r"""Creates the discretized Gaussian over integer pixels ``0..levels-1`` (Ho et al.,
    2020, eq. 13), a Pyro distribution.

    Pixel :math:`k` sits at :math:`2k/(L-1) - 1` on the [-1, 1] grid and owns the bin of
    half-width :math:`1/(L-1)` around it, the end bins reaching :math:`\pm\infty`; its
    probability is the mass of :math:`N(\mu, \sigma^2)` in the bin
    (:func:`discretized_gaussian_log_likelihood`). Elementwise: batch shape is the
    parameters' shape, event shape ``()`` (use ``.to_event`` for images). A draw is a
    Gaussian draw snapped to its bin, so it is exact.

    Args:
        loc: :math:`\mu` on the [-1, 1] scale.
        scale: :math:`\sigma > 0` (broadcasting with ``loc``).
        levels: :math:`L`, the number of pixel levels.

    Example:
        >>> d = DiscretizedGaussian(torch.zeros(3), torch.ones(3), levels=4)
        >>> d.log_prob(torch.arange(4.0)[:, None]).exp().sum(0).round(decimals=6)
        tensor([1., 1., 1.])
    """

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-probability of integer pixels ``value`` (any shape broadcasting with the
        batch shape)."""
        if self._validate_args:
            self._validate_sample(value)
        signed = 2.0 * value / (self.levels - 1) - 1.0
        return discretized_gaussian_log_likelihood(signed, self.loc, self.scale.log(),
                                                   self.levels)

    def _standard(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        """Standard normal draws."""
        return torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device,
                           generator=generator)


class DiscretizedLogistic(DiscretizedPixels):
    r"""Creates the discretized logistic over integer pixels ``0..levels-1`` (Salimans et
    al., 2017, PixelCNN++), a Pyro distribution.

    Pixel :math:`k` sits at :math:`c_k = 2k/(L-1) - 1` on the [-1, 1] grid and owns the bin
    :math:`[c_k - h, c_k + h]`, :math:`h = 1/(L-1)`, the end bins reaching :math:`\pm\infty`;
    its probability is the logistic mass :math:`\sigma((c_k + h - \mu)/s) - \sigma((c_k - h
    - \mu)/s)`, computed as :math:`\log\sigma(a) + \log\sigma(-b) + \log(1 - e^{b - a})`
    (no cancellation far in the tails). Elementwise: batch shape is the parameters' shape.

    Args:
        loc: :math:`\mu` on the [-1, 1] scale; scale: :math:`s > 0`.
        levels: :math:`L`.

    References:
        PixelCNN++ (Salimans, Karpathy, Chen & Kingma, 2017), https://arxiv.org/abs/1701.05517

    Example:
        >>> d = DiscretizedLogistic(torch.zeros(2), torch.ones(2), levels=5)
        >>> d.log_prob(torch.arange(5.0)[:, None]).exp().sum(0).round(decimals=6)
        tensor([1., 1.])
    """

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-probability of integer pixels ``value`` (broadcasting with the batch shape)."""
        if self._validate_args:
            self._validate_sample(value)
        half = 1.0 / (self.levels - 1)
        centre = 2.0 * value / (self.levels - 1) - 1.0
        a = (centre + half - self.loc) / self.scale
        b = (centre - half - self.loc) / self.scale
        inner = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(b - a))
        out = torch.where(value <= 0, F.logsigmoid(a), inner)
        return torch.where(value >= self.levels - 1, F.logsigmoid(-b), out)

    def _standard(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        """Standard logistic draws (the uniform's logit, kept off 0 and 1)."""
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device,
                       generator=generator).clamp(1e-7, 1 - 1e-7)
        return u.log() - (-u).log1p()
