r"""Gaussian probability paths :math:`x_t = \alpha_t x_\text{data} + \sigma_t \epsilon` and the
one conversion between what a network of ``(x, t)`` predicts.

**Time convention** (every continuous process of probgen): :math:`t \in [0, 1]`, ``t = 0``
noise (the source, the prior), ``t = 1`` data. Formulas of papers that run the other way
(the score-SDE literature's diffusion time :math:`s = 1 - t`) are converted where those
processes are defined (:mod:`probgen.sde`).

A :class:`GaussianPath` gives the schedule :math:`(\alpha_t, \sigma_t)` and its time
derivatives as a :class:`Marginal`; the score SDEs (:class:`probgen.sde.VPSDE`,
:class:`~probgen.sde.SubVPSDE`, :class:`~probgen.sde.VESDE`) and the flow-matching paths
(:class:`probgen.paths.CondOTPath`, :class:`~probgen.paths.LinearPath`, the SDEs' own
:class:`~probgen.paths.VPPath` and :class:`~probgen.paths.VEPath`) are its subclasses, so
one network trained on a path can be read by every sampler that fits the path.

**Predictions.** At a point :math:`x = \alpha_t \hat x + \sigma_t \hat\epsilon` a network may
predict any of (:data:`PREDICTIONS`):

- ``"eps"``: the noise :math:`\hat\epsilon = E[\epsilon \mid x_t = x]`;
- ``"data"``: the data :math:`\hat x = E[x_\text{data} \mid x_t = x]` (DDPM's "x0");
- ``"v"``: :math:`v = \alpha_t \hat\epsilon - \sigma_t \hat x` (Salimans & Ho, 2022);
- ``"score"``: :math:`\nabla \log p_t(x) = -\hat\epsilon / \sigma_t`;
- ``"velocity"``: the flow-matching field :math:`u_t(x) = \dot\alpha_t \hat x +
  \dot\sigma_t \hat\epsilon` (the probability-flow ODE's right-hand side).

The first four determine one another given :math:`(\alpha_t, \sigma_t)`; the velocity
needs the derivatives too. :func:`convert_prediction` maps any one to any other through the
pair :math:`(\hat x, \hat\epsilon)` (with :math:`\Delta_t = \alpha_t \dot\sigma_t -
\dot\alpha_t \sigma_t`, :math:`\hat\epsilon = (\alpha_t u - \dot\alpha_t x)/\Delta_t`,
:math:`\hat x = (\dot\sigma_t x - \sigma_t u)/\Delta_t`), and :meth:`GaussianPath.convert`
does it at times ``t`` of a path. Converting *from* the noise needs :math:`\alpha_t > 0`,
*from* the data or *to* the score needs :math:`\sigma_t > 0`.

References:
    Score-Based Generative Modeling through Stochastic Differential Equations (Song et al.,
    2021), https://arxiv.org/abs/2011.13456
    Flow Matching Guide and Code (Lipman et al., 2024), https://arxiv.org/abs/2412.06264
    Progressive Distillation for Fast Sampling of Diffusion Models (Salimans & Ho, 2022),
    https://arxiv.org/abs/2202.00512
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from probgen.utils import check_choice

__all__ = ["Marginal", "PREDICTIONS", "GaussianPath", "convert_prediction", "predictions_of_pair",
           "check_time", "check_path_prediction", "check_batches", "check_like"]

#: What a network of ``(x, t)`` may predict (see the module docstring).
PREDICTIONS = ("eps", "data", "v", "score", "velocity")


class Marginal(NamedTuple):
    r"""The Gaussian kernel :math:`x_t \mid x_\text{data} \sim N(\alpha_t x_\text{data},
    \sigma_t^2 I)` of a path at some times.

    All in probgen time (``t = 0`` noise, ``t = 1`` data), each of the shape of ``t``:

    Attributes:
        alpha: :math:`\alpha_t`, the mean coefficient.
        sigma: :math:`\sigma_t`, the standard deviation.
        d_alpha: :math:`d\alpha_t/dt` (``None`` where a discrete schedule has none).
        d_sigma: :math:`d\sigma_t/dt` (infinite at ``t = 1`` for VP and VE).
    """

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor | None = None
    d_sigma: Tensor | None = None

    def broadcast_to(self, x: Tensor) -> Marginal:
        """The coefficients of one time per example ``(batch,)``, in ``x``'s dtype and
        shaped ``(batch, 1, ..., 1)`` against ``x`` ``(batch, *event)`` (0-d tensors and
        Python numbers, constants of the path, stay as they are)."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        return Marginal(*(v if not isinstance(v, Tensor) or v.dim() == 0
                          else (v if v.dtype == x.dtype else v.to(x.dtype)).reshape(shape)
                          for v in self))


