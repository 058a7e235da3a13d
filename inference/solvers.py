r"""Fast deterministic samplers of Gaussian paths: DDIM, DPM-Solver++(2M, 3M), UniPC, EDM Heun.

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
- ``"dpm++3m"``: DPM-Solver++(3M), the third-order multistep solver: with :math:`e_1 =
  1 - e^{-h}`, :math:`e_2 = h - e_1`, :math:`e_3 = h^2/2 - e_2`, :math:`x' =
  \tfrac{\sigma'}{\sigma} x + \alpha'(e_1 D_i + e_2 D^{(1)} + e_3 D^{(2)})`, the
  :math:`\lambda`-derivatives those of the quadratic through the last three data
  predictions (:class:`DPMSolver3M`). One call a step; orders 1, 2 on the first steps, 1 on
  a last step to :math:`\sigma = 0`.
- ``"unipc"``: UniPC (Zhao et al., 2023) on the data prediction with :math:`B(h) = 1 -
  e^{-h}`: a multistep predictor of order :math:`p` (2 by default; UniP-2 is
  DPM-Solver++(2M)) and the corrector UniC, which redoes each step with the prediction at
  its end that the next step needs anyway, raising the order to :math:`p + 1`
  (:class:`UniPC`). One call a step; no corrector on the last step.
- ``"edm_heun"``: EDM's deterministic sampler, Heun's method on
  :math:`d(x/\alpha)/d(\sigma/\alpha) = \hat\epsilon` (Karras et al., 2022, Algorithm 1
  without churn); two calls a step, Euler on a last step to :math:`\sigma = 0` and on a
  first step from :math:`\alpha = 0` (where :math:`\sigma/\alpha` is infinite).

:func:`solve_path` is the one loop: it owns the time grid, the network-call count, no-grad
evaluation and the recorded trajectory; :func:`time_grid` gives the grids (uniform in time,
or Karras et al.'s :math:`\rho`-spaced noise levels). diffusers' schedulers implement the
same solvers on their own scheduler objects, which probgen may not depend on; these work on
any :class:`probgen.processes.GaussianPath` and any prediction.

Measured on the exact prediction of Gaussian data (tests/test_solvers.py), from 20 steps on a
log-SNR grid the third-order solvers are several times nearer the exact flow than
DPM-Solver++(2M) at equal calls; at 10 steps or fewer (:math:`h \gtrsim 1`) their
extrapolation is no better than the second order's.

References:
    DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10
    Steps (Lu et al., 2022), https://arxiv.org/abs/2206.00927
    UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models
    (Zhao et al., 2023), https://arxiv.org/abs/2302.04867
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
from probgen.utils import check_choice, check_int

__all__ = ["SOLVERS", "GRIDS", "DEFAULT_GRIDS", "STEPPERS", "PathStepper", "DDIM",
           "DPMSolver2M", "DPMSolver3M", "UniPC", "EDMHeun", "ddim_update", "time_grid",
           "solve_path"]

#: The deterministic solvers of :func:`solve_path`.
SOLVERS = ("ddim", "dpm++2m", "dpm++3m", "unipc", "edm_heun")
#: Time grids of :func:`time_grid`.
GRIDS = ("time", "karras", "logsnr")
#: Each solver's default grid: DPM-Solver++ and UniPC on uniform log-SNR steps (their
#: multistep extrapolation is unstable where consecutive steps differ much in log-SNR, e.g.
#: uniform times ending near the data; measured best of the three grids for the third-order
#: ones on VP, CondOT and DDPM's cosine schedule), EDM's Heun on Karras et al.'s levels.
DEFAULT_GRIDS = {"ddim": "time", "dpm++2m": "logsnr", "dpm++3m": "logsnr", "unipc": "logsnr",
                 "edm_heun": "karras"}

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


def _phis(h: float, n: int) -> list[float]:
    r"""The exponential integrator's weights :math:`e_k(h) = \int_0^h e^{\tau - h}
    \tau^{k-1}/(k-1)!\,d\tau`, :math:`k = 1..n`: :math:`e_1 = 1 - e^{-h}` and
    :math:`e_{k+1} = h^k/k! - e_k` (so :math:`e_k \approx h^k/k!` for small ``h``)."""
    out = [-math.expm1(-h)]
    for k in range(1, n):
        out.append(h**k / math.factorial(k) - out[-1])
    return out


class _Multistep(PathStepper):
    r"""A multistep stepper's memory: the data predictions at the last grid times (newest
    first) whose log-SNR :math:`\lambda` is finite."""

    keep = 2

    def begin(self, run: Run, x: Tensor, times: Tensor) -> None:  # noqa: D102
        super().begin(run, x, times)
        self.history: list[tuple[float, Tensor]] = []  # (lambda, data), newest first

    def remember(self, lam: float, data: Tensor) -> None:
        r"""Keeps ``(lam, data)`` (a finite :math:`\lambda` only)."""
        if math.isfinite(lam):
            self.history = [(lam, data), *self.history][:self.keep]
        else:
            self.history = []


def _lam(alpha: float, sigma: float) -> float:
    r""":math:`\lambda = \log(\alpha/\sigma)` (:math:`\pm\infty` at the ends)."""
    if alpha == 0:
        return -math.inf
    return math.inf if sigma == 0 else math.log(alpha / sigma)


class DPMSolver3M(_Multistep):
    r"""Creates DPM-Solver++(3M)'s stepper on a Gaussian path (see the module docstring).

    The exact solution of the probability flow from :math:`\lambda` to :math:`\lambda + h`
    is :math:`x' = \tfrac{\sigma'}{\sigma} x + \alpha' \int_0^h e^{\tau - h}
    D(\lambda + \tau)\,d\tau`; expanding :math:`D` to second order in :math:`\lambda`,

    .. math::
        x' = \tfrac{\sigma'}{\sigma} x + \alpha' (e_1 D_i + e_2 D^{(1)} + e_3 D^{(2)}),
        \quad e_1 = 1 - e^{-h},\ e_2 = h - e_1,\ e_3 = h^2/2 - e_2,

    with the derivatives :math:`D^{(1)}, D^{(2)}` in :math:`\lambda` those of the quadratic
    through the last three data predictions (Newton's divided differences on the
    :math:`\lambda` grid, any spacing): :math:`D^{(1)} = D[i, i{-}1] + (\lambda_i -
    \lambda_{i-1}) D[i, i{-}1, i{-}2]`, :math:`D^{(2)} = 2 D[i, i{-}1, i{-}2]` (Lu et al.,
    2022b, the multistep third-order solver, on DPM-Solver's Taylor expansion of Lu et al.,
    2022). Local error :math:`O(h^4)`. One network call a step; order 1 on the first step,
    2 on the second (fewer past predictions; also after a step from :math:`\alpha = 0`),
    and order 1 (:math:`x' = \alpha' D_i`) on a last step to :math:`\sigma = 0`, where
    :math:`h` is infinite. The global error is :math:`O(h^3)` plus the first step's
    :math:`O(h^2)` times the slope :math:`dD/d\lambda` there: negligible from the prior
    (:math:`\propto \alpha_0`, third order measured), order 2 from mid-path.
    """

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        (a, s), (a1, s1) = self.level(t), self.level(t_next)
        d0 = self.data(x, t)
        lam = _lam(a, s)
        past = self.history
        self.remember(lam, d0)
        if a == 0 or s1 == 0:  # an infinite step: first order
            return ddim_update(d0, (x - a * d0) / s, a1, s1)
        h = _lam(a1, s1) - lam
        e1, e2, e3 = _phis(h, 3)
        update = e1 * d0
        if past:
            lam1, d1 = past[0]
            slope = (d0 - d1) / (lam - lam1)
            if len(past) > 1:
                lam2, d2 = past[1]
                curve = (slope - (d1 - d2) / (lam1 - lam2)) / (lam - lam2)
                slope = slope + (lam - lam1) * curve
                update = update + (2 * e3) * curve
            update = update + e2 * slope
        return (s1 / s) * x + a1 * update


class UniPC(_Multistep):
    r"""Creates UniPC's stepper (data prediction, :math:`B(h) = 1 - e^{-h}`) on a Gaussian path.

    UniPC-p (Zhao et al., 2023) on the data prediction :math:`D`, from :math:`\lambda_i` to
    :math:`\lambda_i + h`: with past predictions :math:`D_{i-k}` at :math:`r_k =
    (\lambda_{i-k} - \lambda_i)/h` and :math:`\Delta_k = D_{i-k} - D_i`,

    .. math::
        x' = \tfrac{\sigma'}{\sigma} x + \alpha' \Big(e_1 D_i + B(h) \sum_k a_k
        \frac{\Delta_k}{r_k}\Big), \qquad \sum_k a_k r_k^{n-1} = \frac{n!\,
        e_{n+1}(h)}{h^n B(h)},\ n = 1..K,

    :math:`e_k` as in :class:`DPMSolver3M` (the order conditions, solved exactly; for a
    single difference :math:`a_1 = 1/2`, their limit as :math:`h \to 0`, which keeps the
    order). The predictor UniP-p uses the :math:`p - 1` last past predictions (order
    :math:`p`); with :math:`B(h) = 1 - e^{-h}` (the paper's :math:`B_2(h) = e^h - 1` in
    the data-prediction form, the variant it recommends for guided sampling) UniP-2 is
    DPM-Solver++(2M) exactly. The corrector UniC-p redoes the step from the same start with
    one more point, the prediction :math:`D(\tilde x', \lambda')` at the predicted state
    :math:`\tilde x'` (:math:`r = 1`), which the next step needs anyway: the corrected
    state is the next step's start, and raises the order to :math:`p + 1`, with no extra
    network call. One network call a step.

    The states a step returns (and a trajectory records) are the predictions
    :math:`\tilde x'`; the next step corrects them. There is no corrector on the last step
    (it would cost a call), none after a step from :math:`\alpha = 0` (infinite
    :math:`h`), and a last step to :math:`\sigma = 0` is first order (:math:`x' =
    \alpha' D_i`). The order grows from 1 over the first steps as past predictions come in.

    Args:
        path, denoiser, denoise: see :class:`PathStepper`.
        order: the predictor's order :math:`p` in {1, 2, 3} (the corrected steps' is
            :math:`p + 1`): 2, third order, by default.
    """

    def __init__(self, path: GaussianPath, denoiser: Denoiser, *, order: int = 2,
                 denoise: bool = True) -> None:
        super().__init__(path, denoiser, denoise=denoise)
        if isinstance(order, bool) or not isinstance(order, int) or order not in (1, 2, 3):
            raise ValueError(f"order: expected 1, 2 or 3, got {order!r}.")
        self.order = self.keep = order

    def begin(self, run: Run, x: Tensor, times: Tensor) -> None:  # noqa: D102
        super().begin(run, x, times)
        # the last step's start, its past predictions and its end, for the corrector
        self.pending: tuple[Tensor, float, float, list[tuple[float, Tensor]], float,
                            float, float] | None = None

    @staticmethod
    def update(x: Tensor, s: float, lam: float, points: list[tuple[float, Tensor]],
               a1: float, s1: float, lam1: float) -> Tensor:
        """The UniP/UniC step from ``x`` at ``lam`` over the predictions ``points``
        ``[(lambda, D), ...]`` (the start's first) to ``lam1``."""
        h = lam1 - lam
        d0 = points[0][1]
        e = _phis(h, len(points))
        out = e[0] * d0
        if len(points) > 1:
            r = [(lk - lam) / h for lk, _ in points[1:]]
            if len(r) == 1:
                coef = [0.5]
            else:
                g = torch.tensor([math.factorial(n) * e[n] / (h**n * e[0])
                                  for n in range(1, len(r) + 1)], dtype=torch.float64)
                rows = torch.tensor([[rk ** (n - 1) for rk in r] for n in range(1, len(r) + 1)],
                                    dtype=torch.float64)
                coef = torch.linalg.solve(rows, g).tolist()
            for ck, rk, (_, dk) in zip(coef, r, points[1:], strict=True):
                out = out + (e[0] * ck / rk) * (dk - d0)
        return (s1 / s) * x + a1 * out

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        (a, s), (a1, s1) = self.level(t), self.level(t_next)
        d0 = self.data(x, t)
        lam, lam1 = _lam(a, s), _lam(a1, s1)
        if self.pending is not None:  # UniC: the last step again, with D at its end
            start, s_prev, lam_prev, points, *_ = self.pending
            x = self.update(start, s_prev, lam_prev, [*points, (lam, d0)], a, s, lam)
        self.remember(lam, d0)
        self.pending = None
        if a == 0 or s1 == 0:  # an infinite step: first order
            return ddim_update(d0, (x - a * d0) / s, a1, s1)
        points = self.history[:self.order]
        self.pending = (x, s, lam, points, a1, s1, lam1)
        return self.update(x, s, lam, points, a1, s1, lam1)


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
                                          "dpm++3m": DPMSolver3M, "unipc": UniPC,
                                          "edm_heun": EDMHeun}


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
    check_int("steps", steps)
    check_choice("grid", grid, GRIDS)
    t_end = path.t_end if t_end is None else float(t_end)
    if not 0.0 <= t_start < t_end <= 1.0:
        raise ValueError(f"t_start, t_end: expected 0 <= t_start < t_end <= 1, got "
                         f"{t_start!r}, {t_end!r}.")
    if grid == "time":
        return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64, device="cpu")
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    alpha, sigma = path.alpha_sigma(ends)
    hi, lo = (sigma / alpha).tolist()
    head = ends[:1] if math.isinf(hi) else ends[:0]
    tail = ends[1:] if lo == 0 else ends[:0]
    hi = sigma_max if math.isinf(hi) else hi
    lo = sigma_min if lo == 0 else lo
    n = steps - len(head) - len(tail)
    if n < 1 or not lo < hi:
        raise ValueError(f"steps: grid {grid!r} on this path needs at least "
                         f"{2 + len(head) + len(tail)} steps with sigma_min < sigma_max, got "
                         f"{steps} steps and ratios {lo:g} .. {hi:g}.")
    i = torch.arange(n + 1, dtype=torch.float64, device="cpu") / n
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
    check_choice("solver", solver, SOLVERS)
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if times.numel() < 2 or not bool((times[1:] > times[:-1]).all()):
        raise ValueError("times: expected at least two increasing probgen times, got "
                         f"{times.tolist()[:10]}.")
    stepper = STEPPERS[solver](path, denoiser, denoise=denoise)
    return sample_loop(stepper, x, times, record_every=record_every)
