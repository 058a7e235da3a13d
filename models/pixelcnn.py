"""PixelCNN (masked convolutions) and Gated PixelCNN (vertical and horizontal stacks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probgen.models.autoregressive import AutoregressiveModel
from probgen.nn.masked import MaskedConv2d, channel_groups

__all__ = ["PixelCNN", "GatedPixelCNN", "ChannelLayerNorm", "raster_order", "one_hot_pixels"]


def _check(name: str, value: int, odd: bool = False) -> int:
    bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
    if bad or (odd and value % 2 == 0):
        kind = "a positive odd int" if odd else "a positive int"
        raise ValueError(f"{name}: expected {kind}, got {value!r}.")
    return value


def _check_sizes(channels: int, layers: int, kernel_size: int, first_kernel_size: int) -> None:
    # The size arguments both PixelCNN variants share.
    _check("channels", channels)
    _check("layers", layers)
    _check("kernel_size", kernel_size, odd=True)
    _check("first_kernel_size", first_kernel_size, odd=True)


def _image(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"shape: expected an image shape (C, H, W), got {list(shape)}.")
    return int(shape[0]), int(shape[1]), int(shape[2])


class ChannelLayerNorm(nn.Module):
    """Creates a layer norm over the channels of each pixel, per colour group.

    Each group's feature maps are normalized separately, so the norm never lets a colour
    channel see the features of a later one (it would break the autoregressive property).

    Args:
        channels: feature maps.
        groups: colour groups (the data's channels).

    Shapes:
        ``(N, channels, H, W)`` -> same.

    Example:
        >>> ChannelLayerNorm(4)(torch.randn(2, 4, 3, 3)).shape
        torch.Size([2, 4, 3, 3])
    """

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        channel_groups(channels, groups)  # validates the split
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """Normalizes ``x`` over each group's channels at every pixel."""
        n, c, h, w = x.shape
        y = x.reshape(n, self.groups, c // self.groups, h, w).movedim(2, -1)
        y = F.layer_norm(y, y.shape[-1:]).movedim(-1, 2).reshape(n, c, h, w)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


def _to_logits(out: Tensor, c: int, categories: int) -> Tensor:
    """``(N, C * K', H, W)`` grouped by colour -> ``(N, C, H, W)`` or ``(N, C, H, W, K)``."""
    n, _, h, w = out.shape
    k = 1 if categories == 2 else categories
    out = out.reshape(n, c, k, h, w).movedim(2, -1)
    return out.squeeze(-1) if categories == 2 else out


def _head(channels: int, c: int, categories: int) -> nn.Sequential:
    k = 1 if categories == 2 else categories
    return nn.Sequential(nn.ReLU(), MaskedConv2d(channels, channels, 1, "B", c), nn.ReLU(),
                         MaskedConv2d(channels, c * k, 1, "B", c))


def one_hot_pixels(x: Tensor, categories: int, dtype: torch.dtype) -> Tensor:
    """Pixels ``(N, C, H, W)`` in ``0..K-1`` -> one-hot maps ``(N, C * K, H, W)``, grouped by
    colour (channel ``c``'s K maps are contiguous, as the masks' colour groups expect).

    Example:
        >>> one_hot_pixels(torch.tensor([[[[0, 2]]]]), 3, torch.float32)[0, :, 0, 1]
        tensor([0., 0., 1.])
    """
    n, c, h, w = x.shape
    onehot = F.one_hot(x.long(), categories).to(dtype)  # (N, C, H, W, K)
    return onehot.movedim(-1, 2).reshape(n, c * categories, h, w)


def raster_order(c: int, h: int, w: int) -> Tensor:
    """Flat indices of a ``(C, H, W)`` event in raster order, colour channels innermost."""
    return torch.arange(c * h * w).reshape(c, h * w).t().reshape(-1)


class _RasterModel(AutoregressiveModel):
    """What PixelCNN and the Gated PixelCNN share: an image event generated in raster order
    (rows below a pixel never reach it), their size checks, and scaled or one-hot inputs."""

    row_causal = True

    def __init__(self, shape: Sequence[int], channels: int, layers: int, kernel_size: int,
                 first_kernel_size: int, categories: int, classes: int,
                 one_hot: bool) -> None:
        c, h, w = _image(shape)
        super().__init__((c, h, w), categories, classes)
        _check_sizes(channels, layers, kernel_size, first_kernel_size)
        self.order = raster_order(c, h, w)
        self.one_hot = bool(one_hot)

    def _input_channels(self) -> int:
        """Channels of the network input: C, or C * K one-hot maps with ``one_hot``."""
        c = self.event_shape[0]
        return c * self.categories if self.one_hot else c

    def encode(self, x: Tensor) -> Tensor:
        """Network input: one-hot maps ``(N, C * K, H, W)`` with ``one_hot``, else the
        default (binary pixels as they are, categorical ones scaled to [-1, 1])."""
        if self.one_hot:
            return one_hot_pixels(x, self.categories, self._param_dtype())
        return super().encode(x)


class PixelCNN(_RasterModel):
    """Creates a PixelCNN: a type-A masked convolution, then type-B masked convolutions.

    ``input (7x7, A) -> layers x [ReLU, k x k conv (B), (LayerNorm)] -> ReLU, 1x1 (B), ReLU,
    1x1 (B)``, with residual connections around the hidden layers. Pixels are generated in
    raster order, colour channels innermost (R, G, B); the masks split the feature maps
    into colour groups. Stacked masked convolutions leave a blind spot above and to the
    right of each pixel (see :func:`probgen.models.receptive_field`); the Gated PixelCNN
    removes it.

    Args:
        shape: image shape ``(C, H, W)``.
        channels: feature maps per layer (a multiple of C).
        layers: number of type-B layers.
        kernel_size: kernel of the type-B layers (odd).
        first_kernel_size: kernel of the type-A input layer (odd).
        categories: values per pixel (2: Bernoulli; 256: 8-bit categorical).
        layer_norm: normalize each pixel's channels after every hidden layer.
        residual: add each hidden layer's input to its output.
        classes: classes to condition on (0: unconditional); a learned per-class bias is
            added to every layer's features.
        one_hot: feed each pixel to the network as a one-hot vector of its ``categories``
            values instead of a value scaled to [-1, 1]: for nominal categories with no
            order, such as VQ-VAE code indices (see :func:`one_hot_pixels`).

    References:
        Pixel recurrent neural networks (van den Oord et al., 2016),
        https://arxiv.org/abs/1601.06759

    Example:
        >>> model = PixelCNN([1, 4, 4], channels=8, layers=2)
        >>> model.log_prob(torch.zeros(2, 1, 4, 4)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        shape: Sequence[int],
        channels: int = 64,
        layers: int = 5,
        kernel_size: int = 7,
        first_kernel_size: int = 7,
        categories: int = 2,
        layer_norm: bool = False,
        residual: bool = True,
        classes: int = 0,
        one_hot: bool = False,
    ) -> None:
        super().__init__(shape, channels, layers, kernel_size, first_kernel_size, categories,
                         classes, one_hot)
        c = self.event_shape[0]
        self.residual = bool(residual)
        inputs = self._input_channels()
        self.input_conv = MaskedConv2d(inputs, channels, first_kernel_size, "A", c)
        self.convs = nn.ModuleList(MaskedConv2d(channels, channels, kernel_size, "B", c)
                                   for _ in range(layers))
        self.norms = nn.ModuleList(ChannelLayerNorm(channels, c) for _ in range(layers)
                                   ) if layer_norm else None
        self.head = _head(channels, c, categories)
        self.class_bias = nn.Linear(classes, channels * (layers + 1), bias=False
                                    ) if classes else None

    def logits_from_input(self, h: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits ``(N, C, H, W)`` (binary) or ``(N, C, H, W, K)`` from pixels ``h``."""
        biases = None
        if self.class_bias is not None:
            biases = self.class_bias(context)[:, :, None, None].chunk(len(self.convs) + 1, 1)
        x = self.input_conv(h)
        if biases is not None:
            x = x + biases[0]
        for i, conv in enumerate(self.convs):
            y = conv(F.relu(x))
            if biases is not None:
                y = y + biases[i + 1]
            if self.norms is not None:
                y = self.norms[i](y)
            x = x + y if self.residual else y
        return _to_logits(self.head(x), self.event_shape[0], self.categories)


class _GatedLayer(nn.Module):
    """One gated layer: vertical stack (rows above), horizontal stack (row to the left)."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, data_channels: int,
                 first: bool, classes: int) -> None:
        super().__init__()
        k = kernel_size
        self.k = k
        self.first = first
        self.data_channels = data_channels
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (k // 2 + 1, k))
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, (1, k), "A" if first else "B",
                                       data_channels)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = MaskedConv2d(channels, channels, 1, "B", data_channels)
        self.class_bias = nn.Linear(classes, 2 * channels, bias=False) if classes else None

    def _gate(self, x: Tensor) -> Tensor:
        n, c2, h, w = x.shape
        g = self.data_channels
        x = x.reshape(n, g, 2, c2 // (2 * g), h, w)
        return (x[:, :, 0].tanh() * x[:, :, 1].sigmoid()).reshape(n, c2 // 2, h, w)

    def forward(self, v: Tensor, h: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        k = self.k
        # Output row i of the vertical stack sees input rows i - k//2 .. i (all columns
        # within k//2); it reaches the horizontal stack shifted down one row, so pixel
        # (i, j) only ever sees rows above i through it.
        v_pre = self.vertical(F.pad(v, (k // 2, k // 2, k // 2, 0)))
        shifted = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]
        h_pre = self.horizontal(h) + self.link(shifted)
        if self.class_bias is not None and bias is not None:
            b = self.class_bias(bias)[:, :, None, None]
            v_pre, h_pre = v_pre + b, h_pre + b
        h_out = self.out(self._gate(h_pre))
        return self._gate(v_pre), h_out if self.first else h + h_out


class GatedPixelCNN(_RasterModel):
    r"""Creates a Gated PixelCNN: vertical and horizontal stacks with gated activations.

    Every layer computes :math:`y = \tanh(W_f * x) \odot \sigma(W_g * x)` in two stacks: a
    vertical one that sees all rows above (a ``(k//2 + 1) x k`` convolution whose output is
    shifted down one row before the horizontal stack reads it) and a horizontal one that
    sees the pixels to the left in the current row (type A in the first layer, B after,
    with residual connections). Together they cover every pixel before the current one in
    raster order within their reach: no blind spot.

    Args:
        shape: image shape ``(C, H, W)``.
        channels: feature maps per stack (a multiple of C).
        layers: gated layers (the first with ``first_kernel_size``).
        kernel_size: kernel width of the later layers (odd).
        first_kernel_size: kernel width of the first layer (odd).
        categories: values per pixel (2: Bernoulli; 256: 8-bit categorical).
        classes: classes to condition on (0: unconditional): a learned per-class bias on
            both stacks' pre-activations, as in the paper's conditional PixelCNN.
        one_hot: feed pixels as one-hot vectors of their ``categories`` values (nominal
            categories such as VQ-VAE code indices) instead of values scaled to [-1, 1].

    References:
        Conditional image generation with PixelCNN decoders (van den Oord et al., 2016),
        https://arxiv.org/abs/1606.05328

    Example:
        >>> model = GatedPixelCNN([1, 4, 4], channels=8, layers=2)
        >>> model.sample(2).shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(
        self,
        shape: Sequence[int],
        channels: int = 64,
        layers: int = 5,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        categories: int = 2,
        classes: int = 0,
        one_hot: bool = False,
    ) -> None:
        super().__init__(shape, channels, layers, kernel_size, first_kernel_size, categories,
                         classes, one_hot)
        c = self.event_shape[0]
        channel_groups(channels, c)
        inputs = self._input_channels()
        self.layers = nn.ModuleList(
            _GatedLayer(inputs if i == 0 else channels, channels,
                        first_kernel_size if i == 0 else kernel_size, c, i == 0, classes)
            for i in range(layers))
        self.head = _head(channels, c, categories)

    def logits_from_input(self, h: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits ``(N, C, H, W)`` (binary) or ``(N, C, H, W, K)`` from pixels ``h``."""
        v, x = h, h
        for layer in self.layers:
            v, x = layer(v, x, context)
        return _to_logits(self.head(x), self.event_shape[0], self.categories)