def check_time(t: Tensor | float, x: Tensor, *, bounded: bool = False,
               positive: bool = False) -> Tensor:
    """Times for a batch ``x``: ``(batch,)`` in ``x``'s dtype and device, a scalar broadcast.

    Raises:
        ValueError: not one time per example, non-finite times, (``positive``) times not
            above 0, or (``bounded``) times outside ``[0, 1]`` (fields may be evaluated
            slightly past the ends by adaptive solvers, so only sampling of training points
            asks for ``bounded``).
    """
    if not isinstance(t, Tensor):
        t = torch.as_tensor(float(t))
    t = t.to(device=x.device, dtype=x.dtype if x.is_floating_point() else None)
    if t.numel() == 1 and t.dim() <= 1:
        t = t.reshape(1).expand(x.shape[0])
    if t.shape != x.shape[:1]:
        raise ValueError(f"t: expected shape ({x.shape[0]},) (one time per example) or a "
                         f"scalar, got {tuple(t.shape)}.")
    # one reduction (one host sync) for every check of the values
    ok = torch.isfinite(t) if not positive else torch.isfinite(t) & (t > 0)
    if not bool(ok.all()):
        if positive and bool(torch.isfinite(t).all()):
            raise ValueError(f"t: expected positive values, got min {float(t.min()):g}.")
        raise ValueError("t: expected finite times, got NaN or Inf.")
    if bounded and (t.min() < 0 or t.max() > 1):
        raise ValueError("t: expected times in [0, 1] (0 noise, 1 data), got values in "
                         f"[{float(t.min()):g}, {float(t.max()):g}].")
    return t


def check_batches(x: Any, other: Any, names: tuple[str, str] = ("x0", "x1"), *,
                  paired: bool = False) -> None:
    """Checks two batches ``(batch, *event)`` (the two ends of a path, two minibatches to
    couple): non-empty floating-point tensors of one event shape (``paired``: of one shape).

    Raises:
        TypeError: not floating-point tensors.
        ValueError: empty batches, no event dimension, or mismatched shapes.
    """
    for value, name in zip((x, other), names, strict=True):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            got = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name}: expected a floating-point tensor (batch, *event), "
                            f"got {got}.")
        if value.dim() < 2 or value.shape[0] == 0:
            raise ValueError(f"{name}: expected a non-empty batch (batch, *event), got "
                             f"{tuple(value.shape)}.")
    if (x.shape if paired else x.shape[1:]) != (other.shape if paired else other.shape[1:]):
        what = "one shape (batch, *event)" if paired else "one event shape"
        raise ValueError(f"{names[0]} and {names[1]}: expected {what}, got "
                         f"{tuple(x.shape)} and {tuple(other.shape)}.")


def check_like(value: Any, x: Tensor, name: str, what: str = "an output of ") -> Tensor:
    """Checks that ``value`` (a network's output, a noise draw) is a tensor of the shape of
    the states ``x`` ``(batch, *event)``, and returns it.

    Raises:
        ValueError: not a tensor of ``x``'s shape (the message names ``name``).
    """
    if not isinstance(value, Tensor) or value.shape != x.shape:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name}: expected {what}the shape of x {tuple(x.shape)}, got {got}.")
    return value


def check_path_prediction(path: Any, prediction: str) -> None:
    """Checks that ``path`` is a :class:`GaussianPath` and ``prediction`` one of
    :data:`PREDICTIONS` (the arguments of everything that reads a network on a path)."""
    check_choice("prediction", prediction, PREDICTIONS)
    if not isinstance(path, GaussianPath):
        raise TypeError(f"path: expected a probgen.processes.GaussianPath, got "
                        f"{type(path).__name__}.")


