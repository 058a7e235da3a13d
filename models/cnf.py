"""Continuous normalizing flows: FFJORD and the course's CNF, as density models.

Each model is an ``nn.Module`` holding a vector field network and a standard-normal base
(buffers), whose :meth:`~ContinuousFlowModel.distribution` is a
:class:`probgen.cnf.ContinuousFlow`. Time runs base (t = 0) -> data (t = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from probgen.cnf import ADAPTIVE_METHODS, FIXED_METHODS, ContinuousFlow, SolveStats
from probgen.divergence import NOISES
from probgen.nn import ACTIVATIONS
from probgen.utils import check_choice, check_int, drawing_from

__all__ = [
    "ConcatSquashLinear",
    "ConcatSquashField",
    "TimeMLPField",
    "ContinuousFlowModel",
    "FFJORD",
    "CNF",
    "CONTINUOUS_FLOWS",
]


def _hidden(hidden_features: Sequence[int]) -> list[int]:
    hidden = [int(h) for h in hidden_features]
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden_features: expected a non-empty list of positive ints, got "
                         f"{list(hidden_features)!r}.")
    return hidden


def _check_t(t: Tensor, x: Tensor) -> Tensor:
    if not isinstance(t, Tensor) or t.shape != x.shape[:1]:
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"t: expected shape ({x.shape[0]},) (one time per example), got {got}.")
    return t.to(x.dtype)


def _with_context(h: Tensor, context: Tensor | None, size: int) -> Tensor:
    if not size:
        if context is not None:
            raise ValueError("context: this field is unconditional (context=0), got a tensor.")
        return h
    if context is None or context.shape[-1] != size:
        got = None if context is None else tuple(context.shape)
        raise ValueError(f"context: expected shape ({h.shape[0]}, {size}), got {got}.")
    return torch.cat([h, context.expand(h.shape[0], size).to(h.dtype)], dim=-1)


class ConcatSquashLinear(nn.Module):
    r"""Creates FFJORD's time-conditioned linear layer
    :math:`(W h + b) \odot \sigma(a\,t + c) + d\,t`.

    The gate :math:`\sigma(a t + c)` and the bias :math:`d\,t` let every layer depend on
    time smoothly, which keeps the field cheap for adaptive solvers.

    Args:
        in_features: input size (including any context).
        out_features: output size.

    References:
        FFJORD (Grathwohl et al., 2019), https://arxiv.org/abs/1810.01367
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.time_bias = nn.Linear(1, out_features, bias=False)

    def forward(self, h: Tensor, t: Tensor) -> Tensor:
        """``h``: ``(batch, in_features)``, ``t``: ``(batch,)`` -> ``(batch, out_features)``."""
        tt = t[:, None]
        return self.linear(h) * torch.sigmoid(self.gate(tt)) + self.time_bias(tt)


