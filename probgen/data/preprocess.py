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
from torch.distributions import AffineTransform, Transform, constraints

from probgen.metrics.likelihood import bits_per_dim
from probgen.utils import check_tensor

__all__ = [
    "ScaleTransform",
    "LogitTransform",
    "uniform_dequantize",
    "binarize",
    "dynamic_binarize",
    "to_signed",
    "from_signed",
    "ImagePreprocess",
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


class ScaleTransform(Transform):
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

    bijective = True

    def __init__(self, levels: float, event_dim: int = 0, cache_size: int = 0) -> None:
        if isinstance(levels, bool) or not isinstance(levels, (int, float)) or not levels > 0:
            raise ValueError(f"levels: expected a positive number, got {levels!r}.")
        super().__init__(cache_size=cache_size)
        self.levels = float(levels)
        self._event_dim = _check_event_dim(event_dim)

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    @property
    def sign(self) -> int:
        return 1

    def with_cache(self, cache_size: int = 1) -> ScaleTransform:
        if self._cache_size == cache_size:
            return self
        return ScaleTransform(self.levels, self._event_dim, cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ScaleTransform)
            and other.levels == self.levels
            and other._event_dim == self._event_dim
        )

    def __hash__(self) -> int:
        return hash((type(self), self.levels, self._event_dim))

    def _call(self, x: Tensor) -> Tensor:
        return x / self.levels

    def _inverse(self, y: Tensor) -> Tensor:
        return y * self.levels

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return _sum_rightmost(torch.full_like(x, -math.log(self.levels)), self._event_dim)

    def __repr__(self) -> str:
        return f"ScaleTransform(levels={self.levels:g}, event_dim={self._event_dim})"


class LogitTransform(Transform):
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

    bijective = True

    def __init__(self, alpha: float = 0.05, event_dim: int = 0, cache_size: int = 0) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
            0 <= alpha < 0.5
        ):
            raise ValueError(f"alpha: expected a number in [0, 0.5), got {alpha!r}.")
        super().__init__(cache_size=cache_size)
        self.alpha = float(alpha)
        self._event_dim = _check_event_dim(event_dim)

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.unit_interval, self._event_dim)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    @property
    def sign(self) -> int:
        return 1

    def with_cache(self, cache_size: int = 1) -> LogitTransform:
        if self._cache_size == cache_size:
            return self
        return LogitTransform(self.alpha, self._event_dim, cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LogitTransform)
            and other.alpha == self.alpha
            and other._event_dim == self._event_dim
        )

    def __hash__(self) -> int:
        return hash((type(self), self.alpha, self._event_dim))

    def _call(self, x: Tensor) -> Tensor:
        s = self.alpha + (1.0 - 2.0 * self.alpha) * x
        return torch.log(s) - torch.log1p(-s)

    def _inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        ladj = math.log1p(-2.0 * self.alpha) + F.softplus(y) + F.softplus(-y)
        return _sum_rightmost(ladj, self._event_dim)

    def __repr__(self) -> str:
        return f"LogitTransform(alpha={self.alpha:g}, event_dim={self._event_dim})"


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


