r"""Transformer pieces for images: patches, 2-D positions, self-attention, (adaLN) blocks.

Shared by the diffusion transformer (:class:`probgen.nn.DiT`) and the ViT encoder and
decoder (:mod:`probgen.nn.vit`). Attention is torch's ``scaled_dot_product_attention``
(its fused kernels where the device has them).

References:
    An Image is Worth 16x16 Words (Dosovitskiy et al., 2021), https://arxiv.org/abs/2010.11929
    Scalable Diffusion Models with Transformers (Peebles & Xie, 2023),
    https://arxiv.org/abs/2212.09748
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from probgen.nn.init import zero_init_

__all__ = ["SelfAttention", "TransformerBlock", "sincos_positions", "unpatchify",
           "check_patches", "modulate"]


def sincos_positions(dim: int, height: int, width: int) -> Tensor:
    r"""The fixed 2-D sine-cosine position embedding ``(height * width, dim)`` (row-major).

    Half the features encode the row, half the column, each as
    :math:`[\sin(p\,\omega_k), \cos(p\,\omega_k)]` with :math:`\omega_k = 10000^{-k/(d/4)}`,
    ``k = 0..d/4-1``.

    Example:
        >>> sincos_positions(8, 2, 3).shape
        torch.Size([6, 8])
    """
    if dim % 4:
        raise ValueError(f"dim: expected a multiple of 4, got {dim}.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")

    def encode(p: Tensor) -> Tensor:
        angle = p.reshape(-1, 1) * omega
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive LayerNorm's affine map of tokens ``(batch, tokens, width)`` by per-example
    ``shift`` and ``scale`` ``(batch, width)``: ``x (1 + scale) + shift``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
    """Creates multi-head self-attention over tokens ``(batch, tokens, width)``
    (``torch.nn.functional.scaled_dot_product_attention``), with its output projection."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"heads: expected a divisor of the width {width}, got {heads}.")
        self.heads, self.dropout = heads, float(dropout)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training
                                           else 0.0)
        return self.proj(h.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    r"""Creates a pre-norm transformer block: :math:`x + A(N(x))`, then :math:`x + M(N(x))`
    with a GELU MLP; given a condition embedding ``e`` of width ``cond`` it is an
    adaLN-Zero block (DiT): each norm is shifted and scaled, each branch gated, all by a
    zero-initialised regression of ``e``, so that a fresh block is the identity."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, *,
                 cond: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        affine = cond is None
        self.norm1 = nn.LayerNorm(width, elementwise_affine=affine, eps=1e-6)
        self.attn = SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=affine, eps=1e-6)
        inner = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, inner), nn.GELU(approximate="tanh"),
                                 nn.Dropout(dropout), nn.Linear(inner, width))
        self.ada = None if cond is None else nn.Sequential(
            nn.SiLU(), zero_init_(nn.Linear(cond, 6 * width)))
        for layer in (self.attn.qkv, self.attn.proj, self.mlp[0], self.mlp[3]):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, e: Tensor | None = None) -> Tensor:  # noqa: D102
        if self.ada is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(e).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


def check_patches(shape: Sequence[int], patch: int, width: int, heads: int, depth: int
                  ) -> tuple[int, int, int]:
    """Checks a patchified transformer's settings; returns the image shape ``(C, H, W)``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape: expected (C, H, W) with positive sizes, got {shape}.")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or (
            shape[1] % patch or shape[2] % patch):
        raise ValueError(f"patch: expected a positive int dividing H and W of {shape}, got "
                         f"{patch!r}.")
    if width < 4 or width % 4 or heads < 1 or width % heads:
        raise ValueError(f"hidden, heads: expected a width that is a multiple of 4 and of "
                         f"heads, got hidden={width}, heads={heads}.")
    if depth < 1:
        raise ValueError(f"depth: expected >= 1 blocks, got {depth}.")
    return shape  # type: ignore[return-value]


def unpatchify(tokens: Tensor, grid: tuple[int, int], patch: int, channels: int) -> Tensor:
    """Images ``(batch, channels, H, W)`` from per-patch pixels ``(batch, tokens,
    patch * patch * channels)``, tokens in row-major patch order (the inverse of a
    ``patch``-strided convolution's token order)."""
    (gh, gw), b = grid, tokens.shape[0]
    h = tokens.reshape(b, gh, gw, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return h.reshape(b, channels, gh * patch, gw * patch)
