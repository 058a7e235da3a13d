r"""Invertible image preprocessing with its log|det J|, so that bits/dim stay exact.

The convention used throughout (and by :class:`ImagePreprocess`): integer pixels
:math:`x \in \{0, \dots, L-1\}^D` (``L = levels``) are dequantized to
:math:`z = (x + u) / L \in [0, 1)^D` with :math:`u \sim U[0, 1)^D`, then mapped to model space
by a bijection :math:`y = T(z)`. A model density :math:`p_Y` induces on :math:`v = x + u` the
density

.. math::
    \log p_V(v) = \log p_Y(T(v / L)) + \log|\det \partial T / \partial z| - D \log L,

and :math:`E_u[\log p_V(x + u)]` lower-bounds the discrete log-likelihood
:math:`\log P(x)` (Theis et al., 2016). Hence, with ``ladj`` the log|det| of :math:`T` alone
(from the [0, 1)-scaled data, the quantity :meth:`ImagePreprocess.__call__` returns),

.. math::
    \text{bits/dim} = \frac{-\log p_Y(y) - \text{ladj} + D \log L}{D \ln 2}.

A uniform model on :math:`[0, 1)^D` with the identity :math:`T` gives exactly
:math:`\log_2 L` bits/dim (8 for 8-bit data).

References:
    A note on the evaluation of generative models (Theis et al., 2016),
    https://arxiv.org/abs/1511.01844; Density estimation using Real NVP (Dinh et al., 2017),
    https://arxiv.org/abs/1605.08803 (the logit preprocessing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Transform, constraints

from probgen.utils import check_tensor

__all__ = [
    "ScaleTransform",
    "LogitTransform",
    "uniform_dequantize",
    "binarize",
    "dynamic_binarize",
    "to_signed",
    "from_signed",
    "PREPROCESS_NAMES",
]

#: The model spaces :class:`ImagePreprocess` offers.
PREPROCESS_NAMES: tuple[str, ...] = ("logit", "scale", "signed")


def _sum_rightmost(x: Tensor, k: int) -> Tensor:
    return x if k == 0 else x.reshape(*x.shape[: x.dim() - k], -1).sum(-1)


def _check_event_dim(event_dim: object) -> int:
    if isinstance(event_dim, bool) or not isinstance(event_dim, int) or event_dim < 0:
        raise ValueError(f"event_dim: expected a non-negative int, got {event_dim!r}.")
    return event_dim


def _check_levels(levels: object) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(
            f"levels: expected an int >= 2 (e.g. 256 for 8-bit data), got {levels!r}."
        )
    return levels


class _MonotoneMap(Transform):
    """Shared plumbing of the increasing elementwise bijections below: one scalar parameter
    (named by ``_parameter``), an ``event_dim``, equality, hashing and cache copies."""

    bijective = True
    _parameter = ""
    _support = constraints.real

    def __init__(self, event_dim: int, cache_size: int) -> None:
        super().__init__(cache_size=cache_size)
        self._event_dim = _check_event_dim(event_dim)

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(self._support, self._event_dim)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    @property
    def sign(self) -> int:
        return 1

    def _value(self) -> float:
        return getattr(self, self._parameter)

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return type(self)(self._value(), self._event_dim, cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other._value() == self._value()  # type: ignore[attr-defined]
            and other._event_dim == self._event_dim  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self), self._value(), self._event_dim))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._parameter}={self._value():g}, "
            f"event_dim={self._event_dim})"
        )


class ScaleTransform(_MonotoneMap):
    r"""Creates the scaling :math:`y = x / \text{levels}` (integer pixels to [0, 1]).

    Its log|det J| is :math:`-\log(\text{levels})` per element, summed over the rightmost
    ``event_dim`` dimensions.

    Args:
        levels: the number of pixel levels (256 for 8-bit data), ``> 0``.
        event_dim: how many rightmost dimensions form one example (0: elementwise log|det|;
            3 for images ``(C, H, W)``, giving one value per image).
        cache_size: as for :class:`torch.distributions.Transform`.

    Example:
        >>> t = ScaleTransform(256, event_dim=1)
        >>> x = torch.tensor([[0.0, 128.0]])
        >>> t(x), t.log_abs_det_jacobian(x, t(x))
        (tensor([[0.0000, 0.5000]]), tensor([-11.0904]))
    """

    _parameter = "levels"

    def __init__(self, levels: float, event_dim: int = 0, cache_size: int = 0) -> None:
        if isinstance(levels, bool) or not isinstance(levels, (int, float)) or not levels > 0:
            raise ValueError(f"levels: expected a positive number, got {levels!r}.")
        super().__init__(event_dim, cache_size)
        self.levels = float(levels)

    def _call(self, x: Tensor) -> Tensor:
        return x / self.levels

    def _inverse(self, y: Tensor) -> Tensor:
        return y * self.levels

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return _sum_rightmost(torch.full_like(x, -math.log(self.levels)), self._event_dim)


class LogitTransform(_MonotoneMap):
    r"""Creates the logit map :math:`y = \text{logit}(\alpha + (1 - 2\alpha) x)` on [0, 1].

    ``alpha`` keeps the logit away from the infinities at 0 and 1 (RealNVP uses 0.05 on
    images). Per element,
    :math:`\log|dy/dx| = \log(1 - 2\alpha) - \log s - \log(1 - s)` with
    :math:`s = \alpha + (1 - 2\alpha) x`, computed stably as
    :math:`\log(1 - 2\alpha) + \text{softplus}(y) + \text{softplus}(-y)`, and summed over the
    rightmost ``event_dim`` dimensions.

    Args:
        alpha: the squeeze, ``0 <= alpha < 0.5``.
        event_dim: how many rightmost dimensions form one example (0: elementwise).
        cache_size: as for :class:`torch.distributions.Transform`.

    References:
        Density estimation using Real NVP (Dinh et al., 2017), https://arxiv.org/abs/1605.08803

    Example:
        >>> t = LogitTransform(alpha=0.05)
        >>> x = torch.tensor([0.0, 1.0]) / 256
        >>> t(x), t.log_abs_det_jacobian(x, t(x))
        (tensor([-2.9444, -2.8728]), tensor([2.9417, 2.8774]))
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-6)
        True
    """

    _parameter = "alpha"
    _support = constraints.unit_interval

    def __init__(self, alpha: float = 0.05, event_dim: int = 0, cache_size: int = 0) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
            0 <= alpha < 0.5
        ):
            raise ValueError(f"alpha: expected a number in [0, 0.5), got {alpha!r}.")
        super().__init__(event_dim, cache_size)
        self.alpha = float(alpha)

    def _call(self, x: Tensor) -> Tensor:
        s = self.alpha + (1.0 - 2.0 * self.alpha) * x
        return torch.log(s) - torch.log1p(-s)

    def _inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        ladj = math.log1p(-2.0 * self.alpha) + F.softplus(y) + F.softplus(-y)
        return _sum_rightmost(ladj, self._event_dim)


def _check_integer_pixels(x: object, levels: int, name: str) -> Tensor:
    x = check_tensor(x, name, floating=False)
    if x.dim() < 1:
        raise ValueError(f"{name}: expected a batch of shape (N, ...), got a scalar.")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer-valued pixels, got dtype {x.dtype}.")
    if x.numel() == 0:
        return x
    xf = x.double()
    if not torch.isfinite(xf).all() or not torch.equal(xf, xf.floor()):
        raise ValueError(f"{name}: expected integer-valued pixels 0..{levels - 1}, got "
                         "non-integer or non-finite values (already scaled to [0, 1]?).")
    lo, hi = int(xf.min()), int(xf.max())
    if lo < 0 or hi > levels - 1:
        raise ValueError(
            f"{name}: expected integer pixels in 0..{levels - 1} (levels={levels}), "
            f"got values in {lo}..{hi}."
        )
    return x


def _float_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def uniform_dequantize(
    x_int: Tensor, levels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""Dequantizes integer pixels: :math:`z = (x + u) / \text{levels}`, :math:`u \sim U[0, 1)`.

    Args:
        x_int: integer-valued pixels in ``0..levels-1`` (any integer or float dtype), shape
            ``(N, *event)``; every dimension after the first is an event dimension.
        levels: the number of pixel levels (256 for 8-bit data).
        generator: for reproducible noise (drawn on ``x_int``'s device).

    Returns:
        tuple: ``z`` in [0, 1), same shape, float (``x_int``'s dtype if floating, else the
        default dtype); and ``ladj`` of shape ``(N,)``, the constant
        :math:`-D \log(\text{levels})` (``D`` = elements per example): the log|det| of
        :math:`x + u \mapsto z`.

    Raises:
        ValueError: non-integer values or values outside ``0..levels-1``; bad ``levels``.

    Example:
        >>> z, ladj = uniform_dequantize(torch.tensor([[0, 255]]), 256)
        >>> bool(((z >= 0) & (z < 1)).all()), ladj
        (True, tensor([-11.0904]))
    """
    levels = _check_levels(levels)
    x = _check_integer_pixels(x_int, levels, "x_int")
    dtype = _float_dtype(x)
    u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
    z = (x.to(dtype) + u) / levels
    # Rounding can give exactly 1 for x = levels - 1 and u close to 1: keep z < 1.
    one = torch.ones((), dtype=dtype, device=x.device)
    z = torch.minimum(z, torch.nextafter(one, torch.zeros_like(one)))
    num_dims = math.prod(x.shape[1:])
    ladj = torch.full((x.shape[0],), -num_dims * math.log(levels), dtype=dtype, device=x.device)
    return z, ladj


