r"""Score SDEs: the variance-preserving, variance-exploding and sub-VP diffusions.

**Time convention.** probgen runs every continuous process over :math:`t \in [0, 1]` with
``t = 0`` noise and ``t = 1`` data (:mod:`probgen.cnf`, flow matching). The SDE literature
(Song et al., 2021) runs *diffusion time* :math:`s` the other way, from data (``s = 0``)
to noise (``s = 1``). The two are converted here, and only here:

.. math:: t = 1 - s.

- The forward (noising) SDE :math:`dx = f(x, s)\,ds + g(s)\,dW_s` is integrated by torchsde
  over increasing ``s`` (torchsde needs increasing times), so the torchsde methods
  :meth:`SDE.f` and :meth:`SDE.g` take **diffusion time** ``s`` as their first argument,
  exactly as torchsde calls them.
- Everything else takes **probgen time** ``t``: the marginals :meth:`SDE.marginal`
  (:math:`x_t = \alpha_t x_1 + \sigma_t \epsilon`, ``x_1`` the data), :meth:`SDE.drift`,
  :meth:`SDE.diffusion`, score networks ``score(x, t)``, the reverse-time SDE
  (:meth:`SDE.reverse`, integrated by torchsde over increasing ``t``: noise -> data) and the
  probability-flow field (:meth:`SDE.probability_flow`, a field ``v(x, t)`` that
  :class:`probgen.cnf.ContinuousFlow` takes as it is: base at ``t = 0``, data at ``t = 1``).

In probgen time the reverse SDE is :math:`dx = [-f(x, 1-t) + g(1-t)^2 \nabla\log p_t(x)]\,dt
+ g(1-t)\,dW_t` and the probability-flow ODE is :math:`\dot x = -f(x, 1-t) + \tfrac12
g(1-t)^2 \nabla \log p_t(x)`: the time flip turns the drift's sign.

The diffusion :math:`g` never depends on ``x``, so Ito and Stratonovich readings of every
SDE here coincide (the correction :math:`\tfrac12 g\,\partial_x g` is zero); the objects
declare ``sde_type = "ito"`` and :meth:`ReverseSDE.as_type` gives the same SDE labelled
Stratonovich for torchsde's Stratonovich solvers (Heun, midpoint, reversible Heun).

References:
    Score-Based Generative Modeling through Stochastic Differential Equations (Song et al.,
    2021), https://arxiv.org/abs/2011.13456
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from probgen.processes import GaussianPath, Marginal, check_time
from probgen.utils import append_dims, build_named, check_int

__all__ = [
    "Marginal",
    "SDE",
    "VPSDE",
    "VESDE",
    "SubVPSDE",
    "ReverseSDE",
    "ProbabilityFlow",
    "SDES",
    "get_sde",
    "to_diffusion_time",
    "to_probgen_time",
]

# score(x, t, **cond) -> (batch, *event): x (batch, *event), t (batch,) in probgen time.
Score = Callable[..., Tensor]


def to_diffusion_time(t: Tensor | float) -> Tensor | float:
    """Diffusion time ``s = 1 - t`` (data at ``s = 0``) from probgen time ``t``."""
    return 1.0 - t


def to_probgen_time(s: Tensor | float) -> Tensor | float:
    """probgen time ``t = 1 - s`` (data at ``t = 1``) from diffusion time ``s``."""
    return 1.0 - s


def _as_time(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    if not isinstance(t, Tensor):
        kwargs = {} if like is None else {"dtype": like.dtype, "device": like.device}
        t = torch.as_tensor(float(t), **kwargs)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def _check_score_output(s: Any, x: Tensor) -> Tensor:
    if not isinstance(s, Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"score: expected an output of the shape of x {tuple(x.shape)}, got "
                         f"{got}.")
    return s


class SDE(GaussianPath):
    r"""Abstract class of a linear (affine-drift) diffusion SDE that torchsde integrates.

    Subclasses give the drift coefficient :math:`f(x, s) = -\tfrac12 b(s) x` (zero for VE),
    the diffusion :math:`g(s)`, the closed-form marginal :math:`(\alpha, \sigma)` in
    diffusion time and the prior's ``prior_std``; this class converts to probgen time (a
    :class:`probgen.processes.GaussianPath`: schedule, prior, conversions) and builds the
    reverse SDE and the probability-flow field. Holds no parameters.

    torchsde attributes: ``noise_type = "diagonal"`` (``g`` returns ``(batch, D)``),
    ``sde_type = "ito"``; ``f(s, y)`` and ``g(s, y)`` take diffusion time and flat states
    ``y`` of shape ``(batch, D)`` (the drift is elementwise, so images flattened work).
    """

    noise_type = "diagonal"
    sde_type = "ito"

    # ---------------------------------------------------------- diffusion time (subclasses)
    @abstractmethod
    def drift_coefficient(self, s: Tensor) -> Tensor:
        r"""``b(s)`` with :math:`f(x, s) = -\tfrac12 b(s) x`, diffusion time, shape of ``s``."""

    @abstractmethod
    def diffusion_coefficient(self, s: Tensor) -> Tensor:
        """``g(s)``, diffusion time, shape of ``s``."""

    @abstractmethod
    def marginal_diffusion_time(self, s: Tensor) -> Marginal:
        r"""``(alpha, sigma, d alpha/ds, d sigma/ds)`` of :math:`x_s \mid x_0`, diffusion time."""

    # ---------------------------------------------------------- torchsde interface
    def f(self, s: Tensor, y: Tensor) -> Tensor:
        """torchsde drift in diffusion time: ``s`` scalar tensor, ``y`` ``(batch, D)``."""
        return -0.5 * self.drift_coefficient(_as_time(s, y)) * y

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        """torchsde diagonal diffusion in diffusion time, ``(batch, D)``."""
        return self.diffusion_coefficient(_as_time(s, y)).expand_as(y)

    # ---------------------------------------------------------- probgen time
    def schedule(self, t: Tensor | float) -> Marginal:
        r"""The kernel :math:`x_t = \alpha_t x_1 + \sigma_t \epsilon` in probgen time.

        Args:
            t: times in ``[0, 1]`` (``t = 1`` data), any shape.

        Returns:
            A :class:`Marginal` whose fields have the shape of ``t``; the derivatives are
            with respect to ``t`` (the negatives of those in diffusion time).

        Example:
            >>> m = VPSDE().schedule(torch.tensor([0.0, 1.0]))
            >>> [round(v, 4) for v in m.alpha.tolist()], [round(v, 4) for v in m.sigma.tolist()]
            ([0.0066, 1.0], [1.0, 0.0])
        """
        t = _as_time(t)
        m = self.marginal_diffusion_time(1.0 - t)
        return Marginal(m.alpha, m.sigma, -m.d_alpha, -m.d_sigma)

    def perturb(self, x1: Tensor, t: Tensor, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        r"""Draws :math:`x_t = \alpha_t x_1 + \sigma_t \epsilon` given the data ``x1``.

        Args:
            x1: data, shape ``(batch, *event)``.
            t: probgen times, shape ``(batch,)``.
            noise: :math:`\epsilon`, shape of ``x1`` (drawn when ``None``).
            generator: for the noise.

        Returns:
            ``(x_t, noise)``, both of the shape of ``x1``.
        """
        alpha, sigma = self.coefficients(t, x1)[:2]
        if noise is None:
            noise = torch.randn(x1.shape, dtype=x1.dtype, device=x1.device, generator=generator)
        return alpha * x1 + sigma * noise, noise

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""The forward drift :math:`f(x, s)` at ``s = 1 - t`` (probgen ``t``), shape of ``x``."""
        t = check_time(t, x)
        return -0.5 * append_dims(self.drift_coefficient(1.0 - t), x.dim()) * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        """The diffusion :math:`g(s)` at ``s = 1 - t`` (probgen ``t``), shape of ``t``."""
        return self.diffusion_coefficient(1.0 - _as_time(t))

    def reverse(self, score: Score, *, event_shape: Sequence[int] | None = None,
                cond: Mapping[str, Any] | None = None) -> ReverseSDE:
        """The reverse-time SDE (noise -> data over increasing probgen ``t``) for torchsde.

        Args:
            score: ``score(x, t, **cond)``, probgen time.
            event_shape: the shape of one example; torchsde's flat states ``(batch, D)``
                are reshaped to ``(batch, *event_shape)`` for the score (``None``: vectors).
            cond: keyword arguments passed to ``score`` unchanged (e.g. ``labels``).
        """
        return ReverseSDE(self, score, event_shape=event_shape, cond=cond)

    def probability_flow(self, score: Score, *,
                         cond: Mapping[str, Any] | None = None) -> ProbabilityFlow:
        r"""The probability-flow field :math:`v(x, t) = -f(x, 1-t) + \tfrac12 g(1-t)^2
        s(x, t)` in probgen time, for :class:`probgen.cnf.ContinuousFlow` (base at 0)."""
        return ProbabilityFlow(self, score, cond=cond)


