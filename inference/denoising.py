r"""One denoising objective for every Gaussian path: DSM, NCSN, DDPM, score SDEs, flow matching.

Every family trains a network of :math:`(x_t, t)` on the same regression. Given data
:math:`x` ``(batch, *event)``, times :math:`t` drawn from a *time distribution* and noise
:math:`\epsilon \sim N(0, I)`, the *path* gives :math:`x_t = \alpha_t x + \sigma_t \epsilon`
(:func:`perturb`); the network's output (a ``prediction`` in
:data:`probgen.processes.PREDICTIONS`) is converted to the ``target`` space by the one
conversion of :mod:`probgen.processes`, compared with the target of the pair
:math:`(x, \epsilon)` and weighted:

.. math:: \ell_i = w(t_i)\,\|\hat T(x_{t_i}, t_i) - T(x_i, \epsilon_i, t_i)\|^2

(summed or averaged over the event). :func:`denoise` computes it for one batch and
:class:`DenoisingObjective` is the objective of the trainer. The family losses are settings
of it (path and times; target; weight and reduction):

- DSM (Vincent): :class:`NoiseLevelPath` at one level; score; 1/2, summed.
- NCSN (Song & Ermon): :class:`NoiseLevelPath` over a ladder (:class:`DiscreteTimes`);
  eps; 1/2, summed (the :math:`\sigma^2` weighting of the score error).
- DDPM's simple loss (Ho et al.): the schedule at uniform steps; eps, x0 or v; 1, averaged.
- score SDEs (Song et al.): an SDE at uniform or importance-sampled times; eps;
  :math:`\lambda(t)/(2\sigma_t^2)`, summed (:math:`\lambda` on the score error).
- conditional flow matching (Lipman et al.): an affine path at :math:`U(0, t_\text{end})`
  with coupled pairs; velocity; 1, averaged.

A *path* is anything with ``coefficients(t, x) -> Marginal`` broadcast against ``x``: a
:class:`probgen.processes.GaussianPath` (SDEs, flow-matching paths), the
:class:`NoiseLevelPath` of DSM and NCSN (its "time" is the noise level), or a discrete
schedule indexed by steps (:class:`StepPath`). A *time distribution* is a callable
``(n, x) -> Times``. ``coefficients`` checks the times it is given; times that a time
distribution drew are valid by construction, so for them a path's unchecked
``schedule(t)`` (the coefficients of the shape of ``t``), where it has one, is used
instead: the checks cost a training step more than the path's arithmetic.

References:
    A Connection Between Score Matching and Denoising Autoencoders (Vincent, 2011)
    Denoising Diffusion Probabilistic Models (Ho et al., 2020), https://arxiv.org/abs/2006.11239
    Score-Based Generative Modeling through Stochastic Differential Equations (Song et al.,
    2021), https://arxiv.org/abs/2011.13456
    Flow Matching for Generative Modeling (Lipman et al., 2023), https://arxiv.org/abs/2210.02747
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from probgen.diffusion import NoiseSchedule
from probgen.inference.guidance import drop_labels
from probgen.processes import (
    PREDICTIONS,
    Marginal,
    check_choice,
    check_like,
    check_time,
    convert_prediction,
    predictions_of_pair,
)

__all__ = [
    "REDUCTIONS",
    "Times",
    "UniformTimes",
    "DiscreteTimes",
    "NoiseLevelPath",
    "StepPath",
    "Perturbed",
    "Denoised",
    "perturb",
    "denoise",
    "DenoisingObjective",
    "split_batch",
    "check_label_dropout",
]

#: How the squared error is reduced over the event: ``"sum"`` or ``"mean"``.
REDUCTIONS: tuple[str, ...] = ("sum", "mean")


class Times(NamedTuple):
    """Training times drawn by a time distribution.

    Attributes:
        t: the times ``(batch,)`` the path and the network are evaluated at.
        weight: a per-example factor of the loss ``(batch,)`` (importance weights
            :math:`p/q` of times drawn from :math:`q`), or ``None`` (1).
    """

    t: Tensor
    weight: Tensor | None = None


TimeDistribution = Callable[[int, Tensor], Times]


class UniformTimes:
    r"""Creates the uniform time distribution :math:`U(\text{low}, \text{high})`.

    Example:
        >>> times = UniformTimes(0.0, 0.5)(1000, torch.zeros(1000, 2))
        >>> times.t.shape, bool(times.t.max() <= 0.5)
        (torch.Size([1000]), True)
    """

    def __init__(self, low: float = 0.0, high: float = 1.0) -> None:
        if not float(low) < float(high):
            raise ValueError(f"low, high: expected low < high, got {low!r}, {high!r}.")
        self.low, self.high = float(low), float(high)

    def __call__(self, n: int, like: Tensor) -> Times:
        """``n`` times in ``like``'s dtype and device."""
        r = torch.rand(n, dtype=like.dtype, device=like.device)
        return Times(self.low + (self.high - self.low) * r)

    def __repr__(self) -> str:
        return f"UniformTimes(low={self.low:g}, high={self.high:g})"


