"""Activation normalisation (Glow's ActNorm) with data-dependent initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from probgen.transforms.base import FlowTransformModule

__all__ = ["ActNorm"]


class ActNorm(FlowTransformModule):
    r"""Creates an activation normalisation :math:`y = x \odot e^{s} + b` (base -> data).

    One scale and shift per feature (vectors) or per channel (images). With
    ``data_init=True``, the first call in the normalising direction (``inv``, i.e. the
    first ``log_prob``) sets b and s from that batch so that its output has zero mean and
    unit variance per channel; an ``initialized`` buffer records this, so a loaded
    ``state_dict`` is not re-initialised. If the first call is a forward (sampling) call,
    as in reverse-KL training, the current values are kept and no data-dependent
    initialisation ever happens (it would overwrite trained values later). Pyro has no
    ActNorm.

    Args:
        shape: the event shape, ``[D]`` or ``[C, H, W]``.
        data_init: initialise from the first batch (else start at the identity).

    Shapes:
        ``x``, ``y``: ``(*batch, *shape)``; log|det J|: ``(*batch,)``, equal to
        :math:`H W \sum_c s_c` for images.

    References:
        Glow: Generative flow with invertible 1x1 convolutions (Kingma & Dhariwal, 2018),
        https://arxiv.org/abs/1807.03039

    Example:
        >>> t = ActNorm([2])
        >>> z = t.inv(3 + 2 * torch.randn(100, 2))
        >>> bool(z.mean(0).abs().max() < 1e-5)
        True
    """

    def __init__(self, shape: Sequence[int], data_init: bool = True) -> None:
        shape = tuple(int(s) for s in shape)
        super().__init__(event_dim=len(shape))
        param_shape = (shape[0],) + (1,) * (len(shape) - 1)
        self.loc = nn.Parameter(torch.zeros(param_shape))
        self.log_scale = nn.Parameter(torch.zeros(param_shape))
        self.register_buffer("initialized", torch.tensor(not data_init))
        self.shape = shape

    def _ladj(self, x: Tensor) -> Tensor:
        pixels = 1
        for s in self.shape[1:]:
            pixels *= s
        return (pixels * self.log_scale.sum()).expand(x.shape[: x.dim() - len(self.shape)])

    @torch.no_grad()
    def _initialize(self, y: Tensor) -> None:
        dims = [d for d in range(y.dim()) if d != y.dim() - len(self.shape)]
        mean = y.mean(dim=dims, keepdim=True).reshape(self.loc.shape)
        std = y.std(dim=dims, keepdim=True, unbiased=False).reshape(self.loc.shape)
        self.loc.copy_(mean)
        self.log_scale.copy_(torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def call_and_ladj(  # noqa: D102
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if not self.initialized:  # sampled first (e.g. reverse KL): keep the current values
            self.initialized.fill_(True)
        return x * self.log_scale.exp() + self.loc, self._ladj(x)

    def inv_and_ladj(  # noqa: D102
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if not self.initialized:
            self._initialize(y)
        return (y - self.loc) * (-self.log_scale).exp(), self._ladj(y)
