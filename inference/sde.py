r"""Score SDEs: continuous-time denoising score matching, reverse-SDE, predictor-corrector and
probability-flow samplers, and exact likelihoods (bits/dim) through the probability-flow ODE.

Written against protocols, never a concrete model: an SDE from :mod:`probgen.sde` and a
*score* ``score(x, t, **cond)`` with ``x`` of shape ``(batch, *event)`` and ``t`` of shape
``(batch,)`` in probgen time (``t = 0`` noise, ``t = 1`` data; :mod:`probgen.sde` converts
from the papers' diffusion time ``s = 1 - t``). Samplers run from ``t = 0`` to
``t_end = 1 - eps`` (the score is singular at the data), and by default finish with the
Tweedie denoising step :math:`\hat x_1 = (x + \sigma_t^2 s(x, t))/\alpha_t`
(:math:`E[x_1 \mid x_t]`), score_sde's "noise removal".

- :class:`ContinuousScoreMatching`: :math:`\tfrac12 E_{t, x_1, \epsilon}\,\lambda(t)
  \|s_\theta(x_t, t) + \epsilon/\sigma_t\|^2` with :math:`\lambda = \sigma_t^2` (score_sde's
  default; a noise-prediction loss), :math:`g^2` (likelihood weighting, Song et al. 2021b;
  optionally with importance-sampled times) or 1.
- :func:`reverse_sde_sample`: the reverse SDE through ``torchsde.sdeint`` (Euler-Maruyama,
  Milstein, SRK, Heun, midpoint, reversible Heun, Euler-Heun).
- :func:`predictor_corrector_sample`: reverse-diffusion predictor + Langevin corrector with
  signal-to-noise step control (Song et al. 2021, Algorithms 2-3).
- :func:`probability_flow_sample`, :func:`probability_flow_log_prob`,
  :func:`probability_flow_bits_per_dim`: the probability-flow ODE through
  :class:`probgen.cnf.ContinuousFlow` (torchdiffeq).

References:
    Score-Based Generative Modeling through Stochastic Differential Equations (Song et al.,
    2021), https://arxiv.org/abs/2011.13456
    Maximum Likelihood Training of Score-Based Diffusion Models (Song, Durkan, Murray &
    Ermon, 2021), https://arxiv.org/abs/2101.09258
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torchsde
from torch import Tensor, nn
from torch.distributions import Distribution

from probgen.cnf import ContinuousFlow
from probgen.inference.denoising import Times, check_label_dropout, denoise, split_batch
from probgen.inference.path_sampling import path_flow
from probgen.inference.registry import register_objective
from probgen.inference.sampling import Run, Stepper, sample_loop
from probgen.inference.solvers import PathStepper
from probgen.metrics.likelihood import dequantized_bits_per_dim
from probgen.sde import SDE
from probgen.utils import check_choice, check_int

__all__ = [
    "WEIGHTINGS",
    "SDE_METHODS",
    "SDEResult",
    "ContinuousScoreMatching",
    "reverse_sde_sample",
    "predictor_corrector_sample",
    "PREDICTORS",
    "ReverseDiffusion",
    "EulerMaruyama",
    "LangevinCorrector",
    "PredictorCorrector",
    "ReverseSDEStepper",
    "probability_flow_distribution",
    "probability_flow_sample",
    "probability_flow_log_prob",
    "probability_flow_bits_per_dim",
    "tweedie_denoise",
]

#: Weightings :math:`\lambda(t)` of :class:`ContinuousScoreMatching`.
WEIGHTINGS: tuple[str, ...] = ("sigma2", "likelihood", "none")
#: torchsde methods for the reverse SDE, with the SDE type each solves (``g`` does not
#: depend on ``x``, so the Ito and Stratonovich SDEs are the same and all of them apply).
SDE_METHODS: dict[str, str] = {
    "euler": "ito", "milstein": "ito", "srk": "ito", "heun": "stratonovich",
    "midpoint": "stratonovich", "reversible_heun": "stratonovich",
    "euler_heun": "stratonovich",
}

Score = Callable[..., Tensor]


class SDEResult(NamedTuple):
    """A sampler's output.

    Attributes:
        samples: ``(n, *event)``.
        nfe: score (network) evaluations.
    """

    samples: Tensor
    nfe: int


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"eps: expected a float in (0, 1), got {eps!r}.")
    return float(eps)


def _check_sde(sde: Any) -> SDE:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde: expected a probgen.sde.SDE (VPSDE, VESDE, SubVPSDE), got "
                        f"{type(sde).__name__}.")
    return sde


class _DiffusionTimes(nn.Module):
    r"""Probgen times :math:`t = 1 - s` for diffusion times :math:`s \sim U(\text{eps}, 1)`,
    or (``importance``) drawn with density :math:`q(s) \propto g(s)^2/\sigma_s^2` on
    ``[eps, 1]``, by the inverse of its CDF tabulated on a geometric grid (where
    :math:`g^2/\sigma^2 \sim 1/s`), with the weights :math:`1/((1 - \text{eps})\,q)` that
    keep the loss unbiased (``q`` is the exact density of the draws, piecewise constant on
    the grid). One routine covers every SDE of :mod:`probgen.sde`."""

    def __init__(self, sde: SDE, eps: float, importance: bool, points: int = 4097) -> None:
        super().__init__()
        self.eps = eps
        if not importance:
            self.grid = self.cdf = None
            return
        s = torch.logspace(math.log10(eps), 0.0, points, dtype=torch.float64)
        w = sde.diffusion_coefficient(s) ** 2 / sde.marginal_diffusion_time(s).sigma ** 2
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.cumsum(0.5 * (w[1:] + w[:-1]) * (s[1:] - s[:-1]), 0)])
        self.register_buffer("grid", s)
        self.register_buffer("cdf", cdf / cdf[-1])

    def forward(self, n: int, like: Tensor) -> Times:
        """``n`` times in ``like``'s dtype and device, with their importance weights."""
        if self.grid is None:
            r = torch.rand(n, dtype=like.dtype, device=like.device)
            return Times(1.0 - (self.eps + (1.0 - self.eps) * r))
        u = torch.rand(n, dtype=torch.float64, device=like.device)
        i = (torch.searchsorted(self.cdf, u, right=True) - 1).clamp(0, self.grid.numel() - 2)
        ds, dc = self.grid[i + 1] - self.grid[i], self.cdf[i + 1] - self.cdf[i]
        s = self.grid[i] + (u - self.cdf[i]) / dc * ds
        return Times(1.0 - s.to(like.dtype), ds / dc / (1.0 - self.eps))


