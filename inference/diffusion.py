r"""Diffusion objectives and samplers: DDPM's losses and bound, ancestral/strided DDPM, DDIM,
DDIM inversion, classifier and classifier-free guidance.

Written against a protocol, never a concrete model. A *diffusion model* ``m`` has

- ``m.schedule``: a :class:`probgen.diffusion.NoiseSchedule` with ``T`` steps;
- ``m.parametrization``: what its network predicts, ``"eps"``, ``"x0"`` or ``"v"``;
- ``m.variance``: the reverse variances, one of :data:`VARIANCES`:
  ``"fixed_large"`` (:math:`\beta_s`, Ho et al.'s choice for sampling), ``"fixed_small"``
  (the posterior's :math:`\tilde\beta_s`) or ``"learned_range"``
  (:math:`\exp(f\log\beta_s + (1-f)\log\tilde\beta_s)`, :math:`f = (v+1)/2` predicted by
  the network; Nichol & Dhariwal, 2021);
- ``m.num_classes``: the number of classes (``None``: unconditional);
- ``m.output(x_s, step, labels=None) -> (prediction, v)``: the network's prediction in
  its parametrization and, for ``"learned_range"``, the variance output ``v`` (else
  ``None``); ``step`` holds original indices in ``0..T-1`` (``labels=None`` is the null
  class of a class-conditional model).

A noise-conditional *classifier* (for classifier guidance) is ``classifier(x_s, t) ->
logits`` of shape ``(batch, K)``, called with the network time of every network of
probgen, the step's probgen time ``t = 1 - step / (T - 1)``
(:meth:`probgen.diffusion.NoiseSchedule.time_of_step`; ``t = 1`` at step 0, the data end)
of shape ``(batch,)`` (a :class:`probgen.nn.ConditionalMLP` with ``out_features=K``, or a
:class:`probgen.nn.UNetClassifier`); :class:`NoisyClassifierLoss` trains one.

Data for the objectives: vectors as they are, or integer pixels (``levels`` given) mapped
to the grid :math:`2x/(L-1) - 1` in [-1, 1], on which the discretized Gaussian decoder
makes the variational bound an upper bound on the negative log-likelihood of the discrete
data (bits per dimension).

diffusers' schedulers would give the sampling steps, but not the bound, the respaced
learned variances or guidance on our protocol, and probgen may not depend on it; the steps
are a few lines of the closed forms in :mod:`probgen.diffusion`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from probgen.diffusion import (
    PARAMETRIZATION_PREDICTIONS,
    NoiseSchedule,
    SchedulePath,
    normal_kl,
    spaced_timesteps,
)
from probgen.inference.denoising import (
    DiscreteTimes,
    StepPath,
    check_label_dropout,
    denoise,
    perturb,
    split_batch,
)
from probgen.inference.guidance import classifier_guided, guided, sample_labels
from probgen.inference.path_sampling import sample_path
from probgen.inference.registry import register_objective
from probgen.inference.sampling import Stepper, sample_loop
from probgen.inference.solvers import DDIM, DEFAULT_GRIDS, GRIDS, SOLVERS, STEPPERS, ddim_update
from probgen.metrics.likelihood import bits_per_dim
from probgen.pixels import discretized_gaussian_log_likelihood, to_signed
from probgen.utils import check_choice, check_int

__all__ = [
    "VARIANCES",
    "DIFFUSION_SAMPLERS",
    "DIFFUSION_LOSSES",
    "DiffusionLoss",
    "NoisyClassifierLoss",
    "DiffusionResult",
    "diffusion_sample",
    "ddim_invert",
    "variational_bound",
    "reverse_moments",
    "guided_epsilon",
]

#: Reverse-variance choices of a diffusion model.
VARIANCES: tuple[str, ...] = ("fixed_large", "fixed_small", "learned_range")
#: Sampler names: ancestral (DDPM; strided when ``steps < T``), the solvers of
#: :data:`probgen.inference.solvers.SOLVERS` (DDIM, then the higher-order probability-flow
#: ODE solvers: DPM-Solver++(2M) and (3M), UniPC, EDM's Heun) and ``"ode"`` (the
#: probability-flow ODE by torchdiffeq).
DIFFUSION_SAMPLERS: tuple[str, ...] = ("ancestral", *SOLVERS, "ode")
# the probability-flow ODE solvers after DDIM (noise-level grids, a final denoising step)
_ODE_SOLVERS: tuple[str, ...] = tuple(s for s in SOLVERS if s != "ddim")
#: Training losses of :class:`DiffusionLoss`.
DIFFUSION_LOSSES: tuple[str, ...] = ("simple", "vlb", "hybrid")



# ----------------------------------------------------------------------------- helpers
def _flat_sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


def _model_log_variance(sched: NoiseSchedule, variance: str, v: Tensor | None,
                        i: Tensor | int, x: Tensor) -> Tensor:
    """The reverse process's log-variance at indices ``i`` of ``sched`` (respaced or not)."""
    clipped = sched._at(sched.posterior_log_variance_clipped, i, x)
    if variance == "fixed_small":
        return clipped.expand_as(x)
    # beta_s, with index 0 taking the clipped posterior variance (as the decoder's scale)
    first = (i == 0) if isinstance(i, int) else (i.reshape(clipped.shape) == 0)
    large = torch.where(torch.as_tensor(first, device=x.device), clipped,
                        sched._at(sched.betas, i, x).log())
    if variance == "fixed_large":
        return large.expand_as(x)
    if v is None:  # "learned_range" (the models' variances are checked by _check_model)
        raise ValueError("variance 'learned_range': the model returned no variance "
                         "output v.")
    frac = (v + 1) / 2
    return frac * large + (1 - frac) * clipped