class DiscreteTimes:
    r"""Creates the uniform distribution over a finite set of times: DDPM's integer steps
    ``0..T-1`` (``values = T``) or NCSN's noise ladder (``values`` a tensor of levels).

    Example:
        >>> DiscreteTimes(4)(6, torch.zeros(6, 2)).t.dtype
        torch.int64
    """

    def __init__(self, values: int | Tensor) -> None:
        if isinstance(values, int) and not isinstance(values, bool):
            if values < 1:
                raise ValueError(f"values: expected a positive number of steps, got {values}.")
        elif not isinstance(values, Tensor) or values.dim() != 1 or values.numel() < 1:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"values: expected a number of steps or a non-empty 1-d tensor "
                             f"of times, got {got}.")
        self.values = values
        self.count = values if isinstance(values, int) else values.numel()
        single = isinstance(values, Tensor) and values.numel() == 1 and values.is_floating_point()
        self._single = float(values[0]) if single else None

    def __call__(self, n: int, like: Tensor) -> Times:
        """``n`` times: steps (int64) or levels (in ``like``'s dtype)."""
        if self._single is not None:  # one level: no draw
            return Times(torch.full((n,), self._single, dtype=like.dtype, device=like.device))
        index = torch.randint(0, self.count, (n,), device=like.device)
        if isinstance(self.values, int):
            return Times(index)
        values = self.values.to(like.device)
        return Times((values.to(like.dtype) if values.is_floating_point() else values)
                     .index_select(0, index))

    def __repr__(self) -> str:
        return f"DiscreteTimes({self.count})"


class NoiseLevelPath:
    r"""Creates the variance-exploding path indexed by its noise level: :math:`x_\sigma = x +
    \sigma\epsilon` (:math:`\alpha = 1`), the path of DSM and NCSN.

    Its "time" is the level :math:`\sigma > 0` itself (what their networks take), so
    :math:`d\alpha/d\sigma = 0` and :math:`d\sigma/d\sigma = 1`.

    Example:
        >>> m = NoiseLevelPath().coefficients(torch.tensor([0.5, 2.0]), torch.zeros(2, 3))
        >>> float(m.alpha), [round(v, 6) for v in m.sigma.flatten().tolist()]
        (1.0, [0.5, 2.0])
    """

    def schedule(self, sigma: Tensor) -> Marginal:
        """``(1, sigma, 0, 1)`` at levels ``sigma`` (unchecked; the constants as Python
        numbers: no per-example buffers or products)."""
        return Marginal(1.0, sigma, 0.0, 1.0)

    def coefficients(self, sigma: Tensor | float, x: Tensor) -> Marginal:
        """``(1, sigma, 0, 1)`` at one level per example of ``x``, broadcast against ``x``."""
        try:
            sigma = check_time(sigma, x, positive=True)
        except ValueError as e:
            raise ValueError(f"sigma: expected positive noise levels ({e})") from None
        return self.schedule(sigma).broadcast_to(x)

    def __repr__(self) -> str:
        return "NoiseLevelPath()"