class ConcatSquashField(nn.Module):
    """Creates FFJORD's vector field: a stack of :class:`ConcatSquashLinear` layers.

    Args:
        features: dimension D of x.
        hidden_features: widths of the hidden layers.
        context: context size, concatenated to the input of the first layer (0: none).
        activation: hidden activation (a name of :data:`probgen.nn.ACTIVATIONS`).

    Shapes:
        ``x``: ``(batch, D)``; ``t``: ``(batch,)``; ``context``: ``(batch, context)``;
        output ``(batch, D)``.

    Example:
        >>> field = ConcatSquashField(2, [16, 16])
        >>> field(torch.randn(5, 2), torch.rand(5)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64, 64),
        context: int = 0,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        check_int("features", features)
        sizes = [features + context, *_hidden(hidden_features), features]
        check_choice("activation", activation, sorted(ACTIVATIONS))
        self.layers = nn.ModuleList(
            ConcatSquashLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.act = ACTIVATIONS[activation]()
        self.features, self.context = features, context

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        """The velocity ``v(x, t[, context])``, shape of ``x``."""
        t = _check_t(t, x)
        h = _with_context(x, context, self.context)
        for i, layer in enumerate(self.layers):
            h = layer(h, t)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class TimeMLPField(nn.Module):
    r"""Creates an MLP vector field on ``[x, time features, context]``.

    With ``freqs = 0`` the time enters as the raw scalar ``t``; with ``freqs = K`` as the
    :math:`2K` features :math:`\cos(k\pi t), \sin(k\pi t)`, :math:`k = 1..K`.

    Args:
        features: dimension D of x.
        hidden_features: widths of the hidden layers.
        context: context size (0: none).
        activation: hidden activation (a name of :data:`probgen.nn.ACTIVATIONS`).
        freqs: number of time frequencies (0: raw t).

    Example:
        >>> TimeMLPField(2, [16], freqs=3)(torch.randn(4, 2), torch.rand(4)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64, 64),
        context: int = 0,
        activation: str = "tanh",
        freqs: int = 0,
    ) -> None:
        super().__init__()
        check_int("features", features)
        check_int("freqs", freqs, low=0)
        time_dim = 2 * freqs if freqs else 1
        sizes = [features + time_dim + context, *_hidden(hidden_features), features]
        check_choice("activation", activation, sorted(ACTIVATIONS))
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i:
                layers.append(ACTIVATIONS[activation]())
            layers.append(nn.Linear(a, b))
        self.net = nn.Sequential(*layers)
        self.register_buffer("freqs", math.pi * torch.arange(1, freqs + 1, dtype=torch.float32))
        self.features, self.context = features, context

    def time_features(self, t: Tensor) -> Tensor:
        """``(batch,)`` -> ``(batch, 2 * freqs)`` (or ``(batch, 1)`` with ``freqs = 0``)."""
        if not self.freqs.numel():
            return t[:, None]
        angles = t[:, None] * self.freqs.to(t.dtype)
        return torch.cat([angles.cos(), angles.sin()], dim=-1)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        """The velocity ``v(x, t[, context])``, shape of ``x``."""
        t = _check_t(t, x)
        h = torch.cat([x, self.time_features(t)], dim=-1)
        return self.net(_with_context(h, context, self.context))