def predictions_of_pair(target: str, x: Tensor, marginal: Marginal, *,
                        data: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
    r"""The ``target`` prediction (:data:`PREDICTIONS`) of the pair (data, noise) at the
    points :math:`x = \alpha_t\,\text{data} + \sigma_t\,\epsilon`: the one conversion's
    last half (:func:`convert_prediction`), and the regression target of a denoising pair.

    Args:
        target: a name in :data:`PREDICTIONS`.
        x: the points ``(batch, *event)``.
        marginal: the coefficients, broadcastable to ``x``.
        data, eps: the pair; one of them may be ``None`` (then computed from ``x``).
    """
    a, s, da, ds = marginal
    if target == "eps":
        return eps if eps is not None else (x - a * data) / s
    if target == "score":
        return -(eps if eps is not None else (x - a * data) / s) / s
    if data is None:
        data = (x - s * eps) / a
    if target == "data":
        return data
    if eps is None:
        eps = (x - a * data) / s
    if target == "v":
        return a * eps - s * data
    return da * data + ds * eps


def convert_prediction(prediction: Tensor, x: Tensor, marginal: Marginal, *, source: str,
                       target: str) -> Tensor:
    r"""Turns a ``source`` prediction at points ``x`` into the ``target`` one.

    Args:
        prediction: the network's output, the shape of ``x``.
        x: the points :math:`x_t`, ``(batch, *event)``.
        marginal: :math:`(\alpha_t, \sigma_t, \dot\alpha_t, \dot\sigma_t)` broadcastable
            to ``x`` (the derivatives are needed only to or from ``"velocity"``).
        source, target: names in :data:`PREDICTIONS`.

    Returns:
        The ``target`` prediction, the shape of ``x``.

    Raises:
        ValueError: unknown names, a shape mismatch, or a velocity without derivatives.

    Example:
        >>> m = Marginal(torch.tensor(0.6), torch.tensor(0.8), torch.tensor(1.0),
        ...              torch.tensor(-0.75))
        >>> x, eps = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
        >>> data = convert_prediction(eps, x, m, source="eps", target="data")
        >>> torch.allclose(0.6 * data + 0.8 * eps, x)  # x = alpha data + sigma eps
        True
        >>> back = convert_prediction(
        ...     convert_prediction(eps, x, m, source="eps", target="velocity"), x, m,
        ...     source="velocity", target="eps")
        >>> torch.allclose(back, eps)
        True
    """
    check_choice("source", source, PREDICTIONS)
    check_choice("target", target, PREDICTIONS)
    check_like(prediction, x, "prediction", what="")
    if source == target:
        return prediction
    a, s, da, ds = marginal
    if "velocity" in (source, target) and (da is None or ds is None):
        raise ValueError("velocity: this schedule has no time derivatives (a discrete "
                         "schedule); convert between eps, data, v and score only.")
    # (data, eps) pair: the one prediction given, the other from x = a data + s eps.
    data = eps = None
    if source == "eps":
        eps = prediction
    elif source == "data":
        data = prediction
    elif source == "v":  # [x; v] = [[a, s], [-s, a]] [data; eps]
        norm = a * a + s * s
        data, eps = (a * x - s * prediction) / norm, (s * x + a * prediction) / norm
    elif source == "score":
        eps = -s * prediction
    else:  # velocity u = da data + ds eps
        delta = a * ds - da * s
        data, eps = (ds * x - s * prediction) / delta, (a * prediction - da * x) / delta
    return predictions_of_pair(target, x, marginal, data=data, eps=eps)


class GaussianPath(nn.Module, ABC):
    r"""Abstract class of a Gaussian path :math:`x_t = \alpha_t x_\text{data} + \sigma_t
    \epsilon`, :math:`\epsilon \sim N(0, I)`, in probgen time.

    Subclasses give :meth:`schedule`; this class gives the coefficients at a batch of times,
    the prior the samplers start from, the one conversion between predictions
    (:meth:`convert`) and, for Gaussian data :math:`N(\mu, \Sigma)`, the closed-form
    marginal, score and velocity (the ground truth of samplers' and objectives' tests).
    Holds no parameters (an ``nn.Module`` so that models register it as a submodule).

    Attributes:
        t_end: the last time the path is trained and sampled at (1, or ``1 - eps`` where
            the velocity is singular at the data).
        prior_std: the standard deviation of the isotropic Gaussian prior at ``t = 0``.
    """

    t_end: float = 1.0
    prior_std: float = 1.0

    @abstractmethod
    def schedule(self, t: Tensor) -> Marginal:
        r"""``(alpha_t, sigma_t, d alpha_t/dt, d sigma_t/dt)``, each of the shape of ``t``."""

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""``(alpha_t, sigma_t)`` at times ``t`` (any shape)."""
        m = self.schedule(torch.as_tensor(t, dtype=torch.get_default_dtype())
                          if not isinstance(t, Tensor) else t)
        return m.alpha, m.sigma

    def time_at_ratio(self, ratio: Tensor, t_start: float = 0.0, t_end: float | None = None
                      ) -> Tensor:
        r"""The times in ``[t_start, t_end]`` whose noise-to-signal ratio
        :math:`\sigma_t/\alpha_t` is ``ratio`` (any shape, float64).

        The ratio decreases in ``t`` on every path here; this bisects it to float64
        precision (subclasses with a closed-form inverse override it). Ratios outside the
        interval's give its ends.
        """
        t_end = self.t_end if t_end is None else float(t_end)
        ratio = torch.as_tensor(ratio, dtype=torch.float64)
        a, b = torch.full_like(ratio, t_start), torch.full_like(ratio, t_end)
        for _ in range(56):
            mid = 0.5 * (a + b)
            alpha, sigma = self.alpha_sigma(mid)
            above = sigma / alpha > ratio
            a, b = torch.where(above, mid, a), torch.where(above, b, mid)
        return 0.5 * (a + b)

    def coefficients(self, t: Tensor | float, x: Tensor) -> Marginal:
        """The schedule at one time per example of ``x`` (or a scalar time), in ``x``'s dtype
        and broadcast against ``x`` ``(batch, *event)``."""
        return self.schedule(check_time(t, x)).broadcast_to(x)

    def convert(self, prediction: Tensor, x: Tensor, t: Tensor | float, *, source: str,
                target: str) -> Tensor:
        r"""Turns a ``source`` prediction at ``(x, t)`` into ``target`` (names in
        :data:`PREDICTIONS`), see :func:`convert_prediction`.

        Args:
            prediction: ``(batch, *event)``.
            x: the points, ``(batch, *event)``.
            t: times ``(batch,)`` or a scalar.

        Example:
            >>> from probgen.paths import CondOTPath
            >>> path = CondOTPath()
            >>> x, t = torch.tensor([[0.5, 0.5]]), torch.tensor([0.5])
            >>> u = path.convert(torch.zeros(1, 2), x, t, source="eps", target="velocity")
            >>> torch.allclose(u, torch.ones(1, 2))  # no noise: x_t = t x_1, so u = x_1
            True
        """
        return convert_prediction(prediction, x, self.coefficients(t, x), source=source,
                                  target=target)

    def prior(self, event_shape: Sequence[int], *, device: Any = None,
              dtype: torch.dtype | None = None) -> Distribution:
        """The prior at ``t = 0``: :math:`N(0, \\text{prior\\_std}^2 I)` over ``event_shape``
        (``Independent(Normal, len(event_shape))``)."""
        shape = tuple(int(e) for e in event_shape)
        if not shape:
            raise ValueError("event_shape: expected a non-empty shape, e.g. (2,) or (1, 28, 28).")
        loc = torch.zeros(shape, device=device, dtype=dtype or torch.get_default_dtype())
        return Independent(Normal(loc, torch.full_like(loc, float(self.prior_std))), len(shape))

    # ------------------------------------------------------------------ Gaussian data
    def gaussian_marginal(self, t: Tensor | float, mean: Tensor, cov: Tensor
                          ) -> tuple[Tensor, Tensor]:
        r"""Mean and covariance of :math:`x_t` for data :math:`N(\mu, \Sigma)`:
        :math:`(\alpha_t\mu,\ \alpha_t^2\Sigma + \sigma_t^2 I)` at one scalar time ``t``."""
        t = torch.as_tensor(t, dtype=mean.dtype, device=mean.device).reshape(())
        a, s = self.schedule(t)[:2]
        eye = torch.eye(mean.shape[0], dtype=mean.dtype, device=mean.device)
        return a * mean, a**2 * cov + s**2 * eye

    def gaussian_prediction(self, x: Tensor, t: Tensor | float, mean: Tensor, cov: Tensor,
                            target: str = "score") -> Tensor:
        r"""The exact ``target`` prediction (:data:`PREDICTIONS`) for data :math:`N(\mu,
        \Sigma)`.

        With :math:`C_t = \alpha_t^2\Sigma + \sigma_t^2 I`, :math:`E[\epsilon \mid x] =
        \sigma_t C_t^{-1}(x - \alpha_t\mu)` and :math:`E[x_\text{data} \mid x] = \mu +
        \alpha_t \Sigma C_t^{-1}(x - \alpha_t\mu)`; the score is :math:`-C_t^{-1}(x -
        \alpha_t\mu)`.

        Args:
            x: points ``(batch, D)``; t: times ``(batch,)`` or a scalar;
            mean: :math:`\mu`, ``(D,)``; cov: :math:`\Sigma`, ``(D, D)``.
            target: what to return.

        Returns:
            ``(batch, D)``.
        """
        if x.dim() != 2:
            raise ValueError(f"x: expected points (batch, D), got {tuple(x.shape)}.")
        check_choice("target", target, PREDICTIONS)
        t = check_time(t, x)
        a, s, da, ds = self.schedule(t)
        mean, cov = mean.to(x), cov.to(x)
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        c = a[:, None, None] ** 2 * cov + s[:, None, None] ** 2 * eye
        w = torch.linalg.solve(c, (x - a[:, None] * mean).unsqueeze(-1))  # C^{-1}(x - a mu)
        if target == "score":
            return -w.squeeze(-1)
        return predictions_of_pair(target, x, Marginal(a, s, da, ds).broadcast_to(x),
                                   data=mean + a[:, None] * (cov @ w).squeeze(-1),
                                   eps=s[:, None] * w.squeeze(-1))