class StepPath:
    r"""Creates the path of a discrete schedule at its integer steps: :math:`(\alpha, \sigma) =
    (\sqrt{\bar\alpha_s}, \sqrt{1 - \bar\alpha_s})` (DDPM's :math:`q(x_s \mid x_0)`; no time
    derivatives, so no velocity).

    Example:
        >>> path = StepPath(NoiseSchedule.linear(10))
        >>> m = path.coefficients(torch.tensor([0]), torch.zeros(1, 2))
        >>> round(float(m.alpha**2 + m.sigma**2), 6)
        1.0
    """

    def __init__(self, schedule: NoiseSchedule) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: expected a probgen.diffusion.NoiseSchedule, got "
                            f"{type(schedule).__name__}.")
        self.noise_schedule = schedule

    def schedule(self, step: Tensor) -> Marginal:
        """The coefficients at integer steps (any shape; unchecked), in float64."""
        return self.noise_schedule.marginal_at(step)

    def coefficients(self, step: Tensor, x: Tensor) -> Marginal:
        """The coefficients at integer steps ``(batch,)``, broadcast against ``x``."""
        sched = self.noise_schedule
        return sched.coefficients(sched._at(sched.alphas_cumprod, step, x))

    def __repr__(self) -> str:
        return f"StepPath(num_steps={self.noise_schedule.num_steps})"


class Perturbed(NamedTuple):
    r"""Data noised through a path.

    Attributes:
        x_t: :math:`\alpha_t x + \sigma_t\epsilon`, ``(batch, *event)``.
        noise: :math:`\epsilon`, ``(batch, *event)``.
        marginal: the path's coefficients at the times, broadcast against ``x``.
    """

    x_t: Tensor
    noise: Tensor
    marginal: Marginal


class Denoised(NamedTuple):
    """The denoising regression on one batch (:func:`denoise`).

    Attributes:
        loss: the weighted per-example errors ``(batch,)`` (their mean is the loss); their
            mean, 0-d, from ``denoise(..., per_example=False)``.
        error: the unweighted per-example squared errors ``(batch,)``; 0-d as ``loss``.
        x_t: the noised data ``(batch, *event)``; noise: :math:`\\epsilon`, same shape.
        t: the times ``(batch,)``.
        output: what the network returned (a tuple whose first element is the
            prediction, for networks with further outputs).
    """

    loss: Tensor
    error: Tensor
    x_t: Tensor
    noise: Tensor
    t: Tensor
    output: Any


def _check_data(x: Any, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        got = (f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor)
               else type(x).__name__)
        raise ValueError(f"{name}: expected floating-point data (batch, *event), got {got}.")
    return x


def split_batch(batch: Any, preprocess: Callable[[Tensor], Any] | None = None
                ) -> tuple[Tensor, Any]:
    """``(x, labels or None)`` of a batch ``x`` or ``(x, labels)``, ``x`` mapped by
    ``preprocess`` (its first output when it returns a tuple) and made floating.

    Raises:
        TypeError: not a tensor ``(batch, *event)`` or a pair.
    """
    labels = None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        batch, labels = batch[0], (batch[1] if len(batch) > 1 else None)
    if not isinstance(batch, Tensor) or batch.dim() < 2:
        got = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise TypeError(f"batch: expected a tensor x of shape (batch, *event) or a pair "
                        f"(x, labels), got {got}.")
    if preprocess is not None:
        out = preprocess(batch)
        batch = out[0] if isinstance(out, tuple) else out
    return (batch if batch.is_floating_point() else batch.float()), labels


def check_label_dropout(probability: Any, num_classes: int | None) -> float:
    """The label-dropout probability, checked: in ``[0, 1)``, with a null class."""
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not (
            0.0 <= probability < 1.0):
        raise ValueError(f"label_dropout: expected a probability in [0, 1), got "
                         f"{probability!r}.")
    if probability and num_classes is None:
        raise ValueError("num_classes: label_dropout replaces labels by the null class "
                         "num_classes; give num_classes.")
    return float(probability)


def _check_path(path: Any) -> Any:
    if not callable(getattr(path, "coefficients", None)):
        raise TypeError(f"path: expected a Gaussian path with coefficients(t, x) (a "
                        f"probgen.processes.GaussianPath, NoiseLevelPath or a schedule's "
                        f"steps), got {type(path).__name__}.")
    return path


def _check_names(prediction: str, target: str, reduction: str) -> None:
    check_choice("prediction", prediction, PREDICTIONS)
    check_choice("target", target, PREDICTIONS)
    check_choice("reduction", reduction, REDUCTIONS)