class ContinuousFlowModel(nn.Module):
    """Creates a density model from a vector field: a standard-normal base at t = 0
    transported to the data at t = 1 (the base class of :class:`FFJORD` and :class:`CNF`).

    ``distribution(context)`` is a :class:`probgen.cnf.ContinuousFlow`; ``log_prob``,
    ``sample``, ``rsample_and_log_prob`` and ``log_prob_and_penalties`` are shortcuts. The
    divergence is ``trace`` in training mode and ``eval_trace`` in eval mode (exact by
    default: held-out likelihoods are then exact, not estimates). After every call,
    :attr:`last_solve` holds the cost of the solve (:class:`probgen.cnf.SolveStats`) and
    :attr:`nfe` its number of field evaluations.

    Args:
        field: ``field(x, t[, context=c])`` with ``x`` ``(batch, D)``, ``t`` ``(batch,)``.
        features: dimension D.
        context: context size the field takes (0: unconditional).
        trace: divergence in training, ``"exact"`` or ``"hutchinson"``.
        eval_trace: divergence in eval mode (``None``: same as ``trace``).
        noise: Hutchinson probe, ``"rademacher"`` or ``"gaussian"``.
        method: torchdiffeq solver (adaptive or fixed-step).
        rtol: relative tolerance (adaptive methods).
        atol: absolute tolerance (adaptive methods).
        step_size: step of fixed-step methods.
        adjoint: gradients by the adjoint method (constant memory in the number of steps).
        log_density_atol: absolute tolerance on the log-density (``None``: ``atol``; see
            :class:`probgen.cnf.ContinuousFlow`).
    """

    def __init__(
        self,
        field: nn.Module,
        features: int,
        *,
        context: int = 0,
        trace: str = "exact",
        eval_trace: str | None = "exact",
        noise: str = "rademacher",
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        log_density_atol: float | None = None,
        step_size: float | None = None,
        adjoint: bool = False,
    ) -> None:
        super().__init__()
        check_int("features", features)
        check_int("context", context, low=0)
        for name, value, allowed in (("trace", trace, ("exact", "hutchinson")),
                                     ("eval_trace", eval_trace, ("exact", "hutchinson", None)),
                                     ("noise", noise, NOISES),
                                     ("method", method, ADAPTIVE_METHODS + FIXED_METHODS)):
            check_choice(name, value, allowed)
        self.field = field
        self.features, self.context = features, context
        self.register_buffer("base_loc", torch.zeros(features))
        self.register_buffer("base_scale", torch.ones(features))
        self.trace, self.eval_trace, self.noise = trace, eval_trace, noise
        self.solver = {"method": method, "rtol": float(rtol), "atol": float(atol),
                       "log_density_atol": (None if log_density_atol is None
                                            else float(log_density_atol)),
                       "step_size": None if step_size is None else float(step_size),
                       "adjoint": bool(adjoint)}
        self.last_solve: SolveStats | None = None
        # Fails now, not at the first solve, on inconsistent solver settings.
        self.distribution(torch.zeros(1, context) if context else None)

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one data point, ``(D,)``."""
        return torch.Size([self.features])

    @property
    def nfe(self) -> int:
        """Field evaluations of the last solve (0 before any)."""
        return 0 if self.last_solve is None else self.last_solve.nfe

    def _check_context(self, context: Tensor | None) -> Tensor | None:
        if self.context:
            if context is None or not isinstance(context, Tensor) or context.dim() < 1 \
                    or context.shape[-1] != self.context:
                got = None if not isinstance(context, Tensor) else tuple(context.shape)
                raise ValueError(f"context: this flow is conditional; expected a tensor of "
                                 f"shape (..., {self.context}), got {got}.")
            return context.to(self.base_loc.dtype)
        if context is not None:
            raise ValueError("context: this flow is unconditional (context=0), got a tensor.")
        return None

    def distribution(self, context: Tensor | None = None) -> ContinuousFlow:
        """The flow as a :class:`~probgen.cnf.ContinuousFlow` (conditioned on ``context``).

        Args:
            context: ``(*batch, context)`` for a conditional flow, else None.
        """
        context = self._check_context(context)
        trace = self.trace if self.training or self.eval_trace is None else self.eval_trace
        base = Independent(Normal(self.base_loc, self.base_scale, validate_args=False), 1)
        return ContinuousFlow(self.field, base, context=context, trace=trace, noise=self.noise,
                              **self.solver)

    def _record(self, flow: ContinuousFlow) -> None:
        self.last_solve = flow.last_solve

    def log_prob(self, x: Tensor, context: Tensor | None = None, *,
                 generator: torch.Generator | None = None) -> Tensor:
        """Log-density of ``x``, shape ``(*batch, D)`` -> ``(*batch,)``; a Hutchinson probe
        (``trace="hutchinson"``) comes from ``generator`` when one is given."""
        flow = self.distribution(context)
        out = flow.log_prob(x, generator=generator)
        self._record(flow)
        return out

    def log_prob_and_penalties(
        self, x: Tensor, context: Tensor | None = None, *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Log-density of ``x`` and RNODE's ``kinetic`` and ``jacobian`` penalties, per
        example, from one solve (see :meth:`probgen.cnf.ContinuousFlow.log_prob_and_penalties`);
        a Hutchinson probe comes from ``generator`` when one is given.
        """
        flow = self.distribution(context)
        out = flow.log_prob_and_penalties(x, generator=generator)
        self._record(flow)
        return out

    def rsample_and_log_prob(
        self, shape: Sequence[int] = (), context: Tensor | None = None, *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Reparametrised samples ``(*shape, *b, D)`` and their log-density ``(*shape, *b)``
        from one base -> data solve (base draws and probe from ``generator`` if given)."""
        flow = self.distribution(context)
        out = flow.rsample_and_log_prob(torch.Size(shape), generator=generator)
        self._record(flow)
        return out

    def rsample(self, shape: Sequence[int] = (), context: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> Tensor:
        """Reparametrised samples, shape ``(*shape, *b, D)`` (base draws and probe from
        ``generator`` when one is given)."""
        flow = self.distribution(context)
        with drawing_from(generator):  # the base draws and a Hutchinson probe, if any
            out = flow.rsample(torch.Size(shape))
        self._record(flow)
        return out

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = (), context: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """Samples without gradients, shape ``(*shape, *b, D)``; the base draws (and a
        Hutchinson probe, if any) come from ``generator`` when one is given."""
        return self.rsample(shape, context, generator=generator)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x, context)

    def extra_repr(self) -> str:  # noqa: D102
        s = self.solver
        return (f"features={self.features}, context={self.context}, trace={self.trace!r}, "
                f"eval_trace={self.eval_trace!r}, method={s['method']!r}, rtol={s['rtol']:g}, "
                f"atol={s['atol']:g}, adjoint={s['adjoint']}"
                + ("" if s["log_density_atol"] is None
                   else f", log_density_atol={s['log_density_atol']:g}"))


class FFJORD(ContinuousFlowModel):
    """Creates FFJORD: a concat-squash field trained with Hutchinson's trace estimator.

    Training uses one Rademacher (or Gaussian) probe per solve and, by default, the adjoint
    method; held-out densities (eval mode) use the exact trace. Works for any vector data:
    2-D toys, tabular data, flattened images.

    Args:
        features: dimension D.
        hidden_features: widths of the field's hidden layers.
        context: context size (0: unconditional).
        activation: hidden activation of the field.
        trace: divergence in training (``"hutchinson"`` or ``"exact"``).
        eval_trace: divergence in eval mode (``None``: same as ``trace``).
        noise: Hutchinson probe, ``"rademacher"`` or ``"gaussian"``.
        method: torchdiffeq solver.
        rtol: relative tolerance (adaptive methods).
        atol: absolute tolerance (adaptive methods).
        step_size: step of fixed-step methods.
        adjoint: gradients by the adjoint method.
        log_density_atol: absolute tolerance on the log-density (``None``: ``atol``).

    References:
        FFJORD: Free-form continuous dynamics for scalable reversible generative models
        (Grathwohl et al., 2019), https://arxiv.org/abs/1810.01367

    Example:
        >>> flow = FFJORD(2, hidden_features=[16, 16])
        >>> flow.log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64, 64),
        context: int = 0,
        activation: str = "tanh",
        trace: str = "hutchinson",
        eval_trace: str | None = "exact",
        noise: str = "rademacher",
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
        adjoint: bool = True,
        log_density_atol: float | None = None,
    ) -> None:
        field = ConcatSquashField(features, hidden_features, context, activation)
        super().__init__(field, features, context=context, trace=trace, eval_trace=eval_trace,
                         noise=noise, method=method, rtol=rtol, atol=atol, step_size=step_size,
                         adjoint=adjoint, log_density_atol=log_density_atol)