def _check_model(model: Any) -> None:
    for name in ("schedule", "parametrization", "variance", "output"):
        if not hasattr(model, name):
            raise TypeError(f"model: expected a diffusion model with .schedule, "
                            f".parametrization, .variance and .output(x, step, labels); "
                            f"{type(model).__name__} has no {name!r}.")
    if model.parametrization not in ("eps", "x0", "v"):
        raise ValueError(f"model.parametrization: expected 'eps', 'x0' or 'v', got "
                         f"{model.parametrization!r}.")
    check_choice("model.variance", model.variance, VARIANCES)


# ----------------------------------------------------------------------------- guidance
def guided_epsilon(
    model: Any,
    x: Tensor,
    step: Tensor,
    *,
    labels: Tensor | None = None,
    guidance: float | None = None,
    classifier: Callable[[Tensor, Tensor], Tensor] | None = None,
    classifier_scale: float = 0.0,
) -> tuple[Tensor, Tensor | None]:
    r"""The (guided) noise prediction :math:`\hat\epsilon(x_s, s)` and the variance output.

    - Classifier-free guidance (Ho & Salimans, 2021) with weight :math:`w` = ``guidance``:
      :math:`\hat\epsilon = \epsilon(x, \varnothing) + w\,(\epsilon(x, y) -
      \epsilon(x, \varnothing))` (:func:`probgen.inference.guidance.classifier_free`, the
      convention of every family); :math:`w = 0` is the unconditional model, :math:`w = 1`
      the conditional one (the default when ``labels`` are given), :math:`w > 1` sharpens
      the classes. Both predictions come from one batched call.
    - Classifier guidance (Dhariwal & Nichol, 2021) with scale :math:`\lambda`:
      :math:`\hat\epsilon \leftarrow \hat\epsilon - \lambda\sqrt{1-\bar\alpha_s}\,
      \nabla_x \log p_\phi(y \mid x_s, t)`, the noise of
      :math:`p(x_s)\,p_\phi(y \mid x_s)^\lambda`: the one rule of
      :func:`probgen.inference.guidance.classifier_guided` on the schedule's path
      (:class:`probgen.diffusion.SchedulePath`), the classifier called at the step's
      probgen time :math:`t = 1 - s/(T-1)`.

    Args:
        model: a diffusion model (see the module docstring).
        x: states, ``(batch, *event)``.
        step: original indices, ``(batch,)``.
        labels: target classes, ``(batch,)``; ``None`` samples unconditionally.
        guidance: :math:`w` (needs a class-conditional model and ``labels``).
        classifier: ``classifier(x, t) -> logits``; classifier_scale: :math:`\lambda`.

    Returns:
        :math:`\hat\epsilon` of the shape of ``x`` and the variance output (or ``None``).
    """
    sched, num_classes = model.schedule, getattr(model, "num_classes", None)
    if labels is not None and not num_classes and classifier is None:
        raise ValueError("labels: the model is unconditional (num_classes=None) and no "
                         "classifier is given; pass classifier= for classifier guidance.")
    variance: list[Tensor | None] = []

    def eps_of(x_: Tensor, step_: Tensor, labels: Tensor | None = None) -> Tensor:
        pred, v = model.output(x_, step_, labels)
        variance.append(v)
        return sched.convert(pred, x_, step_, model.parametrization, "eps")

    eps = guided(eps_of, labels if num_classes else None, guidance, num_classes)(x, step)
    v = variance[0]
    if v is not None and v.shape[0] != x.shape[0]:  # a batched guided call: the conditional
        v = v.chunk(2)[0]
    if classifier is not None and classifier_scale:
        if labels is None:
            raise ValueError("classifier: classifier guidance needs labels.")
        unguided = eps
        eps = classifier_guided(lambda x_, t_: unguided, SchedulePath(sched), classifier,
                                labels, classifier_scale, prediction="eps")(
            x, sched.time_of_step(step.to(device=x.device, dtype=x.dtype)))
    return eps, v


