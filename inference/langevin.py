r"""Langevin samplers: unadjusted (ULA), Metropolis-adjusted (MALA) and annealed over noise.

One step convention everywhere: :math:`x \leftarrow x + \tfrac{\eta}{2}\,s(x) + \sqrt{\eta}\,z`
with :math:`z \sim N(0, I)` and :math:`s = \nabla \log p` (Welling & Teh 2011; NCSN's
:math:`\alpha_i` is our :math:`\eta_i`). A *score* is a callable: ``score(x)`` for ULA and
MALA, the noise-conditional ``score(x, sigma, **cond)`` (``sigma`` of shape ``(batch,)``)
for annealed Langevin, so diffusion and SDE samplers can reuse these with any network of
``(x, t)``. Everything is batched over ``x`` of shape ``(batch, *event)``, seeded by an
optional ``generator`` (on ``x``'s device), and can record the trajectory for plots.

torch and Pyro have no Langevin sampler for arbitrary score callables (Pyro's HMC/NUTS need
a potential and run one chain), hence this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from probgen.inference.path_sampling import PATH_SAMPLERS, sample_path
from probgen.inference.sampling import Run, Stepper, sample_loop
from probgen.inference.sde import predictor_corrector_sample, reverse_sde_sample
from probgen.sde import VESDE
from probgen.utils import check_choice, check_int

__all__ = [
    "LangevinResult",
    "score_from_log_prob",
    "langevin",
    "mala",
    "annealed_langevin",
    "ScoreSampler",
    "Langevin",
    "MALA",
    "AnnealedLangevin",
    "SAMPLERS",
]

#: The sampler names :class:`ScoreSampler` (and the CLI's ``[sample] sampler``) accept:
#: Langevin over the ladder or at one level, and every sampler of the ladder's
#: variance-exploding path (predictor-corrector, the reverse SDE, the probability-flow ODE
#: and the fast solvers of :mod:`probgen.inference.path_sampling`).
SAMPLERS: tuple[str, ...] = ("annealed", "langevin", "pc", "sde", *PATH_SAMPLERS)

Score = Callable[[Tensor], Tensor]


class LangevinResult(NamedTuple):
    """A sampler's output.

    Attributes:
        samples: the final states, shape ``(batch, *event)``.
        trajectory: ``(records, batch, *event)``: the start, then every ``record_every``-th
            state; ``None`` unless asked for.
        acceptance: MALA's per-chain acceptance rate, shape ``(batch,)``; ``None`` otherwise.
    """

    samples: Tensor
    trajectory: Tensor | None
    acceptance: Tensor | None


def score_from_log_prob(log_prob: Callable[[Tensor], Tensor]) -> Score:
    r"""The score :math:`\nabla_x \log p(x)` of a batched log-density, by autograd.

    Args:
        log_prob: ``(batch, *event) -> (batch,)``, each value depending on its row only
            (an unnormalized log-density is enough).

    Returns:
        ``score(x) -> (batch, *event)`` (detached).
    """

    def score(x: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            lp = log_prob(x)
            if lp.shape != x.shape[:1]:
                raise ValueError(f"log_prob: expected one value per example, shape "
                                 f"({x.shape[0]},), got {tuple(lp.shape)}.")
            (grad,) = torch.autograd.grad(lp.sum(), x)
        return grad.detach()

    return score


def _check_x(x0: Tensor) -> None:
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        got = (f"{tuple(x0.shape)} {x0.dtype}" if isinstance(x0, Tensor)
               else type(x0).__name__)
        raise ValueError(f"x0: expected a floating tensor of shape (batch, *event), got {got}.")


def _positive(value: object, name: str) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
    if not ok or not math.isfinite(value):
        raise ValueError(f"{name}: expected a positive float, got {value!r}.")


def _scored(score: Score | None, log_prob: Callable[[Tensor], Tensor] | None) -> Score:
    if (score is None) == (log_prob is None):
        raise ValueError("langevin: pass exactly one of score= or log_prob=.")
    return score if score is not None else score_from_log_prob(log_prob)


class Langevin(Stepper):
    r"""Creates the unadjusted Langevin step :math:`x + \tfrac\eta2 s(x) + \sqrt\eta z`
    (the grid is the iteration count; ``score(x)`` takes no time)."""

    def __init__(self, score: Score, eta: float) -> None:
        self.score, self.eta = score, float(eta)

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        s = self.run.call(_timeless(self.score), x, t, name="score")
        return x + 0.5 * self.eta * s + math.sqrt(self.eta) * self.run.noise(x)


class MALA(Stepper):
    r"""Creates the Metropolis-adjusted Langevin step (see :func:`mala`); keeps the
    per-chain acceptance count in ``accepted``."""

    def __init__(self, eta: float, *, score: Score | None = None,
                 log_prob: Callable[[Tensor], Tensor] | None = None, quadrature: int = 4) -> None:
        if log_prob is None and score is None:
            raise ValueError("mala: pass log_prob= (exact ratio) or score= (line integral).")
        self.eta, self.log_prob = float(eta), log_prob
        self.grad = score if score is not None else score_from_log_prob(log_prob)
        nodes_np, weights_np = np.polynomial.legendre.leggauss(quadrature)
        self.nodes = torch.as_tensor((nodes_np + 1) / 2, dtype=torch.float64)
        self.weights = torch.as_tensor(weights_np / 2, dtype=torch.float64)

    def _score(self, x: Tensor) -> Tensor:
        return self.run.call(_timeless(self.grad), x, 0.0, name="score")

    def begin(self, run: Run, x: Tensor, times: Tensor) -> None:  # noqa: D102
        super().begin(run, x, times)
        self.accepted = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        self.s_x = self._score(x)
        self.lp_x = self.log_prob(x) if self.log_prob is not None else None

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        eta, s_x = self.eta, self.s_x
        y = x + 0.5 * eta * s_x + math.sqrt(eta) * self.run.noise(x)
        s_y = self._score(y)
        if self.log_prob is not None:
            lp_y = self.log_prob(y)
            log_ratio = lp_y - self.lp_x
        else:
            d = y - x
            log_ratio = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            # Gauss-Legendre for log p(y) - log p(x) = int_0^1 s(x + u(y - x)) . (y - x) du
            for u, w in zip(self.nodes.tolist(), self.weights.tolist(), strict=True):
                log_ratio = log_ratio + w * _dot(self._score(x + u * d), d)
        forward = (y - x - 0.5 * eta * s_x).pow(2).flatten(1).sum(-1)
        backward = (x - y - 0.5 * eta * s_y).pow(2).flatten(1).sum(-1)
        log_alpha = log_ratio + (forward - backward) / (2 * eta)
        accept = torch.log(self.run.uniform(x.shape[:1], x)) < log_alpha
        shape = (-1,) + (1,) * (x.dim() - 1)
        self.s_x = torch.where(accept.view(shape), s_y, s_x)
        if self.log_prob is not None:
            self.lp_x = torch.where(accept, lp_y, self.lp_x)
        self.accepted += accept.to(x.dtype)
        return torch.where(accept.view(shape), y, x)


class AnnealedLangevin(Stepper):
    r"""Creates annealed Langevin dynamics over a decreasing noise ladder (see
    :func:`annealed_langevin`); the grid counts the updates, ``steps_per_level`` a level."""

    def __init__(self, score: Callable[..., Tensor], sigmas: Tensor, *, steps_per_level: int,
                 eps: float, denoise: bool = False, cond: Mapping[str, Any] | None = None
                 ) -> None:
        self.score, self.sigmas = score, torch.as_tensor(sigmas, dtype=torch.float64).tolist()
        self.per_level, self.eps, self.denoise = steps_per_level, float(eps), denoise
        self.cond = dict(cond or {})

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        sigma = self.sigmas[int(round(t)) // self.per_level]
        eta = self.eps * sigma**2 / self.sigmas[-1] ** 2
        s = self.run.call(self.score, x, sigma, name="score", **self.cond)
        return x + 0.5 * eta * s + math.sqrt(eta) * self.run.noise(x)

    def end(self, x: Tensor, t: float) -> Tensor | None:  # noqa: D102
        if not self.denoise:
            return None
        sigma_min = self.sigmas[-1]
        return x + sigma_min**2 * self.run.call(self.score, x, sigma_min, name="score",
                                                **self.cond)


def _timeless(score: Score) -> Callable[[Tensor, Tensor], Tensor]:
    """``score(x)`` as a network of ``(x, t)`` for :meth:`Run.call`."""
    return lambda x, t: score(x)


def _iterations(steps: int) -> Tensor:
    return torch.arange(steps + 1, dtype=torch.float64, device="cpu")


def langevin(
    x0: Tensor,
    *,
    score: Score | None = None,
    log_prob: Callable[[Tensor], Tensor] | None = None,
    steps: int,
    eta: float,
    generator: torch.Generator | None = None,
    record_every: int | None = None,
) -> LangevinResult:
    r"""Unadjusted Langevin dynamics: ``steps`` updates of :math:`x + \tfrac\eta2 s + \sqrt\eta z`.

    ULA is biased by its step: for :math:`N(\mu, \Sigma)` its stationary law is
    :math:`N(\mu, \Sigma (I - \tfrac{\eta}{4}\Sigma^{-1})^{-1})` (in 1-D,
    :math:`s^2/(1 - \eta/(4s^2))`); :func:`mala` removes the bias.

    Args:
        x0: start states, ``(batch, *event)``; every row is one chain.
        score: ``score(x) -> (batch, *event)``; or
        log_prob: ``(batch, *event) -> (batch,)`` (the score by autograd).
        steps: number of updates.
        eta: step size :math:`\eta` (the noise variance per step).
        generator: for the noise (on ``x0``'s device).
        record_every: keep every this-many-th state in ``trajectory``.

    Returns:
        A :class:`LangevinResult` (``acceptance`` is ``None``).

    Example:
        >>> out = langevin(torch.zeros(4, 2), score=lambda x: -x, steps=10, eta=0.1)
        >>> out.samples.shape
        torch.Size([4, 2])
    """
    _check_x(x0)
    check_int("steps", steps)
    _positive(eta, "eta")
    score = _scored(score, log_prob)
    out = sample_loop(Langevin(score, eta), x0, _iterations(steps), generator=generator,
                      record_every=record_every)
    return LangevinResult(out.samples, out.trajectory, None)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(-1)


def mala(
    x0: Tensor,
    *,
    log_prob: Callable[[Tensor], Tensor] | None = None,
    score: Score | None = None,
    steps: int,
    eta: float,
    generator: torch.Generator | None = None,
    record_every: int | None = None,
    quadrature: int = 4,
) -> LangevinResult:
    r"""Metropolis-adjusted Langevin: the ULA proposal, then an accept/reject step.

    The proposal :math:`x' = x + \tfrac\eta2 s(x) + \sqrt\eta z` is accepted with
    probability :math:`\min(1, \frac{p(x')\,q(x \mid x')}{p(x)\,q(x' \mid x)})`, so the chain
    leaves :math:`p` invariant exactly, whatever :math:`\eta` (Roberts & Tweedie, 1996).

    With ``log_prob`` (unnormalized is enough) the ratio is exact; the score comes from
    ``score`` when given, else by autograd. With only a ``score``, the log-density ratio
    is the line integral :math:`\int_0^1 s(x + u(x'-x)) \cdot (x'-x)\,du` by
    ``quadrature``-point Gauss-Legendre (exact for a conservative score polynomial of
    degree below ``2 * quadrature``, e.g. a Gaussian's; costs ``quadrature`` more score
    calls per step).

    Args:
        x0: start states, ``(batch, *event)``.
        log_prob: ``(batch, *event) -> (batch,)``; and/or
        score: ``score(x) -> (batch, *event)``.
        steps: number of proposals.
        eta: step size :math:`\eta`.
        generator: for proposals and acceptances (on ``x0``'s device).
        record_every: keep every this-many-th state in ``trajectory``.
        quadrature: Gauss-Legendre points when only ``score`` is given.

    Returns:
        A :class:`LangevinResult` with ``acceptance`` (per chain).
    """
    _check_x(x0)
    check_int("steps", steps)
    _positive(eta, "eta")
    check_int("quadrature", quadrature)
    stepper = MALA(eta, score=score, log_prob=log_prob, quadrature=quadrature)
    out = sample_loop(stepper, x0, _iterations(steps), generator=generator,
                      record_every=record_every)
    return LangevinResult(out.samples, out.trajectory, stepper.accepted / steps)


def annealed_langevin(
    score: Callable[..., Tensor],
    x0: Tensor,
    sigmas: Sequence[float] | Tensor,
    *,
    steps_per_level: int,
    eps: float,
    generator: torch.Generator | None = None,
    record_every: int | None = None,
    denoise: bool = False,
    cond: Mapping[str, Any] | None = None,
) -> LangevinResult:
    r"""Annealed Langevin dynamics over a decreasing noise ladder (NCSN's Algorithm 1).

    For each level :math:`\sigma_i` (largest first), ``steps_per_level`` Langevin updates
    with the noise-conditional score and step
    :math:`\eta_i = \epsilon\,\sigma_i^2/\sigma_L^2`. The large levels let chains move
    between modes in proportion to their mass, which plain Langevin cannot.
    ``denoise`` ends with one Tweedie step :math:`x + \sigma_L^2 s(x, \sigma_L)`
    (Jolicoeur-Martineau et al., 2020; Song & Ermon, 2020).

    Args:
        score: ``score(x, sigma, **cond) -> (batch, *event)``, ``sigma`` of shape ``(batch,)``.
        x0: start states, ``(batch, *event)`` (e.g. noise of scale :math:`\sigma_1`).
        sigmas: the ladder, decreasing, shape ``(L,)``.
        steps_per_level: :math:`T`.
        eps: :math:`\epsilon` (:func:`probgen.score.choose_sigmas` picks one).
        generator: for the noise (on ``x0``'s device).
        record_every: keep every this-many-th state (counting all levels).
        denoise: finish with the Tweedie denoising step.
        cond: keyword arguments passed to ``score`` unchanged (e.g. class labels).

    Returns:
        A :class:`LangevinResult`.

    References:
        Generative Modeling by Estimating Gradients of the Data Distribution (Song & Ermon,
        2019), https://arxiv.org/abs/1907.05600
    """
    _check_x(x0)
    check_int("steps_per_level", steps_per_level)
    _positive(eps, "eps")
    sig = torch.as_tensor(sigmas, dtype=torch.float64, device="cpu").flatten()  # host table
    if sig.numel() < 1 or not (sig > 0).all() or (sig[1:] > sig[:-1]).any():
        raise ValueError(f"sigmas: expected a non-empty, positive, decreasing ladder, got "
                         f"{sig.tolist()}.")
    stepper = AnnealedLangevin(score, sig, steps_per_level=steps_per_level, eps=eps,
                               denoise=denoise, cond=cond)
    out = sample_loop(stepper, x0, _iterations(sig.numel() * steps_per_level),
                      generator=generator, record_every=record_every)
    return LangevinResult(out.samples, out.trajectory, None)


class ScoreSampler:
    r"""Creates a sampler of a trained score network: ``sample(shape)`` like a density model.

    Starts chains at :math:`N(0, \text{init\_std}^2 I)` and runs :func:`annealed_langevin`
    over ``sigmas`` or plain :func:`langevin` (the network at ``sigma``, by default the
    smallest level; with no level at all it is called as ``net(x)``). This is what the CLI
    draws a score run's figures and sample metrics from.

    The ladder is the discretization of a variance-exploding path
    (:class:`probgen.sde.VESDE` from ``sigmas[-1]`` to ``sigmas[0]``), so a noise-conditional
    network is also the score :math:`s(x, t) = \text{net}(x, \sigma_t)` of that path and
    samples with its samplers: ``"pc"`` (predictor-corrector), ``"sde"`` (the reverse SDE),
    ``"ode"`` (the probability flow) and the fast solvers (``"dpm++2m"``, ...), from the
    prior :math:`N(0, \sigma_\max^2 I)` to the time where :math:`\sigma_t` is the smallest
    level, then Tweedie's denoising step there; ``steps`` counts their steps.

    Args:
        net: the score network, ``net(x, sigma)`` (or ``net(x)``).
        event_shape: the shape of one example.
        sampler: ``"annealed"`` or ``"langevin"``.
        sigmas: the noise ladder (annealed; also the default init scale and ``sigma``).
        sigma: the level plain Langevin evaluates the network at.
        steps: updates (per level for ``"annealed"``; steps of the path samplers).
        eta: plain Langevin's step size; eps: annealed Langevin's step factor.
        init_std: the scale of the start (default: ``sigmas[0]``, else 1).
        denoise: annealed only: finish with a Tweedie step.
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        event_shape: Sequence[int],
        *,
        sampler: str = "annealed",
        sigmas: Sequence[float] | Tensor | None = None,
        sigma: float | None = None,
        steps: int = 100,
        eta: float = 0.01,
        eps: float = 2e-5,
        init_std: float | None = None,
        denoise: bool = False,
    ) -> None:
        check_choice("sampler", sampler, SAMPLERS)
        if sampler != "langevin" and sigmas is None:
            raise ValueError(f"sampler {sampler!r} needs a noise ladder (sigmas); a model "
                             f"trained at one noise level samples with 'langevin'.")
        self.net, self.event_shape, self.sampler = net, tuple(event_shape), sampler
        self.sigmas = None if sigmas is None else torch.as_tensor(sigmas).flatten().tolist()
        if sigma is None and self.sigmas is not None:
            sigma = self.sigmas[-1]
        self.sigma, self.steps, self.eta, self.eps = sigma, steps, eta, eps
        if init_std is None:
            init_std = self.sigmas[0] if self.sigmas is not None else 1.0
        self.init_std, self.denoise = float(init_std), bool(denoise)

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Where and in which precision the chains run: the network's first parameter's."""
        if isinstance(self.net, nn.Module):
            for p in self.net.parameters():
                return p.device, p.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def run(self, n: int, generator: torch.Generator | None = None,
            record_every: int | None = None) -> LangevinResult:
        """Draws ``n`` chains and returns the full :class:`LangevinResult`."""
        device, dtype = self._device_dtype()
        x0 = self.init_std * torch.randn(n, *self.event_shape, device=device, dtype=dtype,
                                         generator=generator)
        was_training = isinstance(self.net, nn.Module) and self.net.training
        if isinstance(self.net, nn.Module):
            self.net.eval()
        try:
            if self.sampler not in ("annealed", "langevin"):
                return self._run_path(n, device, dtype, generator, record_every)
            if self.sampler == "annealed":
                return annealed_langevin(self.net, x0, self.sigmas, steps_per_level=self.steps,
                                         eps=self.eps, generator=generator,
                                         record_every=record_every, denoise=self.denoise)
            if self.sigma is None:
                score = self.net
            else:
                def score(x: Tensor) -> Tensor:
                    return self.net(x, torch.full(x.shape[:1], self.sigma, dtype=x.dtype,
                                                  device=x.device))
            return langevin(x0, score=score, steps=self.steps, eta=self.eta,
                            generator=generator, record_every=record_every)
        finally:
            if was_training:
                self.net.train()

    def _run_path(self, n: int, device: torch.device, dtype: torch.dtype,
                  generator: torch.Generator | None, record_every: int | None
                  ) -> LangevinResult:
        """The ladder's variance-exploding path sampled by ``self.sampler``."""
        sigma_min, sigma_max = min(self.sigmas), max(self.sigmas)
        sde = VESDE(sigma_min, sigma_max)
        # the time where the path's noise sigma_t = sqrt(sigma(1-t)^2 - sigma_min^2) is the
        # smallest level: sigma(1 - t) = sqrt(2) sigma_min
        t_end = 1.0 - 0.5 * math.log(2.0) / math.log(sigma_max / sigma_min)

        def score(x: Tensor, t: Tensor) -> Tensor:
            return self.net(x, sde.alpha_sigma(t)[1].to(x.dtype))

        x0 = sde.prior_std * torch.randn(n, *self.event_shape, device=device, dtype=dtype,
                                         generator=generator)
        if self.sampler in ("pc", "sde"):
            run = predictor_corrector_sample if self.sampler == "pc" else reverse_sde_sample
            out = run(sde, score, x_init=x0, steps=self.steps, eps=1.0 - t_end, denoise=True,
                      generator=generator)
            return LangevinResult(out.samples, None, None)
        res = sample_path(score, "score", sde, x0, sampler=self.sampler,
                          steps=None if self.sampler == "ode" else self.steps, t_end=t_end,
                          generator=generator, record_every=record_every)
        return LangevinResult(res.samples, res.trajectory, None)

    def sample(self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None
               ) -> Tensor:
        """Draws samples of shape ``(*shape, *event_shape)``."""
        n = math.prod(shape)
        return self.run(n, generator).samples.reshape(*shape, *self.event_shape)

    def __repr__(self) -> str:
        return (f"ScoreSampler(sampler={self.sampler!r}, steps={self.steps}, "
                f"eta={self.eta:g}, eps={self.eps:g}, init_std={self.init_std:g})")
