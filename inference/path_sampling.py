r"""Sampling any model of a Gaussian path by name: one vocabulary for flow matching, score
SDEs and DDPM.

A model of a Gaussian path (:mod:`probgen.processes`) is a prediction function
``predict(x, t)`` in one of :data:`probgen.processes.PREDICTIONS` (probgen time, ``t = 0``
noise, ``t = 1`` data, guidance already applied). :func:`sample_path` turns it into
samples with any of :data:`PATH_SAMPLERS`, through the one loop of
:mod:`probgen.inference.sampling`:

- the fast solvers of :mod:`probgen.inference.solvers` (``"ddim"`` with any ``eta``,
  ``"dpm++2m"``, ``"edm_heun"``, ...) on the data prediction, over ``steps`` steps of a
  time or noise-level grid;
- ``"ode"``: the probability-flow ODE on the velocity, by torchdiffeq (:class:`ODEStepper`,
  each step one :func:`probgen.inference.ode_sample` solve through the one adapter
  :func:`probgen.cnf.odeint_field`): an adaptive ``method``
  (``"dopri5"``, one grid step; the NFE is the solver's) or a fixed-step one (``"euler"``,
  ``"midpoint"``, ``"heun2"``, ``"rk4"``, ...) over ``steps`` uniform steps.

``steps`` means one thing for every sampler: the number of updates of the state on the
grid (a solver's last denoising step to the data, where it takes one, counts as one).

:func:`path_flow` turns the same prediction into a Distribution: the probability-flow ODE
as a :class:`probgen.cnf.ContinuousFlow`, with exact log-likelihoods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from probgen.cnf import ADAPTIVE_METHODS, FIXED_METHODS, ContinuousFlow
from probgen.inference.flow_matching import ode_sample
from probgen.inference.sampling import SampleResult, Stepper, sample_loop
from probgen.inference.solvers import DDIM, DEFAULT_GRIDS, SOLVERS, STEPPERS, time_grid
from probgen.processes import GaussianPath, check_path_prediction
from probgen.utils import check_choice

__all__ = ["PATH_SAMPLERS", "ODEStepper", "sample_path", "path_flow"]

#: The samplers of :func:`sample_path`: the fast solvers and the probability-flow ODE.
PATH_SAMPLERS: tuple[str, ...] = (*SOLVERS, "ode")


class ODEStepper(Stepper):
    r"""Creates a torchdiffeq step of :math:`\dot x = v(x, t)` from ``t`` to ``t_next``.

    Fixed-step methods take one step of their own per grid interval; adaptive ones integrate
    the interval to ``rtol``/``atol`` (landing exactly on ``t_next``). Evaluations are
    counted by the run.

    Args:
        field: ``field(x, t)``, ``t`` of shape ``(batch,)``.
        method: one of :data:`probgen.cnf.ODE_METHODS`.
        rtol, atol: tolerances of adaptive methods.
        final: ``final(x, t)``, one last counted call after the grid (e.g. the data
            prediction: a denoising step), or ``None``.
    """

    def __init__(self, field: Callable[[Tensor, Tensor], Tensor], *, method: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5,
                 final: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        self.field, self.method, self.rtol, self.atol = field, method, float(rtol), float(atol)
        self.final = final

    def end(self, x: Tensor, t: float) -> Tensor | None:  # noqa: D102
        return None if self.final is None else self.run.call(self.final, x, t, name="final")

    def step(self, x: Tensor, t: float, t_next: float) -> Tensor:  # noqa: D102
        out = ode_sample(self.field, x, method=self.method, rtol=self.rtol, atol=self.atol,
                         steps=1 if self.method in FIXED_METHODS else None, t0=t, t1=t_next)
        self.run.count(out.nfe)
        return out.samples


def _positive_steps(steps: Any, sampler: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: sampler {sampler!r} takes a positive int number of steps, "
                         f"got {steps!r}.")
    return steps


def sample_path(
    predict: Callable[[Tensor, Tensor], Tensor],
    prediction: str,
    path: GaussianPath,
    x: Tensor,
    *,
    sampler: str = "dpm++2m",
    steps: int | None = None,
    eta: float = 0.0,
    spacing: str | None = None,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_end: float | None = None,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    networks: Iterable[Any] = (),
    record_every: int | None = None,
) -> SampleResult:
    r"""Samples a model of ``path`` from the prior draws ``x`` at ``t = 0``.

    Args:
        predict: ``predict(x, t)``: the model's prediction, ``x`` ``(batch, *event)``,
            ``t`` ``(batch,)`` (guidance already applied).
        prediction: what ``predict`` returns, one of :data:`probgen.processes.PREDICTIONS`.
        path: the model's Gaussian path.
        x: the start ``(batch, *event)`` (the prior's draws).
        sampler: one of :data:`PATH_SAMPLERS`.
        steps: the number of steps (default 20 for the solvers and fixed-step ODE methods;
            ignored by an adaptive ``"ode"`` method, which picks its own).
        eta: ``"ddim"``'s noise in [0, 1] (1: the posterior, an ancestral sampler on the
            path; a discretization of the reverse SDE whose marginals are the path's).
        spacing: the solvers' grid (:data:`probgen.inference.solvers.GRIDS`; default each
            solver's).
        method: ``"ode"``'s torchdiffeq method; rtol, atol: its tolerances when adaptive.
        t_end: the last time (default the path's ``t_end``).
        denoise: end with a step to the data prediction where :math:`\sigma(t_\text{end})
            > 0` (one of the ``steps``; Tweedie's formula for a score model).
        generator: the run's random numbers (``"ddim"`` with ``eta > 0``).
        networks: modules put in evaluation mode for the run.
        record_every: keep every this-many-th state in the trajectory.

    Returns:
        A :class:`probgen.inference.sampling.SampleResult`.

    Example:
        >>> from probgen.paths import CondOTPath
        >>> path = CondOTPath()
        >>> exact = lambda x, t: path.gaussian_prediction(x, t[0], torch.zeros(2),
        ...                                               torch.eye(2), "velocity")
        >>> out = sample_path(exact, "velocity", path, torch.randn(4, 2), sampler="ode",
        ...                   method="euler", steps=10)
        >>> out.samples.shape, out.nfe
        (torch.Size([4, 2]), 10)
    """
    check_choice("sampler", sampler, PATH_SAMPLERS)
    check_path_prediction(path, prediction)
    if sampler != "ddim" and eta:
        raise ValueError(f"eta: applies to sampler 'ddim' only, got eta={eta!r} with "
                         f"{sampler!r}.")
    t_end = path.t_end if t_end is None else float(t_end)
    sigma_end = float(path.alpha_sigma(torch.tensor([t_end], dtype=torch.float64,
                                                               device="cpu"))[1][0])
    last = bool(denoise and sigma_end > 0)  # a last denoising step, one of the steps

    def data(state: Tensor, t: Tensor) -> Tensor:
        return path.convert(predict(state, t), state, t, source=prediction, target="data")

    if sampler == "ode" and method not in FIXED_METHODS:
        # an adaptive method picks its own steps from rtol/atol: steps is ignored
        grid = torch.tensor([0.0, t_end], dtype=torch.float64)
    else:  # the grid's intervals: the steps but a last denoising step
        steps = _positive_steps(20 if steps is None else steps,
                                f"ode/{method}" if sampler == "ode" else sampler)
        if steps - last < 1:
            raise ValueError(f"steps: sampler {sampler!r} on this path ends with a denoising "
                             f"step; expected steps >= 2, got {steps}.")
        if sampler == "ode":
            grid = torch.linspace(0.0, t_end, steps - last + 1, dtype=torch.float64, device="cpu")
        else:
            grid = time_grid(path, steps - last, grid=spacing or DEFAULT_GRIDS[sampler],
                             t_end=t_end)
    if sampler == "ode":
        stepper: Stepper = ODEStepper(_Velocity(predict, prediction, path), method=method,
                                      rtol=rtol, atol=atol, final=data if last else None)
    elif sampler == "ddim":
        stepper = DDIM(path, data, eta=eta, denoise=denoise)
    else:
        stepper = STEPPERS[sampler](path, data, denoise=denoise)
    return sample_loop(stepper, x, grid, generator=generator, networks=networks,
                       record_every=record_every)


class _Velocity(nn.Module):
    """A prediction on a path as the probability-flow field ``field(x, t)`` (a module, so an
    adjoint solve finds the parameters of ``source``)."""

    def __init__(self, predict: Callable[[Tensor, Tensor], Tensor], prediction: str,
                 path: GaussianPath, source: nn.Module | None = None) -> None:
        super().__init__()
        self.predict, self.prediction, self.path, self.source = predict, prediction, path, source

    def forward(self, x: Tensor, t: Tensor) -> Tensor:  # noqa: D102
        return self.path.convert(self.predict(x, t), x, t, source=self.prediction,
                                 target="velocity")


def path_flow(
    predict: Callable[[Tensor, Tensor], Tensor],
    prediction: str,
    path: GaussianPath,
    event_shape: Any,
    *,
    t_end: float | None = None,
    source: nn.Module | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    prior: Distribution | None = None,
    **flow_kwargs: Any,
) -> ContinuousFlow:
    r"""A model of ``path`` as a Distribution: the probability-flow ODE :math:`\dot x = u_t(x)`
    of its prediction (converted to the velocity on ``path``) from the prior at ``t = 0``
    to ``t_end``, a :class:`probgen.cnf.ContinuousFlow` (``log_prob``, ``sample``,
    ``last_solve``).

    Args:
        predict: ``predict(x, t)`` (guidance already applied), as :func:`sample_path`'s.
        prediction: what ``predict`` returns, one of :data:`probgen.processes.PREDICTIONS`.
        path: the model's Gaussian path.
        event_shape: the shape of one example.
        t_end: the flow's end (default the path's ``t_end``); where it lies before the
            data an adaptive solver's last step lands on it (the field beyond it may be
            undefined).
        source: the module behind ``predict`` (its parameters for an adjoint solve).
        device: where the prior lives; dtype: its dtype.
        prior: the law at ``t = 0`` (default the path's prior).
        **flow_kwargs: passed to :class:`probgen.cnf.ContinuousFlow` (``method``, ``rtol``,
            ``atol``, ``step_size``, ``trace``, ``noise``, ``generator``, ...).
    """
    check_path_prediction(path, prediction)
    t1 = path.t_end if t_end is None else float(t_end)
    base = path.prior(tuple(event_shape), device=device, dtype=dtype) if prior is None else prior
    if t1 < 1.0 and flow_kwargs.get("method", "dopri5") in ADAPTIVE_METHODS:
        # torchdiffeq's adaptive solvers step past the end and interpolate back: land on t1
        # as the state's dtype rounds it (the ODE's time grid is in that dtype).
        flow_kwargs["options"] = {"step_t": [float(torch.tensor(
            t1, dtype=dtype or torch.get_default_dtype()))]}
    return ContinuousFlow(_Velocity(predict, prediction, path, source), base, t1=t1,
                          **flow_kwargs)
