r"""Vision-transformer encoder and decoder for latent-variable models (VAE, VQ-VAE).

:class:`ViTEncoder` maps images to vectors (a VAE's posterior parameters) or to a grid of
token vectors (a VQ-VAE's latents); :class:`ViTDecoder` maps vectors or token grids back to
image parameters. Both cut images into ``patch x patch`` patches with fixed 2-D sine-cosine
positions and run pre-norm transformer blocks (:mod:`probgen.nn.transformer`).

References:
    An Image is Worth 16x16 Words (Dosovitskiy et al., 2021), https://arxiv.org/abs/2010.11929
    ViT-VQGAN: Vector-quantized Image Modeling with Improved VQGAN (Yu et al., 2022),
    https://arxiv.org/abs/2110.04627
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from probgen.nn.transformer import TransformerBlock, check_patches, sincos_positions, unpatchify
from probgen.utils import check_int

__all__ = ["ViTEncoder", "ViTDecoder"]


class ViTEncoder(nn.Module):
    r"""Creates a ViT encoder ``(*batch, C, H, W) -> (*batch, out_features)`` (or, with
    ``tokens=True``, ``(*batch, out_features, H/patch, W/patch)``).

    Patch embedding, fixed positions, ``depth`` pre-norm blocks, a final LayerNorm; the
    token vectors are averaged (a VAE's encoder) or kept on their grid (a VQ-VAE's).

    Args:
        shape: the image shape ``(C, H, W)`` (``H``, ``W`` multiples of ``patch``).
        out_features: the output width (e.g. twice the latent size for a Gaussian posterior).
        patch: patch side; hidden: token width; depth: blocks; heads: attention heads.
        mlp_ratio: MLP width over ``hidden``; dropout: in the blocks.
        tokens: keep one output vector per patch (a grid) instead of their mean.

    Example:
        >>> enc = ViTEncoder((1, 28, 28), 32, patch=4, hidden=32, depth=2, heads=4)
        >>> enc(torch.rand(5, 1, 28, 28)).shape
        torch.Size([5, 32])
    """

    def __init__(self, shape: Sequence[int], out_features: int, *, patch: int = 4,
                 hidden: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, tokens: bool = False) -> None:
        super().__init__()
        shape = check_patches(shape, patch, hidden, heads, depth)
        check_int("out_features", out_features)
        self.event_shape, self.patch, self.tokens = shape, patch, bool(tokens)
        self.grid = (shape[1] // patch, shape[2] // patch)
        self.embed = nn.Conv2d(shape[0], hidden, patch, stride=patch)
        self.register_buffer("positions", sincos_positions(hidden, *self.grid), persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, mlp_ratio, dropout=dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """The encoding of images ``x`` ``(*batch, C, H, W)``."""
        if x.dim() < 4 or tuple(x.shape[-3:]) != self.event_shape:
            raise ValueError(f"x: expected shape (*batch, "
                             f"{', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}.")
        lead = x.shape[:-3]
        out = self._encode(x.reshape(-1, *self.event_shape))
        return out.reshape(*lead, *out.shape[1:])

    def _encode(self, x: Tensor) -> Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2) + self.positions.to(x.dtype)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        if not self.tokens:
            return self.head(h.mean(1))
        out = self.head(h)  # (batch, tokens, out_features)
        return out.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)

    def extra_repr(self) -> str:  # noqa: D102
        return f"patch={self.patch}, tokens={math.prod(self.grid)}, grid_output={self.tokens}"


class ViTDecoder(nn.Module):
    r"""Creates a ViT decoder ``(*batch, in_features) -> (*batch, out_channels, H, W)`` (or,
    with ``tokens=True``, from a grid ``(*batch, in_features, H/patch, W/patch)``; with
    ``params``, ``(*batch, params, C, H, W)``: the VAE decoders' contract).

    A vector is projected to every patch's token (added to its fixed position); a grid
    gives each patch its own vector. ``depth`` pre-norm blocks and a per-token linear layer
    produce each patch's pixels (e.g. the means, or ``2 C`` channels of means and
    log-scales, of a Gaussian or logistic likelihood).

    Args:
        in_features: the latent width (per token with ``tokens``).
        shape: the image shape ``(C, H, W)``.
        out_channels: output channels (default C).
        params: outputs per pixel (a VAE likelihood's parameters) instead of
            ``out_channels``: the output is ``(*batch, params, C, H, W)``.
        patch, hidden, depth, heads, mlp_ratio, dropout: as :class:`ViTEncoder`.
        tokens: take a grid of token latents instead of one vector.

    Example:
        >>> dec = ViTDecoder(16, (1, 28, 28), patch=4, hidden=32, depth=2, heads=4)
        >>> dec(torch.randn(5, 16)).shape
        torch.Size([5, 1, 28, 28])
    """

    def __init__(self, in_features: int, shape: Sequence[int], *,
                 out_channels: int | None = None, params: int | None = None, patch: int = 4,
                 hidden: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, tokens: bool = False) -> None:
        super().__init__()
        shape = check_patches(shape, patch, hidden, heads, depth)
        check_int("in_features", in_features)
        if params is not None and (out_channels is not None or params < 1):
            raise ValueError(f"params: expected a positive int and no out_channels, got "
                             f"params={params!r}, out_channels={out_channels!r}.")
        self.event_shape, self.patch, self.tokens = shape, patch, bool(tokens)
        self.in_features, self.params = int(in_features), params
        self.out_channels = int(params * shape[0] if params else out_channels or shape[0])
        self.grid = (shape[1] // patch, shape[2] // patch)
        count = math.prod(self.grid)
        self.embed = nn.Linear(in_features, hidden if tokens else count * hidden)
        self.hidden = hidden
        self.register_buffer("positions", sincos_positions(hidden, *self.grid), persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, mlp_ratio, dropout=dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, patch * patch * self.out_channels)

    def forward(self, z: Tensor) -> Tensor:
        """The image parameters of latents ``z`` ``(*batch, in_features)`` (or a grid)."""
        expect = ((self.in_features, *self.grid) if self.tokens else (self.in_features,))
        if z.dim() <= len(expect) or tuple(z.shape[-len(expect):]) != expect:
            raise ValueError(f"z: expected shape (*batch, {', '.join(map(str, expect))}), got "
                             f"{tuple(z.shape)}.")
        lead = z.shape[:-len(expect)]
        out = self._decode(z.reshape(-1, *expect))
        if self.params:
            out = out.unflatten(1, (self.params, self.event_shape[0]))
        return out.reshape(*lead, *out.shape[1:])

    def _decode(self, z: Tensor) -> Tensor:
        if self.tokens:
            h = self.embed(z.flatten(2).transpose(1, 2))
        else:
            h = self.embed(z).reshape(z.shape[0], -1, self.hidden)
        h = h + self.positions.to(h.dtype)
        for block in self.blocks:
            h = block(h)
        return unpatchify(self.head(self.norm(h)), self.grid, self.patch, self.out_channels)

    def extra_repr(self) -> str:  # noqa: D102
        return f"patch={self.patch}, tokens={math.prod(self.grid)}, grid_input={self.tokens}"