def perturb(path: Any, x: Tensor, t: Tensor | float, noise: Tensor | None = None,
            generator: torch.Generator | None = None) -> Perturbed:
    r"""Noises data through a path: :math:`x_t = \alpha_t x + \sigma_t \epsilon`.

    Args:
        path: anything with ``coefficients(t, x)`` (module docstring).
        x: data ``(batch, *event)``.
        t: times ``(batch,)`` (or a scalar) in the path's convention.
        noise: :math:`\epsilon` of the shape of ``x`` (drawn when ``None``).
        generator: for the noise.

    Returns:
        A :class:`Perturbed`.

    Example:
        >>> p = perturb(NoiseLevelPath(), torch.zeros(2, 3), 0.5, torch.ones(2, 3))
        >>> [round(v, 6) for v in p.x_t[0].tolist()]
        [0.5, 0.5, 0.5]
    """
    x = _check_data(x)
    return _noised(_check_path(path).coefficients(t, x), x, noise, generator)


def _noised(m: Marginal, x: Tensor, noise: Tensor | None,
            generator: torch.Generator | None = None) -> Perturbed:
    r""":math:`\alpha x + \sigma\epsilon` at coefficients ``m`` broadcast against ``x``."""
    if noise is None:
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    else:
        check_like(noise, x, "noise", what="")
    a = m.alpha
    signal = x if isinstance(a, float) and a == 1.0 else a * x
    return Perturbed(torch.addcmul(signal, m.sigma, noise), noise, m)


def _draw(times: TimeDistribution | Tensor | float, path: Any, x: Tensor
          ) -> tuple[Times, Marginal]:
    """The times of a batch and the path's coefficients at them, broadcast against ``x``:
    given times are checked by the path's ``coefficients``; drawn ones go through its
    unchecked ``schedule`` where it has one."""
    if isinstance(times, (UniformTimes, DiscreteTimes)):  # ours: (batch,) times in support
        drawn = times(x.shape[0], x)
        if isinstance(path, StepPath):  # the table in x's dtype, indexed once
            _check_support(times, path, x)
            return drawn, path.noise_schedule.marginal_at(drawn.t, x)
        if callable(getattr(path, "schedule", None)):
            _check_support(times, path, x)
            return drawn, path.schedule(drawn.t).broadcast_to(x)
        return drawn, path.coefficients(drawn.t, x)
    if isinstance(times, (int, float)) and not isinstance(times, bool):
        times = torch.full(x.shape[:1], float(times), dtype=x.dtype, device=x.device)
    if isinstance(times, Tensor):
        return Times(times), path.coefficients(times, x)
    if not callable(times):
        raise TypeError(f"times: expected a time distribution (n, x) -> Times, a tensor of "
                        f"times or a float, got {type(times).__name__}.")
    drawn = times(x.shape[0], x)
    if not isinstance(drawn, Times) or drawn.t.shape != x.shape[:1]:
        got = (tuple(drawn.t.shape) if isinstance(drawn, Times) else type(drawn).__name__)
        raise ValueError(f"times: expected Times with t of shape ({x.shape[0]},), got {got}.")
    return drawn, path.coefficients(drawn.t, x)


def _check_support(times: UniformTimes | DiscreteTimes, path: Any, x: Tensor) -> None:
    """Checks once per (time distribution, path) pair that every time the distribution can
    draw is valid for the path (its ends, or its values), so that the draws themselves need
    no checks: the path's ``coefficients`` raises as it would on those times."""
    seen = times.__dict__.setdefault("_checked_paths", set())
    if id(path) in seen:
        return
    if isinstance(times, UniformTimes):
        support = torch.tensor([times.low, times.high], dtype=x.dtype, device=x.device)
    elif isinstance(times.values, Tensor):
        support = times.values.to(device=x.device)
        support = support.to(x.dtype) if support.is_floating_point() else support
    else:
        support = torch.tensor([0, times.values - 1], device=x.device)
    path.coefficients(support, x.new_zeros(support.shape[0], 1))
    seen.add(id(path))


