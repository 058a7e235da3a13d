r"""Conditional flow matching: the objective, ODE sampling with NFE counts, guidance, reflow.

Written against protocols, never a concrete model: a *field* ``field(x, t, **cond)`` with
``x`` of shape ``(batch, *event)`` and ``t`` of shape ``(batch,)`` in probgen time (``t = 0``
source, ``t = 1`` data), a :class:`probgen.paths.AffinePath` and a
:class:`probgen.couplings.Coupling`.

- :class:`ConditionalFlowMatching`: :math:`E_{t, (x_0, x_1) \sim \pi}\,\|v_\theta(x_t, t) -
  \dot x_t\|^2` along any path, with pairs from any coupling (independent, exact OT,
  Sinkhorn) or given pairs (reflow), class labels with dropout to a null class for
  classifier-free guidance. Its minimizer is the marginal field :math:`E[\dot x_t \mid
  x_t]` (Lipman et al., 2023, Theorem 2: the conditional loss differs from the marginal
  one by a constant).
- :func:`ode_sample`: the probability-flow ODE :math:`\dot x = v(x, t)` from ``t0`` to
  ``t1`` by torchdiffeq (Euler, midpoint, Heun, RK4 on a uniform grid, or adaptive
  dopri5), returning the samples and the number of field evaluations.
- classifier-free guidance of a class-conditional field is
  :func:`probgen.inference.guidance.guided` (one convention for every family; Zheng et
  al., 2023 for flows).
- :func:`reflow_pairs` and :func:`straightness`: rectified flow's (noise, sample) pairs
  of a trained field, on which a :class:`~probgen.paths.LinearPath` objective with
  ``paired=True`` is retrained to straighten it, and the measure of how straight it is
  (Liu et al., 2023).

References:
    Flow Matching for Generative Modeling (Lipman et al., 2023),
    https://arxiv.org/abs/2210.02747
    Improving and generalizing flow-based generative models with minibatch optimal
    transport (Tong et al., 2024), https://arxiv.org/abs/2302.00482
    Flow Straight and Fast (Liu, Gong & Liu, 2023), https://arxiv.org/abs/2209.03003
    Classifier-Free Diffusion Guidance (Ho & Salimans, 2021),
    https://arxiv.org/abs/2207.12598
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from probgen.cnf import FIXED_METHODS, ODE_METHODS, SolveStats, odeint_field
from probgen.couplings import Coupling, IndependentCoupling, get_coupling
from probgen.inference.denoising import UniformTimes, check_label_dropout, denoise
from probgen.inference.registry import register_objective
from probgen.paths import AffinePath
from probgen.processes import check_batches
from probgen.utils import check_choice

__all__ = [
    "ODEResult",
    "ConditionalFlowMatching",
    "ode_sample",
    "reflow_pairs",
    "straightness",
]

Field = Callable[..., Tensor]


class ODEResult(NamedTuple):
    """An ODE sampler's output.

    Attributes:
        samples: the states at the end time, ``(n, *event)``; or, when times were given,
            at every time, ``(len(times), n, *event)``.
        nfe: evaluations of the field (one guided evaluation counts once).
    """

    samples: Tensor
    nfe: int


def _check_method(method: str, steps: int | None) -> None:
    if method == "heun":
        raise ValueError("method: 'heun' is ambiguous; expected 'heun2' (torchdiffeq's "
                         "explicit trapezoidal rule), 'heun3', or the sampler 'edm_heun' "
                         "(EDM's Heun on the data prediction).")
    check_choice("method", method, ODE_METHODS)
    if method in FIXED_METHODS:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: method {method!r} takes fixed steps; expected a "
                             f"positive int, got {steps!r}.")
    elif steps is not None:
        raise ValueError(f"steps: method {method!r} is adaptive (it picks its steps from "
                         f"rtol/atol); use one of {list(FIXED_METHODS)} for fixed steps.")


def ode_sample(
    field: Field,
    x0: Tensor,
    *,
    method: str = "dopri5",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t0: float = 0.0,
    t1: float = 1.0,
    times: Sequence[float] | Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
) -> ODEResult:
    r"""Transports ``x0`` along :math:`\dot x = v(x, t)` from ``t0`` to ``t1`` (torchdiffeq).

    Fixed-step methods (:data:`probgen.cnf.FIXED_METHODS`) take ``steps`` uniform steps (Euler:
    ``steps`` evaluations, midpoint and Heun 2 each, RK4 4 each); adaptive ones
    (``"dopri5"``, ...) control the local error by ``rtol``/``atol``. Runs without gradients
    unless autograd is enabled by the caller.

    Args:
        field: ``field(x, t, **cond)``, probgen time.
        x0: start states at ``t0``, ``(n, *event)``.
        method: one of :data:`probgen.cnf.ODE_METHODS` (torchdiffeq's names).
        steps: number of steps of a fixed-step method (ignored by adaptive ones when
            ``None``; for them, a given ``steps`` is an error).
        rtol: relative tolerance (adaptive); atol: absolute tolerance.
        t0: start time; t1: end time (``t1 < t0`` runs backwards: data -> source).
        times: return the states at these times (monotone; they replace ``t0`` and ``t1``)
            instead of the end state; fixed-step methods then take ``steps`` uniform steps
            over ``[times[0], times[-1]]`` (states between grid points are interpolated).
        cond: keyword arguments of ``field`` (e.g. ``labels`` of shape ``(n,)``).

    Returns:
        An :class:`ODEResult`.

    Example:
        >>> res = ode_sample(lambda x, t: torch.ones_like(x), torch.zeros(3, 2),
        ...                  method="euler", steps=4)
        >>> res.samples[0].tolist(), res.nfe
        ([1.0, 1.0], 4)
    """
    if not callable(field):
        raise TypeError(f"field: expected a callable field(x, t), got {type(field).__name__}.")
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0: expected floating start states (n, *event), got {got}.")
    _check_method(method, steps)
    fixed = method in FIXED_METHODS
    if times is None:  # a fixed-step method's uniform grid is the solver's own grid
        grid = torch.linspace(float(t0), float(t1), steps + 1 if fixed else 2, dtype=x0.dtype,
                              device=x0.device)
    else:
        grid = torch.as_tensor(times, dtype=x0.dtype, device=x0.device)
        if grid.dim() != 1 or grid.numel() < 2:
            raise ValueError(f"times: expected at least two times, got {grid.tolist()}.")
    if fixed:  # between given times: steps of one size, the states interpolated
        span = float(grid[-1]) - float(grid[0])
        options = {} if times is None else {"step_size": span / steps}
    else:
        # Land a step exactly on the end time: torchdiffeq's adaptive steps otherwise overshoot
        # it and interpolate, evaluating the field past the end (singular past t = 1 on the
        # diffusion paths).
        options = {"step_t": grid[-1:].clone()}
    stats = SolveStats("sample", method)
    bound = field if not cond else functools.partial(field, **cond)
    out = odeint_field(bound, x0, grid, method=method, rtol=float(rtol), atol=float(atol),
                       options=options, stats=stats)
    return ODEResult(out if times is not None else out[-1], stats.nfe)


def _split(batch: Any, paired: bool) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """``(x0 or None, x1, labels or None)`` from a batch."""
    if paired:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise TypeError("batch: a paired objective takes (x0, x1) or (x0, x1, labels) "
                            f"batches, got {type(batch).__name__}.")
        x0, x1, *rest = batch
        check_batches(x0, x1, paired=True)
        return x0, x1, rest[0] if rest else None
    labels = None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor):
        batch, labels = batch
    if not isinstance(batch, Tensor) or batch.dim() < 2:
        got = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise TypeError(f"batch: expected a tensor x of shape (batch, *event) or a pair "
                        f"(x, labels), got {got}.")
    return None, batch, labels


class ConditionalFlowMatching(nn.Module):
    r"""Creates the conditional flow-matching objective for any path and coupling.

    For a batch of data :math:`x_1`: draw source samples :math:`x_0 \sim N(0, I)`, pair
    them by ``coupling`` (the coupling compares ``prior_std * x0``, the points the sampler
    starts from, with ``x1``), draw :math:`t \sim U(0, t_\text{end})` (``path.t_end``) and
    regress the field onto the conditional target:

    .. math:: \mathcal L = E\,\tfrac1D\|v_\theta(x_t, t) - (\dot\alpha_t x_1 +
              \dot\sigma_t x_0)\|^2,

    a mean over the batch and the ``D`` dimensions (the squared error per dimension): the
    denoising objective (:func:`probgen.inference.denoising.denoise`) with the pairs'
    source as the noise and the velocity as prediction and target.
    ``paired=True`` takes the pairs from the batch instead, ``(x0, x1)`` or ``(x0, x1,
    labels)`` (reflow). Batches ``(x, labels)`` pass ``labels=`` to the field when
    ``conditional``, each replaced by the null class ``num_classes`` with probability
    ``label_dropout`` (one network then serves guided sampling).

    Outputs ``loss`` and ``cfm`` (the same value). In evaluation passes (autograd disabled,
    as the trainer's and the CLI's held-out evaluations run) with a ``likelihood``
    (``log_prob(x, **cond)`` of the model, in model space) it adds the held-out ``nll``
    (nats per example; for images that of the discrete data, through the preprocessing's
    dequantization and log-determinant) and, with a preprocess, ``bits_per_dim``.

    Args:
        field: ``field(x, t, **cond)`` (an ``nn.Module``, so its parameters train).
        path: an :class:`~probgen.paths.AffinePath`.
        coupling: a :class:`~probgen.couplings.Coupling` (``None``: independent).
        conditional: pass the batch's labels to the field.
        label_dropout: probability of the null class (conditional fields).
        num_classes: the null class index (needed with ``label_dropout``).
        paired: the batch gives the pairs (``coupling`` must then be ``None``).
        preprocess: maps the data to model space (an image pipeline), or ``None``.
        likelihood: ``log_prob`` for the eval-mode ``nll``, or ``None``.

    Example:
        >>> from probgen.paths import CondOTPath
        >>> # N(0, I) data: the OT path's marginal field is u_t(x) = (2t - 1) x / C_t with
        >>> # C_t = t^2 + (1 - t)^2; the loss there is E_t[2 - (2t - 1)^2 / C_t] = pi/2, not 0
        >>> # (the conditional target is noisy).
        >>> exact = lambda x, t: ((2 * t - 1) / (t**2 + (1 - t) ** 2))[:, None] * x
        >>> cfm = ConditionalFlowMatching(exact, CondOTPath())
        >>> round(cfm(torch.randn(200000, 2))["loss"].item(), 1)
        1.6
    """

    def __init__(
        self,
        field: Field,
        path: AffinePath,
        coupling: Coupling | None = None,
        *,
        conditional: bool = False,
        label_dropout: float = 0.0,
        num_classes: int | None = None,
        paired: bool = False,
        preprocess: Callable[[Tensor], Any] | None = None,
        likelihood: Callable[..., Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not callable(field):
            raise TypeError(f"field: expected a vector field field(x, t), got "
                            f"{type(field).__name__}.")
        if not isinstance(path, AffinePath):
            raise TypeError(f"path: expected a probgen.paths.AffinePath (CondOTPath, "
                            f"LinearPath, VPPath, VEPath), got {type(path).__name__}.")
        if coupling is not None and not isinstance(coupling, Coupling):
            raise TypeError(f"coupling: expected a probgen.couplings.Coupling or None, got "
                            f"{type(coupling).__name__}.")
        if paired and coupling is not None:
            raise ValueError("coupling: a paired objective takes its pairs from the batch; "
                             "pass coupling=None.")
        if check_label_dropout(label_dropout, num_classes) and not conditional:
            raise ValueError("label_dropout: applies to a conditional field "
                             "(conditional=True).")
        self.field, self.path, self.coupling = field, path, coupling
        self._times: UniformTimes | None = None
        self.conditional, self.label_dropout = bool(conditional), float(label_dropout)
        self.num_classes, self.paired = num_classes, bool(paired)
        self.preprocess, self.likelihood = preprocess, likelihood

    def _model_space(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.preprocess is None:
            return (x if x.is_floating_point() else x.float()), None
        out = self.preprocess(x)
        return out if isinstance(out, tuple) else (out, None)

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The loss on ``batch``: ``x`` ``(batch, *event)``, ``(x, labels)``, or pairs."""
        x0, x1, labels = _split(batch, self.paired)
        ladj = None
        if not self.paired:
            x1, ladj = self._model_space(x1)
        if self.conditional and labels is None:
            raise ValueError("batch: a conditional field needs (x, labels) batches.")
        if x0 is None:
            x0 = torch.randn_like(x1)
            if self.coupling is not None:  # the coupling pairs the ends, then one regression
                i, j = self.coupling.indices(self.path.prior_std * x0, x1)
                x0, x1 = x0[i], x1[j]
                labels = labels[j.to(labels.device)] if labels is not None else None
        labels = labels if self.conditional else None
        if self._times is None or self._times.high != self.path.t_end:
            self._times = UniformTimes(0.0, self.path.t_end)  # kept: support checked once
        out = denoise(self.field, self.path, x1, self._times,
                      prediction="velocity", reduction="mean", noise=x0, labels=labels,
                      label_dropout=self.label_dropout, null_label=self.num_classes,
                      training=self.training, name="field", per_example=False)
        loss = out.loss
        result = {"loss": loss, "cfm": loss}
        if self.likelihood is not None and not self.paired and not torch.is_grad_enabled():
            cond = {} if labels is None else {"labels": labels}
            result.update(self._held_out_likelihood(x1, ladj, cond))
        return result

    def _held_out_likelihood(self, y: Tensor, ladj: Tensor | None, cond: dict[str, Any]
                             ) -> dict[str, Tensor]:
        log_p = self.likelihood(y, **cond)
        if log_p.shape != y.shape[:1]:
            raise ValueError(f"likelihood: expected one value per example ({y.shape[0]},), "
                             f"got {tuple(log_p.shape)}.")
        if ladj is None or not hasattr(self.preprocess, "bits_per_dim"):
            return {"nll": -log_p.mean()}
        bpd = self.preprocess.bits_per_dim(log_p, ladj)
        dims = y[0].numel()
        return {"nll": (bpd * (dims * math.log(2.0))).mean(),
                "bits_per_dim": bpd.mean()}

    def extra_repr(self) -> str:  # noqa: D102
        return (f"coupling={self.coupling!r}, conditional={self.conditional}, "
                f"label_dropout={self.label_dropout:g}, paired={self.paired}")


@torch.no_grad()
def reflow_pairs(
    field: Field,
    x0: Tensor,
    *,
    method: str = "dopri5",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t1: float = 1.0,
    cond: Mapping[str, Any] | None = None,
    batch_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    r"""The coupling of a trained flow: ``(x0, x1)`` with ``x1`` the ODE's image of ``x0``.

    Rectified flow's reflow step (Liu et al., 2023): retraining a field on these pairs with
    the straight :class:`~probgen.paths.LinearPath` (``ConditionalFlowMatching(...,
    paired=True)``) keeps the marginals and straightens the paths, so few Euler steps
    suffice. Solved in chunks of ``batch_size``.

    Args:
        field: the trained ``field(x, t, **cond)``.
        x0: source samples ``(n, *event)`` (drawn from the sampler's prior).
        method, steps, rtol, atol, t1: the solver, as :func:`ode_sample`.
        cond: keyword arguments of ``field``; tensors of length ``n`` are chunked with
            ``x0``.
        batch_size: examples per solve.

    Returns:
        ``(x0, x1)``, both ``(n, *event)``.
    """
    cond = dict(cond or {})
    outs = []
    for start in range(0, x0.shape[0], batch_size):
        chunk = {k: (v[start:start + batch_size] if isinstance(v, Tensor)
                     and v.dim() > 0 and v.shape[0] == x0.shape[0] else v)
                 for k, v in cond.items()}
        res = ode_sample(field, x0[start:start + batch_size], method=method, steps=steps,
                         rtol=rtol, atol=atol, t1=t1, cond=chunk)
        outs.append(res.samples)
    return x0, torch.cat(outs)


@torch.no_grad()
def straightness(field: Field, x0: Tensor, *, steps: int = 100, t1: float = 1.0,
                 cond: Mapping[str, Any] | None = None) -> float:
    r"""How far a flow is from straight: :math:`S = \int_0^{1} E\,\|(x_1 - x_0) - v(x_t,
    t)\|^2\,dt` along its trajectories (Liu et al., 2023, eq. 9), 0 for straight paths.

    The trajectories and the integral use ``steps`` RK4 steps (the midpoint rule in time on
    the RK4 states), with :math:`x_1` the end of each trajectory.

    Returns:
        float: :math:`S` per example (a mean over ``x0``), summed over dimensions.
    """
    grid = torch.linspace(0.0, t1, steps + 1, dtype=x0.dtype, device=x0.device)
    mids = 0.5 * (grid[1:] + grid[:-1])
    times = torch.stack([grid[:-1], mids], 1).flatten()
    times = torch.cat([times, grid[-1:]])
    path = ode_sample(field, x0, method="rk4", steps=2 * steps, t1=t1, times=times,
                      cond=cond).samples
    x_end = path[-1]
    total = 0.0
    cond = dict(cond or {})
    for k in range(steps):
        x_mid = path[2 * k + 1]
        tb = mids[k].expand(x0.shape[0])
        v = field(x_mid, tb, **cond)
        total += float((x_end - x0 - v).pow(2).flatten(1).sum(-1).mean()) * float(
            grid[k + 1] - grid[k])
    return total


@register_objective(
    "cfm", keys=("coupling", "reg", "pairs", "label_dropout", "eval_likelihood"),
    summary="conditional flow matching along the model's path, with a minibatch coupling")
def _build(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """Conditional flow matching along the model's path (``model.path``)."""
    path = getattr(model, "path", None)
    if not isinstance(path, AffinePath):
        raise ValueError(f"model: 'cfm' trains a vector field with a .path attribute (e.g. "
                         f"FlowMatching), got {type(model).__name__}.")
    options = {k: table.pop(k) for k in ("reg", "pairs") if k in table}
    coupling = get_coupling(table.pop("coupling", "independent"), **options)
    eval_likelihood = bool(table.pop("eval_likelihood", True))
    num_classes = getattr(model, "num_classes", None)
    log_prob = getattr(model, "log_prob", None)
    return ConditionalFlowMatching(
        model, path, None if isinstance(coupling, IndependentCoupling) else coupling,
        conditional=num_classes is not None, num_classes=num_classes,
        preprocess=data.preprocess,
        likelihood=log_prob if eval_likelihood and callable(log_prob) else None, **table)
