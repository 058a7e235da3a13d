"""Time embeddings: sinusoidal (transformer style) and random Fourier features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalEmbedding", "FourierEmbedding"]


def _check_t(t: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"t: expected a torch.Tensor of shape (batch,), got {type(t).__name__}.")
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise ValueError(f"t: expected shape (batch,), got {tuple(t.shape)}.")
    return t


class SinusoidalEmbedding(nn.Module):
    r"""Creates a sinusoidal embedding of a time, :math:`[\sin(\omega_k t), \cos(\omega_k t)]`.

    Frequencies are geometric, :math:`\omega_k = s\,m^{-k/(d/2)}` with ``scale`` s and
    ``max_period`` m; ``scale`` = 1000 suits t in [0, 1].

    Args:
        dim: embedding size (even).
        max_period: longest period.
        scale: multiplies t first.

    Shapes:
        ``t``: ``(batch,)``; output ``(batch, dim)``.

    References:
        Attention is all you need (Vaswani et al., 2017), https://arxiv.org/abs/1706.03762

    Example:
        >>> SinusoidalEmbedding(8)(torch.rand(5)).shape
        torch.Size([5, 8])
    """

    def __init__(self, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim: expected an even embedding size, got {dim}.")
        half = dim // 2
        freqs = scale * torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, t: Tensor) -> Tensor:  # noqa: D102
        t = _check_t(t)
        angles = t[:, None].to(self.freqs.dtype) * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FourierEmbedding(nn.Module):
    r"""Creates a random Fourier embedding :math:`[\sin(2\pi B t), \cos(2\pi B t)]`.

    B ~ N(0, sigma^2) is drawn once and stored as a buffer (not trained).

    Args:
        dim: embedding size (even).
        sigma: standard deviation of the frequencies.

    References:
        Fourier features let networks learn high frequency functions (Tancik et al., 2020),
        https://arxiv.org/abs/2006.10739

    Example:
        >>> FourierEmbedding(6)(torch.rand(4)).shape
        torch.Size([4, 6])
    """

    def __init__(self, dim: int, sigma: float = 16.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim: expected an even embedding size, got {dim}.")
        self.register_buffer("freqs", torch.randn(dim // 2) * sigma)

    def forward(self, t: Tensor) -> Tensor:  # noqa: D102
        t = _check_t(t)
        angles = 2 * math.pi * t[:, None].to(self.freqs.dtype) * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