def denoise(
    network: Callable[..., Any],
    path: Any,
    x: Tensor,
    times: TimeDistribution | Tensor | float,
    *,
    prediction: str = "eps",
    target: str | None = None,
    weighting: float | Callable[[Tensor], Tensor] = 1.0,
    reduction: str = "sum",
    noise: Tensor | None = None,
    labels: Tensor | None = None,
    label_dropout: float = 0.0,
    null_label: int | None = None,
    training: bool = False,
    name: str = "network",
    per_example: bool = True,
) -> Denoised:
    r"""The denoising regression on one batch: times, noising, network, target, weight.

    Draws the times (``times``), noises ``x`` (:func:`perturb`), calls
    ``network(x_t, t, **cond)``, converts its ``prediction`` to the ``target`` space and
    returns the per-example losses :math:`w(t)\,\|\hat T - T\|^2`. In training passes
    (``training`` and autograd on) each label is replaced by ``null_label`` with
    probability ``label_dropout`` (:func:`probgen.inference.guidance.drop_labels`, for
    classifier-free guidance). The draws come in the order times, noise, labels.

    Args:
        network: ``network(x, t, **cond)`` returning the prediction ``(batch, *event)`` (or
            a tuple whose first element it is); ``cond`` is ``{"labels": labels}`` when
            labels are given.
        path: anything with ``coefficients(t, x) -> Marginal`` (module docstring).
        x: data ``(batch, *event)``.
        times: a time distribution ``(n, x) -> Times``, times ``(batch,)``, or one float.
        prediction: what the network predicts (:data:`probgen.processes.PREDICTIONS`).
        target: the space the error is measured in (default: ``prediction``).
        weighting: :math:`w`, a float or ``w(t) -> (batch,)``; times drawn with importance
            weights multiply it.
        reduction: ``"sum"`` or ``"mean"`` of the squared error over the event.
        noise: :math:`\epsilon` (drawn when ``None``; flow matching's paired source).
        labels: classes ``(batch,)`` passed to the network, or ``None``.
        label_dropout, null_label: the dropout probability and the null class.
        training: whether this is a training pass (label dropout).
        name: the network's name in error messages.
        per_example: ``False`` returns the batch means of the loss and the error (0-d),
            computed as one fused squared error when the weight is a constant (the training
            step's fast path; the same value up to rounding).

    Returns:
        A :class:`Denoised`.

    Raises:
        ValueError: unknown names, data or outputs of the wrong shape, a velocity on a path
            without time derivatives.

    Example:
        >>> from probgen.paths import CondOTPath
        >>> x = torch.randn(20000, 2)  # N(0, I) data; the exact noise prediction on the
        >>> exact = lambda x_t, t: ((1 - t) / (t**2 + (1 - t) ** 2))[:, None] * x_t
        >>> out = denoise(exact, CondOTPath(), x, UniformTimes(), reduction="mean")
        >>> round(out.loss.mean().item(), 1)  # E_t[t^2 / (t^2 + (1 - t)^2)] = 1/2
        0.5
    """
    target = prediction if target is None else target
    _check_names(prediction, target, reduction)
    x = _check_data(x)
    drawn, m = _draw(times, _check_path(path), x)
    if target == "velocity" and (m.d_alpha is None or m.d_sigma is None):  # before the network
        raise ValueError("target 'velocity': this path has no time derivatives (a discrete "
                         "schedule); use eps, data, v or score.")
    p = _noised(m, x, noise)
    cond: dict[str, Any] = {}
    if labels is not None:
        if training and label_dropout and torch.is_grad_enabled():
            labels = drop_labels(labels, label_dropout, null_label)
        cond["labels"] = labels
    output = network(p.x_t, drawn.t, **cond)
    predicted = check_like(output[0] if isinstance(output, tuple) and output else output, x,
                           name)
    if prediction != target:
        predicted = convert_prediction(predicted, p.x_t, p.marginal, source=prediction,
                                       target=target)
    regressed = predictions_of_pair(target, p.x_t, p.marginal, data=x, eps=p.noise)
    weight = weighting(drawn.t) if callable(weighting) else float(weighting)
    if drawn.weight is not None:
        weight = weight * drawn.weight.to(x.dtype)
    if not per_example and isinstance(weight, float):
        # mean over the batch of the per-example means (sums): the mean of every element
        error = F.mse_loss(predicted, regressed)
        error = error * x[0].numel() if reduction == "sum" else error
        return Denoised(error if weight == 1.0 else weight * error, error, p.x_t, p.noise,
                        drawn.t, output)
    squared = F.mse_loss(predicted, regressed, reduction="none").flatten(1)
    error = squared.sum(1) if reduction == "sum" else squared.mean(1)
    loss = error if isinstance(weight, float) and weight == 1.0 else weight * error
    if not per_example:
        loss, error = loss.mean(), error.mean()
    return Denoised(loss, error, p.x_t, p.noise, drawn.t, output)