# ----------------------------------------------------------------------------- samplers
class DiffusionResult(NamedTuple):
    """A diffusion sampler's output.

    Attributes:
        samples: the final states ``(batch, *event)``.
        trajectory: ``(records, batch, *event)``: the start and every ``record_every``-th
            state (the last always included); ``None`` unless asked for.
        x0_predictions: the predicted clean data at the recorded steps, same shape, or
            ``None``.
        timesteps: the original indices visited, decreasing.
        nfe: network calls (a guided call counts once).
    """

    samples: Tensor
    trajectory: Tensor | None
    x0_predictions: Tensor | None
    timesteps: Tensor
    nfe: int = 0


def _timesteps(sched: NoiseSchedule, steps: int | None, spacing: str,
               timesteps: Sequence[int] | Tensor | None) -> Tensor:
    if timesteps is not None:
        if steps is not None:
            raise ValueError("steps, timesteps: give one of them, not both.")
        return torch.as_tensor(timesteps, dtype=torch.long)
    return spaced_timesteps(sched.num_steps, sched.num_steps if steps is None else steps,
                            spacing)


class _Ancestral(DDIM):
    r"""DDPM's ancestral step between two levels of the schedule's path: the forward
    posterior's mean at the data prediction plus noise of the model's reverse variance.

    With ``"fixed_small"`` (the posterior's variance :math:`\tilde\beta`) this is DDIM with
    :math:`\eta = 1`; ``"fixed_large"`` takes :math:`\beta = 1 - \bar\alpha/\bar\alpha_{prev}`
    of the (strided) chain between the levels, ``"learned_range"`` interpolates their logs.
    The last step, to the data, is the data prediction (no noise).
    """

    def __init__(self, model: Any, path: SchedulePath, clip: float | None,
                 guide: dict[str, Any], kept: list[Tensor] | None) -> None:
        self.variance, self.outputs = model.variance, []
        super().__init__(path, _denoiser(model, path, clip, guide, kept, self.outputs), eta=1.0)

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        if self.variance == "fixed_small":
            return super().step(x, t, t_next)
        (a, s), (a1, s1) = self.level(t), self.level(t_next)
        data = self.data(x, t)
        beta = 1.0 - (a / a1) ** 2
        tilde = beta * (s1 / s) ** 2
        mean = ddim_update(data, (x - a * data) / s, a1, s1, math.sqrt(tilde))
        if self.variance == "fixed_large":
            std = math.sqrt(beta)
        else:  # "learned_range"
            frac = (self.outputs[-1] + 1) / 2
            std = (0.5 * (frac * math.log(beta) + (1 - frac) * math.log(tilde))).exp()
        return mean + std * self.run.noise(x)


def _denoiser(model: Any, path: SchedulePath, clip: float | None, guide: dict[str, Any],
              kept: list[Tensor] | None = None, outputs: list[Tensor | None] | None = None
              ) -> Callable[[Tensor, Tensor], Tensor]:
    """The (guided, clipped) data prediction of a diffusion model at probgen times (each
    appended to ``kept`` when given, for :class:`DiffusionResult`; the latest variance output
    held in ``outputs``)."""
    sched = model.schedule

    def denoiser(state: Tensor, t: Tensor) -> Tensor:
        step = path.step(t.to(torch.float64))
        eps, v = guided_epsilon(model, state, step, **guide)
        if outputs is not None:  # only the latest (a learned variance for the step)
            outputs[:] = [v]
        data = sched.convert(eps, state, step, "eps", "x0")
        data = data if clip is None else data.clamp(-clip, clip)
        if kept is not None:
            kept.append(data.clone())
        return data

    return denoiser


