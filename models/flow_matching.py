r"""Flow-matching models: a vector field and a probability path, sampled by an ODE solver.

:class:`FlowMatching` holds any network ``net(x, t, labels=None)`` (DESIGN.md's network of
x and t, probgen time: ``t = 0`` source, ``t = 1`` data) and a
:class:`probgen.paths.AffinePath`. Its :meth:`~FlowMatching.forward` is the velocity
:math:`v(x, t)` that :class:`probgen.inference.ConditionalFlowMatching` trains
(``[objective] name = "cfm"``); :meth:`~FlowMatching.sample` integrates it from the path's
prior with Euler, midpoint, Heun, RK4 or adaptive dopri5 (function evaluations in
``last_nfe``), with classifier-free guidance for class-conditional fields; and
:meth:`~FlowMatching.log_prob` / :meth:`~FlowMatching.bits_per_dim` are exact likelihoods
through the same :class:`probgen.cnf.ContinuousFlow` Distribution as FFJORD's.

:class:`VectorFlowMatching` (the course's :class:`probgen.nn.ConditionalMLP`) and
:class:`ImageFlowMatching` (:class:`probgen.nn.UNet`) build one from keyword arguments (the
CLI's ``[model]`` table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from probgen.cnf import FIXED_METHODS, ContinuousFlow, SolveStats
from probgen.inference.flow_matching import ode_sample, reflow_pairs
from probgen.inference.guidance import classifier_guided, guided
from probgen.inference.path_sampling import PATH_SAMPLERS, sample_path
from probgen.inference.solvers import SOLVERS
from probgen.nn import ConditionalMLP, UNet
from probgen.paths import PATHS, AffinePath, get_path

__all__ = ["FlowMatching", "VectorFlowMatching", "ImageFlowMatching", "FM_MODELS"]


def _labels(labels: Any, n: int, num_classes: int | None, device: torch.device
            ) -> Tensor | None:
    """Class labels for ``n`` samples: an int, or a sequence/tensor cycled over the samples."""
    if labels is None:
        return None
    if not num_classes:
        raise ValueError("labels: this model is unconditional (num_classes=None).")
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = [labels]
    y = torch.as_tensor(labels).flatten()
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels: expected integer classes, got dtype {y.dtype}.")
    if y.numel() == 0 or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels: expected classes in 0..{num_classes - 1}, got "
                         f"{y.tolist()[:20]}.")
    return y.long().repeat(math.ceil(n / y.numel()))[:n].to(device)


class _LabelledField(nn.Module):
    """``v(x, t)`` of a model with fixed labels (and guidance), for ContinuousFlow."""

    def __init__(self, model: FlowMatching, labels: Tensor | None, guidance: float | None
                 ) -> None:
        super().__init__()
        self.model = model
        self.v = guided(model, labels, guidance, model.num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.v(x, t)


class FlowMatching(nn.Module):
    r"""Creates a flow-matching model: a vector field network and a probability path.

    The model's density is that of :math:`x_{t_\text{end}}` where :math:`\dot x_t = v(x_t,
    t)` and :math:`x_0 \sim N(0, \text{prior\_std}^2 I)` (the path's prior): a continuous
    normalizing flow whose field was learned by regression instead of maximum likelihood.

    Args:
        network: ``net(x, t, labels=None)`` returning the shape of ``x``.
        path: the probability path (:class:`probgen.paths.CondOTPath`, ``LinearPath``,
            ``VPPath``, ``VEPath``).
        event_shape: the shape of one example.
        num_classes: classes of a class-conditional network (with a null class
            ``num_classes``, used for ``labels=None`` and for guidance); ``None``:
            unconditional.
        rtol: default tolerances of adaptive solvers (sampling and likelihood); atol:
            likewise.

    Attributes:
        last_nfe: field evaluations of the last :meth:`sample` call.
        last_solve: the :class:`probgen.cnf.SolveStats` of the last solve (sample or
            likelihood).
    """

    #: The names :meth:`sample` accepts as ``sampler`` (run files are checked against them
    #: before training).
    samplers: tuple[str, ...] = PATH_SAMPLERS

    def __init__(
        self,
        network: nn.Module,
        path: AffinePath,
        event_shape: Sequence[int],
        *,
        num_classes: int | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> None:
        super().__init__()
        if not isinstance(path, AffinePath):
            raise TypeError(f"path: expected a probgen.paths.AffinePath, got "
                            f"{type(path).__name__}.")
        if not callable(network):
            raise TypeError(f"network: expected a module net(x, t), got "
                            f"{type(network).__name__}.")
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes: expected a positive int or None, got "
                             f"{num_classes!r}.")
        self.network, self.path = network, path
        self.event_shape = tuple(int(e) for e in event_shape)
        self.num_classes = int(num_classes) if num_classes else None
        self.rtol, self.atol = float(rtol), float(atol)
        self.last_nfe: int | None = None
        self.last_solve: SolveStats | None = None

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

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The velocity at ``x`` ``(batch, *event)``, probgen times ``t`` ``(batch,)``, classes
        ``labels`` ``(batch,)`` (``None``: the null class of a conditional model)."""
        self._check_x(x)
        if labels is not None and not self.num_classes:
            raise ValueError("labels: this model is unconditional (num_classes=None).")
        out = self.network(x, t, labels=labels) if self.num_classes else self.network(x, t)
        if out.shape != x.shape:
            raise ValueError(f"network: expected an output of shape {tuple(x.shape)}, got "
                             f"{tuple(out.shape)}.")
        return out

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws ``(n, *event)`` of the path's prior N(0, prior_std^2 I)."""
        device, dtype = self._device_dtype()
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=dtype,
                        device="cpu" if generator is None or generator.device.type == "cpu"
                        else device)
        return self.path.prior_std * z.to(device)

    def _field(self, y: Tensor | None, guidance: float | None, classifier: Any = None,
               classifier_scale: float = 0.0) -> Any:
        """The (guided) velocity ``field(x, t)`` of classes ``y`` (see :meth:`sample`)."""
        field = guided(self, y, guidance, self.num_classes)
        if classifier is not None and classifier_scale:
            if y is None:
                raise ValueError("classifier: classifier guidance needs labels.")
            field = classifier_guided(field, self.path, classifier, y, classifier_scale,
                                      prediction="velocity")
        return field

    def _run(self, fn: Any) -> Any:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return fn()
        finally:
            self.train(was_training)

    def sample(
        self,
        shape: Sequence[int] = (),
        *,
        sampler: str = "ode",
        steps: int | None = None,
        method: str = "dopri5",
        eta: float = 0.0,
        spacing: str | None = None,
        guidance: float | None = None,
        labels: Any = None,
        classifier: nn.Module | None = None,
        classifier_scale: float = 0.0,
        rtol: float | None = None,
        atol: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""Draws samples of shape ``(*shape, *event_shape)`` from the prior at ``t = 0``.

        Args:
            shape: sample shape.
            sampler: ``"ode"`` (the flow's ODE by torchdiffeq, ``method`` below), or the
                fast solvers on its data prediction ``"ddim"`` (any ``eta``: 1 is the
                posterior sampler of the path, stochastic), ``"dpm++2m"``, ``"dpm++3m"``,
                ``"unipc"``, ``"edm_heun"``
                (:data:`probgen.inference.PATH_SAMPLERS`,
                :func:`probgen.inference.sample_path`).
            steps: the number of steps (default 20; ignored by an adaptive ``method``).
            method: ``"ode"``'s torchdiffeq method (:data:`probgen.cnf.ODE_METHODS`):
                ``"euler"``, ``"midpoint"``, ``"heun2"``, ``"rk4"`` (fixed steps) or
                ``"dopri5"`` (adaptive).
            eta: ``"ddim"``'s noise in [0, 1].
            spacing: the solvers' time grid (:func:`probgen.inference.solvers.time_grid`;
                default each solver's).
            guidance: classifier-free guidance weight :math:`w` (with ``labels``):
                :math:`v(x, t \mid \varnothing) + w (v(x, t \mid y) - v(x, t \mid
                \varnothing))`, 1 (the default) the conditional field (see
                :mod:`probgen.inference.guidance`).
            labels: class(es) to sample: an int, or a sequence cycled over the samples.
            classifier: a noise-conditional classifier ``classifier(x, t) -> logits``
                (probgen time); classifier_scale: its guidance scale
                (:func:`probgen.inference.classifier_guided`).
            rtol: tolerances of an adaptive method (defaults: the model's); atol: likewise.
            generator: seeds the prior draw and the sampler's noise.

        Example:
            >>> model = VectorFlowMatching(2, hidden_features=[16])
            >>> x = model.sample((5,), method="euler", steps=10)
            >>> x.shape, model.last_nfe
            (torch.Size([5, 2]), 10)
        """
        if method in SOLVERS:
            raise ValueError(f"method: {method!r} is a sampler; pass sampler={method!r} "
                             f"(method is the torchdiffeq method of sampler 'ode').")
        n = math.prod(shape)
        device, _ = self._device_dtype()
        y = _labels(labels, n, self.num_classes, device)
        field = self._field(y, guidance, classifier, classifier_scale)
        x0 = self.prior_sample(n, generator)
        res = self._run(lambda: sample_path(
            field, "velocity", self.path, x0, sampler=sampler, steps=steps, eta=eta,
            spacing=spacing, method=method, rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol, generator=generator))
        self.last_nfe = res.nfe
        self.last_solve = SolveStats("sample", method if sampler == "ode" else sampler,
                                     nfe=res.nfe)
        return res.samples.reshape(*shape, *self.event_shape)

    def trajectory(
        self,
        x0: Tensor,
        times: Sequence[float] | Tensor,
        *,
        method: str = "dopri5",
        steps: int | None = None,
        guidance: float | None = None,
        labels: Any = None,
    ) -> Tensor:
        """The states at ``times`` of the trajectories starting from ``x0`` at ``times[0]``.

        Returns:
            Shape ``(len(times), n, *event)``.
        """
        self._check_x(x0)
        y = _labels(labels, x0.shape[0], self.num_classes, x0.device)
        if method in FIXED_METHODS and steps is None:
            steps = 20
        field = self._field(y, guidance)
        res = self._run(lambda: ode_sample(field, x0, method=method, steps=steps,
                                           rtol=self.rtol, atol=self.atol, times=times))
        self.last_nfe = res.nfe
        self.last_solve = SolveStats("trajectory", method, nfe=res.nfe)
        return res.samples

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
    ) -> ContinuousFlow:
        """The model as a Distribution: a :class:`probgen.cnf.ContinuousFlow` of the field
        from the prior at ``t = 0`` to ``path.t_end``.

        Args:
            labels: classes ``(n,)`` of the points to evaluate (a conditional model; ``None``:
                the null class, the unconditional field).
            guidance: a guidance weight (the density of the guided sampler).
            trace: ``"exact"`` or ``"hutchinson"`` (default: exact for vectors, Hutchinson
                for images).
            noise, method, rtol, atol, step_size, generator: see
                :class:`~probgen.cnf.ContinuousFlow` (``step_size`` for fixed-step methods).
        """
        device, dtype = self._device_dtype()
        if labels is not None and not self.num_classes:
            raise ValueError("labels: this model is unconditional (num_classes=None).")
        if trace is None:
            trace = "exact" if len(self.event_shape) == 1 else "hutchinson"
        field = _LabelledField(self, labels, guidance)
        return ContinuousFlow(field, self.path.prior(self.event_shape, device=device,
                                                     dtype=dtype),
                              method=method, rtol=self.rtol if rtol is None else rtol,
                              atol=self.atol if atol is None else atol, trace=trace,
                              noise=noise, t1=self.path.t_end, step_size=step_size,
                              generator=generator)

    def log_prob(self, x: Tensor, labels: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Exact log-density of ``x`` ``(batch, *event)`` through the ODE, shape ``(batch,)``.

        Keyword arguments go to :meth:`distribution` (``trace``, ``method``, ...).
        """
        self._check_x(x)
        flow = self.distribution(labels=labels, **kwargs)
        out = flow.log_prob(x)
        self.last_solve = flow.last_solve
        return out

    def bits_per_dim(self, x_int: Tensor, preprocess: Any, *, labels: Tensor | None = None,
                     repeats: int = 1, generator: torch.Generator | None = None,
                     **kwargs: Any) -> Tensor:
        """Bits/dim of integer images ``(n, *shape)``: uniform dequantization and the
        preprocess's log-determinant (a :class:`probgen.data.ImagePreprocess`), averaged
        over ``repeats`` draws; returns ``(n,)``."""
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats: expected a positive int, got {repeats!r}.")
        total = torch.zeros(x_int.shape[0], dtype=torch.float64)
        was_training = self.training
        self.eval()
        try:
            for _ in range(repeats):
                y, ladj = preprocess(x_int, generator=generator)
                with torch.no_grad():
                    lp = self.log_prob(y, labels=labels, generator=generator, **kwargs)
                total += preprocess.bits_per_dim(lp, ladj).detach().double().cpu()
        finally:
            self.train(was_training)
        return total / repeats

    def reflow_pairs(self, n: int, *, labels: Any = None, method: str = "dopri5",
                     steps: int | None = None, generator: torch.Generator | None = None,
                     batch_size: int = 4096) -> tuple[Tensor, ...]:
        """Rectified flow's training pairs ``(x0, x1)`` (with ``labels`` for a conditional
        model: ``(x0, x1, labels)``): ``n`` prior draws and their images under the ODE (see
        :func:`probgen.inference.reflow_pairs`)."""
        device, _ = self._device_dtype()
        y = _labels(labels, n, self.num_classes, device)
        x0 = self.prior_sample(n, generator)
        was_training = self.training
        self.eval()
        try:
            cond = {} if y is None else {"labels": y}
            x0, x1 = reflow_pairs(self, x0, method=method, steps=steps, rtol=self.rtol,
                                  atol=self.atol, t1=self.path.t_end, cond=cond,
                                  batch_size=batch_size)
        finally:
            self.train(was_training)
        return (x0, x1) if y is None else (x0, x1, y)

    def extra_repr(self) -> str:  # noqa: D102
        return f"event_shape={self.event_shape}, num_classes={self.num_classes}"


def _build_path(path: str, sigma_min: float | None, beta_min: float, beta_max: float,
                sigma_max: float, eps: float) -> AffinePath:
    if path not in PATHS:
        raise ValueError(f"path: expected one of {sorted(PATHS)}, got {path!r}.")
    if path == "ot":
        return get_path("ot", sigma_min=0.0 if sigma_min is None else sigma_min)
    if path == "linear":
        if sigma_min:
            raise ValueError("sigma_min: the linear path has no width; use path = 'ot'.")
        return get_path("linear")
    if path == "vp":
        return get_path("vp", beta_min=beta_min, beta_max=beta_max, eps=eps)
    return get_path("ve", sigma_min=0.01 if sigma_min is None else sigma_min,
                    sigma_max=sigma_max, eps=eps)


class VectorFlowMatching(FlowMatching):
    r"""Creates a flow-matching model for vectors (2-D toys) on the course's
    :class:`probgen.nn.ConditionalMLP`.

    Args:
        features: the dimension D.
        path: ``"ot"`` (conditional OT with ``sigma_min``), ``"linear"`` (rectified flow),
            ``"vp"`` or ``"ve"`` (see :data:`probgen.paths.PATHS`).
        sigma_min: the OT path's width at the data (default 0) or the VE path's
            :math:`\sigma_\min` (default 0.01).
        beta_min: the VP path's :math:`\beta_\min`; beta_max: :math:`\beta_\max`.
        sigma_max: the VE path's :math:`\sigma_\max` (about the data's diameter).
        eps: VP/VE paths stop at ``1 - eps``.
        num_classes: for class-conditional fields.
        hidden_features: the MLP's widths; embedding_dim: its condition embedding size;
            activation: its activation.
        rtol: default tolerances of adaptive solvers; atol: likewise.

    Example:
        >>> model = VectorFlowMatching(2, path="vp", hidden_features=[16])
        >>> model.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        features: int,
        path: str = "ot",
        sigma_min: float | None = None,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_max: float = 10.0,
        eps: float = 1e-3,
        num_classes: int | None = None,
        hidden_features: Sequence[int] = (256, 256, 256),
        embedding_dim: int = 128,
        activation: str = "silu",
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> None:
        net = ConditionalMLP(features, hidden_features, num_classes=num_classes,
                             embedding_dim=embedding_dim, activation=activation)
        super().__init__(net, _build_path(path, sigma_min, beta_min, beta_max, sigma_max, eps),
                         (features,), num_classes=num_classes, rtol=rtol, atol=atol)


class ImageFlowMatching(FlowMatching):
    r"""Creates a flow-matching model for images on the time- and class-conditional
    :class:`probgen.nn.UNet` (images on [-1, 1]: ``[data] preprocess = "signed"``).

    Args:
        shape: the image shape ``(C, H, W)``.
        path, sigma_min, beta_min, beta_max, sigma_max, eps: the path, as
            :class:`VectorFlowMatching`.
        num_classes: for class-conditional fields.
        base_channels, channel_mults, num_res_blocks, attention_levels, attention_heads,
            dropout, groups: the U-Net's (see :class:`probgen.nn.UNet`).
        rtol: default tolerances of adaptive solvers; atol: likewise.
    """

    def __init__(
        self,
        shape: Sequence[int],
        path: str = "ot",
        sigma_min: float | None = None,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_max: float = 50.0,
        eps: float = 1e-3,
        num_classes: int | None = None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        attention_heads: int = 1,
        dropout: float = 0.0,
        groups: int = 8,
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"shape: expected (C, H, W), got {shape}.")
        net = UNet(shape, base_channels=base_channels, channel_mults=channel_mults,
                   num_res_blocks=num_res_blocks, attention_levels=attention_levels,
                   attention_heads=attention_heads, num_classes=num_classes,
                   dropout=dropout, groups=groups)
        super().__init__(net, _build_path(path, sigma_min, beta_min, beta_max, sigma_max, eps),
                         shape, num_classes=num_classes, rtol=rtol, atol=atol)


#: The flow-matching models by name (joined into ``probgen.models.MODELS``).
FM_MODELS: dict[str, type[FlowMatching]] = {
    "VectorFlowMatching": VectorFlowMatching,
    "ImageFlowMatching": ImageFlowMatching,
}
