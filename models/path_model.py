r"""The base of every model of a Gaussian path: a network of ``(x, t)``, its guided
predictions, its samplers and its probability-flow likelihood.

:class:`PathModel` holds a network ``net(x, t, labels=None)`` (DESIGN.md's network of x and
t, probgen time: ``t = 0`` noise, ``t = 1`` data) on a
:class:`probgen.processes.GaussianPath`. Whatever the network predicts (noise, data, v,
score or velocity), the model reads it through the path's one conversion
(:meth:`~probgen.processes.GaussianPath.convert`), so every family gets from this class:

- :meth:`~PathModel.guided`: the prediction conditional on labels, with classifier-free
  and classifier guidance (:mod:`probgen.inference.guidance`, one convention);
- :meth:`~PathModel.sample`: the fast solvers and the probability-flow ODE of
  :func:`probgen.inference.sample_path`, plus each family's own samplers (DDPM's
  ancestral chain, a score SDE's predictor-corrector and reverse SDE) as a hook;
- :meth:`~PathModel.distribution`, :meth:`~PathModel.log_prob` and
  :meth:`~PathModel.bits_per_dim`: exact likelihoods through the probability-flow ODE
  (:func:`probgen.inference.path_flow`).

:class:`probgen.models.DiffusionModel`, :class:`probgen.models.ScoreSDE` and
:class:`probgen.models.FlowMatching` are its subclasses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from probgen.cnf import ContinuousFlow, SolveStats
from probgen.inference.guidance import classifier_guided, guided, sample_labels
from probgen.inference.path_sampling import PATH_SAMPLERS, path_flow, sample_path
from probgen.inference.sampling import SampleResult, evaluation
from probgen.inference.solvers import SOLVERS
from probgen.metrics.likelihood import dequantized_bits_per_dim
from probgen.nn import UNet
from probgen.processes import GaussianPath, check_like
from probgen.utils import check_choice

__all__ = ["PathModel", "image_network"]

#: The U-Net arguments of the image models and their defaults (probgen.nn.UNet's).
UNET_DEFAULTS: dict[str, Any] = {"base_channels": 32, "channel_mults": (1, 2, 2),
                                 "num_res_blocks": 1, "attention_levels": (),
                                 "attention_heads": 1, "dropout": 0.0, "groups": 8}


def image_network(network: nn.Module | None, shape: tuple[int, ...], *,
                  num_classes: int | None, out_channels: int | None = None,
                  **unet: Any) -> nn.Module:
    """The network of an image model: ``network`` when given, else a :class:`probgen.nn.UNet`
    of the ``unet`` arguments (:data:`UNET_DEFAULTS`).

    Raises:
        TypeError: ``network`` is not an ``nn.Module``.
        ValueError: ``network`` is given together with a U-Net argument away from its
            default (it would be ignored).
    """
    if network is None:
        return UNet(shape, num_classes=num_classes, out_channels=out_channels, **unet)
    if not isinstance(network, nn.Module):
        raise TypeError(f"network: expected an nn.Module net(x, t, labels=None), got "
                        f"{type(network).__name__}.")
    changed = sorted(k for k, v in unet.items()
                     if (tuple(v) if isinstance(v, (list, tuple)) else v) != UNET_DEFAULTS[k])
    if changed:
        raise ValueError(f"network: a network is given, so the U-Net arguments {changed} "
                         "would be ignored; leave them at their defaults.")
    return network


class PathModel(nn.Module):
    r"""Base class of a network predicting something about a Gaussian path.

    Subclasses set :attr:`path` (an attribute or a property), :attr:`predicts` (what the
    network returns) and :attr:`prediction` (what :meth:`forward` returns), and may add
    samplers by overriding :meth:`_sample`.

    Args:
        network: ``net(x, t, labels=None)`` returning the shape of ``x`` (called without
            ``labels`` when the model is unconditional).
        event_shape: the shape of one example.
        num_classes: classes of a class-conditional network (with a null class
            ``num_classes``, used for ``labels=None`` and for guidance); ``None``:
            unconditional.

    Attributes:
        last_nfe: network evaluations of the last :meth:`sample` call.
        last_solve: the :class:`probgen.cnf.SolveStats` of the last solve (sample or
            likelihood).
    """

    path: GaussianPath
    #: what the network predicts and what :meth:`forward` returns (names of
    #: :data:`probgen.processes.PREDICTIONS`).
    predicts: str = "velocity"
    prediction: str = "velocity"
    #: the samplers of :meth:`sample` and the default one.
    samplers: tuple[str, ...] = PATH_SAMPLERS
    default_sampler: str = "ode"
    #: default tolerances of adaptive ODE solvers (sampling and likelihood).
    rtol: float = 1e-5
    atol: float = 1e-5

    def __init__(self, network: nn.Module, event_shape: Sequence[int], *,
                 num_classes: int | None = None) -> None:
        super().__init__()
        if not callable(network):
            raise TypeError(f"network: expected a module net(x, t), got "
                            f"{type(network).__name__}.")
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes: expected a positive int or None, got "
                             f"{num_classes!r}.")
        self.network = network
        self.event_shape = tuple(int(e) for e in event_shape)
        self.num_classes = int(num_classes) if num_classes else None
        self.last_nfe: int | None = None
        self.last_solve: SolveStats | None = None

    @property
    def t_sample(self) -> float:
        """The time the samplers stop at (the path's ``t_end``)."""
        return self.path.t_end

    @property
    def t_likelihood(self) -> float:
        """The time the likelihood is of (the path's ``t_end``)."""
        return self.path.t_end

    def _evaluation(self) -> AbstractContextManager[None]:
        """Evaluation mode for a block (the mode is restored after it)."""
        return evaluation([self])

    # ------------------------------------------------------------------ the network
    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.event_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (batch, "
                             f"{', '.join(map(str, self.event_shape))}), got {got}.")

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        for p in [*self.parameters(), *self.buffers()]:
            if p.is_floating_point():
                return p.device, p.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def _labels(self, labels: Any, n: int, device: torch.device, classifier: bool = False
                ) -> Tensor | None:
        """Class labels for ``n`` samples: an int, or a sequence/tensor cycled over them (an
        unconditional model takes labels only for a classifier)."""
        self._check_conditional(labels, classifier)
        return sample_labels(labels, n, device, self.num_classes)

    def _check_conditional(self, labels: Any, classifier: bool = False) -> None:
        if labels is not None and not self.num_classes and not classifier:
            raise ValueError("labels: this model is unconditional (num_classes=None).")

    def _call(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The network at ``x`` ``(batch, *event)``, times ``t`` ``(batch,)``."""
        self._check_x(x)
        self._check_conditional(labels)
        return self.network(x, t, labels=labels) if self.num_classes else self.network(x, t)

    def _output(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The network's prediction (:attr:`predicts`) at ``x``, times ``t``."""
        return check_like(self._call(x, t, labels), x, "network")

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The model's :attr:`prediction` at ``x`` ``(batch, *event)``, probgen times ``t``
        ``(batch,)``, classes ``labels`` ``(batch,)`` (``None``: the null class of a
        conditional model)."""
        return self.path.convert(self._output(x, t, labels), x, t, source=self.predicts,
                                 target=self.prediction)

    def guided(self, labels: Tensor | None = None, guidance: float | None = None,
               classifier: Callable[[Tensor, Tensor], Tensor] | None = None,
               classifier_scale: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
        r"""``f(x, t)``: the :attr:`prediction` conditional on ``labels`` ``(n,)``, with
        classifier-free guidance :math:`f_\varnothing + w(f_y - f_\varnothing)` at weight
        ``guidance`` :math:`w` (1, the default: the conditional model;
        :func:`probgen.inference.guided`) and classifier guidance by a noise-conditional
        ``classifier(x, t) -> logits`` at scale ``classifier_scale``
        (:func:`probgen.inference.classifier_guided`)."""
        self._check_conditional(labels, classifier is not None)
        f = guided(self, labels if self.num_classes else None, guidance, self.num_classes)
        if classifier is not None and classifier_scale:
            if labels is None:
                raise ValueError("classifier: classifier guidance needs labels.")
            f = classifier_guided(f, self.path, classifier, labels, classifier_scale,
                                  prediction=self.prediction)
        return f

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws ``(n, *event)`` of the path's prior N(0, prior_std^2 I)."""
        device, dtype = self._device_dtype()
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=dtype,
                        device="cpu" if generator is None or generator.device.type == "cpu"
                        else device)
        return self.path.prior_std * z.to(device)

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        shape: Sequence[int] = (),
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float = 0.0,
        spacing: str | None = None,
        method: str | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        labels: Any = None,
        guidance: float | None = None,
        classifier: nn.Module | None = None,
        classifier_scale: float = 0.0,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Tensor:
        r"""Draws samples of shape ``(*shape, *event_shape)`` from the prior at ``t = 0``.

        Args:
            shape: sample shape.
            sampler: one of :attr:`samplers` (default :attr:`default_sampler`): the fast
                solvers on the data prediction ``"ddim"`` (any ``eta``), ``"dpm++2m"``,
                ``"dpm++3m"``, ``"unipc"``, ``"edm_heun"``, the probability-flow ODE
                ``"ode"`` by torchdiffeq (:func:`probgen.inference.sample_path`), and the
                family's own (see the subclass).
            steps: the number of steps (default: the sampler's; ignored by an adaptive
                ``"ode"`` method, which picks its own).
            eta: ``"ddim"``'s noise in [0, 1] (1: the posterior sampler of the path).
            spacing: the solvers' grid (:func:`probgen.inference.solvers.time_grid`;
                default each solver's).
            method: ``"ode"``'s torchdiffeq method (:data:`probgen.cnf.ODE_METHODS`,
                default adaptive ``"dopri5"``).
            rtol: tolerances of an adaptive method (default the model's); atol: likewise.
            labels: class(es) to sample: an int, or a sequence cycled over the samples.
            guidance: classifier-free guidance weight :math:`w` (with ``labels``; 1: the
                conditional model, see :mod:`probgen.inference.guidance`).
            classifier: a noise-conditional classifier ``classifier(x, t) -> logits``
                (probgen time); classifier_scale: its guidance scale.
            generator: seeds the prior draw and the sampler's noise.
            **options: the family's own (see the subclass).

        Example:
            >>> from probgen.models import VectorFlowMatching
            >>> model = VectorFlowMatching(2, hidden_features=[16])
            >>> x = model.sample((5,), method="euler", steps=10)
            >>> x.shape, model.last_nfe
            (torch.Size([5, 2]), 10)
        """
        sampler = self.default_sampler if sampler is None else sampler
        check_choice("sampler", sampler, self.samplers)
        if method in SOLVERS:
            raise ValueError(f"method: {method!r} is a sampler; pass sampler={method!r} "
                             f"(method is the torchdiffeq method of sampler 'ode').")
        n = math.prod(shape)
        x0 = self.prior_sample(n, generator)
        y = self._labels(labels, n, x0.device, classifier is not None)
        method = method or "dopri5"
        out = self._sample(sampler, x0, y, guidance, classifier, classifier_scale, steps=steps,
                           eta=eta, spacing=spacing, method=method,
                           rtol=self.rtol if rtol is None else rtol,
                           atol=self.atol if atol is None else atol, generator=generator,
                           **options)
        self.last_nfe = out.nfe
        self.last_solve = SolveStats("sample", method if sampler == "ode" else sampler,
                                     nfe=out.nfe)
        return out.samples.reshape(*shape, *self.event_shape)

    def _sample(self, sampler: str, x0: Tensor, labels: Tensor | None,
                guidance: float | None, classifier: Any, classifier_scale: float, *,
                steps: int | None, eta: float, spacing: str | None, method: str,
                rtol: float, atol: float, generator: torch.Generator | None,
                denoise: bool = True) -> SampleResult:
        """Runs ``sampler`` from the prior draws ``x0``: the hook a family extends with its
        own samplers (returns an object with ``samples`` and ``nfe``)."""
        return sample_path(self.guided(labels, guidance, classifier, classifier_scale),
                           self.prediction, self.path, x0, sampler=sampler, steps=steps,
                           eta=eta, spacing=spacing, method=method, rtol=rtol, atol=atol,
                           t_end=self.t_sample, denoise=denoise, generator=generator,
                           networks=[self])

    # ------------------------------------------------------------------ likelihood
    def distribution(
        self,
        *,
        labels: Tensor | None = None,
        guidance: float | None = None,
        trace: str | None = None,
        noise: str = "rademacher",
        method: str = "dopri5",
        rtol: float | None = None,
        atol: float | None = None,
        step_size: float | None = None,
        generator: torch.Generator | None = None,
        prior: Any = None,
    ) -> ContinuousFlow:
        """The model as a Distribution: the probability-flow ODE of its (guided) prediction
        from the prior at ``t = 0`` to :attr:`t_likelihood`, a
        :class:`probgen.cnf.ContinuousFlow` (:func:`probgen.inference.path_flow`).

        Args:
            labels: classes ``(n,)`` of the points evaluated or drawn (a conditional model;
                ``None``: the null class, the unconditional model).
            guidance: a guidance weight (the density of the guided sampler).
            trace: ``"exact"`` or ``"hutchinson"`` (default: exact for vectors, Hutchinson
                for images).
            noise, method, rtol, atol, step_size, generator: see
                :class:`~probgen.cnf.ContinuousFlow` (``step_size`` for fixed-step methods;
                tolerances default to the model's).
            prior: the law at ``t = 0`` (default the path's prior).
        """
        device, dtype = self._device_dtype()
        if trace is None:
            trace = "exact" if len(self.event_shape) == 1 else "hutchinson"
        return path_flow(self.guided(labels, guidance), self.prediction, self.path,
                         self.event_shape, t_end=self.t_likelihood, source=self,
                         device=device, dtype=dtype, prior=prior, method=method,
                         rtol=self.rtol if rtol is None else rtol,
                         atol=self.atol if atol is None else atol, trace=trace, noise=noise,
                         step_size=step_size, generator=generator)

    def log_prob(self, x: Tensor, labels: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Exact log-density of ``x`` ``(batch, *event)`` through the probability-flow ODE
        (in evaluation mode), shape ``(batch,)``; keyword arguments go to
        :meth:`distribution` (``trace``, ``method``, ...)."""
        self._check_x(x)
        with self._evaluation():
            flow = self.distribution(labels=labels, **kwargs)
            out = flow.log_prob(x)
        self.last_solve = flow.last_solve
        return out

    def bits_per_dim(self, x_int: Tensor, preprocess: Any, *, labels: Tensor | None = None,
                     repeats: int = 1, generator: torch.Generator | None = None,
                     **kwargs: Any) -> Tensor:
        """Bits/dim of integer images ``(n, *shape)``: uniform dequantization and the
        preprocess's log-determinant (a :class:`probgen.data.ImagePreprocess`), averaged
        over ``repeats`` draws (:func:`probgen.metrics.dequantized_bits_per_dim`); the
        Hutchinson trace by default; returns ``(n,)``."""
        kwargs.setdefault("trace", "hutchinson")
        return dequantized_bits_per_dim(
            lambda y: self.log_prob(y, labels=labels, generator=generator, **kwargs),
            x_int, preprocess, repeats=repeats, generator=generator)

    def extra_repr(self) -> str:  # noqa: D102
        return f"event_shape={self.event_shape}, num_classes={self.num_classes}"
