r"""Probability paths of flow matching: how a source sample becomes data over time.

**Time convention** (probgen's, :mod:`probgen.cnf`, :mod:`probgen.sde`): :math:`t \in [0, 1]`,
``t = 0`` the source (noise), ``t = 1`` the data. Every path here is *affine*:

.. math:: x_t = \alpha_t\, x_1 + \sigma_t\, x_0, \qquad x_0 \sim N(0, I),\ x_1 \sim q,

with a schedule :math:`(\alpha_t, \sigma_t)` and its time derivatives, returned as a
:class:`probgen.sde.Marginal` (the same schedule object the score SDEs use: the VP and VE
paths *are* the SDEs' marginals, so diffusion is flow matching along a curved path).
The conditional target field is the time derivative of :math:`x_t` with both ends held:

.. math:: \dot x_t = \dot\alpha_t\, x_1 + \dot\sigma_t\, x_0,

and the marginal field that flow matching learns is its conditional mean
:math:`u_t(x) = E[\dot x_t \mid x_t = x]`, which carries the source onto the data
(Lipman et al., 2023, Theorem 1). With a Gaussian source and an independent coupling the
field, the noise predictor :math:`\hat\epsilon = E[x_0 \mid x_t]`, the data predictor
:math:`\hat x_1 = E[x_1 \mid x_t]` and the score :math:`\nabla \log p_t = -\hat\epsilon /
\sigma_t` are one another's affine images; with :math:`\Delta_t = \alpha_t\dot\sigma_t -
\dot\alpha_t\sigma_t` (never 0 on a valid path),

.. math::
    u = \frac{\dot\alpha_t x + \Delta_t \hat\epsilon}{\alpha_t}
      = \frac{\dot\sigma_t x - \Delta_t \hat x_1}{\sigma_t},

the conversions of :meth:`probgen.processes.GaussianPath.convert` (``"velocity"`` and
``"eps"``/``"data"``/``"score"``/``"v"``). For the VP path the score form is exactly the
probability-flow ODE of the VP SDE.

The paths:

- :class:`CondOTPath`: the conical Gaussian / optimal-transport path with
  :math:`\sigma_\min`, :math:`x_t = t x_1 + (1 - (1 - \sigma_\min) t) x_0`, target
  :math:`x_1 - (1 - \sigma_\min) x_0` (Lipman et al., 2023, eq. 20-23);
- :class:`LinearPath`: the straight interpolation :math:`t x_1 + (1 - t) x_0` of rectified
  flow, for any coupling of the two ends (Liu et al., 2023);
- :class:`DiffusionPath` over any :class:`probgen.sde.SDE`, with :class:`VPPath` and
  :class:`VEPath`; their :math:`\dot\sigma_t` is infinite at the data, so they stop at
  ``t_end = 1 - eps``.
- :class:`CosinePath`: the cosine variance-preserving path of Nichol & Dhariwal, the
  continuous path that :meth:`probgen.diffusion.NoiseSchedule.cosine` discretizes (also
  stopping at ``t_end = 1 - eps``).

References:
    Flow Matching for Generative Modeling (Lipman et al., 2023),
    https://arxiv.org/abs/2210.02747
    Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow (Liu,
    Gong & Liu, 2023), https://arxiv.org/abs/2209.03003
    Flow Matching Guide and Code (Lipman et al., 2024), https://arxiv.org/abs/2412.06264
    Improved Denoising Diffusion Probabilistic Models (Nichol & Dhariwal, 2021),
    https://arxiv.org/abs/2102.09672
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from probgen.processes import GaussianPath, Marginal, check_batches, check_time
from probgen.sde import SDE, VESDE, VPSDE
from probgen.utils import build_named

__all__ = [
    "PathSample",
    "AffinePath",
    "CondOTPath",
    "LinearPath",
    "DiffusionPath",
    "VPPath",
    "VEPath",
    "CosinePath",
    "PATHS",
    "get_path",
]


@dataclass
class PathSample:
    r"""A point on a conditional path and its target field.

    Attributes:
        x0: source samples, ``(batch, *event)``.
        x1: data samples, ``(batch, *event)``.
        t: times, ``(batch,)``.
        x_t: :math:`\alpha_t x_1 + \sigma_t x_0`, ``(batch, *event)``.
        dx_t: the conditional target :math:`\dot\alpha_t x_1 + \dot\sigma_t x_0`.
    """

    x0: Tensor
    x1: Tensor
    t: Tensor
    x_t: Tensor
    dx_t: Tensor


class AffinePath(GaussianPath):
    r"""Abstract class of an affine probability path :math:`x_t = \alpha_t x_1 + \sigma_t x_0`.

    Subclasses give the schedule :meth:`schedule`; this class builds the conditional samples
    and targets. As a :class:`probgen.processes.GaussianPath` (with :math:`x_0` the noise
    :math:`\epsilon` and :math:`x_1` the data) it also gives the prior, the conversions
    between velocity, noise, data and score predictions (:meth:`convert`) and the
    closed-form marginals and predictions of Gaussian data (the ground truth of tests).

    Attributes:
        t_end: the last time the path is trained and sampled at (1, or ``1 - eps`` where
            the field is singular at the data).
        prior_std: the standard deviation of the isotropic Gaussian the samplers start from
            at ``t = 0``.
    """

    # ------------------------------------------------------------------ conditional paths
    def sample(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> PathSample:
        r"""The point :math:`x_t` between ``x0`` and ``x1`` and its conditional target.

        Args:
            x0: source samples, ``(batch, *event)``.
            x1: data samples, ``(batch, *event)``.
            t: times ``(batch,)`` (or a scalar) in ``[0, 1]``.

        Returns:
            A :class:`PathSample`.

        Example:
            >>> path = CondOTPath()
            >>> s = path.sample(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([0.25]))
            >>> s.x_t, s.dx_t
            (tensor([[0.2500, 0.2500]]), tensor([[1., 1.]]))
        """
        check_batches(x0, x1, paired=True)
        t = check_time(t, x1, bounded=True)
        a, s, da, ds = self.coefficients(t, x1)
        return PathSample(x0, x1, t, a * x1 + s * x0, da * x1 + ds * x0)

    def conditional_field(self, x: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
        r"""The field :math:`u_t(x \mid x_1) = \dot\alpha_t x_1 + \dot\sigma_t (x - \alpha_t
        x_1)/\sigma_t` that moves :math:`N(\alpha_t x_1, \sigma_t^2 I)` along the path
        (needs :math:`\sigma_t > 0`)."""
        check_batches(x, x1, ("x", "x1"), paired=True)
        a, s, da, ds = self.coefficients(t, x)
        return da * x1 + ds * (x - a * x1) / s


class CondOTPath(AffinePath):
    r"""Creates the conditional optimal-transport (conical Gaussian) path.

    :math:`\alpha_t = t`, :math:`\sigma_t = 1 - (1 - \sigma_\min) t`: each conditional path
    :math:`N(t x_1, \sigma_t^2 I)` moves its source to :math:`N(x_1, \sigma_\min^2 I)` along
    straight lines at constant speed, with target :math:`x_1 - (1 - \sigma_\min) x_0`
    (Lipman et al., 2023, eq. 20-23). ``sigma_min = 0`` is the linear interpolation.

    Args:
        sigma_min: the width of the conditional path at the data, ``0 <= sigma_min < 1``.

    Example:
        >>> path = CondOTPath(sigma_min=0.1)
        >>> m = path.schedule(torch.tensor([0.0, 1.0]))
        >>> m.alpha.tolist(), [round(v, 4) for v in m.sigma.tolist()]
        ([0.0, 1.0], [1.0, 0.1])
        >>> [round(v, 4) for v in m.d_sigma.tolist()]  # -(1 - sigma_min)
        [-0.9, -0.9]
    """

    def __init__(self, sigma_min: float = 0.0) -> None:
        super().__init__()
        if isinstance(sigma_min, bool) or not isinstance(sigma_min, (int, float)) \
                or not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min: expected a float in [0, 1), got {sigma_min!r}.")
        self.sigma_min = float(sigma_min)

    def schedule(self, t: Tensor) -> Marginal:  # noqa: D102
        t = torch.as_tensor(t)
        c = 1.0 - self.sigma_min
        return Marginal(t, 1.0 - c * t, torch.ones_like(t), torch.full_like(t, -c))

    def extra_repr(self) -> str:  # noqa: D102
        return f"sigma_min={self.sigma_min:g}"


class LinearPath(AffinePath):
    r"""Creates the straight interpolation :math:`x_t = t x_1 + (1 - t) x_0` of rectified flow.

    Target :math:`x_1 - x_0`. The schedule of :class:`CondOTPath` with ``sigma_min = 0``; a
    class of its own because rectified flow trains it on any coupling of the two ends, e.g.
    the (noise, sample) pairs of a trained flow in reflow, where the Gaussian-source
    conversions to a score no longer describe the marginal (Liu et al., 2023).
    """

    def schedule(self, t: Tensor) -> Marginal:  # noqa: D102
        t = torch.as_tensor(t)
        return Marginal(t, 1.0 - t, torch.ones_like(t), -torch.ones_like(t))


class DiffusionPath(AffinePath):
    r"""Creates the path of a diffusion SDE's marginals :math:`x_t = \alpha_t x_1 + \sigma_t
    x_0` (:meth:`probgen.sde.SDE.marginal`).

    Flow matching along it learns the SDE's probability-flow field (the velocity form of
    its score, ``convert(score, x, t, source="score", target="velocity")``).
    :math:`\dot\sigma_t` is infinite at the data, so training and sampling stop at
    ``t_end = 1 - eps``; samplers start from the SDE's prior
    :math:`N(0, \text{prior\_std}^2 I)`.

    Args:
        sde: a :class:`probgen.sde.SDE` (VP, VE, sub-VP).
        eps: the path stops at ``t_end = 1 - eps`` (1e-3 as score_sde's samplers).
    """

    def __init__(self, sde: SDE, eps: float = 1e-3) -> None:
        super().__init__()
        if not isinstance(sde, SDE):
            raise TypeError(f"sde: expected a probgen.sde.SDE, got {type(sde).__name__}.")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps: expected a float in (0, 1), got {eps!r}.")
        self.sde, self.eps = sde, float(eps)
        self.t_end = 1.0 - self.eps
        self.prior_std = float(sde.prior_std)

    def schedule(self, t: Tensor) -> Marginal:  # noqa: D102
        return self.sde.schedule(torch.as_tensor(t))

    def extra_repr(self) -> str:  # noqa: D102
        return f"eps={self.eps:g}"


class VPPath(DiffusionPath):
    r"""Creates the variance-preserving path: the marginals of :class:`probgen.sde.VPSDE`,
    :math:`\alpha_t = e^{-B(1-t)/2}`, :math:`\sigma_t = \sqrt{1 - \alpha_t^2}`.

    Args:
        beta_min: :math:`\beta_\min`; beta_max: :math:`\beta_\max` (0.1 and 20).
        eps: the path stops at ``1 - eps``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3
                 ) -> None:
        super().__init__(VPSDE(beta_min, beta_max), eps)


class VEPath(DiffusionPath):
    r"""Creates the variance-exploding path: the marginals of :class:`probgen.sde.VESDE`,
    :math:`\alpha_t = 1`, :math:`\sigma_t^2 = \sigma(1-t)^2 - \sigma_\min^2`; the samplers
    start from :math:`N(0, \sigma_\max^2 I)`.

    Args:
        sigma_min: :math:`\sigma_\min`; sigma_max: :math:`\sigma_\max` (0.01 and 50; pick
            ``sigma_max`` about the largest distance between data points).
        eps: the path stops at ``1 - eps``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, eps: float = 1e-3
                 ) -> None:
        super().__init__(VESDE(sigma_min, sigma_max), eps)


class CosinePath(AffinePath):
    r"""Creates the cosine variance-preserving path of Nichol & Dhariwal (2021) in probgen
    time.

    In diffusion time :math:`u = 1 - t` (data at ``u = 0``) their
    :math:`\bar\alpha(u) = f(u)/f(0)`, :math:`f(u) = \cos^2(\tfrac{u + s}{1 + s}
    \tfrac{\pi}{2})`; here :math:`\alpha_t = \sqrt{\bar\alpha(1 - t)}`,
    :math:`\sigma_t = \sqrt{1 - \alpha_t^2}`, so :math:`\alpha_0 = 0` (pure noise, prior
    :math:`N(0, I)`) and :math:`\alpha_1 = 1`. With :math:`\theta = \tfrac{u + s}{1 + s}
    \tfrac{\pi}{2}` and :math:`\theta_0` its value at ``u = 0``, :math:`\alpha_t = \cos
    \theta/\cos\theta_0` and :math:`\sigma_t = \sqrt{\sin(\theta - \theta_0)\sin(\theta +
    \theta_0)}/\cos\theta_0` (accurate near the data). :math:`\dot\sigma_t` is infinite at
    the data, so the path stops at ``t_end = 1 - eps``.

    **The discrete schedule at its grid.** :meth:`probgen.diffusion.NoiseSchedule.cosine`
    with ``T`` steps has, before ``max_beta`` clips a beta, :math:`\bar\alpha_k =
    f((k+1)/T)/f(0) = \alpha_t^2` at :math:`t = 1 - (k+1)/T` for ``step = 0..T-1``: the
    schedule's step ``k`` is this path at diffusion time :math:`(k+1)/T` (its last step
    at ``t = 0``), not at :class:`probgen.diffusion.SchedulePath`'s
    :math:`t = 1 - k/(T-1)`, which spreads the same values evenly over ``[0, 1]``.

    Args:
        s: the offset :math:`s \ge 0` (0.008 in Nichol & Dhariwal) that keeps
            :math:`\beta` from vanishing near the data.
        eps: the path stops at ``t_end = 1 - eps``.

    Example:
        >>> path = CosinePath()
        >>> a, s = path.alpha_sigma(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
        >>> [round(v, 4) for v in a.tolist()], [round(v, 4) for v in s.tolist()]
        ([0.0, 0.7027, 1.0], [1.0, 0.7114, 0.0])
    """

    def __init__(self, s: float = 0.008, eps: float = 1e-3) -> None:
        super().__init__()
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < math.inf:
            raise ValueError(f"s: expected a finite float >= 0, got {s!r}.")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps: expected a float in (0, 1), got {eps!r}.")
        self.s, self.eps = float(s), float(eps)
        self.t_end = 1.0 - self.eps

    def unnormalized_alpha_bar(self, u: Tensor) -> Tensor:
        r""":math:`f(u) = \cos^2(\tfrac{u + s}{1 + s}\tfrac{\pi}{2})` at diffusion times
        ``u`` (any shape); :math:`\bar\alpha(u) = f(u)/f(0)`."""
        return torch.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2

    def schedule(self, t: Tensor) -> Marginal:  # noqa: D102
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        rate = math.pi / (2 * (1 + self.s))  # d theta / du
        theta0 = self.s * rate
        u = 1.0 - t
        theta = (u + self.s) * rate
        alpha = (torch.cos(theta) / math.cos(theta0)).clamp(min=0)
        sigma = (torch.sin(u * rate) * torch.sin(theta + theta0)).clamp(min=0).sqrt() \
            / math.cos(theta0)
        d_alpha = torch.sin(theta) * rate / math.cos(theta0)  # d/dt = -d/du
        d_sigma = -alpha * d_alpha / sigma
        return Marginal(alpha, sigma, d_alpha, d_sigma)

    def extra_repr(self) -> str:  # noqa: D102
        return f"s={self.s:g}, eps={self.eps:g}"


#: The paths by name (the CLI's ``[model] path``).
PATHS: dict[str, type[AffinePath]] = {
    "ot": CondOTPath,
    "linear": LinearPath,
    "vp": VPPath,
    "ve": VEPath,
}


def get_path(name: str, **kwargs: float) -> AffinePath:
    """Builds the path called ``name`` (see :data:`PATHS`) with its parameters.

    Raises:
        ValueError: an unknown name, or parameters the path does not take.

    Example:
        >>> get_path("ot", sigma_min=0.01)
        CondOTPath(sigma_min=0.01)
    """
    return build_named("path", PATHS, name, **kwargs)
