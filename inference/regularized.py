"""Regularized maximum likelihood: the NLL plus penalties a model integrates with its density."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from probgen.inference.likelihood import MaximumLikelihood
from probgen.inference.registry import register_objective

__all__ = ["RegularizedMaximumLikelihood"]


class RegularizedMaximumLikelihood(MaximumLikelihood):
    r"""Creates maximum likelihood with weighted penalties, as in RNODE:
    :math:`\text{nll} + \sum_k \lambda_k\, \overline{R_k}`.

    For models whose ``log_prob_and_penalties(x[, context])`` returns the log-density and a
    dict of per-example penalties from the same computation, e.g. a continuous flow's
    kinetic energy :math:`\int \|v\|^2 dt` and Jacobian norm :math:`\int \|\partial_x
    v\|_F^2 dt` (:class:`probgen.cnf.ContinuousFlow`). Penalized fields are straighter and
    cheaper to solve at almost the same likelihood. Everything else (preprocessing,
    bits/dim, context) is :class:`MaximumLikelihood`'s.

    Outputs (means over the batch): ``loss`` (nll plus the weighted penalties), ``nll``,
    ``bits_per_dim`` when known, one entry per penalty (unweighted), and ``nfe`` (field
    evaluations of the solve) when the model has an ``nfe`` attribute.

    Args:
        model: an ``nn.Module`` with ``log_prob_and_penalties(x, context=None)``.
        kinetic: weight :math:`\lambda_K` of the ``"kinetic"`` penalty.
        jacobian: weight :math:`\lambda_J` of the ``"jacobian"`` penalty.
        kwargs: passed to :class:`MaximumLikelihood` (``preprocess``, ``num_dims``, ...).

    References:
        How to train your neural ODE: the world of Jacobian and kinetic regularization
        (Finlay et al., 2020), https://arxiv.org/abs/2002.02798

    Example:
        >>> class Gauss(torch.nn.Module):  # a stand-in with a squared-norm "penalty"
        ...     def log_prob(self, x, context=None):
        ...         return torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
        ...     def log_prob_and_penalties(self, x, context=None):
        ...         return self.log_prob(x), {"kinetic": x.pow(2).sum(-1)}
        >>> objective = RegularizedMaximumLikelihood(Gauss(), kinetic=0.5)
        >>> out = objective(torch.ones(3, 2))
        >>> round(float(out["nll"]), 4), round(float(out["loss"]), 4)
        (2.8379, 3.8379)
    """

    def __init__(
        self, model: nn.Module, *, kinetic: float = 0.0, jacobian: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        if not callable(getattr(model, "log_prob_and_penalties", None)):
            raise TypeError(
                "model: expected a module with log_prob_and_penalties(x, context=None) -> "
                f"(log_p, {{name: penalty}}) (e.g. a continuous flow), got {type(model).__name__}."
            )
        self.weights: dict[str, float] = {}
        for name, value in (("kinetic", kinetic), ("jacobian", jacobian)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a weight >= 0, got {value!r}.")
            self.weights[name] = float(value)

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """Computes the outputs for ``batch`` (``x`` of shape ``(N, *event)`` or a pair)."""
        x, context = self._split(batch)
        ladj: Tensor | float = 0.0
        if self.preprocess is not None:
            result = self.preprocess(x)
            x, ladj = result if isinstance(result, tuple) else (result, 0.0)
        log_p, penalties = (self.model.log_prob_and_penalties(x) if context is None
                            else self.model.log_prob_and_penalties(x, context))
        if log_p.shape != x.shape[:1]:
            raise ValueError(
                f"model.log_prob_and_penalties: expected one log-density per example, shape "
                f"({x.shape[0]},), got {tuple(log_p.shape)}."
            )
        missing = sorted(k for k, w in self.weights.items() if w and k not in penalties)
        if missing:
            raise ValueError(f"model.log_prob_and_penalties: returned penalties "
                             f"{sorted(penalties)}, lacks {missing}.")
        out = self._likelihood_outputs(x, log_p, ladj)
        loss = out["nll"]
        for name, value in penalties.items():
            mean = value.mean()
            out[name] = mean
            loss = loss + self.weights.get(name, 0.0) * mean
        out["loss"] = loss
        if hasattr(self.model, "nfe"):
            out["nfe"] = float(self.model.nfe)
        return out


@register_objective("regularized_ml", keys={"kinetic": (int, float), "jacobian": (int, float)},
                    summary="maximum likelihood plus RNODE's kinetic and Jacobian penalties")
def _build(model: nn.Module, data: Any, **table: Any) -> nn.Module:
    """Maximum likelihood plus RNODE's kinetic and Jacobian penalties (continuous flows)."""
    return RegularizedMaximumLikelihood(model, preprocess=data.preprocess, **table)
