r"""A time- and class-conditional U-Net for small images, ``net(x, t, labels=None)``.

The architecture of Ho et al. (2020), scaled down for CPU budgets: residual blocks with
GroupNorm whose scale and shift come from the condition embedding (adaptive GroupNorm,
Nichol & Dhariwal 2021), self-attention at the chosen resolutions, strided-convolution
downsampling, nearest-neighbour upsampling to the skip connection's size (so odd sizes
such as 28 -> 14 -> 7 -> 14 -> 28 and 8 -> 4 -> 2 work), and a zero-initialised output
convolution. Written here rather than taken from a peer library because none of the
ones probgen may depend on ships a U-Net.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from probgen.nn.conditional import ConditionEmbedding, image_condition
from probgen.nn.init import zero_init_
from probgen.utils import check_int

__all__ = ["UNet", "UNetClassifier"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class _ResBlock(nn.Module):
    """``x + conv(SiLU(AdaGN(conv(SiLU(GN(x))), e)))``, with a 1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = _norm(cout, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_init_(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(e))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return h + self.skip(x)


class _Attention(nn.Module):
    """Multi-head self-attention over the pixels, residual, output projection zeroed."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention_heads: expected a divisor of the width {channels}, "
                             f"got {heads}.")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_init_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w) \
            .transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    r"""Creates a time- and class-conditional U-Net ``(batch, C, H, W) -> (batch, C', H, W)``.

    ``len(channel_mults)`` resolutions, each with ``num_res_blocks`` residual blocks on the
    way down and ``num_res_blocks + 1`` on the way up (taking the skips), stride-2
    convolutions between resolutions, and a middle of residual-attention-residual. The
    condition :math:`e(t, y)` (see :class:`probgen.nn.ConditionEmbedding`) scales and
    shifts every block's second GroupNorm. GroupNorm normalises each example on its own,
    so an output never depends on the other examples of the batch.

    Args:
        shape: the image shape ``(C, H, W)``.
        base_channels: width at full resolution.
        channel_mults: width multipliers per resolution, e.g. ``(1, 2, 2)`` for
            28 -> 14 -> 7 (MNIST) or 8 -> 4 -> 2 (the 8x8 digits).
        num_res_blocks: residual blocks per resolution on the way down.
        attention_levels: indices into ``channel_mults`` of the resolutions with
            self-attention (the middle always has one).
        attention_heads: heads of every attention layer.
        num_classes: number of classes (``None``: unconditional); adds a null class
            ``num_classes`` used when ``labels`` is ``None`` (classifier-free guidance).
        out_channels: output channels (defaults to C; ``2 C`` for a learned variance).
        dropout: dropout inside the residual blocks.
        groups: GroupNorm groups (reduced to a divisor of the width where needed).
        time_scale: multiplies t before the sinusoidal features (1000 for t in [0, 1]).

    Shapes:
        ``x``: ``(batch, C, H, W)``; ``t``: ``(batch,)`` or a scalar; ``labels``:
        ``(batch,)`` integers; output ``(batch, out_channels, H, W)``.

    References:
        Denoising diffusion probabilistic models (Ho et al., 2020),
        https://arxiv.org/abs/2006.11239; Improved denoising diffusion probabilistic models
        (Nichol & Dhariwal, 2021), https://arxiv.org/abs/2102.09672

    Example:
        >>> net = UNet((1, 8, 8), base_channels=16, num_classes=10)
        >>> net(torch.randn(3, 1, 8, 8), torch.rand(3), labels=torch.tensor([0, 9, 10])).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        shape: Sequence[int],
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        attention_heads: int = 1,
        num_classes: int | None = None,
        out_channels: int | None = None,
        dropout: float = 0.0,
        groups: int = 8,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape: expected (C, H, W) with positive sizes, got {shape}.")
        mults = [int(m) for m in channel_mults]
        if not mults or min(mults) < 1:
            raise ValueError(f"channel_mults: expected positive ints, got {channel_mults!r}.")
        bad = [a for a in attention_levels if not 0 <= int(a) < len(mults)]
        if bad:
            raise ValueError(f"attention_levels: expected indices in 0..{len(mults) - 1}, got "
                             f"{list(attention_levels)}.")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks: expected >= 1, got {num_res_blocks}.")
        self.event_shape = shape
        self.out_channels = int(out_channels or shape[0])
        c = int(base_channels)
        emb = 4 * c
        self.embed = ConditionEmbedding(emb, num_classes, time_scale, frequency_dim=c)
        self.stem = nn.Conv2d(shape[0], c, 3, padding=1)
        attn = {int(a) for a in attention_levels}

        self.down = nn.ModuleList()
        skips, width = [c], c
        for level, m in enumerate(mults):
            for _ in range(num_res_blocks):
                blocks = nn.ModuleList([_ResBlock(width, c * m, emb, groups, dropout)])
                width = c * m
                if level in attn:
                    blocks.append(_Attention(width, attention_heads, groups))
                self.down.append(blocks)
                skips.append(width)
            if level < len(mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(width, width, 3, stride=2,
                                                          padding=1)]))
                skips.append(width)
        self.mid1 = _ResBlock(width, width, emb, groups, dropout)
        self.mid_attn = _Attention(width, attention_heads, groups)
        self.mid2 = _ResBlock(width, width, emb, groups, dropout)
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mults))):
            for i in range(num_res_blocks + 1):
                blocks = nn.ModuleList([_ResBlock(width + skips.pop(), c * m, emb, groups,
                                                  dropout)])
                width = c * m
                if level in attn:
                    blocks.append(_Attention(width, attention_heads, groups))
                # The last block of a level (except the top) upsamples afterwards.
                self.up.append(blocks)
                if level > 0 and i == num_res_blocks:
                    self.up.append(nn.ModuleList([nn.Conv2d(width, width, 3, padding=1)]))
        self.head = nn.Sequential(_norm(width, groups), nn.SiLU(),
                                  zero_init_(nn.Conv2d(width, self.out_channels, 3, padding=1)))

    @property
    def num_classes(self) -> int | None:
        """Number of classes (``None``: unconditional); the null class is this index."""
        return self.embed.num_classes

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """The output at images ``x``, times ``t`` and classes ``labels`` (``None``: null)."""
        e = image_condition(self.embed, self.event_shape, x, t, labels)
        h = self.stem(x)
        hs = [h]
        for blocks in self.down:
            if isinstance(blocks[0], _ResBlock):
                h = blocks[0](h, e)
                for extra in islice(blocks, 1, None):  # (no new ModuleList)
                    h = extra(h)
            else:  # downsampling convolution
                h = blocks[0](h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, e)), e)
        for blocks in self.up:
            if isinstance(blocks[0], _ResBlock):
                h = blocks[0](torch.cat([h, hs.pop()], dim=1), e)
                for extra in islice(blocks, 1, None):  # (no new ModuleList)
                    h = extra(h)
            else:  # upsample to the next skip's size, then convolve
                h = blocks[0](F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        return self.head(h)


class UNetClassifier(nn.Module):
    r"""Creates a noise-conditional image classifier: the U-Net's encoder, pooled, then linear.

    The downsampling half and middle of :class:`UNet` (time-conditioned residual blocks),
    global average pooling and a linear layer to ``num_classes`` logits: the classifier of
    classifier guidance (Dhariwal & Nichol, 2021), trained on noisy images by
    :class:`probgen.inference.NoisyClassifierLoss`.

    Args:
        shape: the image shape ``(C, H, W)``.
        num_classes: number of classes K.
        base_channels, channel_mults, num_res_blocks: as in :class:`UNet`;
            attention_levels, attention_heads, dropout, groups, time_scale: likewise.

    Shapes:
        ``x``: ``(batch, C, H, W)``; ``t``: ``(batch,)`` or a scalar; output ``(batch, K)``.

    Example:
        >>> clf = UNetClassifier((1, 8, 8), num_classes=10, base_channels=8)
        >>> clf(torch.randn(3, 1, 8, 8), torch.rand(3)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_classes: int,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        attention_heads: int = 1,
        dropout: float = 0.0,
        groups: int = 8,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, low=2)
        unet = UNet(shape, base_channels, channel_mults, num_res_blocks, attention_levels,
                    attention_heads, None, None, dropout, groups, time_scale)
        self.event_shape = unet.event_shape
        self.embed, self.stem, self.down = unet.embed, unet.stem, unet.down
        self.mid1, self.mid_attn, self.mid2 = unet.mid1, unet.mid_attn, unet.mid2
        width = self.mid2.conv2.out_channels
        self.head = nn.Sequential(_norm(width, groups), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The logits of the classes of noisy images ``x`` at times ``t``."""
        e = image_condition(self.embed, self.event_shape, x, t)
        h = self.stem(x)
        for blocks in self.down:
            if isinstance(blocks[0], _ResBlock):
                h = blocks[0](h, e)
                for extra in islice(blocks, 1, None):  # (no new ModuleList)
                    h = extra(h)
            else:
                h = blocks[0](h)
        return self.head(self.mid2(self.mid_attn(self.mid1(h, e)), e))