class ContinuousScoreMatching(nn.Module):
    r"""Creates continuous-time denoising score matching over an SDE's marginals.

    With :math:`x_t = \alpha_t x_1 + \sigma_t \epsilon` (:meth:`probgen.sde.SDE.perturb`),
    diffusion time :math:`s = 1 - t \sim U(\text{eps}, 1)`, the loss is

    .. math:: \tfrac12\,E\,\lambda(t)\,\|s_\theta(x_t, t) + \epsilon/\sigma_t\|^2

    (a mean over the batch of per-example sums), minimized by the true scores of every
    marginal. ``weighting``: ``"sigma2"`` (:math:`\lambda = \sigma_t^2`:
    :math:`\tfrac12\|\sigma_t s_\theta + \epsilon\|^2`, score_sde's default),
    ``"likelihood"`` (:math:`\lambda = g(s)^2`: with it the loss bounds the negative
    log-likelihood of the SDE's model up to a constant, Song et al. 2021b, Theorem 1) or
    ``"none"``. ``importance`` (likelihood weighting only) draws :math:`s` with density
    :math:`\propto g^2/\sigma^2` and weights by :math:`\lambda/q`, the variance reduction
    of Song et al. (2021b).

    The network is ``model(x, t, **cond)`` in probgen time returning the score. Batches
    ``(x, labels)`` pass ``labels=`` to it when ``conditional`` (each replaced by the null
    class ``num_classes`` with probability ``label_dropout``, for classifier-free
    guidance); otherwise the labels are ignored.

    It is the denoising objective (:func:`probgen.inference.denoising.denoise`) with the
    error in noise space, :math:`\lambda\|s_\theta + \epsilon/\sigma_t\|^2 =
    (\lambda/\sigma_t^2)\|\hat\epsilon_\theta - \epsilon\|^2` (stable at small times).

    Outputs: ``loss`` and ``dsm`` (the same value).

    Args:
        model: the score network (an ``nn.Module``, so its parameters train).
        sde: the forward SDE.
        weighting: one of :data:`WEIGHTINGS`.
        eps: the smallest diffusion time (1e-5 in Song et al.).
        importance: importance-sample the times (``weighting="likelihood"``).
        conditional: pass the batch's labels to the model.
        label_dropout: probability of the null class (conditional models).
        num_classes: the null class index (needed with ``label_dropout``).
        preprocess: maps each batch to model space (an image pipeline), or ``None``.

    Example:
        >>> from probgen.sde import VPSDE
        >>> sde = VPSDE()
        >>> exact = lambda x, t: -x  # N(0, I) data: every VP marginal is N(0, I)
        >>> dsm = ContinuousScoreMatching(exact, sde)
        >>> # At the optimum the loss is E[alpha_t^2] D / 2 = 0.276 (not 0: the target is noisy).
        >>> round(dsm(torch.randn(20000, 2))["loss"].item(), 1)
        0.3
    """

    def __init__(
        self,
        model: Score,
        sde: SDE,
        *,
        weighting: str = "sigma2",
        eps: float = 1e-5,
        importance: bool = False,
        conditional: bool = False,
        label_dropout: float = 0.0,
        num_classes: int | None = None,
        preprocess: Callable[[Tensor], Any] | None = None,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model: expected a score network model(x, t), got "
                            f"{type(model).__name__}.")
        check_choice("weighting", weighting, WEIGHTINGS)
        if importance and weighting != "likelihood":
            raise ValueError("importance: importance-sampled times apply to "
                             f"weighting='likelihood', got weighting={weighting!r}.")
        self.model, self.sde = model, _check_sde(sde)
        self.weighting, self.eps, self.importance = weighting, _check_eps(eps), bool(importance)
        self.conditional = bool(conditional)
        self.label_dropout = check_label_dropout(label_dropout, num_classes)
        self.num_classes, self.preprocess = num_classes, preprocess
        self.times = _DiffusionTimes(self.sde, self.eps, self.importance)

    def _weight(self, t: Tensor) -> Tensor | float:
        r""":math:`\lambda(t)/(2\sigma_t^2)`, the weight of the noise-space error."""
        if self.weighting == "sigma2":
            return 0.5
        lam = 1.0 if self.weighting == "none" else self.sde.diffusion(t) ** 2
        return 0.5 * lam / self.sde.alpha_sigma(t)[1] ** 2

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The loss on ``batch`` (``x`` of shape ``(batch, *event)``, or ``(x, labels)``)."""
        x1, labels = split_batch(batch, self.preprocess)
        if self.conditional and labels is None:
            raise ValueError("batch: a conditional score needs (x, labels) batches.")
        out = denoise(self.model, self.sde, x1, self.times, prediction="score", target="eps",
                      weighting=self._weight, labels=labels if self.conditional else None,
                      label_dropout=self.label_dropout, null_label=self.num_classes,
                      training=self.training, name="score", per_example=False)
        loss = out.loss
        return {"loss": loss, "dsm": loss}

    def extra_repr(self) -> str:
        """The settings, for ``repr``."""
        return (f"weighting={self.weighting!r}, eps={self.eps:g}, "
                f"importance={self.importance}")


def tweedie_denoise(sde: SDE, score: Score, x: Tensor, t: float,
                    cond: Mapping[str, Any] | None = None) -> Tensor:
    r"""Tweedie's formula :math:`E[x_1 \mid x_t] = (x_t + \sigma_t^2 \nabla\log p_t(x_t))
    / \alpha_t`, at probgen time ``t`` (one score evaluation)."""
    tb = torch.full(x.shape[:1], float(t), dtype=x.dtype, device=x.device)
    return sde.convert(score(x, tb, **dict(cond or {})), x, tb, source="score", target="data")


def _start(sde: SDE, n: int | None, event_shape: Sequence[int] | None, x_init: Tensor | None,
           device: Any, dtype: Any, generator: torch.Generator | None) -> Tensor:
    if x_init is not None:
        if not isinstance(x_init, Tensor) or x_init.dim() < 2:
            raise ValueError("x_init: expected a tensor of shape (n, *event) at t = 0.")
        return x_init
    if n is None or event_shape is None:
        raise ValueError("n, event_shape: give both (prior draws at t = 0) or x_init.")
    z = torch.randn((check_int("n", n), *event_shape), device=device, dtype=dtype,
                    generator=generator)
    return _check_sde(sde).prior_std * z


def _run(stepper: _ScoreStepper, n: int | None, event_shape: Sequence[int] | None,
         x_init: Tensor | None, steps: int, eps: float, device: Any, dtype: Any,
         generator: torch.Generator | None) -> SDEResult:
    """Runs ``stepper`` over ``steps`` uniform steps from ``t = 0`` (prior draws or
    ``x_init``) to ``1 - eps``."""
    steps, eps = check_int("steps", steps), _check_eps(eps)
    x = _start(stepper.sde, n, event_shape, x_init, device, dtype, generator)
    grid = torch.linspace(0.0, 1.0 - eps, steps + 1, dtype=torch.float64, device="cpu")
    out = sample_loop(stepper, x, grid, generator=generator)
    return SDEResult(out.samples, out.nfe)


class _ScoreStepper(PathStepper):
    """Base class of the steppers driven by a score in probgen time on an SDE's path: the
    path's stepper on the score's data prediction, so with ``denoise`` a run ends with
    Tweedie's denoising step."""

    def __init__(self, sde: SDE, score: Score, *, cond: Mapping[str, Any] | None = None,
                 denoise: bool = False) -> None:
        self.score, self.cond = score, dict(cond or {})
        super().__init__(_check_sde(sde), self._data, denoise=denoise)

    @property
    def sde(self) -> SDE:
        """The SDE (the stepper's path)."""
        return self.path

    def _data(self, x: Tensor, t: Tensor) -> Tensor:
        score = self.score(x, t, **self.cond)
        return self.path.convert(score, x, t, source="score", target="data")

    def score_at(self, x: Tensor, t: float) -> Tensor:
        """The score at ``(x, t)``, counted."""
        return self.run.call(self.score, x, t, name="score", **self.cond)

    def kernel(self, t: float, t_next: float) -> tuple[float, float]:
        r"""The forward one-step kernel :math:`x_t \mid x_{t'} \sim N(a x_{t'}, v)` between
        grid times: :math:`a = \alpha_t/\alpha_{t'}`, :math:`v = \sigma_t^2 -
        a^2\sigma_{t'}^2`."""
        (alpha, sigma), (alpha1, sigma1) = self.level(t), self.level(t_next)
        a = alpha / alpha1
        return a, sigma**2 - a**2 * sigma1**2


class ReverseDiffusion(_ScoreStepper):
    r"""Creates the reverse-diffusion predictor: the forward kernel run backwards,
    :math:`x \leftarrow (2 - a)x + v\,s + \sqrt v\,z` (score_sde's DDPM/NCSN predictor)."""

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        a, v = self.kernel(t, t_next)
        return (2.0 - a) * x + v * self.score_at(x, t) + math.sqrt(v) * self.run.noise(x)


class EulerMaruyama(_ScoreStepper):
    r"""Creates one Euler-Maruyama step of the reverse SDE,
    :math:`x \leftarrow x + (-f + g^2 s)\,dt + g\sqrt{dt}\,z`."""

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        s = self.score_at(x, t)
        dt = t_next - t
        g = float(self.sde.diffusion(torch.tensor(t, dtype=torch.float64)))
        tb = torch.full(x.shape[:1], t, dtype=x.dtype, device=x.device)
        return x + (-self.sde.drift(x, tb) + g**2 * s) * dt + g * math.sqrt(dt) * \
            self.run.noise(x)


class LangevinCorrector(_ScoreStepper):
    r"""Creates the Langevin corrector of predictor-corrector sampling at the step's start.

    ``steps`` updates :math:`x \leftarrow x + \delta s + \sqrt{2\delta} z` at time ``t``,
    :math:`\delta = 2 a^2 (r \|z\| / \|s\|)^2` (``snr`` :math:`r`, norms averaged over
    the batch, :math:`a` the step's kernel coefficient, see :meth:`kernel`; no move where
    the score is zero). The step rule of :mod:`probgen.inference.langevin` with
    :math:`\eta = 2\delta`, with a step set by the score at the current point.
    """

    def __init__(self, sde: SDE, score: Score, *, snr: float = 0.16, steps: int = 1,
                 cond: Mapping[str, Any] | None = None) -> None:
        super().__init__(sde, score, cond=cond)
        self.snr, self.steps = float(snr), int(steps)

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        a, _ = self.kernel(t, t_next)
        for _ in range(self.steps):
            s = self.score_at(x, t)
            z = self.run.noise(x)
            grad_norm = s.flatten(1).norm(dim=-1).mean()
            noise_norm = z.flatten(1).norm(dim=-1).mean()
            # A zero score (e.g. a freshly initialized network) carries no direction:
            # no step rather than an infinite one.
            ratio = self.snr * noise_norm / grad_norm.clamp_min(torch.finfo(x.dtype).tiny)
            delta = torch.where(grad_norm > 0, 2.0 * a**2 * ratio**2, 0.0)
            x = x + delta * s + (2.0 * delta).sqrt() * z
        return x


class PredictorCorrector(_ScoreStepper):
    """Creates predictor-corrector sampling: the corrector at ``t``, then the predictor to
    ``t_next`` (either may be ``None``), and Tweedie's denoising at the end (``denoise``)."""

    def __init__(self, predictor: Stepper | None, corrector: Stepper | None, *, sde: SDE,
                 score: Score, denoise: bool = True, cond: Mapping[str, Any] | None = None
                 ) -> None:
        if predictor is None and corrector is None:
            raise ValueError("predictor, corrector: give at least one.")
        super().__init__(sde, score, cond=cond, denoise=denoise)
        self.predictor, self.corrector = predictor, corrector

    def begin(self, run: Run, x: Tensor, times: Tensor) -> None:  # noqa: D102
        super().begin(run, x, times)
        for part in (self.predictor, self.corrector):
            if part is not None:
                part.begin(run, x, times)

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        if self.corrector is not None:
            x = self.corrector.step(x, t, t_next)
        return x if self.predictor is None else self.predictor.step(x, t, t_next)


class ReverseSDEStepper(_ScoreStepper):
    """Creates a torchsde step of the reverse SDE (:data:`SDE_METHODS`), one solver step per
    grid interval on one Brownian motion seeded from the run's generator, and Tweedie's
    denoising at the end (``denoise``)."""

    def __init__(self, sde: SDE, score: Score, *, method: str = "euler", denoise: bool = True,
                 cond: Mapping[str, Any] | None = None) -> None:
        check_choice("method", method, sorted(SDE_METHODS))
        super().__init__(sde, score, cond=cond, denoise=denoise)
        self.method = method

    def begin(self, run: Run, x: Tensor, times: Tensor) -> None:  # noqa: D102
        super().begin(run, x, times)
        self.rev = self.sde.reverse(self.score, event_shape=tuple(x.shape[1:]),
                                    cond=self.cond).as_type(SDE_METHODS[self.method])
        seed = int(torch.randint(0, 2**62, (1,), generator=run.generator))
        # The interval's ends as the state's dtype rounds them (torchsde's queries are in it).
        t0, t1 = times[[0, -1]].to(x.dtype).tolist()
        # dt tells the Brownian interval the query spacing (without it, its estimate from
        # the first queries made some step counts, e.g. 100, several times slower).
        self.bm = torchsde.BrownianInterval(
            t0=t0, t1=t1, size=(x.shape[0], x[0].numel()), dtype=x.dtype, device=x.device,
            entropy=seed, dt=(t1 - t0) / (len(times) - 1),
            levy_area_approximation="space-time" if self.method == "srk" else "none")

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        before = self.rev.nfe
        # the times and state in the dtype the Brownian interval was made in
        ts = torch.tensor([t, t_next], dtype=self.bm.dtype, device=x.device)
        y = torchsde.sdeint(self.rev, x.reshape(x.shape[0], -1).to(self.bm.dtype), ts, bm=self.bm,
                            method=self.method, dt=t_next - t)[-1]
        self.run.count(self.rev.nfe - before)
        return y.reshape(x.shape)


#: The predictors of predictor-corrector sampling.
PREDICTOR_STEPPERS: dict[str, type[_ScoreStepper]] = {
    "reverse_diffusion": ReverseDiffusion, "euler_maruyama": EulerMaruyama}
#: Predictor names (``"none"``: corrector only, annealed Langevin over the marginals).
PREDICTORS: tuple[str, ...] = (*PREDICTOR_STEPPERS, "none")


def reverse_sde_sample(
    sde: SDE,
    score: Score,
    n: int | None = None,
    event_shape: Sequence[int] | None = None,
    *,
    steps: int = 500,
    method: str = "euler",
    eps: float = 1e-3,
    denoise: bool = True,
    x_init: Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SDEResult:
    r"""Samples by integrating the reverse-time SDE with torchsde from ``t = 0`` to ``1 - eps``.

    :math:`dx = [-f(x, 1-t) + g^2 s(x, t)]\,dt + g\,dW_t` (:meth:`probgen.sde.SDE.reverse`)
    by ``torchsde.sdeint`` with ``steps`` fixed steps of the chosen method: ``"euler"``
    (Euler-Maruyama, strong order 1 for this additive noise), ``"milstein"``, ``"srk"``
    (stochastic Runge-Kutta, strong order 1.5), or the Stratonovich ``"heun"``,
    ``"midpoint"``, ``"reversible_heun"``, ``"euler_heun"`` (see :data:`SDE_METHODS`).
    The Brownian motion is a ``torchsde.BrownianInterval`` seeded from ``generator``.

    Args:
        sde: the forward SDE.
        score: ``score(x, t, **cond)``, probgen time.
        n: number of samples (with ``event_shape``), drawn from the prior; or
        event_shape: the shape of one example.
        steps: solver steps.
        method: a key of :data:`SDE_METHODS`.
        eps: stop at ``t = 1 - eps``.
        denoise: finish with :func:`tweedie_denoise` (one more score evaluation).
        x_init: start states at ``t = 0``, ``(n, *event)``, instead of prior draws.
        cond: keyword arguments for ``score`` (e.g. ``labels`` of shape ``(n,)``).
        generator: seeds the prior draw and the Brownian motion.
        device: where the prior draws go; dtype: their dtype.

    Returns:
        An :class:`SDEResult`.
    """
    stepper = ReverseSDEStepper(sde, score, method=method, denoise=denoise, cond=cond)
    return _run(stepper, n, event_shape, x_init, steps, eps, device, dtype, generator)


def predictor_corrector_sample(
    sde: SDE,
    score: Score,
    n: int | None = None,
    event_shape: Sequence[int] | None = None,
    *,
    steps: int = 500,
    corrector_steps: int = 1,
    snr: float = 0.16,
    predictor: str = "reverse_diffusion",
    eps: float = 1e-3,
    denoise: bool = True,
    x_init: Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SDEResult:
    r"""Predictor-corrector sampling (Song et al., 2021, Algorithms 2-3).

    On the grid :math:`0 = t_0 < \dots < t_N = 1 - \text{eps}`, each step first runs
    ``corrector_steps`` Langevin updates at :math:`t_i`,
    :math:`x \leftarrow x + \delta\,s + \sqrt{2\delta}\,z` with the signal-to-noise step
    :math:`\delta = 2 a_i^2 (r\,\|z\| / \|s\|)^2` (``snr`` :math:`r`, norms averaged over
    the batch, :math:`a_i` the step's mean coefficient below: :math:`a_i^2 \approx 1 -
    \beta_i` for VP, 1 for VE, as score_sde's :math:`\alpha_i`; no step where the score is
    zero), then the predictor to :math:`t_{i+1}`:

    - ``"reverse_diffusion"``: the forward SDE's exact one-step kernel
      :math:`x_{t_i} \mid x_{t_{i+1}} \sim N(a_i x_{t_{i+1}}, v_i)`,
      :math:`a_i = \alpha_{t_i}/\alpha_{t_{i+1}}`,
      :math:`v_i = \sigma_{t_i}^2 - a_i^2\sigma_{t_{i+1}}^2`, run backwards:
      :math:`x \leftarrow (2 - a_i)x + v_i s + \sqrt{v_i}\,z` (for VP this is score_sde's
      DDPM-discretized predictor, for VE its NCSN one);
    - ``"euler_maruyama"``: one Euler-Maruyama step of the reverse SDE;
    - ``"none"``: corrector only (annealed Langevin over the SDE's marginals).

    The corrector's step depends on the score at the current point, so the update is written
    here rather than through :func:`probgen.inference.langevin` (same convention
    :math:`\eta = 2\delta`).

    Args:
        sde: the forward SDE.
        score: ``score(x, t, **cond)``, probgen time.
        n: number of samples (with ``event_shape``); or x_init.
        event_shape: the shape of one example.
        steps: predictor steps N.
        corrector_steps: Langevin updates per step (0: predictor only).
        snr: the signal-to-noise ratio r (0.16 in Song et al. for CIFAR-10 VE).
        predictor: ``"reverse_diffusion"``, ``"euler_maruyama"`` or ``"none"``.
        eps: stop at ``t = 1 - eps``.
        denoise: finish with :func:`tweedie_denoise` at ``1 - eps``.
        x_init: start states at ``t = 0``.
        cond: keyword arguments for ``score``.
        generator: seeds the prior draw and every noise.
        device: where the prior draws go; dtype: their dtype.

    Returns:
        An :class:`SDEResult` (``nfe``: score evaluations, predictor and corrector).
    """
    check_choice("predictor", predictor, PREDICTORS)
    check_int("corrector_steps", corrector_steps, low=0)
    if not snr > 0:
        raise ValueError(f"snr: expected a positive float, got {snr!r}.")
    if predictor == "none" and corrector_steps == 0:
        raise ValueError("predictor='none' with corrector_steps=0 does nothing.")
    stepper = PredictorCorrector(
        None if predictor == "none" else PREDICTOR_STEPPERS[predictor](sde, score, cond=cond),
        LangevinCorrector(sde, score, snr=snr, steps=corrector_steps, cond=cond)
        if corrector_steps else None, sde=sde, score=score, denoise=denoise, cond=cond)
    return _run(stepper, n, event_shape, x_init, steps, eps, device, dtype, generator)


def probability_flow_distribution(
    sde: SDE,
    score: Score,
    event_shape: Sequence[int],
    *,
    eps: float = 1e-5,
    cond: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    prior: Distribution | None = None,
    **flow_kwargs: Any,
) -> ContinuousFlow:
    r"""The score model as a Distribution: the probability-flow ODE from the prior at ``t = 0``
    to ``t = 1 - eps``, a :class:`probgen.cnf.ContinuousFlow` (``log_prob``, ``sample``,
    ``last_solve.nfe``).

    Args:
        sde: the forward SDE.
        score: ``score(x, t, **cond)``, probgen time.
        event_shape: the shape of one example.
        eps: the flow ends at ``t = 1 - eps``.
        cond: keyword arguments for ``score``.
        device: where the prior lives; dtype: its dtype.
        prior: the distribution at ``t = 0`` (default :meth:`probgen.sde.SDE.prior`).
        **flow_kwargs: passed to :class:`probgen.cnf.ContinuousFlow` (``method``, ``rtol``,
            ``atol``, ``step_size``, ``trace``, ``noise``, ``generator``, ...).
    """
    cond = dict(cond or {})
    return path_flow(lambda x, t: score(x, t, **cond), "score", _check_sde(sde), event_shape,
                     t_end=1.0 - _check_eps(eps), device=device, dtype=dtype, prior=prior,
                     source=score if isinstance(score, nn.Module) else None, **flow_kwargs)


def probability_flow_sample(
    sde: SDE,
    score: Score,
    n: int | None = None,
    event_shape: Sequence[int] | None = None,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    eps: float = 1e-3,
    denoise: bool = False,
    x_init: Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SDEResult:
    r"""Samples by solving the probability-flow ODE from prior draws (torchdiffeq).

    The field is :meth:`probgen.sde.SDE.probability_flow`, solved by
    :class:`probgen.cnf.ContinuousFlow` from ``t = 0`` to ``1 - eps``: adaptive
    (``"dopri5"``, tolerances ``rtol``/``atol``; the NFE is the solver's) or fixed-step
    (``"euler"``, ``"midpoint"``, ``"rk4"`` with ``step_size``). Deterministic given the
    prior draw, so the same noise gives the same image (a latent code).

    Args:
        sde: the forward SDE.
        score: ``score(x, t, **cond)``, probgen time.
        n: number of samples (with ``event_shape``); or x_init.
        event_shape: the shape of one example.
        method: a torchdiffeq method (:data:`probgen.cnf.ADAPTIVE_METHODS` or
            :data:`probgen.cnf.FIXED_METHODS`).
        rtol: relative tolerance (adaptive); atol: absolute tolerance.
        step_size: step of fixed-step methods.
        eps: stop at ``t = 1 - eps``.
        denoise: finish with :func:`tweedie_denoise`.
        x_init: start states at ``t = 0``.
        cond: keyword arguments for ``score`` (fixed tensors of batch size ``n``).
        generator: seeds the prior draw.
        device: where the prior draws go; dtype: their dtype.

    Returns:
        An :class:`SDEResult` with the solve's NFE.
    """
    x = _start(sde, n, event_shape, x_init, device, dtype, generator)
    flow = probability_flow_distribution(sde, score, x.shape[1:], eps=eps, cond=cond,
                                         device=x.device, dtype=x.dtype, method=method,
                                         rtol=rtol, atol=atol, step_size=step_size)
    with torch.no_grad():
        out = flow.flow(x, kind="sample")
        nfe = flow.last_solve.nfe
        if denoise:
            out, nfe = tweedie_denoise(sde, score, out, flow.t1, cond), nfe + 1
    return SDEResult(out, nfe)


def probability_flow_log_prob(
    sde: SDE,
    score: Score,
    x: Tensor,
    *,
    trace: str = "hutchinson",
    noise: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    eps: float = 1e-5,
    prior: Distribution | None = None,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    r"""The model's log-density of ``x`` at ``t = 1 - eps`` through the probability-flow ODE.

    :math:`\log p(x) = \log p_\text{prior}(x_0) - \int_0^{1-\text{eps}}
    \operatorname{tr}\partial_x v\,dt` by :meth:`probgen.cnf.ContinuousFlow.log_prob`, with
    the exact divergence or Hutchinson's estimator (one probe per solve, as score_sde).

    Args:
        sde: the forward SDE.
        score: ``score(x, t, **cond)``.
        x: points in model space, ``(n, *event)``.
        trace: ``"exact"`` or ``"hutchinson"``.
        noise: Hutchinson's probe, ``"rademacher"`` or ``"gaussian"``.
        method: a torchdiffeq method; rtol, atol: its tolerances.
        step_size: step of fixed-step methods.
        eps: evaluate at ``t = 1 - eps`` (1e-5 in Song et al.).
        prior: the distribution at ``t = 0`` (default: :meth:`probgen.sde.SDE.prior`, which
            approximates the true :math:`p_0`).
        cond: keyword arguments for ``score``.
        generator: draws the Hutchinson probe.

    Returns:
        ``(log_prob of shape (n,), nfe)``.
    """
    flow = probability_flow_distribution(sde, score, x.shape[1:], eps=eps, cond=cond,
                                         device=x.device, dtype=x.dtype, prior=prior,
                                         method=method, rtol=rtol, atol=atol,
                                         step_size=step_size, trace=trace, noise=noise,
                                         generator=generator)
    with torch.no_grad():
        lp = flow.log_prob(x)
    return lp, flow.last_solve.nfe


def probability_flow_bits_per_dim(
    sde: SDE,
    score: Score,
    x_int: Tensor,
    preprocess: Any,
    *,
    repeats: int = 1,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> Tensor:
    r"""Bits per dimension of integer images through the probability-flow ODE (score_sde).

    Each image is uniformly dequantized and mapped to model space by ``preprocess``
    (a :class:`probgen.data.ImagePreprocess`: ``y = T((x + u)/levels)`` with its
    :math:`\log|\det T'|`), its log-density comes from :func:`probability_flow_log_prob`,
    and :math:`\text{bpd} = (-\log p(y) - \log|\det T'| + D\log\text{levels})/(D\ln 2)`, an
    upper bound on the discrete data's bits/dim in expectation over :math:`u` (Theis et
    al., 2016). ``repeats`` averages over that many dequantizations (and probes).

    Args:
        sde: the forward SDE.
        score: ``score(x, t, **cond)`` in model space.
        x_int: integer pixels, ``(n, *shape)``.
        preprocess: an ``ImagePreprocess`` (called with ``generator=``, and
            ``bits_per_dim(log_prob, ladj)``).
        repeats: dequantization draws per image.
        generator: for the dequantization noise and the probes.
        **kwargs: passed to :func:`probability_flow_log_prob` (``trace``, ``eps``, ...).

    Returns:
        Bits/dim per image, shape ``(n,)`` (averaged over ``repeats``).
    """
    return dequantized_bits_per_dim(
        lambda y: probability_flow_log_prob(sde, score, y, generator=generator, **kwargs)[0],
        x_int, preprocess, repeats=repeats, generator=generator)


@register_objective("sde_dsm", keys=("weighting", "eps", "importance", "label_dropout"),
                    summary="continuous-time denoising score matching over the model's SDE")
def _build(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """Continuous-time denoising score matching over the model's SDE (``model.sde``)."""
    sde = getattr(model, "sde", None)
    if not isinstance(sde, SDE):
        raise ValueError(f"model: 'sde_dsm' trains a score model with an .sde attribute "
                         f"(e.g. ScoreSDE), got {type(model).__name__}.")
    num_classes = getattr(model, "num_classes", None)
    return ContinuousScoreMatching(model, sde, preprocess=data.preprocess,
                                   conditional=num_classes is not None,
                                   num_classes=num_classes, **table)
