"""A small convolutional ResNet, the conditioner of image couplings."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from probgen.nn.init import zero_init_

__all__ = ["ConvResidualBlock", "ConvResNet"]


def _conv(cin: int, cout: int, kernel: int, weight_norm: bool) -> nn.Module:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    return _weight_norm(conv) if weight_norm else conv


class ConvResidualBlock(nn.Module):
    """Creates a residual block ``x + conv(act(conv(act(x))))`` on ``(batch, C, H, W)``.

    Args:
        channels: number of channels C.
        weight_norm: apply weight normalisation to both convolutions.
    """

    def __init__(self, channels: int, weight_norm: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            _conv(channels, channels, 3, weight_norm),
            nn.ReLU(),
            _conv(channels, channels, 3, weight_norm),
        )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x + self.net(x)


class ConvResNet(nn.Module):
    """Creates a small ResNet: ``(batch, in_channels, H, W)`` -> ``(batch, out_channels, H, W)``.

    A 3x3 stem, ``blocks`` residual blocks, then a 3x3 output convolution that is
    zero-initialised (unless ``zero_last=False``) so that couplings built on it start as the
    identity. No normalisation layers: a flow's density must not depend on the batch.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        hidden_channels: width of the residual stream.
        blocks: number of residual blocks.
        weight_norm: weight-normalise the stem and block convolutions.
        zero_last: zero-initialise the output convolution.

    Example:
        >>> net = ConvResNet(2, 4, hidden_channels=8, blocks=1)
        >>> net(torch.randn(3, 2, 4, 4)).shape
        torch.Size([3, 4, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        blocks: int = 2,
        weight_norm: bool = False,
        zero_last: bool = True,
    ) -> None:
        super().__init__()
        self.stem = _conv(in_channels, hidden_channels, 3, weight_norm)
        self.blocks = nn.Sequential(
            *[ConvResidualBlock(hidden_channels, weight_norm) for _ in range(blocks)]
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        )
        if zero_last:
            zero_init_(self.head)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.head(self.blocks(self.stem(x)))