def diffusion_sample(
    model: Any,
    x: Tensor,
    *,
    sampler: str = "ancestral",
    steps: int | None = None,
    eta: float = 0.0,
    spacing: str | None = None,
    timesteps: Sequence[int] | Tensor | None = None,
    labels: Any = None,
    guidance: float | None = None,
    classifier: Callable[[Tensor, Tensor], Tensor] | None = None,
    classifier_scale: float = 0.0,
    clip: float | None = None,
    generator: torch.Generator | None = None,
    record_every: int | None = None,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> DiffusionResult:
    r"""Runs the reverse process from ``x`` (noise at the last step) to data.

    The chain visits ``timesteps`` (default: ``steps`` indices spaced by ``spacing`` out
    of ``0..T-1``; all of them when ``steps`` is ``None``) through the respaced schedule
    (:meth:`probgen.diffusion.NoiseSchedule.respace`), whose marginals are the original
    ones.

    - ``"ancestral"`` (DDPM; strided DDPM when fewer steps):
      :math:`x_{prev} = \tilde\mu(\hat x_0, x) + \sigma z` with the model's variance
      (respaced: :math:`\beta` and :math:`\tilde\beta` of the sub-chain), no noise at the
      last step.
    - ``"ddim"`` (Song et al., 2021): :math:`x_{prev} = \sqrt{\bar\alpha_{prev}}\,\hat x_0
      + \sqrt{1-\bar\alpha_{prev}-\sigma^2}\,\hat\epsilon + \sigma z`,
      :math:`\sigma = \eta\sqrt{(1-\bar\alpha_{prev})/(1-\bar\alpha)}
      \sqrt{1-\bar\alpha/\bar\alpha_{prev}}`; ``eta = 0`` is deterministic, ``eta = 1``
      is the ancestral sampler with the posterior variance.
    - ``"dpm++2m"``, ``"dpm++3m"``, ``"unipc"``, ``"edm_heun"``: the higher-order
      probability-flow ODE solvers of :func:`probgen.inference.solvers.solve_path` over the
      schedule's path
      (:class:`probgen.diffusion.SchedulePath`, log-SNR interpolated between steps), on the
      same ``steps`` levels (``spacing`` as above, or the noise-level grids ``"logsnr"``
      and ``"karras"``), ending with a denoising step to the data. DPM-Solver++(2M), (3M)
      and UniPC call the network once per level (``steps`` calls, as DDIM); EDM's Heun
      twice per interval (``2 steps - 1``).

    Args:
        model: a diffusion model (see the module docstring).
        x: the start, ``(batch, *event)``, usually :math:`N(0, I)`.
        sampler: one of :data:`DIFFUSION_SAMPLERS`.
        steps: number of steps (``None``: all T); spacing: see
            :func:`probgen.diffusion.spaced_timesteps` (the ODE solvers also take
            ``"logsnr"`` and ``"karras"``, see :func:`probgen.inference.solvers.time_grid`;
            default ``"linspace"``, else each solver's
            :data:`probgen.inference.solvers.DEFAULT_GRIDS` entry: ``"logsnr"`` for
            DPM-Solver++ and UniPC, ``"karras"`` for EDM's Heun); timesteps: explicit
            increasing indices instead.
        eta: DDIM's noise, in [0, 1].
        labels: classes (int, or a sequence cycled over the batch) for a conditional
            model or a classifier; guidance, classifier, classifier_scale: see
            :func:`guided_epsilon`.
        clip: clamp the predicted :math:`\hat x_0` to ``[-clip, clip]`` (1 for images).
        generator: for the noise.
        record_every: keep every this-many-th state for plots.
        method: ``"ode"``: the probability-flow ODE of the schedule's path
            (:class:`probgen.diffusion.SchedulePath`) by torchdiffeq with this method
            (:data:`probgen.cnf.ODE_METHODS`; adaptive: no ``steps``), ending with a
            denoising step (:func:`probgen.inference.sample_path`); rtol, atol: its
            tolerances.

    Returns:
        A :class:`DiffusionResult`.
    """
    _check_model(model)
    check_choice("sampler", sampler, DIFFUSION_SAMPLERS)
    if sampler != "ddim" and eta:  # DDIM's stepper checks its eta
        raise ValueError(f"eta: applies to sampler 'ddim' only, got eta={eta!r} with "
                         f"{sampler!r} (ancestral sampling uses the model's variance).")
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x: expected a start tensor of shape (batch, *event), got "
                         f"{getattr(x, 'shape', type(x).__name__)}.")
    sched = model.schedule
    path = SchedulePath(sched)
    guide = {"labels": sample_labels(labels, x.shape[0], x.device), "guidance": guidance,
             "classifier": classifier, "classifier_scale": classifier_scale}
    ode = sampler in _ODE_SOLVERS
    if spacing is None and timesteps is None and sampler != "ode":
        spacing = DEFAULT_GRIDS[sampler] if ode else "linspace"
    if sampler == "ode" and (timesteps is not None or spacing is not None):
        raise ValueError("timesteps, spacing: sampler 'ode' runs on a uniform time grid "
                         "(fixed-step methods) or adaptively; give steps and method.")
    if spacing in GRIDS[1:] and not ode:
        raise ValueError(f"spacing: {spacing!r} is a grid of the ODE solvers "
                         f"{list(_ODE_SOLVERS)}, not of {sampler!r}.")
    if spacing in GRIDS[1:] and timesteps is not None:
        raise ValueError(f"timesteps: explicit indices do not go with spacing {spacing!r}; "
                         "give steps.")
    if sampler == "ode" or spacing in GRIDS[1:]:  # the path's own grids (noise levels, ODE)
        out = sample_path(_denoiser(model, path, clip, guide), "data", path, x,
                          sampler=sampler, steps=sched.num_steps if ode and steps is None
                          else steps, spacing=spacing, method=method, rtol=rtol, atol=atol,
                          generator=generator, networks=[model], record_every=record_every)
        return DiffusionResult(out.samples, out.trajectory, None, path.step(out.times),
                               out.nfe)
    tau = _timesteps(sched, steps, spacing or "linspace", timesteps)
    if ode and tau.numel() < 2:
        raise ValueError(f"steps: expected at least 2 levels for the ODE solvers, got "
                         f"{tau.numel()}.")
    times = sched.time_of_step(tau.flip(0))
    # each step's data prediction, kept only for a recorded trajectory of ancestral or DDIM
    kept: list[Tensor] | None = [] if record_every and sampler in ("ancestral", "ddim") else None
    if sampler == "ancestral":
        stepper: Stepper = _Ancestral(model, path, clip, guide, kept)
    elif sampler == "ddim":
        stepper = DDIM(path, _denoiser(model, path, clip, guide, kept), eta=eta)
    else:
        stepper = STEPPERS[sampler](path, _denoiser(model, path, clip, guide))
    out = sample_loop(stepper, x, times, generator=generator, record_every=record_every,
                      networks=[model])
    x0s = None
    if record_every and kept:
        counts = list(range(record_every, len(kept) + 1, record_every))
        if not counts or counts[-1] != len(kept):
            counts.append(len(kept))
        x0s = torch.stack([kept[c - 1] for c in counts])
    return DiffusionResult(out.samples, out.trajectory, x0s, tau.flip(0), out.nfe)