class ImagePreprocess:
    r"""Creates the map from integer images to model space, with its log|det J| for bits/dim.

    Integer pixels ``x`` in ``0..levels-1`` are dequantized to ``z = (x + u) / levels`` in
    [0, 1) and mapped by a bijection ``T`` to model space:

    - ``"logit"``: ``y = logit(alpha + (1 - 2 alpha) z)`` (RealNVP, Glow-style flows);
    - ``"scale"``: ``y = z`` (in [0, 1));
    - ``"signed"``: ``y = 2 z - 1`` (in [-1, 1), diffusion and GAN style).

    ``ladj`` is the per-example log|det dT/dz| of ``T`` ALONE, measured from the [0, 1)-scaled
    data (it excludes the constant ``-D log(levels)`` of the scaling), so that
    ``bits/dim = (-log p(y) - ladj + D log(levels)) / (D ln 2)`` (see the module docstring for
    the derivation, and :meth:`bits_per_dim`).

    Args:
        levels: the number of pixel levels (256 for MNIST, 17 for the 8x8 digits).
        transform: one of :data:`PREPROCESS_NAMES`.
        alpha: the logit squeeze (``"logit"`` only), ``0 <= alpha < 0.5``.
        flatten: return model-space data of shape ``(N, D)`` instead of ``(N, *shape)``.
        shape: the image shape ``(C, H, W)``; remembered from the first call when ``None``,
            and used by :meth:`to_unit` to unflatten.

    Example:
        >>> pre = ImagePreprocess(levels=256, transform="logit")
        >>> x = torch.randint(0, 256, (4, 1, 8, 8))
        >>> y, ladj = pre(x)
        >>> y.shape, ladj.shape
        (torch.Size([4, 1, 8, 8]), torch.Size([4]))
        >>> bpd = pre.bits_per_dim(torch.distributions.Normal(0.0, 1.0).log_prob(y).sum((1, 2, 3)),
        ...                        ladj)
        >>> bpd.shape
        torch.Size([4])
    """

    def __init__(
        self,
        levels: int = 256,
        transform: str = "logit",
        alpha: float = 0.05,
        flatten: bool = False,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        self.levels = _check_levels(levels)
        if transform not in PREPROCESS_NAMES:
            raise ValueError(
                f"transform: expected one of {list(PREPROCESS_NAMES)}, got {transform!r}."
            )
        self.transform = transform
        LogitTransform(alpha)  # validates alpha
        self.alpha = float(alpha)
        self.flatten = bool(flatten)
        self.shape: tuple[int, ...] | None = (
            None if shape is None else tuple(int(s) for s in shape)
        )

    def bijection(self, event_dim: int) -> Transform:
        """The bijection ``T`` from [0, 1)-scaled data to model space (not flattened).

        Args:
            event_dim: the number of event dimensions (3 for ``(C, H, W)`` images), over which
                ``log_abs_det_jacobian`` sums.

        Returns:
            Transform: a :class:`torch.distributions.Transform`.
        """
        if self.transform == "logit":
            return LogitTransform(self.alpha, event_dim=event_dim)
        if self.transform == "signed":
            return AffineTransform(-1.0, 2.0, event_dim=event_dim)
        return AffineTransform(0.0, 1.0, event_dim=event_dim)

    @property
    def num_dims(self) -> int:
        """``D``, the number of dimensions per example (needs :attr:`shape` known)."""
        if self.shape is None:
            raise ValueError("shape: unknown until the first call; pass shape=(C, H, W).")
        return math.prod(self.shape)

    def _remember(self, shape: tuple[int, ...]) -> None:
        if self.shape is None:
            self.shape = shape
        elif self.shape != shape:
            raise ValueError(f"x: expected images of shape (N, {', '.join(map(str, self.shape))}),"
                             f" got (N, {', '.join(map(str, shape))}).")

    def to_model(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Maps [0, 1]-scaled images ``z`` of shape ``(N, *shape)`` to model space.

        Returns:
            tuple: ``y`` (flattened to ``(N, D)`` if ``flatten``) and ``ladj`` of shape ``(N,)``.
        """
        z = check_tensor(z, "z")
        if z.dim() < 2:
            raise ValueError(f"z: expected a batch of shape (N, ...), got {tuple(z.shape)}.")
        self._remember(tuple(z.shape[1:]))
        t = self.bijection(z.dim() - 1)
        y = t(z)
        ladj = t.log_abs_det_jacobian(z, y).expand(z.shape[0])
        return (y.flatten(1) if self.flatten else y), ladj

    def __call__(
        self, x: Tensor, *, generator: torch.Generator | None = None, dequantize: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Dequantizes integer images and maps them to model space.

        Args:
            x: integer-valued pixels in ``0..levels-1``, shape ``(N, *shape)`` (any dtype).
            generator: for the dequantization noise.
            dequantize: add ``u ~ U[0, 1)`` (training and likelihood evaluation); when false,
                use the bin centres ``(x + 0.5) / levels`` (deterministic, for display).

        Returns:
            tuple: ``y`` in model space (``(N, D)`` if ``flatten``) and ``ladj``, shape ``(N,)``:
            log|det| of ``T`` from the [0, 1)-scaled data.
        """
        x = _check_integer_pixels(x, self.levels, "x")
        if dequantize:
            z, _ = uniform_dequantize(x, self.levels, generator=generator)
        else:
            dtype = _float_dtype(x)
            z = (x.to(dtype) + 0.5) / self.levels
        return self.to_model(z)

    def to_unit(self, y: Tensor) -> Tensor:
        """Maps model-space data back to [0, 1] (unflattened to ``(N, *shape)`` when known).

        Samples may land slightly outside [0, 1]; clamp them for display.
        """
        y = check_tensor(y, "y", finite=False)
        if y.dim() == 2 and self.shape is not None and len(self.shape) > 1:
            y = y.reshape(y.shape[0], *self.shape)
        return self.bijection(y.dim() - 1).inv(y)

    def to_discrete(self, y: Tensor) -> Tensor:
        """Maps model-space data to integer pixels ``floor(z * levels)`` in ``0..levels-1``.

        Returns:
            Tensor: int64, shape ``(N, *shape)``.
        """
        z = self.to_unit(y)
        return torch.floor(z * self.levels).clamp(0, self.levels - 1).long()

    def bits_per_dim(self, log_prob: Tensor, ladj: Tensor, num_dims: int | None = None) -> Tensor:
        """Bits/dim of the discrete data from the model-space log-density and ``ladj``.

        Args:
            log_prob: ``log p(y)`` in nats, shape ``(N,)``.
            ladj: as returned by :meth:`__call__`, shape ``(N,)``.
            num_dims: ``D``; :attr:`num_dims` when ``None``.

        Returns:
            Tensor: ``(-log_prob - ladj + D log(levels)) / (D ln 2)``, shape ``(N,)``.
        """
        d = self.num_dims if num_dims is None else num_dims
        return bits_per_dim(-log_prob, d, ladj=ladj, levels=self.levels)

    def __repr__(self) -> str:
        alpha = f", alpha={self.alpha:g}" if self.transform == "logit" else ""
        return (f"ImagePreprocess(levels={self.levels}, transform={self.transform!r}{alpha}, "
                f"flatten={self.flatten})")
