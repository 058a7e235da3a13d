"""Maximum likelihood (forward KL): the mean negative log-likelihood of any density model."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from probgen.inference.registry import register_objective
from probgen.metrics.likelihood import bits_per_dim
from probgen.utils import check_int

__all__ = ["MaximumLikelihood"]


class MaximumLikelihood(nn.Module):
    r"""Creates the maximum-likelihood objective :math:`-\frac1N \sum_i \log p(x_i)`.

    Minimizing it minimizes the forward KL :math:`KL(p_\text{data} \| p_\theta)` up to the
    data entropy. Works with anything that has ``log_prob(x[, context])`` returning one value
    per example (a :class:`probgen.protocols.DensityModel`).

    With a ``preprocess`` map (e.g. :class:`probgen.data.ImagePreprocess`: dequantize integer
    pixels, then logit), the model sees ``y, ladj = preprocess(x)`` and the likelihood is
    carried back to the data: :math:`\text{nll} = -\log p(y) - \text{ladj} - c + D \log L`
    per example, with ``c = ladj_offset`` and ``L = levels`` (taken from
    ``preprocess.levels`` when present; the ``1/L`` scaling of integer data), so that
    ``bits_per_dim = nll / (D ln 2)`` is the standard figure for discrete images.

    Outputs (means over the batch): ``loss`` (= ``nll``, in nats; the constants do not change
    gradients), ``nll``, and ``bits_per_dim`` when ``D`` is known (``num_dims`` given, or a
    ``preprocess`` given, then ``D`` is the number of entries per example).

    Args:
        model: an ``nn.Module`` with ``log_prob(x)`` or ``log_prob(x, context)`` of shape
            ``(batch,)``.
        preprocess: ``preprocess(x) -> (y, ladj)`` (or just ``y``), applied to each batch.
        num_dims: ``D`` for bits/dim.
        levels: ``L``, the number of values of integer data (``None``: continuous data).
        ladj_offset: a constant log|det J| of preprocessing done outside (e.g. data scaled by
            ``s`` beforehand: ``D log s``).
        use_context: pass the second element of an ``(x, context)`` batch to ``log_prob``;
            ``False`` ignores it (e.g. unconditional models on labelled data sets).

    Example:
        >>> class Gauss(torch.nn.Module):
        ...     def log_prob(self, x, context=None):
        ...         return torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
        >>> ml = MaximumLikelihood(Gauss(), num_dims=1)
        >>> out = ml(torch.zeros(5, 1))
        >>> round(float(out["nll"]), 4), sorted(out)
        (0.9189, ['bits_per_dim', 'loss', 'nll'])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocess: Callable[[Tensor], Any] | None = None,
        num_dims: int | None = None,
        levels: int | None = None,
        ladj_offset: float = 0.0,
        use_context: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not callable(getattr(model, "log_prob", None)):
            raise TypeError(
                "model: expected an nn.Module with log_prob(x, context=None) (a DensityModel), "
                f"got {type(model).__name__}."
            )
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess: expected a callable x -> (y, ladj), got "
                            f"{type(preprocess).__name__}.")
        check_int("num_dims", num_dims, allow_none=True)
        self.model = model
        self.preprocess = preprocess
        self.num_dims = num_dims
        self.levels = levels if levels is not None else getattr(preprocess, "levels", None)
        self.ladj_offset = float(ladj_offset)
        self.use_context = bool(use_context)

    def _split(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(batch, Tensor):
            return batch, None
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor):
            return batch[0], batch[1] if self.use_context else None
        raise TypeError(
            "batch: expected a Tensor x or a pair (x, context), got "
            f"{type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(
                batch, (tuple, list)) else "") + "."
        )

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """Computes the outputs for ``batch`` (``x`` of shape ``(N, *event)`` or a pair)."""
        x, context = self._split(batch)
        ladj: Tensor | float = 0.0
        if self.preprocess is not None:
            result = self.preprocess(x)
            x, ladj = result if isinstance(result, tuple) else (result, 0.0)
        log_p = self.model.log_prob(x) if context is None else self.model.log_prob(x, context)
        if log_p.shape != x.shape[:1]:
            raise ValueError(
                f"model.log_prob: expected one value per example, shape ({x.shape[0]},), got "
                f"{tuple(log_p.shape)}; sum over the event dimensions."
            )
        out = self._likelihood_outputs(x, log_p, ladj)
        return {"loss": out["nll"], **out}

    def _likelihood_outputs(self, x: Tensor, log_p: Tensor, ladj: Tensor | float
                            ) -> dict[str, Tensor]:
        """``nll`` in nats per example of the data (with the preprocessing's ``ladj`` and,
        for ``levels``, the ``D log L`` of the bins) and ``bits_per_dim`` when ``D`` is
        known, both batch means."""
        nll = -log_p - ladj - self.ladj_offset
        dims = self.num_dims
        if dims is None and (self.preprocess is not None or self.levels is not None):
            dims = math.prod(x.shape[1:])
        if self.levels is not None:
            nll = nll + dims * math.log(self.levels)
        nll = nll.mean()
        out = {"nll": nll}
        if dims is not None:
            out["bits_per_dim"] = bits_per_dim(nll, dims)
        return out

    def extra_repr(self) -> str:
        """The settings, for ``repr``."""
        return (f"num_dims={self.num_dims}, levels={self.levels}, "
                f"ladj_offset={self.ladj_offset:g}, use_context={self.use_context}")


@register_objective("ml", keys={},
                    summary="maximum likelihood (forward KL) of any model with log_prob")
def _build_ml(model: nn.Module, data: Any) -> nn.Module:
    """Maximum likelihood (forward KL) of a density model, through the data preprocessing."""
    return MaximumLikelihood(model, preprocess=data.preprocess)
