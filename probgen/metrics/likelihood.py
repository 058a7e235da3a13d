r"""Likelihood metrics: negative log-likelihood, nats to bits, and bits per dimension.

Bits per dimension of data in :math:`D` dimensions whose model-space negative log-density is
``nll`` nats, after a preprocessing with log|det J| ``ladj`` and (optionally) a scaling of
integer data with ``levels`` values to [0, 1):

.. math::
    \text{bpd} = \frac{\text{nll} - \text{ladj} + D \log(\text{levels})}{D \ln 2}.

A uniform density on :math:`[0, 1)^D` for 8-bit data (``nll = 0``, ``ladj = 0``,
``levels = 256``) gives exactly 8 bits/dim; see :mod:`probgen.data.preprocess` for the
derivation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from probgen.utils import check_choice, check_int

__all__ = ["bits_per_dim", "dequantized_bits_per_dim", "nats_to_bits", "nll"]

_REDUCTIONS = ("mean", "sum", "none")


def nats_to_bits(x: Tensor | float) -> Tensor | float:
    """Converts nats to bits: ``x / ln 2``.

    Example:
        >>> nats_to_bits(math.log(2.0))
        1.0
    """
    return x / math.log(2.0)


def nll(log_prob: Tensor, *, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood ``-log_prob`` in nats.

    Args:
        log_prob: log-densities, any shape (``-inf`` allowed: it gives ``+inf``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
        Tensor: a scalar, or ``-log_prob`` unreduced.

    Raises:
        TypeError: ``log_prob`` is not a floating tensor.
        ValueError: NaN entries, or an unknown ``reduction``.

    Example:
        >>> nll(torch.tensor([-1.0, -3.0]))
        tensor(2.)
    """
    if not isinstance(log_prob, Tensor) or not log_prob.is_floating_point():
        kind = log_prob.dtype if isinstance(log_prob, Tensor) else type(log_prob).__name__
        raise TypeError(f"log_prob: expected a floating-point tensor, got {kind}.")
    if torch.isnan(log_prob).any():
        raise ValueError("log_prob: contains NaN values.")
    check_choice("reduction", reduction, _REDUCTIONS)
    out = -log_prob
    if reduction == "mean":
        return out.mean()
    if reduction == "sum":
        return out.sum()
    return out


def bits_per_dim(
    nll_nats: Tensor | float,
    num_dims: int,
    *,
    ladj: Tensor | float = 0,
    levels: int | None = None,
) -> Tensor:
    r"""Bits per dimension: :math:`(\text{nll} - \text{ladj} + D \log L) / (D \ln 2)`.

    Args:
        nll_nats: negative log-density in model space, in nats, shape ``(N,)`` or scalar.
        num_dims: ``D``, the number of dimensions per example (e.g. 784 for MNIST).
        ladj: log|det J| of the preprocessing from the data the bits refer to (after the
            ``1/levels`` scaling if ``levels`` is given) to model space; broadcast against
            ``nll_nats``.
        levels: ``L``, the number of values of integer data dequantized as ``(x + u) / L``;
            ``None`` when ``nll_nats`` already refers to the data's own scale.

    Returns:
        Tensor: bits/dim, the broadcast shape of ``nll_nats`` and ``ladj``.

    Raises:
        ValueError: ``num_dims`` or ``levels`` not a positive int (``levels >= 2``).

    Example:
        >>> # uniform on [0, 1)^D, 8-bit data: log(256) / log(2) bits, up to rounding
        >>> bits_per_dim(torch.zeros(3), 784, levels=256).round(decimals=4)
        tensor([8., 8., 8.])
        >>> # uniform on [0, 256)^D
        >>> bits_per_dim(torch.tensor(784 * math.log(256.0)), 784).round(decimals=4)
        tensor(8.)
    """
    check_int("num_dims", num_dims)
    if levels is not None and (
        isinstance(levels, bool) or not isinstance(levels, int) or levels < 2
    ):
        raise ValueError(f"levels: expected None or an int >= 2, got {levels!r}.")
    value = torch.as_tensor(nll_nats)
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    value = value - ladj
    if levels is not None:
        value = value + num_dims * math.log(levels)
    return value / (num_dims * math.log(2.0))


def dequantized_bits_per_dim(log_prob: Callable[[Tensor], Tensor], x_int: Tensor,
                             preprocess: Any, *, repeats: int = 1,
                             generator: torch.Generator | None = None) -> Tensor:
    r"""Bits/dim of integer data under a model-space log-density, averaged over dequantizations.

    Each draw maps ``x_int`` to model space by ``preprocess`` (uniform dequantization, e.g.
    a :class:`probgen.data.ImagePreprocess`, returning ``(y, ladj)``) and takes
    ``preprocess.bits_per_dim(log_prob(y), ladj)`` (:func:`bits_per_dim`): an upper bound
    on the discrete data's bits/dim in expectation over the dequantization noise (Theis et
    al., 2016).

    Args:
        log_prob: ``(n, *event) -> (n,)``, called without gradients.
        x_int: integer data ``(n, *shape)``.
        preprocess: called as ``preprocess(x_int, generator=...)``, with
            ``bits_per_dim(log_prob, ladj)``.
        repeats: dequantization draws.
        generator: for the dequantization noise.

    Returns:
        Bits/dim per example, ``(n,)``, float64 on the CPU.
    """
    check_int("repeats", repeats)
    total = torch.zeros(x_int.shape[0], dtype=torch.float64)
    for _ in range(repeats):
        y, ladj = preprocess(x_int, generator=generator)
        with torch.no_grad():
            lp = log_prob(y)
        total += preprocess.bits_per_dim(lp, ladj).detach().double().cpu()
    return total / repeats
