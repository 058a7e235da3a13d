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

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from probgen.cnf import FIXED_METHODS, SolveStats
from probgen.inference.flow_matching import ode_sample, reflow_pairs
from probgen.models.path_model import PathModel, image_network
from probgen.nn import ConditionalMLP
from probgen.paths import AffinePath, get_path

__all__ = ["FlowMatching", "VectorFlowMatching", "ImageFlowMatching", "FM_MODELS"]


class FlowMatching(PathModel):
    r"""Creates a flow-matching model: a vector field network and a probability path.

    The model's density is that of :math:`x_{t_\text{end}}` where :math:`\dot x_t = v(x_t,
    t)` and :math:`x_0 \sim N(0, \text{prior\_std}^2 I)` (the path's prior): a continuous
    normalizing flow whose field was learned by regression instead of maximum likelihood.
    Sampling (``"ode"`` by default: ``method`` ``"euler"``, ``"midpoint"``, ``"heun2"``,
    ``"rk4"`` or adaptive ``"dopri5"``; or the fast solvers), guidance and likelihoods are
    :class:`probgen.models.PathModel`'s.

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
    """

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
        if not isinstance(path, AffinePath):
            raise TypeError(f"path: expected a probgen.paths.AffinePath, got "
                            f"{type(path).__name__}.")
        super().__init__(network, event_shape, num_classes=num_classes)
        self.path = path
        self.rtol, self.atol = float(rtol), float(atol)

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
        y = self._labels(labels, x0.shape[0], x0.device)
        if method in FIXED_METHODS and steps is None:
            steps = 20
        field = self.guided(y, guidance)
        with self._evaluation(), torch.no_grad():
            res = ode_sample(field, x0, method=method, steps=steps, rtol=self.rtol,
                             atol=self.atol, times=times)
        self.last_nfe = res.nfe
        self.last_solve = SolveStats("trajectory", method, nfe=res.nfe)
        return res.samples

    def reflow_pairs(self, n: int, *, labels: Any = None, method: str = "dopri5",
                     steps: int | None = None, generator: torch.Generator | None = None,
                     batch_size: int = 4096) -> tuple[Tensor, ...]:
        """Rectified flow's training pairs ``(x0, x1)`` (with ``labels`` for a conditional
        model: ``(x0, x1, labels)``): ``n`` prior draws and their images under the ODE (see
        :func:`probgen.inference.reflow_pairs`)."""
        device, _ = self._device_dtype()
        y = self._labels(labels, n, device)
        x0 = self.prior_sample(n, generator)
        with self._evaluation():
            x0, x1 = reflow_pairs(self, x0, method=method, steps=steps, rtol=self.rtol,
                                  atol=self.atol, t1=self.path.t_end,
                                  cond={} if y is None else {"labels": y},
                                  batch_size=batch_size)
        return (x0, x1) if y is None else (x0, x1, y)


def _build_path(path: str, sigma_min: float | None, beta_min: float, beta_max: float,
                sigma_max: float, eps: float) -> AffinePath:
    """The path called ``path`` with those of the arguments that apply to it."""
    if path == "linear" and sigma_min:
        raise ValueError("sigma_min: the linear path has no width; use path = 'ot'.")
    options = {"ot": {"sigma_min": 0.0 if sigma_min is None else sigma_min},
               "vp": {"beta_min": beta_min, "beta_max": beta_max, "eps": eps},
               "ve": {"sigma_min": 0.01 if sigma_min is None else sigma_min,
                      "sigma_max": sigma_max, "eps": eps}}
    return get_path(path, **options.get(path, {}))


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
        base_channels, channel_mults, num_res_blocks: the U-Net's widths and depth;
            attention_levels, attention_heads, dropout, groups: its attention, dropout
            and GroupNorm (see :class:`probgen.nn.UNet`).
        network: a network ``net(x, t, labels=None)`` used instead of the U-Net (e.g.
            :class:`probgen.nn.DiT`); the U-Net arguments then keep their defaults.
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
        network: nn.Module | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"shape: expected (C, H, W), got {shape}.")
        net = image_network(network, shape, num_classes=num_classes,
                            base_channels=base_channels, channel_mults=channel_mults,
                            num_res_blocks=num_res_blocks, attention_levels=attention_levels,
                            attention_heads=attention_heads, dropout=dropout, groups=groups)
        super().__init__(net, _build_path(path, sigma_min, beta_min, beta_max, sigma_max, eps),
                         shape, num_classes=num_classes, rtol=rtol, atol=atol)


#: The flow-matching models by name (joined into ``probgen.models.MODELS``).
FM_MODELS: dict[str, type[FlowMatching]] = {
    "VectorFlowMatching": VectorFlowMatching,
    "ImageFlowMatching": ImageFlowMatching,
}