def ddim_invert(
    model: Any,
    x0: Tensor,
    *,
    steps: int | None = None,
    spacing: str = "linspace",
    timesteps: Sequence[int] | Tensor | None = None,
    labels: Any = None,
    guidance: float | None = None,
) -> Tensor:
    r"""Deterministic DDIM inversion: data ``x0`` -> the latent at the last step.

    Runs the :math:`\eta = 0` update forwards,
    :math:`x_{next} = \sqrt{\bar\alpha_{next}}\,\hat x_0(x) + \sqrt{1-\bar\alpha_{next}}\,
    \hat\epsilon(x)`, the network evaluated at the current state and step (at the data
    itself for the first step). :func:`diffusion_sample` with ``sampler="ddim"``,
    ``eta=0`` and the same timesteps maps the latent back to ``x0`` up to the
    discretization error of the probability-flow ODE.

    Args:
        model: a diffusion model; x0: data ``(batch, *event)``; steps, spacing,
            timesteps, labels, guidance: as in :func:`diffusion_sample`.

    Returns:
        The latent, shape of ``x0``.
    """
    _check_model(model)
    sched = model.schedule
    tau = _timesteps(sched, steps, spacing, timesteps)
    path = SchedulePath(sched)
    guide = {"labels": sample_labels(labels, x0.shape[0], x0.device), "guidance": guidance}
    # the grid: the data (step -1, beyond t = 1) and then the levels of tau, towards the noise
    times = sched.time_of_step(torch.cat([tau.new_tensor([-1]), tau]))
    stepper = _DDIMInversion(path, _denoiser(model, path, None, guide), denoise=False)
    return sample_loop(stepper, x0, times, networks=[model]).samples


class _DDIMInversion(DDIM):
    """DDIM's deterministic step run towards the noise (see :func:`ddim_invert`)."""

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        if t > 1.0:  # from the data itself, with the noise the network sees there at t_next
            a1, s1 = self.level(t_next)
            return ddim_update(x, (x - a1 * self.data(x, t_next)) / s1, a1, s1)
        return super().step(x, t, t_next)