class VPSDE(SDE):
    r"""Creates the variance-preserving SDE :math:`dx = -\tfrac12\beta(s)x\,ds +
    \sqrt{\beta(s)}\,dW`, :math:`\beta(s) = \beta_\min + s(\beta_\max - \beta_\min)`.

    The continuous limit of DDPM: with :math:`B(s) = \int_0^s \beta = s\beta_\min +
    \tfrac{s^2}{2}(\beta_\max - \beta_\min)`, the kernel is :math:`\alpha = e^{-B/2}`,
    :math:`\sigma = \sqrt{1 - \alpha^2}`; the prior is :math:`N(0, I)`.
    :meth:`discrete_betas` gives the DDPM schedule it discretizes.

    Args:
        beta_min: :math:`\beta_\min` (0.1 in Song et al.).
        beta_max: :math:`\beta_\max` (20).

    Example:
        >>> sde = VPSDE()
        >>> a, s = sde.alpha_sigma(torch.tensor(0.5))
        >>> round(float(a**2 + s**2), 5)  # variance preserving
        1.0
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        super().__init__()
        if not (0 <= beta_min <= beta_max and 0 < beta_max and math.isfinite(beta_max)):
            raise ValueError(f"beta_min, beta_max: expected 0 <= beta_min < beta_max < inf (or "
                             f"beta_min = beta_max > 0: a constant beta), got {beta_min!r}, "
                             f"{beta_max!r}.")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, s: Tensor) -> Tensor:
        r""":math:`\beta(s)`, diffusion time."""
        return self.beta_min + s * (self.beta_max - self.beta_min)

    def integrated_beta(self, s: Tensor) -> Tensor:
        r""":math:`B(s) = \int_0^s \beta(r)\,dr`, diffusion time."""
        return s * self.beta_min + 0.5 * s**2 * (self.beta_max - self.beta_min)

    def drift_coefficient(self, s: Tensor) -> Tensor:  # noqa: D102
        return self.beta(s)

    def diffusion_coefficient(self, s: Tensor) -> Tensor:  # noqa: D102
        return self.beta(s).sqrt()

    def marginal_diffusion_time(self, s: Tensor) -> Marginal:  # noqa: D102
        s = _as_time(s)
        alpha = torch.exp(-0.5 * self.integrated_beta(s))
        var = -torch.expm1(-self.integrated_beta(s))
        sigma = var.sqrt()
        d_alpha = -0.5 * self.beta(s) * alpha
        d_sigma = 0.5 * self.beta(s) * alpha**2 / sigma
        return Marginal(alpha, sigma, d_alpha, d_sigma)

    def discrete_betas(self, num_steps: int) -> Tensor:
        r"""The DDPM schedule this SDE is the limit of: :math:`\beta_i = \beta(s_i)/N`.

        With :math:`s_i = (i - 1)/(N - 1)`, :math:`i = 1..N` (``N = 1``: the one step at
        :math:`s = 0`); ``N = 1000`` gives DDPM's linear schedule from :math:`10^{-4}` to
        :math:`0.02` (Ho et al., 2020), and :meth:`probgen.diffusion.NoiseSchedule.linear`
        is computed here. :math:`\beta` is affine in :math:`s`, so the betas are evaluated
        as ``N`` values evenly spaced from :math:`\beta_\min/N` to :math:`\beta_\max/N`
        (``torch.linspace``: the endpoints exact). Step :math:`i` corresponds to diffusion
        time :math:`i/N` (probgen time :math:`1 - i/N`) and :math:`\prod_{j \le i}(1 -
        \beta_j) \to \alpha^2` as :math:`N \to \infty`.

        Returns:
            Shape ``(num_steps,)``, float64.
        """
        check_int("num_steps", num_steps)
        return torch.linspace(self.beta_min / num_steps, self.beta_max / num_steps, num_steps,
                              dtype=torch.float64)

    def extra_repr(self) -> str:  # noqa: D102
        return f"beta_min={self.beta_min:g}, beta_max={self.beta_max:g}"


class SubVPSDE(VPSDE):
    r"""Creates the sub-VP SDE :math:`dx = -\tfrac12\beta(s)x\,ds +
    \sqrt{\beta(s)(1 - e^{-2B(s)})}\,dW`.

    Same mean as :class:`VPSDE`; the variance :math:`\sigma^2 = (1 - e^{-B})^2` lies below
    the VP one at every time (Song et al., 2021, eq. 29), which gave better likelihoods.
    Prior :math:`N(0, I)`.

    Args:
        beta_min: :math:`\beta_\min`.
        beta_max: :math:`\beta_\max`.
    """

    def diffusion_coefficient(self, s: Tensor) -> Tensor:  # noqa: D102
        return (self.beta(s) * -torch.expm1(-2.0 * self.integrated_beta(s))).sqrt()

    def marginal_diffusion_time(self, s: Tensor) -> Marginal:  # noqa: D102
        # The VP mean; the variance's square root is the VP variance, 1 - e^{-B}.
        s = _as_time(s)
        vp = super().marginal_diffusion_time(s)
        return Marginal(vp.alpha, -torch.expm1(-self.integrated_beta(s)), vp.d_alpha,
                        self.beta(s) * vp.alpha**2)

    def discrete_betas(self, num_steps: int) -> Tensor:  # noqa: D102
        raise ValueError("discrete_betas: the sub-VP SDE has no DDPM counterpart; use VPSDE.")


class VESDE(SDE):
    r"""Creates the variance-exploding SDE :math:`dx = \sqrt{d[\sigma^2(s)]/ds}\,dW`,
    :math:`\sigma(s) = \sigma_\min(\sigma_\max/\sigma_\min)^s`.

    The continuous limit of NCSN's geometric noise ladder (:meth:`discrete_sigmas`). Started
    at the data, :math:`x_s \mid x_0 \sim N(x_0, (\sigma(s)^2 - \sigma_\min^2) I)`: the
    exact kernel of this SDE, so ``alpha = 1`` and ``sigma_t`` is 0 at the data (``t = 1``).
    (score_sde's code uses :math:`\sigma(s)` itself, i.e. treats the data as already blurred
    by :math:`\sigma_\min`; the two differ by :math:`\sigma_\min^2` in the variance.)
    The prior is :math:`N(0, \sigma_\max^2 I)`.

    Args:
        sigma_min: :math:`\sigma_\min` (0.01 in Song et al.).
        sigma_max: :math:`\sigma_\max` (about the largest pairwise data distance; 50 for
            CIFAR-10, see :func:`probgen.score.choose_sigmas`).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        super().__init__()
        if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise ValueError(f"sigma_min, sigma_max: expected 0 < sigma_min < sigma_max < inf, "
                             f"got {sigma_min!r}, {sigma_max!r}.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def noise_level(self, s: Tensor) -> Tensor:
        r""":math:`\sigma(s) = \sigma_\min(\sigma_\max/\sigma_\min)^s`, diffusion time."""
        return self.sigma_min * torch.exp(s * self.log_ratio)

    def drift_coefficient(self, s: Tensor) -> Tensor:  # noqa: D102
        return torch.zeros_like(s)

    def diffusion_coefficient(self, s: Tensor) -> Tensor:  # noqa: D102
        return self.noise_level(s) * math.sqrt(2.0 * self.log_ratio)

    def marginal_diffusion_time(self, s: Tensor) -> Marginal:  # noqa: D102
        s = _as_time(s)
        # sigma(s)^2 - sigma_min^2 = sigma_min^2 (e^{2 s log r} - 1), accurate near s = 0.
        sigma = self.sigma_min * torch.expm1(2.0 * s * self.log_ratio).sqrt()
        alpha = torch.ones_like(s)
        d_sigma = self.noise_level(s) ** 2 * self.log_ratio / sigma
        return Marginal(alpha, sigma, torch.zeros_like(s), d_sigma)

    @property
    def prior_std(self) -> float:  # noqa: D102
        return self.sigma_max

    def discrete_sigmas(self, num_levels: int) -> Tensor:
        r"""NCSN's geometric ladder :math:`\sigma(s_i)`, :math:`s_i` from 1 down to 0: the
        levels this SDE interpolates (largest first, as :func:`probgen.score.geometric_sigmas`).

        Returns:
            Shape ``(num_levels,)``, float64.
        """
        check_int("num_levels", num_levels, low=2)
        return self.noise_level(torch.linspace(1.0, 0.0, num_levels, dtype=torch.float64))

    def extra_repr(self) -> str:  # noqa: D102
        return f"sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}"


class _ScoreField(nn.Module):
    r"""Holds an SDE, a score and its fixed keyword arguments; gives the reverse-time field
    :math:`-f(x, 1-t) + w\,g(1-t)^2 s(x, t)` of the checked score (``weight`` :math:`w`: 1
    for the reverse SDE's drift, 1/2 for the probability flow), counting calls in ``nfe``."""

    weight: float = 1.0

    def __init__(self, sde: SDE, score: Score, *, cond: Mapping[str, Any] | None = None
                 ) -> None:
        super().__init__()
        if not isinstance(sde, SDE):
            raise TypeError(f"sde: expected a probgen.sde.SDE, got {type(sde).__name__}.")
        if not callable(score):
            raise TypeError(f"score: expected a callable score(x, t), got "
                            f"{type(score).__name__}.")
        self.sde = sde
        self.score = score  # a submodule when it is an nn.Module (parameters for the adjoint)
        self.cond = dict(cond or {})
        self.nfe = 0

    def _field(self, x: Tensor, t: Tensor | float) -> Tensor:
        self.nfe += 1
        t = check_time(t, x)
        score = _check_score_output(self.score(x, t, **self.cond), x)
        s = 1.0 - t
        b = append_dims(self.sde.drift_coefficient(s), x.dim())
        g2 = append_dims(self.sde.diffusion_coefficient(s) ** 2, x.dim())
        return 0.5 * b * x + self.weight * g2 * score


class ReverseSDE(_ScoreField):
    r"""Creates the reverse-time SDE in probgen time, an SDE object torchsde integrates.

    Over increasing ``t`` (noise at 0 -> data at 1):
    :math:`dx = [-f(x, 1-t) + g(1-t)^2 s(x, t)]\,dt + g(1-t)\,dW_t` (Anderson, 1982).
    ``f(t, y)``/``g(t, y)`` take flat states ``(batch, D)``; ``noise_type = "diagonal"``.

    Args:
        sde: the forward SDE.
        score: ``score(x, t, **cond)``, probgen time.
        event_shape: the shape of one example (``None``: ``y`` is passed as it is).
        cond: keyword arguments for ``score`` (fixed over the solve).
        sde_type: ``"ito"`` or ``"stratonovich"`` (the same SDE, see the module docstring).
    """

    noise_type = "diagonal"

    def __init__(self, sde: SDE, score: Score, *, event_shape: Sequence[int] | None = None,
                 cond: Mapping[str, Any] | None = None, sde_type: str = "ito") -> None:
        super().__init__(sde, score, cond=cond)
        if sde_type not in ("ito", "stratonovich"):
            raise ValueError(f"sde_type: expected 'ito' or 'stratonovich', got {sde_type!r}.")
        self.sde_type = sde_type
        self.event_shape = None if event_shape is None else tuple(int(e) for e in event_shape)

    def as_type(self, sde_type: str) -> ReverseSDE:
        """The same SDE labelled ``sde_type`` (exact: ``g`` does not depend on ``x``)."""
        return ReverseSDE(self.sde, self.score, event_shape=self.event_shape, cond=self.cond,
                          sde_type=sde_type)

    def _shape(self, y: Tensor) -> Tensor:
        return y if self.event_shape is None else y.reshape(y.shape[0], *self.event_shape)

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        """Drift over probgen time ``t`` (scalar tensor), flat ``y`` ``(batch, D)``."""
        return self._field(self._shape(y), t).reshape(y.shape)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        """Diagonal diffusion :math:`g(1 - t)`, shape of ``y``."""
        return self.sde.diffusion_coefficient(1.0 - _as_time(t, y)).expand_as(y)


class ProbabilityFlow(_ScoreField):
    r"""Creates the probability-flow field :math:`v(x, t) = -f(x, 1-t) + \tfrac12 g(1-t)^2
    s(x, t)` in probgen time.

    Its ODE carries :math:`p_t` along the same marginals as the SDE, deterministically
    (Song et al., 2021, eq. 13); as ``ContinuousFlow(field, sde.prior(event_shape))`` it is a
    Distribution with exact log-likelihoods. Called ``field(x, t)`` with ``x`` of shape
    ``(batch, *event)`` and ``t`` of shape ``(batch,)``; counts its evaluations in ``nfe``.

    Args:
        sde: the forward SDE.
        score: ``score(x, t, **cond)``, probgen time.
        cond: keyword arguments for ``score``.

    Example:
        >>> from probgen.cnf import ContinuousFlow
        >>> sde = VPSDE()
        >>> field = sde.probability_flow(lambda x, t: -x)  # the N(0, I) data's exact score
        >>> flow = ContinuousFlow(field, sde.prior((2,)), t1=1.0)
        >>> with torch.no_grad():
        ...     lp = flow.log_prob(torch.zeros(1, 2))
        >>> round(float(lp), 3)  # log N(0; 0, I) = -log(2 pi)
        -1.838
    """

    weight = 0.5

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The velocity at ``x`` ``(batch, *event)`` and probgen times ``t`` ``(batch,)``."""
        return self._field(x, t)


#: The SDEs by name (the CLI's ``[model] sde``).
SDES: dict[str, type[SDE]] = {"vp": VPSDE, "ve": VESDE, "subvp": SubVPSDE}


def get_sde(name: str, **kwargs: float) -> SDE:
    """Builds the SDE called ``name`` (``"vp"``, ``"ve"`` or ``"subvp"``) with its parameters.

    Raises:
        ValueError: an unknown name, or parameters the SDE does not take.
    """
    return build_named("sde", SDES, name, **kwargs)
