r"""Fast deterministic samplers of every Gaussian path: DDIM, DPM-Solver++(2M) and EDM's Heun.

Every model of a Gaussian path :math:`x_t = \alpha_t x + \sigma_t \epsilon` (DDPM, score
SDEs, flow matching; :mod:`probgen.processes`) has one probability-flow ODE, whatever its
network predicts. Written with the network's *data prediction* :math:`D(x, t) = E[x_1 \mid
x_t = x]` (any prediction converts to it, :meth:`probgen.processes.GaussianPath.convert`)
and :math:`\hat\epsilon = (x - \alpha_t D)/\sigma_t`, the solvers here step it from time
``t`` to ``t_next`` (probgen time: ``t = 0`` noise, ``t = 1`` data):

- ``"ddim"``: :math:`x' = \alpha' D + \sigma' \hat\epsilon`, exact for a data prediction
  constant over the step; Euler's method in :math:`(x/\alpha, \sigma/\alpha)` and
  DPM-Solver's first order (Song et al., 2021; Lu et al., 2022). One network call a step.
- ``"dpm++2m"``: DPM-Solver++(2M), the multistep second-order solver in
  :math:`\lambda = \log(\alpha/\sigma)` on the data prediction: the step above with
  :math:`D` replaced by :math:`(1 + \tfrac1{2r}) D_i - \tfrac1{2r} D_{i-1}`,
  :math:`r = h_{i-1}/h_i`, :math:`h_i = \lambda_{i+1} - \lambda_i` (Lu et al., 2022b,
  Algorithm 2). One call a step; first order on the first step and on a last step to
  :math:`\sigma = 0`.
- ``"edm_heun"``: EDM's deterministic sampler, Heun's method on
  :math:`d(x/\alpha)/d(\sigma/\alpha) = \hat\epsilon` (Karras et al., 2022, Algorithm 1
  without churn); two calls a step, Euler on a last step to :math:`\sigma = 0` and on a
  first step from :math:`\alpha = 0` (where :math:`\sigma/\alpha` is infinite).

:func:`solve_path` is the one loop: it owns the time grid, the network-call count, no-grad
evaluation and the recorded trajectory; :func:`time_grid` gives the grids (uniform in time,
or Karras et al.'s :math:`\rho`-spaced noise levels). diffusers' schedulers implement the
same solvers on their own scheduler objects, which probgen may not depend on; these work on
any :class:`probgen.processes.GaussianPath` and any prediction.

References:
    DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models (Lu et
    al., 2022b), https://arxiv.org/abs/2211.01095
    Elucidating the Design Space of Diffusion-Based Generative Models (Karras et al., 2022),
    https://arxiv.org/abs/2206.00364
    Denoising Diffusion Implicit Models (Song, Meng & Ermon, 2021),
    https://arxiv.org/abs/2010.02502
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from probgen.inference.sampling import Run, SampleResult, Stepper, sample_loop
from probgen.processes import GaussianPath

__all__ = ["SOLVERS", "GRIDS", "DEFAULT_GRIDS", "STEPPERS", "PathStepper", "DDIM",
           "DPMSolver2M", "EDMHeun", "ddim_update", "time_grid", "solve_path"]

#: The deterministic solvers of :func:`solve_path`.
SOLVERS = ("ddim", "dpm++2m", "edm_heun")
#: Time grids of :func:`time_grid`.
GRIDS = ("time", "karras", "logsnr")
#: Each solver's default grid: DPM-Solver++ on uniform log-SNR steps (its multistep
#: extrapolation is unstable where consecutive steps differ much in log-SNR, e.g. uniform
#: times ending near the data), EDM's Heun on Karras et al.'s levels.
DEFAULT_GRIDS = {"ddim": "time", "dpm++2m": "logsnr", "edm_heun": "karras"}

# denoiser(x, t) -> the data prediction, x (batch, *event), t (batch,) in probgen time.
Denoiser = Callable[[Tensor, Tensor], Tensor]


def _noise_std(eta: float, alpha: float, sigma: float, alpha_next: float,
               sigma_next: float) -> float:
    r"""DDIM's noise :math:`c = \eta\,\sigma'\sqrt{1 - (\alpha\sigma')^2/(\alpha'\sigma)^2}`:
    :math:`\eta = 1` is the posterior :math:`q(x_{t'} \mid x_t, x)`'s standard deviation
    (DDPM's :math:`\tilde\beta` on a variance-preserving path)."""
    if not eta or sigma_next == 0:
        return 0.0
    ratio = (alpha * sigma_next) / (alpha_next * sigma)
    return eta * sigma_next * math.sqrt(max(1.0 - ratio * ratio, 0.0))


def ddim_update(data: Tensor, eps: Tensor, alpha_next: Tensor | float,
                sigma_next: Tensor | float, noise_std: Tensor | float = 0.0,
                noise: Tensor | None = None) -> Tensor:
    r"""DDIM's step to the next level: :math:`\alpha' \hat x + \sqrt{\sigma'^2 - c^2}\,
    \hat\epsilon + c z` (``c = noise_std``; 0 gives the deterministic update)."""
    if isinstance(noise_std, Tensor):
        scale = (sigma_next**2 - noise_std**2).clamp(min=0).sqrt()
    else:
        scale = math.sqrt(max(sigma_next**2 - noise_std**2, 0.0)) if noise_std else sigma_next
    x = alpha_next * data + scale * eps
    return x if noise is None else x + noise_std * noise


class PathStepper(Stepper):
    r"""Base class of the steppers of a Gaussian path's probability flow, on a data prediction.

    Args:
        path: the model's Gaussian path (its :math:`\alpha_t, \sigma_t`).
        denoiser: ``denoiser(x, t)``: the data prediction at ``x`` ``(batch, *event)`` and
            times ``t`` ``(batch,)`` (guidance, if any, already applied).
        denoise: when :math:`\sigma` is not 0 at the grid's last time, end with the data
            prediction there (one more network call).
    """

    def __init__(self, path: GaussianPath, denoiser: Denoiser, *, denoise: bool = True) -> None:
        if not isinstance(path, GaussianPath):
            raise TypeError(f"path: expected a probgen.processes.GaussianPath, got "
                            f"{type(path).__name__}.")
        self.path, self.denoiser, self.denoise = path, denoiser, bool(denoise)
        self._levels: dict[float, tuple[float, float]] = {}

    def begin(self, run: Run, x: Tensor, times: Tensor) -> None:  # noqa: D102
        super().begin(run, x, times)
        alphas, sigmas = (v.to(torch.float64) for v in self.path.alpha_sigma(times))
        self._levels = dict(zip(times.tolist(), zip(alphas.tolist(), sigmas.tolist(),
                                                    strict=True), strict=True))

    def level(self, t: float) -> tuple[float, float]:
        r""":math:`(\alpha_t, \sigma_t)` at a grid time."""
        return self._levels[t]

    def data(self, x: Tensor, t: float) -> Tensor:
        """The denoiser at ``(x, t)``, counted."""
        return self.run.call(self.denoiser, x, t, name="denoiser")

    def end(self, x: Tensor, t: float) -> Tensor | None:  # noqa: D102
        return self.data(x, t) if self.denoise and self.level(t)[1] > 0 else None


class DDIM(PathStepper):
    r"""Creates DDIM's stepper (any :math:`\eta`) on a Gaussian path.

    :math:`x' = \alpha' D + \sqrt{\sigma'^2 - c^2}\,\hat\epsilon + c z`, :math:`c` the
    posterior standard deviation times ``eta`` (0: the deterministic probability-flow step,
    1: DDPM's ancestral step with the posterior variance). One network call a step.

    Args:
        path, denoiser, denoise: see :class:`PathStepper`.
        eta: the noise, in [0, 1].
    """

    def __init__(self, path: GaussianPath, denoiser: Denoiser, *, eta: float = 0.0,
                 denoise: bool = True) -> None:
        super().__init__(path, denoiser, denoise=denoise)
        if isinstance(eta, bool) or not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta: expected a value in [0, 1], got {eta!r}.")
        self.eta = float(eta)

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        (a, s), (a1, s1) = self.level(t), self.level(t_next)
        data = self.data(x, t)
        c = _noise_std(self.eta, a, s, a1, s1)
        return ddim_update(data, (x - a * data) / s, a1, s1, c,
                           self.run.noise(x) if c else None)


class DPMSolver2M(PathStepper):
    r"""Creates DPM-Solver++(2M)'s stepper on a Gaussian path (see the module docstring).

    Multistep: it keeps the last data prediction; first order on the first step and on a
    last step to :math:`\sigma = 0`. One network call a step.
    """

    def begin(self, run: Run, x: Tensor, times: Tensor) -> None:  # noqa: D102
        super().begin(run, x, times)
        self.previous: tuple[float, Tensor] | None = None  # (lambda, data) of the last step

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        (a, s), (a1, s1) = self.level(t), self.level(t_next)
        raw = data = self.data(x, t)
        lam = math.log(a / s) if a > 0 else -math.inf
        if self.previous is not None and s1 > 0 and a > 0:
            r = (lam - self.previous[0]) / (math.log(a1 / s1) - lam)
            if math.isfinite(r) and r > 0:  # second order from the last two outputs
                data = (1 + 0.5 / r) * raw - (0.5 / r) * self.previous[1]
        self.previous = (lam, raw)
        return ddim_update(data, (x - a * data) / s, a1, s1)


class EDMHeun(PathStepper):
    r"""Creates EDM's deterministic Heun stepper on a Gaussian path (see the module docstring).

    Two network calls a step; Euler (one call) on a first step from :math:`\alpha = 0` and
    on a last step to :math:`\sigma = 0`.
    """

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        (a, s), (a1, s1) = self.level(t), self.level(t_next)
        data = self.data(x, t)
        eps = (x - a * data) / s
        x_next = ddim_update(data, eps, a1, s1)
        if s1 > 0 and a > 0:
            data1 = self.data(x_next, t_next)
            eps1 = (x_next - a1 * data1) / s1
            # x/alpha moves by (sigma'/alpha' - sigma/alpha) times the mean slope.
            x_next = a1 * (x / a + (s1 / a1 - s / a) * 0.5 * (eps + eps1))
        return x_next


#: The stepper of each solver name.
STEPPERS: dict[str, type[PathStepper]] = {"ddim": DDIM, "dpm++2m": DPMSolver2M,
                                          "edm_heun": EDMHeun}


def _ratio(path: GaussianPath, t: Tensor) -> Tensor:
    alpha, sigma = path.alpha_sigma(t)
    return sigma / alpha


def time_grid(path: GaussianPath, steps: int, *, grid: str = "time", t_start: float = 0.0,
              t_end: float | None = None, rho: float = 7.0, sigma_max: float = 80.0,
              sigma_min: float = 0.002) -> Tensor:
    r"""``steps + 1`` increasing probgen times from ``t_start`` to ``t_end`` (float64).

    - ``"time"``: uniform in ``t``.
    - ``"karras"``: the noise-to-signal ratios :math:`\tilde\sigma = \sigma_t/\alpha_t` of
      Karras et al. (2022, eq. 5), :math:`(\tilde\sigma_\max^{1/\rho} +
      \tfrac{i}{n}(\tilde\sigma_\min^{1/\rho} - \tilde\sigma_\max^{1/\rho}))^\rho`.
    - ``"logsnr"``: uniform in :math:`\lambda = \log(\alpha_t/\sigma_t)` (DPM-Solver's).

    The noise-level grids run between the path's ratios at ``t_start`` and ``t_end``, mapped
    back to times by :meth:`probgen.processes.GaussianPath.time_at_ratio`. Where the ratio
    is infinite at ``t_start`` (:math:`\alpha = 0`, flow matching's source) the grid
    starts there and its ratios from
    ``sigma_max``; where it is 0 at ``t_end`` (the data) the ratios end at ``sigma_min``
    and the grid at ``t_end`` (as in Karras et al.'s samplers).

    Args:
        path: the model's Gaussian path.
        steps: the number of steps (intervals).
        grid: one of :data:`GRIDS`.
        t_start: the first time (the prior's).
        t_end: the last time (default the path's ``t_end``).
        rho: Karras et al.'s :math:`\rho` (7).
        sigma_max, sigma_min: the finite ratios that stand for an infinite or zero end.

    Example:
        >>> from probgen.paths import CondOTPath
        >>> t = time_grid(CondOTPath(), 4, grid="karras")
        >>> t.shape, t[0].item() == 0.0, t[-1].item() == 1.0  # the ends are kept exactly
        (torch.Size([5]), True, True)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}.")
    if grid not in GRIDS:
        raise ValueError(f"grid: expected one of {list(GRIDS)}, got {grid!r}.")
    t_end = path.t_end if t_end is None else float(t_end)
    if not 0.0 <= t_start < t_end <= 1.0:
        raise ValueError(f"t_start, t_end: expected 0 <= t_start < t_end <= 1, got "
                         f"{t_start!r}, {t_end!r}.")
    if grid == "time":
        return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    hi, lo = _ratio(path, ends).tolist()
    head = ends[:1] if math.isinf(hi) else ends[:0]
    tail = ends[1:] if lo == 0 else ends[:0]
    hi = sigma_max if math.isinf(hi) else hi
    lo = sigma_min if lo == 0 else lo
    n = steps - len(head) - len(tail)
    if n < 1 or not lo < hi:
        raise ValueError(f"steps: grid {grid!r} on this path needs at least "
                         f"{2 + len(head) + len(tail)} steps with sigma_min < sigma_max, got "
                         f"{steps} steps and ratios {lo:g} .. {hi:g}.")
    i = torch.arange(n + 1, dtype=torch.float64) / n
    if grid == "karras":
        ratios = (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    else:  # uniform in lambda = -log(ratio)
        ratios = torch.exp(math.log(hi) + i * (math.log(lo) - math.log(hi)))
    times = path.time_at_ratio(ratios, t_start, t_end)
    if not len(head):
        times[0] = t_start
    if not len(tail):
        times[-1] = t_end
    return torch.cat([head, times, tail])


def solve_path(
    denoiser: Denoiser,
    path: GaussianPath,
    x: Tensor,
    times: Tensor,
    *,
    solver: str = "dpm++2m",
    denoise: bool = True,
    record_every: int | None = None,
) -> SampleResult:
    r"""Solves the probability-flow ODE of ``path`` from ``x`` at ``times[0]`` over ``times``.

    Args:
        denoiser: ``denoiser(x, t)``: the data prediction at ``x`` ``(batch, *event)`` and
            times ``t`` ``(batch,)`` (guidance, if any, already applied).
        path: the model's Gaussian path (its :math:`\alpha_t, \sigma_t`).
        x: the start ``(batch, *event)`` (the prior's draws at ``times[0]``).
        times: increasing probgen times ``(steps + 1,)`` (see :func:`time_grid`).
        solver: one of :data:`SOLVERS`.
        denoise: when the path's :math:`\sigma` is not 0 at ``times[-1]``, take one last
            step to :math:`\sigma = 0` (the data prediction there), one more network call.
        record_every: keep every this-many-th state.

    Returns:
        A :class:`probgen.inference.sampling.SampleResult`.

    Example:
        >>> from probgen.paths import CondOTPath
        >>> path = CondOTPath()
        >>> exact = lambda x, t: torch.zeros_like(x)  # the data is the point 0
        >>> times = time_grid(path, 5)
        >>> out = solve_path(exact, path, torch.randn(4, 2), times, solver="edm_heun")
        >>> out.nfe, float(out.samples.abs().max()) < 1e-6  # 1 + 2 * 3 + 1 calls
        (8, True)
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {list(SOLVERS)}, got {solver!r}.")
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if times.numel() < 2 or not bool((times[1:] > times[:-1]).all()):
        raise ValueError("times: expected at least two increasing probgen times, got "
                         f"{times.tolist()[:10]}.")
    stepper = STEPPERS[solver](path, denoiser, denoise=denoise)
    return sample_loop(stepper, x, times, record_every=record_every)
