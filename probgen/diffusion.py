r"""Gaussian diffusion: noise schedules, closed-form marginals and posteriors, parametrizations.

The forward process of DDPM (Ho et al., 2020) over discrete indices ``step`` in
``0..T-1`` (the course's convention, called ``step`` in probgen because continuous times
are ``t`` in [0, 1]):

.. math::

    q(x_s \mid x_{s-1}) = N(\sqrt{1-\beta_s}\,x_{s-1}, \beta_s I),\qquad
    q(x_s \mid x_0) = N(\sqrt{\bar\alpha_s}\,x_0, (1-\bar\alpha_s) I),\qquad
    \bar\alpha_s = \textstyle\prod_{r \le s} (1-\beta_r),

where ``x_0`` is the data and index 0 is already the first noisy state (so
:math:`\bar\alpha_{-1} = 1` and the posterior :math:`q(x_{s-1} \mid x_s, x_0)` at index 0
has variance 0). Everything a schedule stores is float64 (the cosine schedule's
:math:`\bar\alpha` near 1 loses digits in float32); values are cast to the data's dtype
where they meet it.

A network may predict the noise :math:`\epsilon`, the clean data :math:`x_0`, the
velocity :math:`v = \sqrt{\bar\alpha}\,\epsilon - \sqrt{1-\bar\alpha}\,x_0` (Salimans &
Ho, 2022) or the score :math:`\nabla\log q(x_s) = -\epsilon/\sqrt{1-\bar\alpha_s}`;
:meth:`NoiseSchedule.convert` turns any of them into any other, and :class:`VEScore`
turns a noise predictor into the noise-conditional score ``score(y, sigma)`` that
:mod:`probgen.inference.langevin`'s samplers take (:math:`y = x_s/\sqrt{\bar\alpha_s}` is
data plus :math:`N(0, \sigma^2 I)` noise with :math:`\sigma^2 = (1-\bar\alpha_s)/\bar\alpha_s`).

**Network time.** A network of DDPM is called like every network of probgen,
``net(x, t)`` with ``t`` in probgen time (``t = 0`` noise, ``t = 1`` data): the time of
the step on the schedule's path :class:`SchedulePath`, :math:`t = 1 - s/(T-1)`
(:meth:`NoiseSchedule.time_of_step`, the one definition; fractional steps map the same
way). So a network trained by DDPM is read by the score-SDE and probability-flow code
through :meth:`probgen.processes.GaussianPath.convert` on :class:`SchedulePath`.

Also here, because the variational bound of every diffusion objective needs it: the KL
divergence of two diagonal Gaussians (torch's ``kl_divergence`` needs distribution objects
and does not broadcast a scalar variance cheaply). The discretized Gaussian of integer pixels
(the bound's decoder) lives with the other pixel distributions in :mod:`probgen.pixels` and
is re-exported here under its old names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from probgen.paths import CosinePath
from probgen.pixels import DiscretizedGaussian, discretized_gaussian_log_likelihood, to_signed
from probgen.processes import GaussianPath, Marginal, convert_prediction
from probgen.sde import VPSDE
from probgen.utils import append_dims, check_choice, check_int, on_host

__all__ = [
    "PARAMETRIZATIONS",
    "PARAMETRIZATION_PREDICTIONS",
    "SCHEDULES",
    "NoiseSchedule",
    "SchedulePath",
    "make_schedule",
    "spaced_timesteps",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "to_signed",
    "DiscretizedGaussian",
    "gaussian_epsilon",
    "VEScore",
]

#: What a diffusion network may predict (DDPM's names: ``"x0"`` is the data, step 0).
PARAMETRIZATIONS: tuple[str, ...] = ("eps", "x0", "v", "score")
#: DDPM's prediction names -> :data:`probgen.processes.PREDICTIONS`.
PARAMETRIZATION_PREDICTIONS = {"eps": "eps", "x0": "data", "v": "v", "score": "score"}
#: Named noise schedules (see :func:`make_schedule`).
SCHEDULES: tuple[str, ...] = ("linear", "cosine")


def _steps_tensor(step: Tensor | int | float, n: int | None = None) -> Tensor:
    if not isinstance(step, Tensor):
        step = torch.as_tensor(step)
    if step.dim() == 0 and n is not None:
        step = step.reshape(1).expand(n)
    return step


class NoiseSchedule(nn.Module):
    r"""Creates a discrete Gaussian noise schedule from its betas, with every closed form.

    Buffers (float64, shape ``(T,)``, indexed by ``step``): ``betas``, ``alphas``,
    ``alphas_cumprod`` :math:`\bar\alpha_s`, ``alphas_cumprod_prev``
    :math:`\bar\alpha_{s-1}` (1 at index 0), ``posterior_variance``
    :math:`\tilde\beta_s = \beta_s(1-\bar\alpha_{s-1})/(1-\bar\alpha_s)` (0 at index 0),
    ``posterior_log_variance_clipped`` (index 0 takes index 1's value, so the log is
    finite), ``posterior_mean_coef1``/``coef2`` (the weights of :math:`x_0` and
    :math:`x_s` in the posterior mean), ``log_snr`` :math:`\log(\bar\alpha/(1-\bar\alpha))`,
    and ``timesteps``: the original indices of the
    steps (``0..T-1``, or the kept ones after :meth:`respace`), which is what a network is
    called with.

    Args:
        betas: :math:`\beta_s` for ``step = 0..T-1``, each in (0, 1], shape ``(T,)``.
        timesteps: the original indices these betas belong to (default ``0..T-1``).

    Example:
        >>> sched = NoiseSchedule.cosine(100)
        >>> x0 = torch.ones(1, dtype=torch.float64)
        >>> mean, var = sched.q_mean_variance(x0, torch.tensor([5]))
        >>> round(float(mean), 7), round(float(var), 8)
        (0.9944681, 0.01103322)
    """

    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    log_snr: Tensor
    timesteps: Tensor

    def __init__(self, betas: Tensor | Sequence[float], timesteps: Tensor | None = None) -> None:
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ValueError("betas: expected at least one step, got none.")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
            raise ValueError(f"betas: expected values in (0, 1], got min {float(betas.min())} "
                             f"and max {float(betas.max())}.")
        T = betas.numel()
        alphas = 1.0 - betas
        ab = torch.cumprod(alphas, 0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
        clipped = torch.cat([post_var[1:2], post_var[1:]]) if T > 1 else betas.clone()
        if timesteps is None:
            timesteps = torch.arange(T)
        timesteps = torch.as_tensor(timesteps, dtype=torch.long).flatten()
        if timesteps.shape != (T,):
            raise ValueError(f"timesteps: expected shape ({T},), got {tuple(timesteps.shape)}.")
        for name, value in {
            "betas": betas, "alphas": alphas, "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev, "posterior_variance": post_var,
            "posterior_log_variance_clipped": clipped.log(),
            "log_snr": (ab / (1.0 - ab)).log(),
            "posterior_mean_coef1": betas * ab_prev.sqrt() / (1.0 - ab),
            "posterior_mean_coef2": (1.0 - ab_prev) * alphas.sqrt() / (1.0 - ab),
            "timesteps": timesteps,
        }.items():
            self.register_buffer(name, value)
        # the path's coefficients by step, derived (not saved: checkpoints keep their keys)
        self.register_buffer("sqrt_alphas_cumprod", ab.sqrt(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1.0 - ab).sqrt(),
                             persistent=False)
        self._table_of: Tensor | None = None  # the buffer the kept table was made from
        self._table_key: tuple[Any, ...] = ()
        self._table = torch.empty(0)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def linear(cls, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02
               ) -> NoiseSchedule:
        r"""Ho et al.'s linear schedule: ``num_steps`` betas evenly from ``beta_start`` to
        ``beta_end`` (1e-4 to 0.02 for T = 1000).

        Computed as the exact discretization of the continuous VP SDE,
        ``VPSDE(T * beta_start, T * beta_end).discrete_betas(T)``
        (:meth:`probgen.sde.VPSDE.discrete_betas`: :math:`\beta_i = \beta(s_i)/T`), the one
        definition of both.
        """
        check_int("num_steps", num_steps)
        if not 0 < beta_start <= beta_end <= 1:
            raise ValueError(f"betas: expected 0 < beta_start <= beta_end <= 1, got "
                             f"{beta_start!r}, {beta_end!r}.")
        sde = VPSDE(num_steps * float(beta_start), num_steps * float(beta_end))
        return cls(sde.discrete_betas(num_steps))

    @classmethod
    def cosine(cls, num_steps: int, s: float = 0.008, max_beta: float = 0.999
               ) -> NoiseSchedule:
        r"""Nichol & Dhariwal's cosine schedule, in float64.

        :math:`\bar\alpha(u) = f(u)/f(0)` with :math:`f(u) = \cos^2(\tfrac{u/T + s}{1 + s}
        \tfrac{\pi}{2})`, and :math:`\beta_k = \min(1 - \bar\alpha(k+1)/\bar\alpha(k),
        \text{max\_beta})` for ``step = 0..T-1``.

        It discretizes the continuous :class:`probgen.paths.CosinePath` (whose ``f`` it
        uses): before ``max_beta`` clips a beta, :math:`\bar\alpha_k = f((k+1)/T)/f(0)`,
        the path's :math:`\alpha_t^2` at probgen time :math:`t = 1 - (k+1)/T` (step
        ``k`` at diffusion time :math:`(k+1)/T`; the clip, by default, changes only the
        last step, whose unclipped :math:`\bar\alpha` is 0, the path at ``t = 0``).
        """
        check_int("num_steps", num_steps)
        if not 0 < max_beta <= 1 or s < 0:
            raise ValueError(f"cosine: expected s >= 0 and 0 < max_beta <= 1, got s={s!r}, "
                             f"max_beta={max_beta!r}.")
        u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = CosinePath(s).unnormalized_alpha_bar(u)
        return cls((1.0 - f[1:] / f[:-1]).clamp(max=max_beta))

    # ----------------------------------------------------------------- basics
    @property
    def num_steps(self) -> int:
        """T, the number of steps."""
        return int(self.betas.shape[0])

    def time_of_step(self, step: Tensor | float) -> Tensor:
        r"""The probgen time of (integer or fractional) steps: :math:`t = 1 - s/(T-1)`.

        This is where step :math:`s` sits on the schedule's path :class:`SchedulePath`
        (``t = 1`` at step 0, ``t = 0`` at the noisiest step ``T-1``) and the time a
        DDPM network (and a noise-conditional classifier) is called with: the one
        convention of every network of ``(x, t)``. With ``T = 1`` the single step is step 0
        and sits at ``t = 1`` (the divisor is :math:`\max(T-1, 1)`). Indices of the
        original chain, also after :meth:`respace` (call it on the original schedule).

        Args:
            step: steps, any shape; integer steps are computed in float64, floating ones
                in their own dtype.

        Returns:
            Times of the shape of ``step``.

        Example:
            >>> t = NoiseSchedule.linear(11).time_of_step(torch.tensor([0, 5, 10]))
            >>> [round(v, 4) for v in t.tolist()]
            [1.0, 0.5, 0.0]
        """
        step = torch.as_tensor(step)
        if not step.is_floating_point():
            step = step.to(torch.float64)
        return 1.0 - step / max(self.num_steps - 1, 1)

    def step_of_time(self, t: Tensor | float) -> Tensor:
        r"""The fractional step at probgen times ``t``: :math:`s = (1 - t)(T-1)`, the inverse
        of :meth:`time_of_step` (0 for every ``t`` when ``T = 1``); shape and dtype of
        ``t`` (float64 for integer input).

        :math:`1 - s/(T-1)` is rarely a float, so a step computed within the rounding of
        the times, :math:`4\varepsilon(T-1)` (:math:`\varepsilon` the dtype's machine
        epsilon), of an integer is that integer: the time of an integer step gives back
        exactly that step (and :class:`SchedulePath` the table's values there).
        """
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        step = (1.0 - t) * (self.num_steps - 1)
        nearest = step.round()
        tol = 4 * torch.finfo(step.dtype).eps * max(self.num_steps - 1, 1)
        return torch.where((step - nearest).abs() <= tol, nearest, step)

    def extra_repr(self) -> str:
        return (f"num_steps={self.num_steps}, beta_min={float(self.betas.min()):.3g}, "
                f"beta_max={float(self.betas.max()):.3g}")

    def _at(self, buf: Tensor, step: Tensor | int, x: Tensor) -> Tensor:
        """``buf[step]`` cast to ``x``'s dtype, shaped ``(batch, 1, ..., 1)`` against ``x``
        (``(1, ..., 1)`` for one Python int step, the samplers' fast path)."""
        if isinstance(step, int) and not isinstance(step, bool):
            if not 0 <= step < self.num_steps:
                raise ValueError(f"step: expected indices in 0..{self.num_steps - 1}, got "
                                 f"{step}.")
            return buf[step].to(device=x.device, dtype=x.dtype).reshape([1] * x.dim())
        step = _steps_tensor(step, x.shape[0]).to(buf.device)
        if step.dtype.is_floating_point:
            raise TypeError("step: expected integer indices; use alphas_cumprod_at for "
                            "fractional steps.")
        if step.shape != x.shape[:1]:
            raise ValueError(f"step: expected shape ({x.shape[0]},) or a scalar, got "
                             f"{tuple(step.shape)}.")
        # the range check reads the values (a host sync, and a graph break under
        # torch.compile): eager calls check, compiled training steps draw valid indices
        if (not torch.compiler.is_compiling() and step.numel()
                and (step.min() < 0 or step.max() >= self.num_steps)):
            raise ValueError(f"step: expected indices in 0..{self.num_steps - 1}, got "
                             f"{int(step.min())}..{int(step.max())}.")
        out = buf[step].to(device=x.device, dtype=x.dtype)
        return out.reshape(-1, *([1] * (x.dim() - 1)))

    def coefficients(self, alphas_cumprod: Tensor) -> Marginal:
        r"""The path's :math:`(\alpha, \sigma) = (\sqrt{\bar\alpha}, \sqrt{1 - \bar\alpha})`
        at the given :math:`\bar\alpha` (no time derivatives: a discrete schedule)."""
        return Marginal(alphas_cumprod.sqrt(), (1.0 - alphas_cumprod).sqrt())

    def marginal_at(self, step: Tensor, like: Tensor | None = None) -> Marginal:
        r"""The path's :math:`(\sqrt{\bar\alpha_s}, \sqrt{1 - \bar\alpha_s})` at integer
        steps ``step`` (unchecked: indices drawn in ``0..T-1``).

        Without ``like``: float64, of the shape of ``step``. With ``like`` ``(batch, *event)``
        and steps ``(batch,)``: in ``like``'s dtype, shaped ``(batch, 1, ..., 1)`` against it,
        read from one table of both columns kept per dtype and device (a training step
        indexes it once instead of indexing and casting two float64 tables; the values are
        the float64 ones rounded to the dtype, as a cast gives).
        """
        if like is None:
            return Marginal(self.sqrt_alphas_cumprod[step],
                            self.sqrt_one_minus_alphas_cumprod[step])
        # index_select on the table's rows: one contiguous gather for both coefficients
        cols = self._coefficient_table(like).index_select(1, step)
        return Marginal(*cols.view(2, -1, *(1,) * (like.dim() - 1)).unbind(0))

    def _coefficient_table(self, like: Tensor) -> Tensor:
        """``(2, T)``: the path's two coefficients at every step in ``like``'s dtype and
        device, rebuilt when the buffers change (a ``.to()``, an in-place load); not kept
        while torch.compile traces."""
        buffers = self._buffers  # (read directly: this runs in every training step)
        a, s = buffers["sqrt_alphas_cumprod"], buffers["sqrt_one_minus_alphas_cumprod"]
        if torch.compiler.is_compiling():
            return torch.stack([a, s]).to(device=like.device, dtype=like.dtype)
        key = (like.dtype, like.device, a._version, s._version)
        if self._table_of is not a or self._table_key != key:
            table = torch.stack([a, s]).to(device=like.device, dtype=like.dtype)
            self._table_of, self._table_key, self._table = a, key, table
        return self._table

    def alphas_cumprod_at(self, step: Tensor) -> Tensor:
        r""":math:`\bar\alpha` at integer or fractional steps (float64, shape of ``step``).

        Between integer steps the log signal-to-noise ratio
        :math:`\log(\bar\alpha/(1-\bar\alpha))` is interpolated linearly; at integer
        steps the value is the table's :math:`\bar\alpha_s` exactly; steps below 0 or
        above ``T-1`` are clamped.
        """
        step = torch.as_tensor(step).to(self.betas.device, torch.float64)
        ab = self.alphas_cumprod
        if self.num_steps == 1:
            return ab.expand(step.shape).clone()
        s = step.clamp(0, self.num_steps - 1)
        lo = s.floor().long().clamp(max=self.num_steps - 2)
        w = s - lo
        log_snr = self.log_snr
        value = (1 - w) * log_snr[lo] + w * log_snr[lo + 1]
        return torch.where(w == 0, ab[lo], torch.where(w == 1, ab[lo + 1],
                                                       torch.sigmoid(value)))

    def log_snr_slope(self, step: Tensor) -> Tensor:
        r"""The derivative over steps of the interpolated log-SNR of
        :meth:`alphas_cumprod_at`: :math:`\ell_{k+1} - \ell_k` on the step's segment
        :math:`[k, k+1)` (the last segment at ``T-1``; 0 where ``T = 1``), float64."""
        step = torch.as_tensor(step).to(self.betas.device, torch.float64)
        if self.num_steps == 1:
            return torch.zeros_like(step)
        lo = step.clamp(0, self.num_steps - 1).floor().long().clamp(max=self.num_steps - 2)
        return self.log_snr[lo + 1] - self.log_snr[lo]

    def sigma_ve(self, step: Tensor) -> Tensor:
        r"""The variance-exploding noise level :math:`\sqrt{(1-\bar\alpha)/\bar\alpha}`."""
        ab = self.alphas_cumprod_at(step)
        return ((1 - ab) / ab).sqrt()

    def step_from_sigma_ve(self, sigma: Tensor) -> Tensor:
        r"""The fractional step whose :meth:`sigma_ve` is ``sigma`` (inverse of the
        log-SNR interpolation; clamped to ``[0, T-1]``), float64."""
        sigma = torch.as_tensor(sigma).to(self.betas.device, torch.float64)
        neg_log_snr = -self.log_snr  # increasing in step
        target = 2 * sigma.log()
        if self.num_steps == 1:
            return torch.zeros_like(sigma)
        hi = torch.searchsorted(neg_log_snr, target.contiguous()).clamp(1, self.num_steps - 1)
        lo = hi - 1
        w = (target - neg_log_snr[lo]) / (neg_log_snr[hi] - neg_log_snr[lo])
        return (lo + w).clamp(0, self.num_steps - 1)

    # ----------------------------------------------------------------- closed forms
    def q_mean_variance(self, x0: Tensor, step: Tensor | int) -> tuple[Tensor, Tensor]:
        r"""Mean :math:`\sqrt{\bar\alpha_s}\,x_0` and variance :math:`1-\bar\alpha_s` of
        :math:`q(x_s \mid x_0)` (the variance broadcastable against ``x0``)."""
        ab = self._at(self.alphas_cumprod, step, x0)
        return ab.sqrt() * x0, 1.0 - ab

    def q_sample(self, x0: Tensor, step: Tensor | int, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        r"""A draw :math:`x_s = \sqrt{\bar\alpha_s}\,x_0 + \sqrt{1-\bar\alpha_s}\,\epsilon`."""
        if noise is None:
            noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise: expected the shape of x0 {tuple(x0.shape)}, got "
                             f"{tuple(noise.shape)}.")
        mean, var = self.q_mean_variance(x0, step)
        return mean + var.sqrt() * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, step: Tensor | int
                    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""Mean, variance and clipped log-variance of :math:`q(x_{s-1} \mid x_s, x_0)`.

        The mean is :math:`c_1 x_0 + c_2 x_s` with
        :math:`c_1 = \beta_s\sqrt{\bar\alpha_{s-1}}/(1-\bar\alpha_s)` and
        :math:`c_2 = (1-\bar\alpha_{s-1})\sqrt{\alpha_s}/(1-\bar\alpha_s)`; at index 0 it is
        :math:`x_0` with variance 0.
        """
        if x0.shape != x_t.shape:
            raise ValueError(f"x0, x_t: expected equal shapes, got {tuple(x0.shape)} and "
                             f"{tuple(x_t.shape)}.")
        mean = (self._at(self.posterior_mean_coef1, step, x_t) * x0
                + self._at(self.posterior_mean_coef2, step, x_t) * x_t)
        return (mean, self._at(self.posterior_variance, step, x_t),
                self._at(self.posterior_log_variance_clipped, step, x_t))

    def prior_kl(self, x0: Tensor) -> Tensor:
        r""":math:`KL(q(x_{T-1} \mid x_0) \,\|\, N(0, I))` in nats, summed over the event,
        shape ``(batch,)``."""
        mean, var = self.q_mean_variance(x0, self.num_steps - 1)
        kl = normal_kl(mean, var.log().expand_as(mean), torch.zeros_like(mean),
                       torch.zeros_like(mean))
        return kl.flatten(1).sum(1)

    # ----------------------------------------------------------------- parametrizations
    def convert(self, prediction: Tensor, x_t: Tensor, step: Tensor | int, source: str,
                target: str) -> Tensor:
        r"""Turns a network's ``source`` prediction at ``(x_t, step)`` into ``target``.

        Integer steps read the table; fractional ones (a floating tensor) the log-SNR
        interpolation of :meth:`alphas_cumprod_at`.

        ``source`` and ``target`` are in :data:`PARAMETRIZATIONS`:
        :math:`x_0 = (x_s - \sqrt{1-\bar\alpha}\,\epsilon)/\sqrt{\bar\alpha}`,
        :math:`v = \sqrt{\bar\alpha}\,\epsilon - \sqrt{1-\bar\alpha}\,x_0`,
        :math:`\text{score} = -\epsilon/\sqrt{1-\bar\alpha}`; computed by
        :func:`probgen.processes.convert_prediction` (the one conversion of every path).
        """
        check_choice("source", source, PARAMETRIZATIONS)
        check_choice("target", target, PARAMETRIZATIONS)
        if source == target:
            return prediction
        if isinstance(step, Tensor) and step.is_floating_point():  # log-SNR interpolated
            ab = self.alphas_cumprod_at(step).to(device=x_t.device, dtype=x_t.dtype)
            ab = append_dims(ab.reshape(-1), x_t.dim())
        else:
            ab = self._at(self.alphas_cumprod, step, x_t)
        m = self.coefficients(ab)
        names = PARAMETRIZATION_PREDICTIONS
        return convert_prediction(prediction, x_t, m, source=names[source], target=names[target])

    # ----------------------------------------------------------------- respacing
    def respace(self, timesteps: Sequence[int] | Tensor) -> NoiseSchedule:
        r"""The schedule of the sub-chain that visits only ``timesteps`` (increasing).

        Its betas are :math:`1 - \bar\alpha_{\tau_i}/\bar\alpha_{\tau_{i-1}}` (with
        :math:`\bar\alpha_{\tau_{-1}} = 1`), so its marginals :math:`q(x_{\tau_i} \mid x_0)`
        are the original ones (Nichol & Dhariwal, 2021, sec. 4); its ``timesteps`` hold the
        original indices for the network.
        """
        tau = torch.as_tensor(timesteps, dtype=torch.long).flatten().to(self.betas.device)
        if tau.numel() < 1 or (tau[1:] <= tau[:-1]).any():
            raise ValueError("timesteps: expected a non-empty, strictly increasing sequence "
                             f"of steps, got {tau.tolist()}.")
        if tau[0] < 0 or tau[-1] >= self.num_steps:
            raise ValueError(f"timesteps: expected steps in 0..{self.num_steps - 1}, got "
                             f"{int(tau[0])}..{int(tau[-1])}.")
        ab = self.alphas_cumprod[tau]
        prev = torch.cat([torch.ones(1, dtype=torch.float64, device=ab.device), ab[:-1]])
        return NoiseSchedule(1.0 - ab / prev, timesteps=self.timesteps[tau])


class SchedulePath(GaussianPath):
    r"""Creates the Gaussian path of a discrete schedule, in probgen time, for the ODE solvers.

    Step :math:`s \in [0, T-1]` sits at :math:`t = 1 - s/(T-1)`
    (:meth:`NoiseSchedule.time_of_step`, also the time DDPM's networks are called with):
    ``t = 0`` is the noisiest step, ``t = 1`` step 0; at the time of an integer step the
    path is the schedule's table exactly; between integer steps :math:`\bar\alpha` follows
    :meth:`NoiseSchedule.alphas_cumprod_at` (linear in log-SNR), and :math:`(\alpha_t,
    \sigma_t) = (\sqrt{\bar\alpha}, \sqrt{1 - \bar\alpha})`. The data (:math:`\sigma = 0`)
    lies beyond ``t = 1``; the solvers reach it by their last denoising step
    (:func:`probgen.inference.solvers.solve_path`). Its time derivatives are those of the
    interpolation (the log-SNR :math:`\ell` is linear on each step, so
    :math:`\dot\alpha = \tfrac12 \alpha\sigma^2 \dot\ell`, :math:`\dot\sigma =
    -\tfrac12 \sigma\alpha^2 \dot\ell`, :math:`\dot\ell = -(T-1)\,d\ell/ds`, constant
    on each step): the probability-flow ODE and the ``"velocity"`` conversions of a DDPM
    are those of this path.

    Args:
        schedule: the :class:`NoiseSchedule`.

    Example:
        >>> path = SchedulePath(NoiseSchedule.linear(100))
        >>> path.step(torch.tensor([0.0, 1.0])).round().tolist()  # t = 0: the last step
        [99.0, 0.0]
    """

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: expected a NoiseSchedule, got "
                            f"{type(schedule).__name__}.")
        self.noise_schedule = schedule

    def step(self, t: Tensor) -> Tensor:
        """The fractional step at probgen times ``t``: :math:`(1 - t)(T - 1)`
        (:meth:`NoiseSchedule.step_of_time`)."""
        return self.noise_schedule.step_of_time(t)

    def time_at_ratio(self, ratio: Tensor, t_start: float = 0.0, t_end: float | None = None
                      ) -> Tensor:
        """The exact inverse of the log-SNR interpolation
        (:meth:`NoiseSchedule.step_from_sigma_ve`), clamped to ``[t_start, t_end]``."""
        steps = self.noise_schedule.step_from_sigma_ve(torch.as_tensor(ratio))
        t = self.noise_schedule.time_of_step(steps)
        return t.clamp(t_start, self.t_end if t_end is None else float(t_end))

    def schedule(self, t: Tensor) -> Marginal:  # noqa: D102
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.float64
        sched = self.noise_schedule
        step = self.step(t)
        m = sched.coefficients(sched.alphas_cumprod_at(step))
        d_ell = -max(sched.num_steps - 1, 1) * sched.log_snr_slope(step)
        d_alpha = 0.5 * m.alpha * m.sigma**2 * d_ell
        d_sigma = -0.5 * m.sigma * m.alpha**2 * d_ell
        return Marginal(*(v.to(dtype) for v in (m.alpha, m.sigma, d_alpha, d_sigma)))


def make_schedule(name: str = "linear", num_steps: int = 1000, *,
                  betas: Sequence[float] | None = None, **kwargs: float) -> NoiseSchedule:
    """Creates the schedule called ``name`` (:data:`SCHEDULES`), or from user ``betas``.

    Args:
        name: ``"linear"`` or ``"cosine"`` (ignored when ``betas`` is given).
        num_steps: T.
        betas: explicit betas; then ``num_steps`` must equal their number.
        kwargs: passed to :meth:`NoiseSchedule.linear` (``beta_start``, ``beta_end``) or
            :meth:`NoiseSchedule.cosine` (``s``, ``max_beta``).
    """
    if betas is not None:
        sched = NoiseSchedule(betas)
        if sched.num_steps != num_steps:
            raise ValueError(f"betas: got {sched.num_steps} values but num_steps={num_steps}.")
        return sched
    if name == "linear":
        return NoiseSchedule.linear(num_steps, **kwargs)
    if name == "cosine":
        return NoiseSchedule.cosine(num_steps, **kwargs)
    raise ValueError(f"schedule: expected one of {list(SCHEDULES)} (or betas=...), got "
                     f"{name!r}.")


@on_host  # an index table for the sampler loop, whatever torch's default device
def spaced_timesteps(num_steps: int, steps: int, spacing: str = "linspace") -> Tensor:
    r"""``steps`` increasing indices out of ``0..num_steps-1`` for strided samplers.

    ``"linspace"`` rounds ``linspace(0, T-1, steps)`` (both ends kept), ``"leading"`` takes
    ``0, k, 2k, ...`` and ``"trailing"`` ends at ``T-1`` with stride ``k = T // steps``
    (the spacings of DDIM and of Lin et al., 2024). ``"quadratic"`` packs the steps towards
    low noise, :math:`t_k = \mathrm{round}((T-1)(k/(S-1))^2)`, each index then raised to at
    least one above the previous so that all are distinct (the idea of DDIM's quadratic
    schedule, Song et al. 2021, App. D.2, which stops at 0.8 T and repeats indices for large
    S; here the chain always starts at T-1). ``steps = T`` gives every index.
    """
    check_int("num_steps", num_steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_steps:
        raise ValueError(f"steps: expected an int in 1..{num_steps}, got {steps!r}.")
    if spacing == "linspace":
        if steps == 1:
            return torch.tensor([num_steps - 1])
        out = torch.linspace(0, num_steps - 1, steps, dtype=torch.float64).round().long()
    elif spacing == "leading":
        out = torch.arange(steps) * (num_steps // steps)
    elif spacing == "quadratic":
        if steps == 1:
            return torch.tensor([num_steps - 1])
        u = torch.linspace(0, 1, steps, dtype=torch.float64)
        raw = ((num_steps - 1) * u**2).round().long()
        # distinct indices: t_k >= t_{k-1} + 1, i.e. t_k - k is non-decreasing; t_{S-1} stays
        # T-1 since raw's steps near the end exceed 1 whenever steps <= T
        out = torch.cummax(raw - torch.arange(steps), 0).values + torch.arange(steps)
    elif spacing == "trailing":
        k = num_steps / steps
        out = (num_steps - 1 - torch.arange(steps, dtype=torch.float64) * k).round().long().flip(0)
    else:
        raise ValueError(f"spacing: expected 'linspace', 'leading', 'trailing' or 'quadratic', "
                         f"got {spacing!r}.")
    return out


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    r"""Elementwise :math:`KL(N(\mu_1, e^{v_1}) \,\|\, N(\mu_2, e^{v_2}))` in nats
    (broadcasting)."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def gaussian_epsilon(schedule: NoiseSchedule, mean: Tensor, cov: Tensor
                     ) -> Callable[[Tensor, Tensor], Tensor]:
    r"""The exact noise prediction :math:`\epsilon^*(x_s, s)` for data :math:`N(\mu, \Sigma)`.

    :math:`x_s \sim N(\sqrt{\bar\alpha}\mu, \bar\alpha\Sigma + (1-\bar\alpha) I)`, so
    :math:`\epsilon^* = -\sqrt{1-\bar\alpha}\,\nabla\log q(x_s)
    = \sqrt{1-\bar\alpha}\,C_s^{-1}(x_s - \sqrt{\bar\alpha}\mu)`: the exact noise of
    :meth:`probgen.processes.GaussianPath.gaussian_prediction` on :class:`SchedulePath`, at
    the steps' times (fractional steps: :meth:`NoiseSchedule.alphas_cumprod_at`). The ground
    truth of the samplers' tests.

    Args:
        schedule: the noise schedule.
        mean: :math:`\mu`, shape ``(D,)``.
        cov: :math:`\Sigma`, shape ``(D, D)``, positive semi-definite.

    Returns:
        ``eps(x, step)`` for ``x`` of shape ``(batch, D)`` and ``step`` of shape ``(batch,)``.
    """
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    if mean.dim() != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
        raise ValueError(f"mean, cov: expected shapes (D,) and (D, D), got "
                         f"{tuple(mean.shape)} and {tuple(cov.shape)}.")
    path = SchedulePath(schedule)

    def eps(x: Tensor, step: Tensor) -> Tensor:
        device = schedule.betas.device  # where the path's coefficients are computed
        t = schedule.time_of_step(_steps_tensor(step, x.shape[0]).to(device, torch.float64))
        out = path.gaussian_prediction(x.to(device, torch.float64), t, mean, cov, target="eps")
        return out.to(device=x.device, dtype=x.dtype)

    return eps


class VEScore:
    r"""Creates the variance-exploding score ``score(y, sigma, **cond)`` of a noise predictor.

    With :math:`y = x_s/\sqrt{\bar\alpha_s}` (data plus :math:`N(0,\sigma^2 I)`,
    :math:`\sigma^2 = (1-\bar\alpha_s)/\bar\alpha_s`), the score of :math:`y` is
    :math:`-\epsilon(\sqrt{\bar\alpha_s}\,y, s)/\sigma`, the step :math:`s` being the
    (fractional) one whose level is :math:`\sigma`. This is what
    :func:`probgen.inference.annealed_langevin` and :class:`probgen.inference.ScoreSampler`
    take, so a trained DDPM samples with the score models' Langevin samplers too.

    Args:
        eps: ``eps(x, step, **cond)``, ``step`` of shape ``(batch,)`` (may be fractional).
        schedule: the diffusion's noise schedule.
    """

    def __init__(self, eps: Callable[..., Tensor], schedule: NoiseSchedule) -> None:
        self.eps, self.schedule = eps, schedule

    def sigmas(self, steps: Sequence[int] | Tensor | None = None) -> Tensor:
        """The VE levels of ``steps`` (default all), largest first: a Langevin ladder."""
        steps = torch.arange(self.schedule.num_steps) if steps is None else torch.as_tensor(steps)
        return self.schedule.sigma_ve(steps).flip(0).float()

    def __call__(self, y: Tensor, sigma: Tensor, **cond: Any) -> Tensor:  # noqa: D102
        sigma = _steps_tensor(sigma, y.shape[0])
        step = self.schedule.step_from_sigma_ve(sigma)
        ab = self.schedule.alphas_cumprod_at(step)
        shape = (-1, *([1] * (y.dim() - 1)))
        a = ab.sqrt().to(y.dtype).to(y.device).reshape(shape)
        eps = self.eps(a * y, step.to(y.device), **cond)
        return -eps / sigma.to(y.dtype).to(y.device).reshape(shape)