class DenoisingObjective(nn.Module):
    r"""Creates the denoising objective over (path, prediction and target, time
    distribution, weighting): the loss of :func:`denoise`, a mean over the batch.

    Batches are ``x`` ``(batch, *event)`` or ``(x, labels)``; labels go to the network when
    ``conditional`` (dropped to ``num_classes`` with probability ``label_dropout`` in
    training). Outputs ``loss`` and ``error`` (the unweighted squared error).

    Args:
        network: ``network(x, t, **cond)`` (an ``nn.Module``, so its parameters train).
        path: anything with ``coefficients(t, x)``; a
            :class:`~probgen.processes.GaussianPath` gives the default times
            :math:`U(0, t_\text{end})`.
        prediction: what the network predicts; target: the error's space (default: the
            prediction).
        times: a time distribution ``(n, x) -> Times`` or one float.
        weighting: a float or ``w(t) -> (batch,)``.
        reduction: ``"sum"`` or ``"mean"`` over the event.
        conditional: pass the batch's labels; label_dropout, num_classes: the dropout to
            the null class ``num_classes``.

    Example:
        >>> from probgen.sde import VPSDE
        >>> sde = VPSDE()  # N(0, I) data: every marginal is N(0, I), E[eps | x_t] = sigma_t x_t
        >>> exact = lambda x_t, t: sde.alpha_sigma(t)[1][:, None] * x_t
        >>> objective = DenoisingObjective(exact, sde, reduction="mean")
        >>> round(objective(torch.randn(20000, 2))["loss"].item(), 1)  # E_t[alpha_t^2]
        0.3
    """

    def __init__(
        self,
        network: Callable[..., Any],
        path: Any,
        *,
        prediction: str = "eps",
        target: str | None = None,
        times: TimeDistribution | float | None = None,
        weighting: float | Callable[[Tensor], Tensor] = 1.0,
        reduction: str = "sum",
        conditional: bool = False,
        label_dropout: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(network):
            raise TypeError(f"network: expected a callable network(x, t), got "
                            f"{type(network).__name__}.")
        _check_names(prediction, prediction if target is None else target, reduction)
        if times is None:
            if not hasattr(path, "t_end"):
                raise ValueError("times: expected a time distribution for a path without "
                                 "t_end (only a GaussianPath has default times).")
            times = UniformTimes(0.0, float(path.t_end))
        self.network, self.path, self.times = network, _check_path(path), times
        self.prediction, self.target = prediction, target
        self.weighting, self.reduction = weighting, reduction
        self.conditional = bool(conditional)
        self.label_dropout = check_label_dropout(label_dropout, num_classes)
        self.num_classes = num_classes

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """The loss on ``batch``: ``x`` ``(batch, *event)`` or ``(x, labels)``."""
        x, labels = split_batch(batch)
        if self.conditional and labels is None:
            raise ValueError("batch: a conditional objective needs (x, labels) batches.")
        out = denoise(self.network, self.path, x, self.times, prediction=self.prediction,
                      target=self.target, weighting=self.weighting, reduction=self.reduction,
                      labels=labels if self.conditional else None,
                      label_dropout=self.label_dropout, null_label=self.num_classes,
                      training=self.training, per_example=False)
        return {"loss": out.loss, "error": out.error.detach()}

    def extra_repr(self) -> str:
        """The settings, for ``repr``."""
        return (f"prediction={self.prediction!r}, target={self.target or self.prediction!r}, "
                f"times={self.times!r}, reduction={self.reduction!r}")
