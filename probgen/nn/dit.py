r"""A diffusion transformer (DiT) for images, ``net(x, t, labels=None)``: the U-Net's contract.

Peebles & Xie (2023): the image is cut into ``patch x patch`` patches, each linearly
embedded and given a fixed 2-D sine-cosine position; ``depth`` transformer blocks follow,
each conditioned on the time-and-class embedding :math:`e(t, y)` by *adaLN-Zero*: the
embedding regresses a shift, a scale and a gate for the attention branch and for the MLP
branch, with the regression initialised to zero so that every block starts as the
identity; a last adaptive LayerNorm and a zero-initialised linear layer map each token
back to its patch. Written here because none of the libraries probgen may depend on
ships a DiT (diffusers' ``DiTTransformer2DModel`` is the reference for training-step
timings in ``benchmarks/gpu.py``, not a dependency).

References:
    Scalable Diffusion Models with Transformers (Peebles & Xie, 2023),
    https://arxiv.org/abs/2212.09748
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from probgen.nn.conditional import ConditionEmbedding, image_condition
from probgen.nn.init import zero_init_
from probgen.nn.transformer import (
    TransformerBlock,
    check_patches,
    modulate,
    sincos_positions,
    unpatchify,
)

__all__ = ["DiT"]


class DiT(nn.Module):
    r"""Creates a diffusion transformer ``(batch, C, H, W) -> (batch, C', H, W)``.

    Patches of ``patch x patch`` pixels become ``(H/patch)(W/patch)`` tokens of width
    ``hidden``; ``depth`` adaLN-Zero blocks of ``heads`` heads condition on :math:`e(t, y)`
    (:class:`probgen.nn.ConditionEmbedding`, with the null class ``num_classes`` for
    classifier-free guidance); the output is zero at initialisation. LayerNorm works per
    token, so an output never depends on the other examples of the batch. Same contract as
    :class:`probgen.nn.UNet`, so every model of a network of ``(x, t)`` takes either.

    Args:
        shape: the image shape ``(C, H, W)``; ``H`` and ``W`` multiples of ``patch``.
        patch: patch side (2 for 32x32 and 28x28 images in the DiT paper's smallest setting).
        hidden: token width (a multiple of ``heads`` and of 4).
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: the MLP's hidden width over ``hidden``.
        num_classes: number of classes (``None``: unconditional).
        out_channels: output channels (defaults to C; ``2 C`` for a learned variance).
        dropout: dropout in attention and MLP.
        time_scale: multiplies t before the sinusoidal features (1000 for t in [0, 1]).

    Shapes:
        ``x``: ``(batch, C, H, W)``; ``t``: ``(batch,)`` or a scalar; ``labels``:
        ``(batch,)`` integers; output ``(batch, out_channels, H, W)``.

    Example:
        >>> net = DiT((1, 8, 8), patch=2, hidden=32, depth=2, heads=4, num_classes=10)
        >>> net(torch.randn(3, 1, 8, 8), torch.rand(3), labels=torch.tensor([0, 9, 10])).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        shape: Sequence[int],
        patch: int = 2,
        hidden: int = 128,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        out_channels: int | None = None,
        dropout: float = 0.0,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        shape = check_patches(shape, patch, hidden, heads, depth)
        self.event_shape, self.patch = shape, patch
        self.out_channels = int(out_channels or shape[0])
        self.grid = (shape[1] // patch, shape[2] // patch)
        self.embed_patches = nn.Conv2d(shape[0], hidden, patch, stride=patch)
        self.register_buffer("positions", sincos_positions(hidden, *self.grid), persistent=False)
        self.embed = ConditionEmbedding(hidden, num_classes, time_scale)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, mlp_ratio, cond=hidden,
                                                     dropout=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), zero_init_(nn.Linear(hidden, 2 * hidden)))
        self.head = zero_init_(nn.Linear(hidden, patch * patch * self.out_channels))
        # the paper's initialisation: Xavier-uniform linear layers (in the blocks), the patch
        # embedding as a linear layer
        w = self.embed_patches.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.embed_patches.bias)

    @property
    def num_classes(self) -> int | None:
        """Number of classes (``None``: unconditional); the null class is this index."""
        return self.embed.num_classes

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """The output at images ``x``, times ``t`` and classes ``labels`` (``None``: null)."""
        e = image_condition(self.embed, self.event_shape, x, t, labels)
        h = self.embed_patches(x).flatten(2).transpose(1, 2) + self.positions.to(x.dtype)
        for block in self.blocks:
            h = block(h, e)
        shift, scale = self.ada(e).chunk(2, dim=1)
        h = self.head(modulate(self.norm(h), shift, scale))  # (batch, tokens, p*p*C')
        return unpatchify(h, self.grid, self.patch, self.out_channels)

    def extra_repr(self) -> str:  # noqa: D102
        return f"patch={self.patch}, tokens={math.prod(self.grid)}"