class CNF(ContinuousFlowModel):
    """Creates the course's continuous normalizing flow: an MLP field of ``[x, t]``, the
    exact trace, backpropagation through the solver.

    The homework's CNF runs data -> noise over 0 -> 1; here the base sits at t = 0 and the
    data at t = 1 (probgen's convention), which is the same model with the time flipped.

    Args:
        features: dimension D.
        hidden_features: widths of the MLP's hidden layers.
        context: context size (0: unconditional).
        activation: hidden activation.
        freqs: time features ``cos(k pi t), sin(k pi t)``, ``k = 1..freqs`` (0: raw t).
        trace: divergence in training (``"exact"`` or ``"hutchinson"``).
        eval_trace: divergence in eval mode (``None``: same as ``trace``).
        noise: Hutchinson probe (when ``trace="hutchinson"``).
        method: torchdiffeq solver.
        rtol: relative tolerance (adaptive methods).
        atol: absolute tolerance (adaptive methods).
        step_size: step of fixed-step methods.
        adjoint: gradients by the adjoint method.
        log_density_atol: absolute tolerance on the log-density (``None``: ``atol``); zuko's
            CNF controls it at ``100 * atol``.

    References:
        Neural ordinary differential equations (Chen et al., 2018),
        https://arxiv.org/abs/1806.07366

    Example:
        >>> flow = CNF(2, hidden_features=[16, 16])
        >>> flow.sample((4,)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64, 64),
        context: int = 0,
        activation: str = "tanh",
        freqs: int = 0,
        trace: str = "exact",
        eval_trace: str | None = "exact",
        noise: str = "rademacher",
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
        adjoint: bool = False,
        log_density_atol: float | None = None,
    ) -> None:
        field = TimeMLPField(features, hidden_features, context, activation, freqs)
        super().__init__(field, features, context=context, trace=trace, eval_trace=eval_trace,
                         noise=noise, method=method, rtol=rtol, atol=atol, step_size=step_size,
                         adjoint=adjoint, log_density_atol=log_density_atol)


CONTINUOUS_FLOWS: dict[str, type[ContinuousFlowModel]] = {"FFJORD": FFJORD, "CNF": CNF}
