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
from typing import NamedTuple

import torch
from torch import Tensor

from probgen.processes import GaussianPath

__all__ = ["SOLVERS", "GRIDS", "DEFAULT_GRIDS", "SolverResult", "ddim_update", "time_grid",
           "solve_path"]

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


class SolverResult(NamedTuple):
    """A solve's output.

    Attributes:
        samples: the final states ``(batch, *event)``.
        trajectory: ``(records, batch, *event)`` (the start, every ``record_every``-th
            state and the last), or ``None``.
        nfe: network calls.
        times: the grid, ``(steps + 1,)`` increasing probgen times (float64).
    """

    samples: Tensor
    trajectory: Tensor | None
    nfe: int
    times: Tensor


def ddim_update(data: Tensor, eps: Tensor, alpha_next: Tensor | float,
                sigma_next: Tensor | float, noise_std: Tensor | float = 0.0,
                noise: Tensor | None = None) -> Tensor:
    r"""DDIM's step to the next level: :math:`\alpha' \hat x + \sqrt{\sigma'^2 - c^2}\,
    \hat\epsilon + c z` (``c = noise_std``; 0 gives the deterministic update)."""
    keep = (sigma_next**2 - noise_std**2) if isinstance(noise_std, Tensor) or noise_std \
        else None
    x = alpha_next * data + (sigma_next if keep is None else keep.clamp(min=0).sqrt()) * eps
    return x if noise is None else x + noise_std * noise


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
) -> SolverResult:
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
        A :class:`SolverResult`.

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
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"x: expected a floating start of shape (batch, *event), got "
                         f"{getattr(x, 'shape', type(x).__name__)}.")
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if times.numel() < 2 or not bool((times[1:] > times[:-1]).all()):
        raise ValueError("times: expected at least two increasing probgen times, got "
                         f"{times.tolist()[:10]}.")
    if record_every is not None and (isinstance(record_every, bool) or record_every < 1):
        raise ValueError(f"record_every: expected a positive int or None, got "
                         f"{record_every!r}.")
    alphas, sigmas = (v.to(torch.float64) for v in path.alpha_sigma(times))
    # The levels: the grid, then sigma = 0 (the data) if asked for and not reached.
    levels = list(zip(times.tolist(), alphas.tolist(), sigmas.tolist(), strict=True))
    if denoise and sigmas[-1] > 0:
        levels.append((None, 1.0, 0.0))
    calls = 0

    def data_at(state: Tensor, t: float) -> Tensor:
        nonlocal calls
        calls += 1
        out = denoiser(state, torch.full(state.shape[:1], t, dtype=state.dtype,
                                         device=state.device))
        if not isinstance(out, Tensor) or out.shape != state.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"denoiser: expected an output of the shape of x "
                             f"{tuple(state.shape)}, got {got}.")
        return out

    records = [x.detach().clone()] if record_every else None
    previous: tuple[float, Tensor] | None = None  # (lambda, data) of the last step
    with torch.no_grad():
        for k in range(len(levels) - 1):
            t, a, s = levels[k]
            _, a1, s1 = levels[k + 1]
            raw = data = data_at(x, t)
            lam = math.log(a / s) if a > 0 else -math.inf
            if solver == "dpm++2m" and previous is not None and s1 > 0 and a > 0:
                r = (lam - previous[0]) / (math.log(a1 / s1) - lam)
                if math.isfinite(r) and r > 0:  # second order from the last two outputs
                    data = (1 + 0.5 / r) * raw - (0.5 / r) * previous[1]
            previous = (lam, raw)
            eps = (x - a * data) / s
            x_next = ddim_update(data, eps, a1, s1)
            if solver == "edm_heun" and s1 > 0 and a > 0:
                t1 = levels[k + 1][0]
                data1 = data_at(x_next, t1)
                eps1 = (x_next - a1 * data1) / s1
                # x/alpha moves by (sigma'/alpha' - sigma/alpha) times the mean slope.
                x_next = a1 * (x / a + (s1 / a1 - s / a) * 0.5 * (eps + eps1))
            x = x_next
            if records is not None and ((k + 1) % record_every == 0 or k == len(levels) - 2):
                records.append(x.clone())
    return SolverResult(x, torch.stack(records) if records else None, calls, times)