# ----------------------------------------------------------------------------- bound
def _data(batch: Any, levels: int | None) -> tuple[Tensor, Tensor | None]:
    """``(x, labels or None)`` of a batch, integer pixels (``levels`` given) mapped to [-1, 1]."""
    return split_batch(batch, None if levels is None else partial(to_signed, levels=levels))


def _reverse(model: Any, x_t: Tensor, step: Tensor, pred: Tensor, v: Tensor | None
             ) -> tuple[Tensor, Tensor]:
    """Mean and log-variance of the reverse step from the network's output (no clipping)."""
    sched = model.schedule
    x0_hat = sched.convert(pred, x_t, step, model.parametrization, "x0")
    mean, _, _ = sched.q_posterior(x0_hat, x_t, step)
    return mean, _model_log_variance(sched, model.variance, v, step, x_t)


def reverse_moments(model: Any, x_t: Tensor, step: Tensor,
                    labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Mean and log-variance of the learned reverse step :math:`p_\theta(x_{s-1} \mid x_s)`.

    The mean is the forward posterior's :math:`\tilde\mu_s(\hat x_0, x_s)` at the network's
    clean-data prediction (unclipped, as in the bound), the variance the model's choice
    (:data:`VARIANCES`). At step 0 they are the decoder's :math:`p_\theta(x_0 \mid x_0^{(0)})`
    on the data scale (Gaussian density for vectors, discretized for integer pixels). The
    terms of :func:`variational_bound` and the model of DDPM's Pyro program use these.

    Args:
        model: a diffusion model (see the module docstring).
        x_t: states ``(batch, *event)``.
        step: integer indices ``(batch,)`` in ``0..T-1``.
        labels: classes ``(batch,)`` of a class-conditional model (``None``: unconditional).

    Returns:
        ``(mean, log_variance)``, each of ``x_t``'s shape.
    """
    _check_model(model)
    if not isinstance(step, Tensor) or step.is_floating_point():
        raise TypeError(f"step: expected integer indices as a tensor, got "
                        f"{getattr(step, 'dtype', type(step).__name__)}.")
    pred, v = model.output(x_t, step, labels)
    return _reverse(model, x_t, step, pred, v)


def _term(model: Any, x0: Tensor, x_t: Tensor, step: Tensor, pred: Tensor, v: Tensor | None,
          levels: int | None) -> Tensor:
    """Per-example term of the bound at ``step`` (nats): the KL for step > 0, the decoder's
    negative log-likelihood for step 0."""
    sched = model.schedule
    mean, logvar = _reverse(model, x_t, step, pred, v)
    true_mean, _, true_logvar = sched.q_posterior(x0, x_t, step)
    kl = _flat_sum(normal_kl(true_mean, true_logvar.expand_as(x0), mean, logvar))
    if levels is not None:
        nll = -_flat_sum(discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar, levels))
    else:
        nll = _flat_sum(0.5 * (math.log(2 * math.pi) + logvar
                               + (x0 - mean) ** 2 * torch.exp(-logvar)))
    return torch.where(step == 0, nll, kl)


def variational_bound(
    model: Any,
    batch: Any,
    *,
    levels: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    r"""The full variational bound of every example, over all T steps (T network calls).

    :math:`-\log p_\theta(x_0) \le KL(q(x_{T-1} \mid x_0) \| N(0, I)) + \sum_{s \ge 1}
    KL(q(x_{s-1} \mid x_s, x_0) \| p_\theta(x_{s-1} \mid x_s)) - \log p_\theta(x_0 \mid x_0^{(0)})`
    with one draw :math:`x_s \sim q(x_s \mid x_0)` per step (an unbiased estimate of the
    bound, whose expectation is at least the negative log-likelihood). With ``levels``
    the data are integer pixels and the decoder is the discretized Gaussian, so ``bpd`` is
    an upper bound on the discrete data's bits per dimension; without, the decoder is a
    Gaussian density and the bound is on the differential NLL.

    Args:
        model: a diffusion model; batch: ``x`` or ``(x, labels)``.
        levels: the pixel levels of integer data (``None``: continuous vectors).
        generator: for the noise draws.

    Returns:
        Per-example tensors: ``nll`` (nats), ``bpd``, ``prior`` (nats), ``decoder`` (nats),
        and ``terms`` of shape ``(batch, T)`` (nats; index 0 is the decoder).
    """
    _check_model(model)
    x0, labels = _data(batch, levels)
    if not getattr(model, "num_classes", None):
        labels = None
    sched = model.schedule
    n, path = x0.shape[0], StepPath(sched)
    terms = []
    with torch.no_grad():
        for s in range(sched.num_steps):
            step = torch.full((n,), s, dtype=torch.long, device=x0.device)
            x_t = perturb(path, x0, step, generator=generator).x_t
            pred, v = model.output(x_t, step, labels)
            terms.append(_term(model, x0, x_t, step, pred, v, levels))
        terms = torch.stack(terms, dim=1)
        prior = sched.prior_kl(x0)
    nll = prior + terms.sum(1)
    dims = x0[0].numel()
    return {"nll": nll, "bpd": bits_per_dim(nll, dims), "prior": prior, "decoder": terms[:, 0],
            "terms": terms}


# ----------------------------------------------------------------------------- objectives
class DiffusionLoss(nn.Module):
    r"""Creates DDPM's training objective: the simple noise MSE, the variational bound, or
    their hybrid.

    Each call draws one step :math:`s \sim U\{0..T-1\}` and noise per example and returns

    - ``mse``: :math:`\|f_\theta(x_s, s) - \text{target}\|^2` averaged over dimensions,
      the target being :math:`\epsilon`, :math:`x_0` or :math:`v` (the model's
      parametrization): Ho et al.'s :math:`L_\text{simple}`;
    - ``bpd_estimate``: :math:`(KL_\text{prior} + T\,L_s)/(D\ln 2)`, an unbiased estimate
      of the full variational bound in bits per dimension (:math:`L_s` the KL term, or
      the decoder term at step 0);
    - ``nll``: the same estimate in nats per example (and ``bits_per_dim`` for integer
      images): averaged over held-out data, an unbiased estimate of the upper bound on the
      NLL, which is what the CLI's evaluation reports;
    - ``loss``: ``mse`` (``"simple"``), ``bpd_estimate`` (``"vlb"``), or
      ``mse + vlb_weight * bpd_estimate`` with the mean's gradient stopped in the bound
      (``"hybrid"``: only the learned variances learn from it; Nichol & Dhariwal's
      :math:`\lambda = 0.001`).

    The noising, the target and the MSE are the denoising objective's
    (:func:`probgen.inference.denoising.denoise`, at uniform steps of the schedule); the
    bound's term reuses the same steps and noise.

    Classifier-free guidance training: with a class-conditional model and ``(x, labels)``
    batches, each label is replaced by the null class with probability ``label_dropout``
    (in training mode only).

    Args:
        model: a diffusion model (see the module docstring).
        loss: one of :data:`DIFFUSION_LOSSES`.
        levels: integer pixel levels of image data (``None``: vectors used as they are).
        label_dropout: probability of dropping a label (CFG; Ho & Salimans use 0.1-0.2).
        vlb_weight: :math:`\lambda` of the hybrid loss.
        log_bound: also log the bound's estimate (``bpd_estimate``, ``nll``) in training
            steps of the ``"simple"`` loss (computed without gradients, at the cost of the
            bound's arithmetic in every step); by default only evaluation passes (autograd
            off) compute it, as they always do.

    References:
        Denoising diffusion probabilistic models (Ho et al., 2020),
        https://arxiv.org/abs/2006.11239; Improved denoising diffusion probabilistic
        models (Nichol & Dhariwal, 2021), https://arxiv.org/abs/2102.09672;
        Classifier-free diffusion guidance (Ho & Salimans, 2021),
        https://arxiv.org/abs/2207.12598
    """

    def __init__(self, model: nn.Module, loss: str = "simple", *, levels: int | None = None,
                 label_dropout: float = 0.0, vlb_weight: float = 0.001,
                 log_bound: bool = False) -> None:
        super().__init__()
        _check_model(model)
        check_choice("loss", loss, DIFFUSION_LOSSES)
        if loss == "hybrid" and model.variance != "learned_range":
            raise ValueError("loss 'hybrid': trains learned variances; the model has "
                             f"variance={model.variance!r} (use 'learned_range' or 'simple').")
        if label_dropout and not getattr(model, "num_classes", None):
            raise ValueError("label_dropout: the model is unconditional (num_classes=None).")
        check_int("levels", levels, low=2, allow_none=True)
        self.model, self.loss, self.levels = model, loss, levels
        self.label_dropout = check_label_dropout(label_dropout,
                                                 getattr(model, "num_classes", None))
        self.vlb_weight = float(vlb_weight)
        self.log_bound = bool(log_bound)
        self._path: StepPath | None = None

    def forward(self, batch: Any) -> dict[str, Tensor]:  # noqa: D102
        x0, labels = _data(batch, self.levels)
        model = self.model
        sched = model.schedule
        if self._path is None or self._path.noise_schedule is not sched:
            # kept across steps: the steps' support is checked once per (times, path) pair
            self._path, self._times = StepPath(sched), DiscreteTimes(sched.num_steps)
        conditional = getattr(model, "num_classes", None) and labels is not None
        res = denoise(model.output, self._path, x0, self._times,
                      prediction=PARAMETRIZATION_PREDICTIONS[model.parametrization],
                      reduction="mean", labels=labels.to(x0.device).long() if conditional
                      else None, label_dropout=self.label_dropout,
                      null_label=model.num_classes if conditional else None,
                      training=self.training, name="model", per_example=False)
        mse = res.error
        out = {"loss": mse, "mse": mse.detach()}
        if self.loss == "simple" and not self.log_bound and torch.is_grad_enabled():
            return out
        pred, v = res.output
        # the bound's estimate at the same steps and noise; only logged by the simple loss
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.loss != "simple"):
            term = _term(model, x0, res.x_t, res.t,
                         pred.detach() if self.loss == "hybrid" else pred, v, self.levels)
            nll = sched.prior_kl(x0) + sched.num_steps * term
            bpd = bits_per_dim(nll, x0[0].numel()).mean()
        if self.loss != "simple":
            out["loss"] = bpd if self.loss == "vlb" else mse + self.vlb_weight * bpd
        out.update(bpd_estimate=bpd.detach(), nll=nll.mean().detach())
        if self.levels is not None:
            out["bits_per_dim"] = out["bpd_estimate"]
        return out

    def extra_repr(self) -> str:
        return (f"loss={self.loss!r}, levels={self.levels}, label_dropout={self.label_dropout}"
                f", vlb_weight={self.vlb_weight}")


class NoisyClassifierLoss(nn.Module):
    r"""Creates the cross-entropy objective of a noise-conditional classifier
    :math:`p_\phi(y \mid x_s, s)` for classifier guidance.

    Each call noises the batch to a uniform step of ``schedule``
    (:math:`x_s \sim q(x_s \mid x_0)`) and returns ``loss`` (cross-entropy) and
    ``accuracy``; the classifier is called ``classifier(x_s, t) -> logits`` at the step's
    probgen time :math:`t = 1 - s/(T-1)` (:meth:`probgen.diffusion.NoiseSchedule.time_of_step`),
    as every network of ``(x, t)``.

    Args:
        classifier: the network, ``(batch, *event), (batch,) -> (batch, K)``.
        schedule: the diffusion's noise schedule.
        levels: integer pixel levels of image data (``None``: vectors).
    """

    def __init__(self, classifier: nn.Module, schedule: NoiseSchedule, *,
                 levels: int | None = None) -> None:
        super().__init__()
        self.classifier, self.schedule, self.levels = classifier, schedule, levels

    def forward(self, batch: Any) -> dict[str, Tensor]:  # noqa: D102
        x0, labels = _data(batch, self.levels)
        if labels is None:
            raise TypeError("batch: a classifier needs (x, labels) batches.")
        labels = labels.to(x0.device).long()
        step = torch.randint(0, self.schedule.num_steps, (x0.shape[0],), device=x0.device)
        x_t = perturb(StepPath(self.schedule), x0, step).x_t
        logits = self.classifier(x_t, self.schedule.time_of_step(step.to(x_t)))
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}


# ----------------------------------------------------------------------------- registry
def _levels(data: Any) -> int | None:
    if getattr(data, "kind", None) != "image":
        return None
    pre = data.preprocess
    if getattr(pre, "transform", None) != "signed":
        raise ValueError("diffusion on images needs [data] preprocess = \"signed\" (pixels "
                         f"on the [-1, 1] grid), got {getattr(pre, 'transform', pre)!r}.")
    if getattr(pre, "flatten", False):
        raise ValueError("diffusion on images needs image-shaped data; remove [data] "
                         "flatten.")
    return int(pre.levels)


@register_objective("ddpm", keys=("loss", "label_dropout", "vlb_weight", "log_bound"))
def _build_ddpm(model: nn.Module, data: Any, **table: Any) -> DiffusionLoss:
    """DDPM's simple, variational-bound or hybrid loss (label dropout for guidance)."""
    return DiffusionLoss(model, levels=_levels(data), **table)
