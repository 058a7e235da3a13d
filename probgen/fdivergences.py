r"""The f-divergences of the f-GAN: generators, Fenchel conjugates and output activations.

For a convex :math:`f` with :math:`f(1) = 0`, the f-divergence of :math:`P` from :math:`Q` is

.. math::
    D_f(P \| Q) = \int q(x)\, f\!\left(\frac{p(x)}{q(x)}\right) dx
    \;\ge\; \sup_T\; E_P[T(x)] - E_Q[f^*(T(x))],

where :math:`f^*(t) = \sup_u\, u t - f(u)` is the Fenchel conjugate; the bound is tight at
:math:`T^*(x) = f'(p(x)/q(x))` (Nguyen, Wainwright & Jordan 2010). An f-GAN critic outputs an
unconstrained :math:`V(x)` and sets :math:`T = g_f(V)` with an output activation :math:`g_f`
whose range lies inside the domain of :math:`f^*` (Nowozin et al. 2016, Tables 1, 2 and 6).
Here :math:`P` is the data and :math:`Q` the model.

Conventions, as in the paper's generators (so the values differ from other common ones):
``"js"`` is :math:`2\,\mathrm{JS}(P, Q)` with :math:`\mathrm{JS}` in :math:`[0, \log 2]`
(the paper's generator and conjugate give twice the half-sum of KLs), ``"hellinger"`` is
:math:`\int(\sqrt p - \sqrt q)^2` (no 1/2), ``"tv"`` is :math:`\tfrac12\int|p - q|`,
``"pearson"`` is :math:`\int (p - q)^2 / q`, ``"reverse_kl"`` is :math:`KL(Q \| P)`, and
``"gan"`` is the original GAN's :math:`2\,\mathrm{JS} - \log 4`.

The table is written out here because neither torch nor Pyro has it; the true divergences
between 1-D densities are computed with :func:`scipy.integrate.quad`.

References:
    f-GAN: Training Generative Neural Samplers using Variational Divergence Minimization
    (Nowozin, Cseke & Tomioka, 2016), https://arxiv.org/abs/1606.00709
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from probgen.utils import check_choice

__all__ = ["FDivergence", "F_DIVERGENCES", "get_f_divergence", "f_divergence_1d"]

_LOG2 = math.log(2.0)


@dataclass(frozen=True)
class FDivergence:
    r"""One row of the f-GAN table: :math:`f`, :math:`f^*`, :math:`g_f` and :math:`f'`.

    Attributes:
        name: the key in :data:`F_DIVERGENCES`.
        generator: :math:`f(u)` for ratios :math:`u > 0` (elementwise on tensors).
        conjugate: :math:`f^*(t)` on the range of ``activation`` (elementwise).
        activation: :math:`g_f(v)`, mapping any real :math:`v` into the domain of
            :math:`f^*`.
        derivative: :math:`f'(u)`, the optimal critic :math:`T^*(x) = f'(p(x)/q(x))`.
        upper: the supremum of :math:`D_f` over all pairs (``inf`` when unbounded).
    """

    name: str
    generator: Callable[[Tensor], Tensor]
    conjugate: Callable[[Tensor], Tensor]
    activation: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    upper: float

    def bound(self, v_data: Tensor, v_model: Tensor) -> Tensor:
        r"""The variational lower bound :math:`E_P[g_f(V)] - E_Q[f^*(g_f(V))]`.

        Args:
            v_data: raw critic outputs on data samples, shape ``(n,)``.
            v_model: raw critic outputs on model samples, shape ``(m,)``.

        Returns:
            Tensor: the Monte Carlo estimate, a scalar.
        """
        return self.activation(v_data).mean() - self.conjugate(self.activation(v_model)).mean()


def _xlogx(u: Tensor) -> Tensor:
    return torch.xlogy(u, u)


F_DIVERGENCES: dict[str, FDivergence] = {
    # Nowozin et al. (2016) Table 2 (g_f) and Table 6 (f*, domains), Table 1 (f).
    "kl": FDivergence(
        "kl", _xlogx, lambda t: torch.exp(t - 1.0), lambda v: v,
        lambda u: torch.log(u) + 1.0, math.inf),
    "reverse_kl": FDivergence(
        "reverse_kl", lambda u: -torch.log(u), lambda t: -1.0 - torch.log(-t),
        lambda v: -torch.exp(-v), lambda u: -1.0 / u, math.inf),
    "pearson": FDivergence(
        "pearson", lambda u: (u - 1.0) ** 2, lambda t: 0.25 * t**2 + t, lambda v: v,
        lambda u: 2.0 * (u - 1.0), math.inf),
    "hellinger": FDivergence(
        "hellinger", lambda u: (torch.sqrt(u) - 1.0) ** 2, lambda t: t / (1.0 - t),
        lambda v: 1.0 - torch.exp(-v), lambda u: 1.0 - 1.0 / torch.sqrt(u), 2.0),
    "js": FDivergence(
        # -log(2 - e^t) = -log 2 - log(1 - e^t / 2), computed without cancellation.
        "js", lambda u: _xlogx(u) - (u + 1.0) * torch.log((u + 1.0) / 2.0),
        lambda t: -_LOG2 - torch.log1p(-torch.exp(t - _LOG2)),
        lambda v: _LOG2 - F.softplus(-v), lambda u: torch.log(2.0 * u / (1.0 + u)),
        2.0 * _LOG2),
    "tv": FDivergence(
        "tv", lambda u: 0.5 * torch.abs(u - 1.0), lambda t: t,
        lambda v: 0.5 * torch.tanh(v), lambda u: 0.5 * torch.sign(u - 1.0), 1.0),
    "gan": FDivergence(
        # f*(t) = -log(1 - e^t) for t < 0; g_f(v) = -softplus(-v) = log sigmoid(v).
        "gan", lambda u: _xlogx(u) - _xlogx(u + 1.0),
        lambda t: -torch.log(-torch.expm1(t)), lambda v: -F.softplus(-v),
        lambda u: torch.log(u / (u + 1.0)), 0.0),
}


def get_f_divergence(name: str) -> FDivergence:
    """The table row called ``name``.

    Raises:
        ValueError: unknown name; the message lists the known ones.

    Example:
        >>> d = get_f_divergence("kl")
        >>> float(d.conjugate(torch.tensor(1.0)))
        1.0
    """
    check_choice("f-divergence", name, sorted(F_DIVERGENCES))
    return F_DIVERGENCES[name]


def f_divergence_1d(
    name: str,
    log_p: Callable[[Tensor], Tensor],
    log_q: Callable[[Tensor], Tensor],
    *,
    lower: float = -math.inf,
    upper: float = math.inf,
) -> float:
    r"""The true :math:`D_f(P \| Q)` between two 1-D densities, by adaptive quadrature.

    Integrates :math:`q(x) f(p(x)/q(x))` in float64 with :func:`scipy.integrate.quad`
    (the densities are given by their log so that ratios in the tails stay finite).

    Args:
        name: a key of :data:`F_DIVERGENCES`.
        log_p: :math:`\log p`, a function of a float64 tensor of points.
        log_q: :math:`\log q`, likewise.
        lower: the lower end of the support to integrate over.
        upper: the upper end.

    Returns:
        float: the divergence.

    Example:
        >>> from torch.distributions import Normal
        >>> p, q = Normal(0.0, 1.0), Normal(1.0, 1.0)
        >>> round(f_divergence_1d("kl", p.log_prob, q.log_prob), 6)  # closed form 1/2
        0.5
    """
    from scipy.integrate import quad

    div = get_f_divergence(name)

    def integrand(x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64)
        lp, lq = log_p(t), log_q(t)
        q = torch.exp(lq)
        if float(q) == 0.0:
            return 0.0
        return float(q * div.generator(torch.exp(lp - lq)))

    value, _ = quad(integrand, lower, upper, limit=500, epsabs=1e-10, epsrel=1e-8)
    return float(value)
