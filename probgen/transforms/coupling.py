"""Masked coupling transforms: NICE additive and RealNVP affine, for vectors and images."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from probgen.transforms.base import FlowTransformModule

__all__ = [
    "alternating_mask",
    "checkerboard_mask",
    "channel_mask",
    "AdditiveCoupling",
    "MaskedAffineCoupling",
]


def alternating_mask(features: int, parity: int = 0) -> Tensor:
    """Returns the vector mask ``[1, 0, 1, 0, ...]`` (``parity=0``) or its complement.

    Example:
        >>> alternating_mask(5, 1)
        tensor([0., 1., 0., 1., 0.])
    """
    return ((torch.arange(features) + parity) % 2 == 0).float()


def checkerboard_mask(shape: tuple[int, int, int] | list[int], parity: int = 0) -> Tensor:
    """Returns a ``(C, H, W)`` checkerboard mask (same pattern in every channel).

    Example:
        >>> checkerboard_mask((1, 2, 2))
        tensor([[[1., 0.],
                 [0., 1.]]])
    """
    c, h, w = shape
    grid = torch.arange(h)[:, None] + torch.arange(w)[None, :] + parity
    return (grid % 2 == 0).float().expand(c, h, w).clone()


def channel_mask(shape: tuple[int, int, int] | list[int], parity: int = 0) -> Tensor:
    """Returns a ``(C, H, W)`` mask that keeps the first half of the channels (or the second).

    Example:
        >>> channel_mask((2, 1, 1), 1)[:, 0, 0]
        tensor([0., 1.])
    """
    c, h, w = shape
    first = (torch.arange(c) < c // 2).float()
    keep = first if parity == 0 else 1 - first
    return keep[:, None, None].expand(c, h, w).clone()


class _MaskedCoupling(FlowTransformModule):
    """Shared plumbing: a mask buffer, a conditioner fed ``x * mask`` (and the context)."""

    def __init__(self, mask: Tensor, net: nn.Module, context: int = 0) -> None:
        super().__init__(event_dim=mask.dim())
        self.register_buffer("mask", mask.detach().float().clone())
        self.net = net
        self.context = context

    def _conditioner(self, xm: Tensor, context: Tensor | None) -> Tensor:
        event = self.mask.shape
        batch = xm.shape[: xm.dim() - len(event)]
        if len(event) > 1 and len(batch) != 1:  # conv nets want exactly one batch dim
            flat = xm.reshape(-1, *event)
            out = self._call_net(flat, context)
            return out.reshape(*batch, *out.shape[1:])
        return self._call_net(xm, context)

    def _call_net(self, x: Tensor, context: Tensor | None) -> Tensor:
        if self.context:
            if context is None:
                raise ValueError(f"context: expected a tensor of shape (..., {self.context}).")
            return self.net(x, context)
        return self.net(x)

    def _sum_event(self, v: Tensor) -> Tensor:
        return v.flatten(start_dim=v.dim() - self.mask.dim()).sum(-1)


class AdditiveCoupling(_MaskedCoupling):
    r"""Creates a NICE additive coupling :math:`y = x + (1 - m) \odot t(m \odot x)`.

    Volume preserving (log|det J| = 0). Pyro has no additive coupling.

    Args:
        mask: 0/1 tensor of the event shape; entries with 1 pass through unchanged.
        net: conditioner mapping ``(*batch, *event)`` (and the context) to ``(*batch, *event)``.
        context: context size (0: unconditional).

    References:
        NICE: Non-linear independent components estimation (Dinh et al., 2014),
        https://arxiv.org/abs/1410.8516

    Example:
        >>> from probgen.nn import MLP
        >>> t = AdditiveCoupling(alternating_mask(4), MLP(4, 4, [8]))
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(t.inv(t(x).clone()), x, atol=1e-6)
        True
    """

    def call_and_ladj(  # noqa: D102
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        shift = self._conditioner(x * self.mask, context) * (1 - self.mask)
        return x + shift, x.new_zeros(x.shape[: x.dim() - self.mask.dim()])

    def inv_and_ladj(  # noqa: D102
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        shift = self._conditioner(y * self.mask, context) * (1 - self.mask)
        return y - shift, y.new_zeros(y.shape[: y.dim() - self.mask.dim()])


class MaskedAffineCoupling(_MaskedCoupling):
    r"""Creates a RealNVP affine coupling with an arbitrary mask.

    .. math:: y = m \odot x + (1 - m) \odot \left(x \odot e^{s} + t\right), \quad
        s = \gamma \odot \tanh(\tilde s), \quad (\tilde s, t) = \mathrm{net}(m \odot x)

    with a learnable per-feature (per-channel for images) factor :math:`\gamma`, initialised
    at 1, that bounds the log-scale as in RealNVP. Pyro's ``AffineCoupling`` splits at an
    index and clamps the log-scale; this one takes any mask (alternating vector masks,
    image checkerboard and channel masks), so no permutation layers are needed between
    couplings, and it accepts a context for conditional flows.

    Args:
        mask: 0/1 tensor of the event shape, ``(D,)`` or ``(C, H, W)``; ones pass through.
        net: conditioner mapping ``(*batch, *event)`` (and a context) to ``2x`` the event
            along its first event dimension: ``(*batch, 2D)`` or ``(*batch, 2C, H, W)``;
            the first half is :math:`\tilde s`, the second t. Zero-initialise its last layer
            to start at the identity.
        context: context size (0: unconditional; then use ``.condition(c)``).

    Shapes:
        ``x``, ``y``: ``(*batch, *event)``; log|det J|: ``(*batch,)``.

    References:
        Density estimation using Real NVP (Dinh et al., 2016), https://arxiv.org/abs/1605.08803

    Example:
        >>> from probgen.nn import MLP
        >>> t = MaskedAffineCoupling(alternating_mask(2), MLP(2, 4, [8]))
        >>> x = torch.randn(3, 2)
        >>> torch.allclose(t.inv(t(x).clone()), x, atol=1e-6)
        True
    """

    def __init__(self, mask: Tensor, net: nn.Module, context: int = 0) -> None:
        super().__init__(mask, net, context)
        shape = (mask.shape[0],) + (1,) * (mask.dim() - 1)
        self.scale_factor = nn.Parameter(torch.ones(shape))

    def _params(self, xm: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raw, shift = self._conditioner(xm, context).chunk(2, dim=-self.mask.dim())
        free = 1 - self.mask
        return self.scale_factor * torch.tanh(raw) * free, shift * free

    def call_and_ladj(  # noqa: D102
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._params(x * self.mask, context)
        return x * log_scale.exp() + shift, self._sum_event(log_scale)

    def inv_and_ladj(  # noqa: D102
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._params(y * self.mask, context)
        return (y - shift) * (-log_scale).exp(), self._sum_event(log_scale)
