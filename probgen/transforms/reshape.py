"""Shape transforms: squeeze/unsqueeze of images and multi-scale factor-out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from probgen.transforms.base import FlowTransformModule

__all__ = ["squeeze", "unsqueeze", "Squeeze", "Unsqueeze", "Partial"]


def squeeze(x: Tensor) -> Tensor:
    """Folds 2x2 spatial blocks into channels: ``(*b, C, H, W)`` -> ``(*b, 4C, H/2, W/2)``."""
    *b, c, h, w = x.shape
    x = x.reshape(*b, c, h // 2, 2, w // 2, 2)
    n = len(b)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Inverse of :func:`squeeze`: ``(*b, 4C, H, W)`` -> ``(*b, C, 2H, 2W)``."""
    *b, c, h, w = x.shape
    n = len(b)
    x = x.reshape(*b, c // 4, 2, 2, h, w)
    x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*b, c // 4, 2 * h, 2 * w)


class Squeeze(FlowTransformModule):
    """Creates the squeeze bijection ``(C, H, W)`` -> ``(4C, H/2, W/2)`` (log|det J| = 0).

    References:
        Density estimation using Real NVP (Dinh et al., 2016), https://arxiv.org/abs/1605.08803

    Example:
        >>> Squeeze()(torch.randn(5, 1, 4, 4)).shape
        torch.Size([5, 4, 2, 2])
    """

    def __init__(self) -> None:
        super().__init__(event_dim=3)

    def call_and_ladj(  # noqa: D102
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return squeeze(x), x.new_zeros(x.shape[:-3])

    def inv_and_ladj(  # noqa: D102
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return unsqueeze(y), y.new_zeros(y.shape[:-3])

    def forward_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:  # noqa: D102
        *b, c, h, w = shape
        return (*b, 4 * c, h // 2, w // 2)

    def inverse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:  # noqa: D102
        *b, c, h, w = shape
        return (*b, c // 4, 2 * h, 2 * w)


class Unsqueeze(Squeeze):
    """Creates the unsqueeze bijection ``(4C, H, W)`` -> ``(C, 2H, 2W)`` (inverse of Squeeze).

    Example:
        >>> Unsqueeze()(torch.randn(5, 4, 2, 2)).shape
        torch.Size([5, 1, 4, 4])
    """

    def call_and_ladj(  # noqa: D102
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return super().inv_and_ladj(x)

    def inv_and_ladj(  # noqa: D102
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return super().call_and_ladj(y)

    def forward_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:  # noqa: D102
        return super().inverse_shape(shape)

    def inverse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:  # noqa: D102
        return super().forward_shape(shape)


class Partial(FlowTransformModule):
    r"""Applies inner transforms to the first ``channels`` entries of the first event
    dimension and the identity to the rest (RealNVP's factor-out, kept in one tensor).

    With a standard-normal base over the whole tensor, the untouched entries are exactly
    the latents factored out at this scale, so nesting ``Partial`` inside each scale gives
    RealNVP's multi-scale architecture. The inner transforms must keep the shape of their
    input overall (e.g. ``Squeeze``, couplings, ``Unsqueeze``).

    Args:
        transforms: inner transform modules, applied in order (base -> data direction).
        channels: how many leading channels (features for vectors) they act on.
        event_dim: 3 for images, 1 for vectors.

    References:
        Density estimation using Real NVP (Dinh et al., 2016), https://arxiv.org/abs/1605.08803

    Example:
        >>> from probgen.transforms import ActNorm
        >>> t = Partial([ActNorm([1, 2, 2], data_init=False)], channels=1)
        >>> t(torch.randn(3, 2, 2, 2)).shape
        torch.Size([3, 2, 2, 2])
    """

    def __init__(
        self, transforms: Sequence[nn.Module], channels: int, event_dim: int = 3
    ) -> None:
        super().__init__(event_dim=event_dim)
        self.transforms = nn.ModuleList(transforms)
        self.channels = channels

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dim = x.dim() - self._event_dim
        rest = x.shape[dim] - self.channels
        return x.split([self.channels, rest], dim=dim)

    def _reduce(self, ladj: Tensor, batch: int) -> Tensor:
        return ladj.flatten(start_dim=batch).sum(-1) if ladj.dim() > batch else ladj

    def call_and_ladj(  # noqa: D102
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        a, b = self._split(x)
        batch = x.dim() - self._event_dim
        total = x.new_zeros(x.shape[:batch])
        for t in self.transforms:
            y = t(a)
            total = total + self._reduce(t.log_abs_det_jacobian(a, y), batch)
            a = y
        return _cat(a, b, batch), total

    def inv_and_ladj(  # noqa: D102
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        a, b = self._split(y)
        batch = y.dim() - self._event_dim
        total = y.new_zeros(y.shape[:batch])
        for t in reversed(self.transforms):
            x = t.inv(a)
            total = total + self._reduce(t.log_abs_det_jacobian(x, a), batch)
            a = x
        return _cat(a, b, batch), total


def _cat(a: Tensor, b: Tensor, dim: int) -> Tensor:
    return torch.cat([a, b], dim=dim)