def binarize(x: Tensor, threshold: float = 128) -> Tensor:
    """Binarizes pixels deterministically: 1.0 where ``x >= threshold``, else 0.0.

    With 8-bit pixels (0..255) and the default 128 this equals ``x / 255 > 0.5`` (that is,
    ``x > 127.5``), the usual static binarization of MNIST. For data already in [0, 1] pass
    ``threshold=0.5``.

    Args:
        x: pixels, any shape, integer or floating dtype.
        threshold: the smallest value mapped to 1.

    Returns:
        Tensor: float (``x``'s dtype if floating, else the default dtype), same shape, in {0, 1}.

    Example:
        >>> binarize(torch.tensor([0, 127, 128, 255], dtype=torch.uint8))
        tensor([0., 0., 1., 1.])
    """
    x = check_tensor(x, "x", floating=False)
    return (x >= threshold).to(_float_dtype(x))


def dynamic_binarize(x01: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Binarizes stochastically: each pixel is Bernoulli with probability its intensity.

    Drawn fresh every call (Salakhutdinov & Murray, 2008), which regularizes binary models.

    Args:
        x01: intensities in [0, 1], floating dtype, any shape.
        generator: for reproducible draws (on ``x01``'s device).

    Returns:
        Tensor: same shape and dtype, in {0, 1}.

    Raises:
        ValueError: values outside [0, 1].

    Example:
        >>> dynamic_binarize(torch.tensor([0.0, 1.0]))
        tensor([0., 1.])
    """
    x01 = check_tensor(x01, "x01")
    if x01.numel() and (x01.min() < 0 or x01.max() > 1):
        raise ValueError(
            f"x01: expected intensities in [0, 1], got values in "
            f"[{float(x01.min()):g}, {float(x01.max()):g}]."
        )
    return torch.bernoulli(x01, generator=generator)


def to_signed(x01: Tensor) -> Tensor:
    """Maps [0, 1] to [-1, 1]: ``2 * x01 - 1`` (log|det| = ``D log 2`` per example).

    Example:
        >>> to_signed(torch.tensor([0.0, 0.5, 1.0]))
        tensor([-1.,  0.,  1.])
    """
    return 2.0 * check_tensor(x01, "x01", finite=False) - 1.0


def from_signed(x: Tensor) -> Tensor:
    """Maps [-1, 1] back to [0, 1]: ``(x + 1) / 2``, the inverse of :func:`to_signed`.

    Example:
        >>> from_signed(torch.tensor([-1.0, 0.0, 1.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """
    return (check_tensor(x, "x", finite=False) + 1.0) / 2.0
