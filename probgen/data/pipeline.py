"""Image preprocessing pipeline: integer pixels to model space, with log|det J| for bits/dim."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import AffineTransform, Transform

from probgen.data.preprocess import (
    PREPROCESS_NAMES,
    LogitTransform,
    _check_integer_pixels,
    _check_levels,
    _float_dtype,
    uniform_dequantize,
)
from probgen.metrics.likelihood import bits_per_dim
from probgen.utils import check_choice, check_tensor

__all__ = ["ImagePreprocess"]


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
        check_choice("transform", transform, PREPROCESS_NAMES)
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
