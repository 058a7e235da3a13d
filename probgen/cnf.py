r"""Continuous-time flows: any vector field plus a base distribution is a Distribution.

Time convention (the one of every continuous process in probgen): :math:`t \in [0, 1]`,
``t = 0`` is the base (noise, source) and ``t = 1`` is the data. A field
:math:`v(x, t)` moves base samples to data along :math:`\dot x_t = v(x_t, t)`, and the
density of :math:`x_t` obeys the instantaneous change of variables

.. math:: \frac{d}{dt} \log p_t(x_t) = -\operatorname{tr} \frac{\partial v}{\partial x}(x_t, t),

so :math:`\log p_1(x) = \log p_0(x_0) - \int_0^1 \operatorname{tr} \partial_x v \, dt`, with
:math:`x_0` found by solving the ODE backwards from :math:`x_1 = x`. Papers that run data
-> noise over 0 -> 1 (FFJORD's code, the course's homework) are the same model with
``v'(x, s) = -v(x, 1 - s)``.

ODEs are solved by torchdiffeq (adaptive or fixed-step, backpropagation through the
solver or the adjoint method); divergences come from :mod:`probgen.divergence`. This module
only adds what torchdiffeq lacks: the augmented state ``[x, log-density, penalties]``, the
Hutchinson probe held fixed over one solve, function-evaluation counts, and the
Distribution around it all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torchdiffeq import odeint, odeint_adjoint

from probgen.divergence import (
    NOISES,
    exact_divergence,
    hutchinson_divergence,
    hutchinson_noise,
)
from probgen.utils import check_choice, check_tensor, drawing_from

__all__ = [
    "ContinuousFlow",
    "SolveStats",
    "ADAPTIVE_METHODS",
    "FIXED_METHODS",
    "ODE_METHODS",
    "odeint_field",
    "TRACES",
    "PENALTIES",
]

#: torchdiffeq's adaptive-step methods (error control by ``rtol``/``atol``).
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: torchdiffeq's fixed-step methods (need ``step_size``): ``"heun2"`` is the explicit
#: trapezoidal rule (2 evaluations a step), ``"heun3"`` Heun's third-order method.
FIXED_METHODS: tuple[str, ...] = ("euler", "midpoint", "heun2", "heun3", "rk4")
#: Every ODE method probgen solves with (torchdiffeq's names): the one method table.
ODE_METHODS: tuple[str, ...] = ADAPTIVE_METHODS + FIXED_METHODS
#: How the divergence is computed: exactly, or by Hutchinson's estimator.
TRACES: tuple[str, ...] = ("exact", "hutchinson")
#: RNODE's regularizers: kinetic energy and squared Jacobian Frobenius norm, integrated
#: over the trajectory (Finlay et al., 2020).
PENALTIES: tuple[str, ...] = ("kinetic", "jacobian")

# A field: v(x, t) or v(x, t, context=c), x (batch, *event), t (batch,) -> (batch, *event).
VectorField = Callable[..., Tensor]


@dataclass
class SolveStats:
    """What one ODE solve cost.

    Attributes:
        kind: ``"sample"`` (base -> data), ``"log_prob"`` (data -> base, with the
            log-density) or ``"sample_and_log_prob"`` (base -> data, with it).
        method: the solver.
        nfe: evaluations of the field in the solve itself.
        nfe_backward: evaluations during the adjoint method's backward solve (filled in
            when ``backward`` runs; 0 with backpropagation through the solver).
        adjoint: whether gradients come from the adjoint method.
    """

    kind: str
    method: str
    nfe: int = 0
    nfe_backward: int = 0
    adjoint: bool = False


def _check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}.")
    return float(value)


class _Dynamics(nn.Module):
    """The right-hand side handed to torchdiffeq: ``(t, state) -> d state / dt``.

    ``state`` is ``x`` alone (plain transport) or a tuple ``(x, log-density change,
    *penalties)``. ``sign`` is the factor of the divergence in the second entry. Counts its
    evaluations; ``backward_phase`` routes the counts to ``nfe_backward`` (adjoint).
    """

    def __init__(
        self,
        field: VectorField,
        context: Tensor | None,
        stats: SolveStats,
        *,
        augmented: bool,
        trace: str,
        noise: Tensor | None,
        penalties: bool,
        sign: float,
    ) -> None:
        super().__init__()
        self.field = field  # registered as a submodule when it is an nn.Module
        self.context = context
        self.stats = stats
        self.augmented, self.trace, self.noise = augmented, trace, noise
        self.penalties, self.sign = penalties, sign
        self.backward_phase = False

    def _v(self, x: Tensor, t: Tensor) -> Tensor:
        tb = t.reshape(()).to(x.dtype).expand(x.shape[0])
        if self.context is None:
            return self.field(x, tb)
        return self.field(x, tb, context=self.context)

    def forward(self, t: Tensor, state: Tensor | tuple[Tensor, ...]) -> Any:  # noqa: D102
        if self.backward_phase:
            self.stats.nfe_backward += 1
        else:
            self.stats.nfe += 1
        if not self.augmented:
            v = self._v(state, t)
            if v.shape != state.shape:
                raise ValueError(f"field: must return the shape of x {tuple(state.shape)}, "
                                 f"got {tuple(v.shape)}.")
            return v
        x = state[0]

        def f(y: Tensor) -> Tensor:
            return self._v(y, t)

        if self.trace == "exact":
            out = exact_divergence(f, x, jacobian_norm=self.penalties)
        else:
            out = hutchinson_divergence(f, x, self.noise, jacobian_norm=self.penalties)
        derivs = [out.value, self.sign * out.divergence]
        if self.penalties:
            derivs += [out.value.pow(2).flatten(1).sum(-1), out.jacobian_norm]
        return tuple(derivs)


def odeint_field(
    field: VectorField,
    x: Tensor,
    times: Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    options: Mapping[str, Any] | None = None,
    stats: SolveStats | None = None,
    context: Tensor | None = None,
) -> Tensor:
    r"""Transports ``x`` along :math:`\dot x = v(x, t)` through ``times`` (torchdiffeq).

    The one adapter between probgen's fields ``field(x, t)`` (``t`` of shape ``(batch,)``)
    and torchdiffeq's ``(t, x)`` right-hand sides: every ODE probgen solves without the
    log-density goes through it (:class:`ContinuousFlow` adds the augmented state on the
    same dynamics).

    Args:
        field: ``field(x, t)`` (or ``field(x, t, context=c)`` with ``context``).
        x: start states at ``times[0]``, ``(batch, *event)``.
        times: monotone times ``(k,)``, in ``x``'s dtype and device.
        method: one of :data:`ODE_METHODS`; rtol, atol: tolerances of adaptive methods.
        options: torchdiffeq's options (``step_size`` for fixed-step methods, ``step_t``).
        stats: where the evaluations are counted (``nfe``).
        context: a fixed context ``(batch, c)`` handed to the field.

    Returns:
        The states at ``times``, ``(k, batch, *event)``.
    """
    check_choice("method", method, ODE_METHODS)
    stats = SolveStats("flow", method) if stats is None else stats
    dyn = _Dynamics(field, context, stats, augmented=False, trace="exact", noise=None,
                    penalties=False, sign=1.0)
    return odeint(dyn, x, times, rtol=rtol, atol=atol, method=method,
                  options=dict(options) if options else None)


class ContinuousFlow(TorchDistribution):
    r"""Creates the distribution of :math:`x_1` where :math:`\dot x_t = v(x_t, t)` and
    :math:`x_{t_0}` follows ``base``.

    A Pyro distribution (``TorchDistribution``): the distribution of an observed or a latent
    ``pyro.sample`` site (plain execution, ``Predictive``, every poutine handler, NUTS),
    with torch's batch-shape rules for ``expand``.

    ``sample`` draws from ``base`` and solves the ODE from ``t0`` to ``t1`` (base -> data);
    ``log_prob`` solves the augmented ODE :math:`[x, \ell]`, :math:`\dot\ell =
    \operatorname{tr} \partial_x v`, backwards from ``t1`` to ``t0`` and returns
    :math:`\log p_{\text{base}}(x_{t_0}) + \ell(t_0)` (the instantaneous change of variables,
    module docstring). Any field with that call signature works unchanged: a FFJORD network,
    a trained flow-matching velocity, a diffusion model's probability-flow field.

    Every solve records its cost in :attr:`last_solve` (a :class:`SolveStats`; with the
    adjoint method, ``nfe_backward`` is filled in when ``backward`` runs).

    Args:
        field: ``v(x, t)`` (or ``v(x, t, context=c)`` when a context is given) with ``x`` of
            shape ``(batch, *event)``, ``t`` of shape ``(batch,)``, returning the shape of
            ``x``; examples must not interact (the divergence is per example).
        base: the distribution at ``t0``, with event shape the data's (e.g.
            ``Independent(Normal(zeros(D), ones(D)), 1)``).
        context: a conditioning tensor ``(*batch, c)``; its leading dimensions are the
            distribution's batch shape, and it reaches the field flattened to ``(N, c)``.
        method: torchdiffeq method: adaptive (:data:`ADAPTIVE_METHODS`, error control by
            ``rtol``/``atol``) or fixed-step (:data:`FIXED_METHODS`, needs ``step_size``).
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        log_density_atol: absolute tolerance on the log-density state of ``log_prob`` and
            ``rsample_and_log_prob`` (``None``: ``atol``, one tolerance for the whole
            augmented state). The log-density is a quadrature along the path: its error
            does not feed back into ``x``, and a looser tolerance on it (``100 * atol`` is
            zuko's CNF's, which scales the log-determinant by 1e-2 inside its error norm)
            lets the solver take the steps that ``x`` alone needs (fewer evaluations, a
            log-density error of the order of this tolerance).
        step_size: step of fixed-step methods (in units of t; ``1/steps``).
        options: further torchdiffeq solver options (e.g. ``max_num_steps``).
        adjoint: gradients by the adjoint method (``torchdiffeq.odeint_adjoint``: memory
            constant in the number of steps) instead of backpropagation through the solver.
        adjoint_options: options of the adjoint's backward solve, on top of ``options``
            (and ``step_size``); adaptive methods default to the ``"seminorm"`` error norm
            (Kidger et al., 2021), which skips error control on the parameter adjoints.
        adjoint_params: the tensors the adjoint method differentiates; defaults to the
            field's parameters (an ``nn.Module``) plus ``context`` when it requires grad.
            Required when ``field`` is a plain function closing over parameters.
        trace: ``"exact"`` (:func:`~probgen.divergence.exact_divergence`) or
            ``"hutchinson"`` (:func:`~probgen.divergence.hutchinson_divergence`, one probe
            drawn per solve and held fixed along it).
        noise: Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        t0: the time of the base (default 0).
        t1: the time of the data (default 1); ``0 <= t0 < t1 <= 1``.
        generator: draws the Hutchinson probes of calls that give no ``generator=`` of
            their own (``None``: the global RNG).

    References:
        Neural ordinary differential equations (Chen et al., 2018),
        https://arxiv.org/abs/1806.07366.
        FFJORD: Free-form continuous dynamics for scalable reversible generative models
        (Grathwohl et al., 2019), https://arxiv.org/abs/1810.01367

    Example:
        >>> from torch.distributions import Independent, Normal
        >>> base = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        >>> flow = ContinuousFlow(lambda x, t: -x, base)  # v = A x with A = -I
        >>> x = torch.zeros(1, 2)
        >>> with torch.no_grad():
        ...     log_det = flow.log_prob(x) - base.log_prob(x)
        >>> round(float(log_det), 4)  # -t tr(A) = 2: the flow contracts, density grows
        2.0
        >>> flow.last_solve.kind, flow.last_solve.nfe > 0
        ('log_prob', True)
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = True

    @property
    def support(self) -> constraints.Constraint:
        """All of :math:`\\mathbb R^{\\text{event}}`."""
        return constraints.independent(constraints.real, len(self.event_shape))

    def __init__(
        self,
        field: VectorField,
        base: Distribution,
        *,
        context: Tensor | None = None,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        log_density_atol: float | None = None,
        step_size: float | None = None,
        options: Mapping[str, Any] | None = None,
        adjoint: bool = False,
        adjoint_options: Mapping[str, Any] | None = None,
        adjoint_params: Iterable[Tensor] | None = None,
        trace: str = "exact",
        noise: str = "rademacher",
        t0: float = 0.0,
        t1: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        if not callable(field):
            raise TypeError(f"field: expected a callable v(x, t), got {type(field).__name__}.")
        if not isinstance(base, Distribution):
            raise TypeError(f"base: expected a torch.distributions.Distribution, got "
                            f"{type(base).__name__}.")
        if len(base.event_shape) == 0:
            raise ValueError("base: expected a distribution with a non-empty event shape "
                             "(e.g. Independent(Normal(loc, scale), 1)), got event shape ().")
        check_choice("method", method, ADAPTIVE_METHODS + FIXED_METHODS)
        check_choice("trace", trace, TRACES)
        check_choice("noise", noise, NOISES)
        self.rtol = _check_positive_float("rtol", rtol)
        self.atol = _check_positive_float("atol", atol)
        self.log_density_atol = (self.atol if log_density_atol is None
                                 else _check_positive_float("log_density_atol", log_density_atol))
        if method in FIXED_METHODS:
            if step_size is None:
                raise ValueError(f"step_size: method {method!r} takes fixed steps; give "
                                 "step_size (e.g. 0.05 for 20 steps over [0, 1]).")
            _check_positive_float("step_size", step_size)
        elif step_size is not None:
            raise ValueError(f"step_size: method {method!r} is adaptive (it picks its steps "
                             f"from rtol/atol); use one of {list(FIXED_METHODS)} for fixed steps.")
        if not (0.0 <= t0 < t1 <= 1.0):
            raise ValueError(f"t0, t1: expected 0 <= t0 < t1 <= 1 (t = 0 base, t = 1 data), "
                             f"got t0={t0!r}, t1={t1!r}.")
        if context is not None:
            context = check_tensor(context, "context")
            if context.dim() < 1:
                raise ValueError("context: expected shape (*batch, c), got a scalar.")
        self.field, self.base, self.context = field, base, context
        self.method, self.step_size, self.adjoint = method, step_size, bool(adjoint)
        self.options = dict(options or {})
        if step_size is not None:
            self.options["step_size"] = float(step_size)
        # The backward solve takes the forward's options (fixed steps: the same step_size),
        # with the seminorm for adaptive methods, then whatever the caller gives.
        self.adjoint_options = {k: v for k, v in self.options.items() if k != "norm"}
        if method in ADAPTIVE_METHODS:
            self.adjoint_options["norm"] = "seminorm"
        self.adjoint_options.update(adjoint_options or {})
        self._adjoint_params = None if adjoint_params is None else tuple(adjoint_params)
        if self.adjoint and self._adjoint_params is None and not isinstance(field, nn.Module):
            raise ValueError("adjoint_params: the adjoint method differentiates an explicit "
                             "list of tensors; field is not an nn.Module, so pass "
                             "adjoint_params=... (the parameters it closes over, or ()).")
        self.trace, self.noise = trace, noise
        self.t0, self.t1 = float(t0), float(t1)
        self.generator = generator
        self.last_solve: SolveStats | None = None
        batch_shape = base.batch_shape
        if context is not None:
            batch_shape = torch.broadcast_shapes(batch_shape, context.shape[:-1])
        super().__init__(batch_shape, base.event_shape, validate_args=False)

    # ------------------------------------------------------------------------- solving
    def _params(self) -> tuple[Tensor, ...]:
        if self._adjoint_params is not None:
            params = list(self._adjoint_params)
        else:
            params = list(self.field.parameters()) if isinstance(self.field, nn.Module) else []
        if self.context is not None and self.context.requires_grad:
            params.append(self.context)
        return tuple(p for p in params if p.requires_grad)

    def _flat_context(self, leading: torch.Size) -> Tensor | None:
        if self.context is None:
            return None
        c = self.context.expand(*leading, self.context.shape[-1])
        return c.reshape(-1, c.shape[-1])

    def _solve(self, state: Any, dynamics: _Dynamics, t_start: float, t_end: float) -> Any:
        ref = state[0] if isinstance(state, tuple) else state
        t = torch.tensor([t_start, t_end], dtype=ref.dtype, device=ref.device)
        atol: float | tuple[float, ...] = self.atol
        if isinstance(state, tuple) and self.log_density_atol != self.atol:
            # torchdiffeq's per-state tolerances: [x, log-density, *penalties]
            atol = (self.atol, self.log_density_atol) + (self.atol,) * (len(state) - 2)
        kwargs = dict(rtol=self.rtol, atol=atol, method=self.method,
                      options=self.options or None)
        if self.adjoint and torch.is_grad_enabled():
            # the backward solve's state is not [x, log-density]: one tolerance for it
            out = odeint_adjoint(dynamics, state, t, adjoint_params=self._params(),
                                 adjoint_options=self.adjoint_options,
                                 adjoint_atol=self.atol, **kwargs)
        else:
            out = odeint(dynamics, state, t, **kwargs)
        dynamics.backward_phase = True  # any further call is the adjoint's backward solve
        return tuple(s[-1] for s in out) if isinstance(out, tuple) else out[-1]

    def _dynamics(self, kind: str, context: Tensor | None, *, augmented: bool,
                  x: Tensor | None = None, penalties: bool = False, sign: float = 1.0,
                  generator: torch.Generator | None = None) -> _Dynamics:
        stats = SolveStats(kind, self.method, adjoint=self.adjoint and torch.is_grad_enabled())
        self.last_solve = stats
        probe = None
        if augmented and self.trace == "hutchinson":
            probe = hutchinson_noise(x, self.noise, generator=generator if generator is not None
                                     else self.generator)
        return _Dynamics(self.field, context, stats, augmented=augmented, trace=self.trace,
                         noise=probe, penalties=penalties, sign=sign)

    def _check_x(self, x: Tensor) -> tuple[Tensor, torch.Size]:
        event = tuple(self.event_shape)
        x = check_tensor(x, "x", event_shape=event)
        leading = x.shape[: x.dim() - len(event)]
        # torch's rule: points broadcast against the batch shape (and the context's)
        full = torch.broadcast_shapes(leading, self.batch_shape)
        if self.context is not None:
            full = torch.broadcast_shapes(full, self.context.shape[:-1])
        if full != leading:
            x = x.expand(*full, *event)
        return x, full

    # ------------------------------------------------------------------------- API
    def log_prob(self, value: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Log-density of ``value``, shape ``(*sample, *batch, *event)`` -> ``(*sample, *batch)``.

        Solves the augmented ODE from ``t1`` back to ``t0``; a Hutchinson probe comes from
        ``generator`` when one is given (else from the constructor's, else the global RNG).
        """
        return self.log_prob_and_penalties(value, penalties=False, generator=generator)[0]

    def log_prob_and_penalties(
        self, value: Tensor, *, penalties: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Log-density of ``value`` and RNODE's penalties along its trajectory.

        The penalties are integrated alongside the log-density, in the same solve:
        ``kinetic`` :math:`= \int_{t_0}^{t_1} \|v(x_t, t)\|^2 dt` and ``jacobian``
        :math:`= \int_{t_0}^{t_1} \|\partial_x v(x_t, t)\|_F^2 dt` (exact with
        ``trace="exact"``, else the unbiased estimate :math:`\|\epsilon^\top \partial_x
        v\|^2` from the same probe). Both are per example; adding their means, weighted, to
        the NLL gives straighter, cheaper-to-solve fields.

        Args:
            value: points, shape ``(*sample, *batch, *event)``.
            penalties: integrate the penalties too (``False``: an empty dict).
            generator: draws the Hutchinson probe (``None``: the constructor's generator,
                else the global RNG).

        Returns:
            ``(log_p, {"kinetic": ..., "jacobian": ...})``, each of shape
            ``(*sample, *batch)``.

        References:
            How to train your neural ODE: the world of Jacobian and kinetic regularization
            (Finlay et al., 2020), https://arxiv.org/abs/2002.02798
        """
        x, leading = self._check_x(value)
        flat = x.reshape(-1, *self.event_shape)
        zeros = flat.new_zeros(flat.shape[0])
        state = (flat, zeros, zeros, zeros) if penalties else (flat, zeros)
        dyn = self._dynamics("log_prob", self._flat_context(leading), augmented=True, x=flat,
                             penalties=penalties, sign=1.0, generator=generator)
        out = self._solve(state, dyn, self.t1, self.t0)
        z = out[0].reshape(x.shape)
        # d(ell)/dt = +tr(dv/dx), ell(t1) = 0  =>  ell(t0) = -int_{t0}^{t1} tr dt.
        log_p = self.base.log_prob(z) + out[1].reshape(leading)
        # Integrated backwards, the penalties come out negated.
        terms = {} if not penalties else {"kinetic": -out[2].reshape(leading),
                                          "jacobian": -out[3].reshape(leading)}
        return log_p, terms

    def _base_draws(self, sample_shape: Sequence[int],
                    generator: torch.Generator | None) -> Tensor:
        with drawing_from(generator):
            return self.base.expand(self.batch_shape).rsample(torch.Size(sample_shape))

    def rsample(self, sample_shape: Sequence[int] = torch.Size(), *,
                generator: torch.Generator | None = None) -> Tensor:
        """Differentiable samples, shape ``(*sample_shape, *batch, *event)``: base draws
        (from ``generator`` when one is given) transported from ``t0`` to ``t1``."""
        return self.flow(self._base_draws(sample_shape, generator), kind="sample")

    def sample(self, sample_shape: Sequence[int] = torch.Size(), *,
               generator: torch.Generator | None = None) -> Tensor:
        """Samples without gradients, shape ``(*sample_shape, *batch, *event)``; the base
        draws come from ``generator`` when one is given."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def rsample_and_log_prob(
        self, sample_shape: Sequence[int] = torch.Size(), *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Differentiable samples and their log-density from one base -> data solve.

        Integrates :math:`\\dot\\ell = -\\operatorname{tr} \\partial_x v` forwards from
        :math:`\\ell(t_0) = \\log p_\\text{base}(z)` (what reverse KL needs).

        The base draws and a Hutchinson probe come from ``generator`` when one is given.

        Returns:
            ``(x, log_p)`` of shapes ``(*sample_shape, *batch, *event)`` and
            ``(*sample_shape, *batch)``.
        """
        z = self._base_draws(sample_shape, generator)
        leading = z.shape[: z.dim() - len(self.event_shape)]
        flat = z.reshape(-1, *self.event_shape)
        log_p0 = self.base.log_prob(z).reshape(-1)
        dyn = self._dynamics("sample_and_log_prob", self._flat_context(leading),
                             augmented=True, x=flat, sign=-1.0, generator=generator)
        x, log_p = self._solve((flat, log_p0), dyn, self.t0, self.t1)
        return x.reshape(z.shape), log_p.reshape(leading)

    def flow(self, x: Tensor, *, reverse: bool = False, kind: str = "flow") -> Tensor:
        """Transports points along the ODE: base -> data (``t0 -> t1``) or back (``reverse``).

        Args:
            x: points, shape ``(*sample, *batch, *event)``.
            reverse: integrate from ``t1`` to ``t0`` (data -> base: the latent code of x).
            kind: the label written into :attr:`last_solve`.

        Returns:
            The transported points, same shape.
        """
        x, leading = self._check_x(x)
        flat = x.reshape(-1, *self.event_shape)
        dyn = self._dynamics(kind, self._flat_context(leading), augmented=False)
        start, end = (self.t1, self.t0) if reverse else (self.t0, self.t1)
        return self._solve(flat, dyn, start, end).reshape(x.shape)

    def trajectory(self, x: Tensor, times: Sequence[float] | Tensor) -> Tensor:
        """The states at ``times`` of the trajectories through ``x`` at ``times[0]``.

        Args:
            x: points at time ``times[0]``, shape ``(*sample, *batch, *event)``.
            times: increasing or decreasing times in ``[t0, t1]``, at least two.

        Returns:
            Shape ``(len(times), *x.shape)``.
        """
        x, leading = self._check_x(x)
        flat = x.reshape(-1, *self.event_shape)
        grid = torch.as_tensor(times, dtype=flat.dtype, device=flat.device)
        if grid.dim() != 1 or grid.numel() < 2:
            raise ValueError(f"times: expected at least two times, got {grid.tolist()}.")
        self.last_solve = SolveStats("trajectory", self.method)
        out = odeint_field(self.field, flat, grid, method=self.method, rtol=self.rtol,
                           atol=self.atol, options=self.options, stats=self.last_solve,
                           context=self._flat_context(leading))
        return out.reshape(grid.numel(), *x.shape)

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> ContinuousFlow:
        """The same flow with batch shape ``batch_shape`` (the context is expanded)."""
        batch_shape = torch.Size(batch_shape)
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        if self.context is not None:
            new.context = self.context.expand(*batch_shape, self.context.shape[-1])
        new.base = self.base.expand(batch_shape)
        new.last_solve = None
        super(ContinuousFlow, new).__init__(batch_shape, self.event_shape, validate_args=False)
        return new

    def __repr__(self) -> str:
        return (f"ContinuousFlow(event_shape={tuple(self.event_shape)}, "
                f"batch_shape={tuple(self.batch_shape)}, method={self.method!r}, "
                f"trace={self.trace!r}, adjoint={self.adjoint})")
